"""Matrix-Game 2.0: loading its three released layouts (tiny files, the real key names and the ``model.`` prefix
of its generator wrapper), the action module against a minimal reimplementation written here from the
definition (loops over frames, explicit pixel-frame windows, complex-number RoPE, masked attention over the
whole sequence instead of caches), the action timeline, and the errors."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from comfyui_clipwan.wan import CausalWanModel, sample_causal
from comfyui_clipwan.wan.conditioning.actions import ActionTimeline, load_actions, parse_timeline
from comfyui_clipwan.wan.model.actions import MODES, ActionConfig
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.sampling.action_cache import ActionRun
from comfyui_clipwan.wan.sampling.presets import MATRIX_GAME_FAMILIES, get_preset

DIM = 64


def tiny_config(mode="universal", blocks=(0, 1)):
    keys, mouse = MODES[mode]
    acfg = ActionConfig(blocks=blocks, dim=DIM, keyboard_dim=keys, mouse_dim=2 if mouse else 0, hidden_size=8,
                        keyboard_hidden=128, mouse_hidden=128)  # two 64-d action heads
    return WanConfig(dim=DIM, ffn_dim=96, num_heads=1, num_layers=2, in_dim=36, has_img_emb=True,
                     image_context_only=True, actions=acfg)


def tiny_model(mode="universal", seed=0):
    model = CausalWanModel.random(tiny_config(mode), seed=seed)
    with torch.no_grad():
        for name, p in model.tree.named_parameters():
            if ".action_model." in name and p.dim() == 2:
                p.mul_(20.0)  # make the actions matter at this size
    return model


@pytest.mark.parametrize("mode", sorted(MODES))
def test_released_layouts_load_and_are_detected(mode, tmp_path):
    model = tiny_model(mode)
    path = tmp_path / f"{mode}.safetensors"
    # their inference.py loads the file into the generator wrapper: keys are "model.<Wan key>"
    save_file({"model." + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = CausalWanModel.from_file(str(path))
    cfg = loaded.config
    assert cfg.actions.mode == mode and cfg.image_context_only and cfg.model_type == "i2v"
    assert cfg.actions == tiny_config(mode).actions
    assert "text_embedding.0.weight" not in loaded.state_dict()
    assert "blocks.0.cross_attn.k_img.weight" not in loaded.state_dict()
    assert f"'{mode}'" in cfg.describe()
    keys = set(loaded.state_dict())
    assert ("blocks.1.action_model.mouse_mlp.0.weight" in keys) == (mode != "templerun")
    assert "blocks.1.action_model.keyboard_attn_kv.weight" in keys


def test_real_size_shapes_are_read():
    """The released 1.3B universal layout (configs/distilled_model/universal/config.json), as shapes only."""
    shapes = {"head.modulation": (1, 2, 1536), "patch_embedding.weight": (1536, 36, 1, 2, 2),
              "blocks.0.ffn.0.weight": (8960, 1536), "head.head.weight": (64, 1536),
              "time_embedding.0.weight": (1536, 256), "img_emb.proj.0.bias": (1280,)}
    shapes.update({f"blocks.{i}.ffn.0.weight": (8960, 1536) for i in range(30)})
    for i in range(15):
        p = f"blocks.{i}.action_model."
        shapes.update({p + "keyboard_embed.0.weight": (128, 4), p + "keyboard_attn_kv.weight": (2048, 1536),
                       p + "mouse_attn_q.weight": (1024, 1536), p + "mouse_mlp.0.weight": (1024, 1536 + 24)})
    from comfyui_clipwan.wan.model.config import config_from_shapes

    cfg = config_from_shapes(shapes)
    assert (cfg.num_heads, cfg.num_layers, cfg.in_dim) == (12, 30, 36)
    a = cfg.actions
    assert (a.mode, a.blocks, a.heads, a.window, a.mouse_dim, a.keyboard_dim) == \
        ("universal", tuple(range(15)), 16, 3, 2, 4)


# --------------------------------------------------------------------------------------------------
# The action module against a reimplementation from the definition


def _rms(x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)


def _rope(x, frame):
    """The definition: pairs (x0, x1), (x2, x3) ... of the first 8 dims turned by frame·256^(-2i/8), i < 4;
    written with complex numbers."""
    out = x.clone()
    for i in range(4):
        angle = frame * 256.0 ** (-2 * i / 8)
        z = torch.complex(x[..., 2 * i], x[..., 2 * i + 1]) * complex(math.cos(angle), math.sin(angle))
        out[..., 2 * i], out[..., 2 * i + 1] = z.real, z.imag
    return out


def _window(values, f, width=12):
    return torch.stack([values[max(0, 4 * f - width + j)] for j in range(width)])  # [12, C]


def _reference(mod, acfg, x_frames, kb, ms, query_frames, window):
    """Action module output for the frames ``query_frames`` of ``x_frames [T, S, D]`` (batch 1), each frame
    attending the frames ``e - window .. e-1`` of its block (block end e), computed frame by frame."""
    heads, hd = acfg.heads, 64
    T, S, D = x_frames.shape
    x = x_frames.clone()
    block_end = {f: (f // 3 + 1) * 3 for f in range(T)}
    lin = torch.nn.functional.linear
    # mouse: per frame and position, MLP of [token, 12 mouse frames] -> q, k, v
    if ms is not None:
        qs, ks, vs = [], [], []
        for f in range(T):
            w = _window(ms, f).flatten()
            z = mod.mouse_mlp(torch.cat([x[f], w.expand(S, -1)], -1))
            q, k, v = lin(z, mod.t_qkv.weight).view(S, 3, heads, hd).unbind(1)
            qs.append(_rope(_rms(q), f)), ks.append(_rope(_rms(k), f)), vs.append(v)
        out = x.clone()
        for f in range(T):
            e = block_end[f]
            seen = list(range(max(0, e - window), e))
            k = torch.stack([ks[g] for g in seen], 1)  # [S, n, H, hd]
            v = torch.stack([vs[g] for g in seen], 1)
            att = torch.softmax(torch.einsum("shd,snhd->shn", qs[f], k) / math.sqrt(hd), -1)
            out[f] = x[f] + lin(torch.einsum("shn,snhd->shd", att, v).reshape(S, -1), mod.proj_mouse.weight)
        x = out
    # keyboard: one K/V per frame from the embedded 12-frame key window; every token queries them
    ks, vs = [], []
    for f in range(T):
        emb = mod.keyboard_embed(_window(kb, f)).flatten()
        k, v = lin(emb, mod.keyboard_attn_kv.weight).view(2, heads, hd)
        ks.append(_rope(_rms(k), f)), vs.append(v)
    out = x.clone()
    for f in range(T):
        e = block_end[f]
        seen = list(range(max(0, e - window), e))
        q = _rope(_rms(lin(x[f], mod.mouse_attn_q.weight).view(S, heads, hd)), f)
        k, v = torch.stack([ks[g] for g in seen]), torch.stack([vs[g] for g in seen])  # [n, H, hd]
        att = torch.softmax(torch.einsum("shd,nhd->shn", q, k) / math.sqrt(hd), -1)
        out[f] = x[f] + lin(torch.einsum("shn,nhd->shd", att, v).reshape(S, -1), mod.proj_keyboard.weight)
    return out[query_frames]


@pytest.mark.parametrize("mode,window", [("universal", 6), ("gta_drive", 4), ("templerun", 6)])
def test_action_module_with_cache_matches_definition(mode, window):
    model = tiny_model(mode)
    cfg, acfg = model.config, model.config.actions
    mod = model.tree.blocks[0].action_model
    frames, S = 9, 6  # three blocks of 3, 6 tokens per frame
    g = torch.Generator().manual_seed(5)
    x = torch.randn(frames, S, DIM, generator=g)
    pixel = 1 + 4 * (frames - 1)
    keys, mouse = MODES[mode]
    kb = torch.nn.functional.one_hot(torch.randint(0, keys, (pixel,), generator=g), keys).float()
    ms = torch.randn(pixel, 2, generator=g) * 0.3 if mouse else None
    settings = get_preset(MATRIX_GAME_FAMILIES[mode]).causal_settings(local_window=window)
    run = ActionRun(cfg, ActionTimeline(keyboard=kb, mouse=ms), frames, 1, S, settings, "cpu", torch.float32)
    with torch.no_grad():
        got = []
        for start in (0, 3, 6):
            block = x[start:start + 3].reshape(1, 3 * S, DIM)
            noisy = run.hook(start, 3)(0, mod, block + 1.0, 3)  # a denoising step: scratch only
            assert not torch.allclose(noisy, block)
            out = run.hook(start, 3)(0, mod, block, 3)  # the clean pass: its K/V are kept
            run.commit()
            got.append(out.view(3, S, DIM))
        want = _reference(mod, acfg, x, kb, ms, list(range(frames)), window)
    got = torch.cat(got)
    assert (got - want).abs().max().item() < 1e-6 * want.abs().max().item() * 10  # fp32 round-off
    assert (want - x).abs().max().item() > 0.1  # the module does something


# --------------------------------------------------------------------------------------------------
# Sampling, timelines, errors


def test_sampling_follows_the_actions_and_refuses_mismatches():
    model = tiny_model("universal")
    latent = torch.zeros(1, 16, 6, 4, 4)
    kw = dict(settings=get_preset("Matrix-Game 2.0").causal_settings(), clip_fea=torch.randn(1, 257, 1280),
              concat=torch.zeros(1, 20, 6, 4, 4), seed=1)
    forward = sample_causal(model, latent, None, actions=parse_timeline("0-: W"), **kw)
    turning = sample_causal(model, latent, None, actions=parse_timeline("0-: W + L"), **kw)
    same = sample_causal(model, latent, None, actions=parse_timeline("0-: W"), **kw)
    assert torch.equal(forward, same) and (forward - turning).abs().max() > 1e-3
    with pytest.raises(ValueError, match="'templerun'.*'universal'"):
        sample_causal(model, latent, None, actions=parse_timeline("0-: W", mode="templerun"), **kw)
    with pytest.raises(ValueError, match="7 keys, no mouse.*'universal'"):
        sample_causal(model, latent, None, actions=ActionTimeline(keyboard=torch.zeros(21, 7)), **kw)
    with pytest.raises(ValueError, match="CLIP vision features only"):
        sample_causal(model, latent, None, **{**kw, "clip_fea": None})
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    with pytest.raises(ValueError, match="an endless stream is not available for it. Set a length"):
        iter_causal_blocks(model, latent, None, endless=True, actions=parse_timeline("0-: W"), **kw)
    plain = CausalWanModel.random(WanConfig(dim=64, ffn_dim=96, num_heads=1, num_layers=1), seed=0)
    with pytest.raises(ValueError, match="no action module"):
        sample_causal(plain, latent, torch.zeros(1, 4, 4096), actions=parse_timeline("0: W"))


def test_timeline_text():
    tl = parse_timeline("# walk, then turn\n0-4: W\n5-: W + mouse(0.1, -0.2)\nblock 1: D + L\n", mode="universal")
    kb, ms = tl.tensors("universal", 21, frames_per_block=3)
    assert kb[:5, 0].eq(1).all() and kb[:5, 1:].eq(0).all()
    # block 1 = latent frames 3..5 = pixel frames 9..20 (the frames their streaming sets for that block)
    assert kb[5:9].tolist() == [[1, 0, 0, 0]] * 4 and torch.allclose(ms[5:9], torch.tensor([0.1, -0.2]))
    assert kb[9:].tolist() == [[0, 0, 0, 1]] * 12 and torch.allclose(ms[9:], torch.tensor([0.0, 0.1]))
    kb, ms = parse_timeline("0-3: W\n4-: idle").tensors("templerun", 9)
    assert ms is None and kb[:4, 1].eq(1).all() and kb[4:, 0].eq(1).all()  # idle = their "no move" key
    kb, ms = parse_timeline("0-: W A").tensors("gta_drive", 5)
    assert kb[0].tolist() == [1, 0] and torch.allclose(ms[0], torch.tensor([0, -0.1]))  # A steers (mouse yaw)
    for bad, msg in [("0-4 W", "not 'FRAMES: KEYS'"), ("3-1: W", "ends before"), ("0: X", "'X' is not a"),
                     ("0: mouse(1)", "mouse\\(pitch, yaw\\)")]:
        with pytest.raises(ValueError, match=msg):
            parse_timeline(bad, mode="universal")
    with pytest.raises(ValueError, match="no mouse"):
        parse_timeline("0: mouse(0.1, 0)", mode="templerun")


def test_authors_action_files(tmp_path):
    kb, ms = torch.eye(4)[torch.tensor([0, 0, 2, 3, 1])], torch.rand(5, 2)
    (tmp_path / "a.json").write_text(json.dumps({"keyboard_condition": kb.tolist(), "mouse_condition": ms.tolist()}))
    save_file({"keyboard_condition": kb[None], "mouse_condition": ms[None]}, str(tmp_path / "a.safetensors"))
    (tmp_path / "a.txt").write_text("0-: S\n")
    for name in ("a.json", "a.safetensors"):
        got_kb, got_ms = load_actions(str(tmp_path / name)).tensors("universal", 5)
        assert torch.allclose(got_kb, kb) and torch.allclose(got_ms, ms)
    with pytest.raises(ValueError, match="5 frames of actions for a video of 9"):
        load_actions(str(tmp_path / "a.json")).tensors("universal", 9)
    assert load_actions(str(tmp_path / "a.txt")).tensors("universal", 5)[0][:, 1].eq(1).all()
    (tmp_path / "b.json").write_text(json.dumps({"keys": [[1]]}))
    with pytest.raises(ValueError, match="no 'keyboard_condition'"):
        load_actions(str(tmp_path / "b.json"))


def test_nodes_run_matrix_game_with_an_action_timeline(tmp_path):
    """Matrix-Game Conditioning -> Causal Wan Sampler (the preset's widgets, family set) with Matrix-Game Actions
    on its optional actions input; the same through the CLI with --actions."""
    from types import SimpleNamespace

    from comfyui_clipwan.nodes.action_nodes import MatrixGameActions, MatrixGameConditioning
    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler

    class StandInVAE:  # not under test: a fixed latent for any pixels
        def encode(self, pixels):
            t = (pixels.shape[0] - 1) // 4 + 1
            return torch.ones(1, 16, t, pixels.shape[1] // 8, pixels.shape[2] // 8)

    model = tiny_model("gta_drive")
    clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1280))
    positive, latent = MatrixGameConditioning().encode(StandInVAE(), clip, torch.rand(1, 40, 70, 3), width=64,
                                                       height=32, length=21)
    preset = get_preset("Matrix-Game 2.0 GTA drive")
    (drive,) = MatrixGameActions().build("gta_drive", "0-: W")
    (steer,) = MatrixGameActions().build("auto", "0-: W A")
    runs = [CausalWanSampler().sample(model, positive, latent, seed=3, actions=a, **preset.sampler_values())[0]
            for a in (drive, steer, drive)]
    assert runs[0]["samples"].shape == (1, 16, 6, 4, 8)
    assert torch.equal(runs[0]["samples"], runs[2]["samples"])
    assert (runs[0]["samples"] - runs[1]["samples"]).abs().max() > 1e-3
    (wrong,) = MatrixGameActions().build("templerun", "0-: Z")
    with pytest.raises(ValueError, match="'templerun'.*'gta_drive'"):
        CausalWanSampler().sample(model, positive, latent, seed=3, actions=wrong, **preset.sampler_values())
    (path := tmp_path / "a.txt").write_text("0-: W A\n")
    (from_file,) = MatrixGameActions().build("auto", "", action_file=str(path))
    assert torch.equal(from_file.tensors("gta_drive", 21)[1], steer.tensors("gta_drive", 21)[1])


def test_keys_sent_live_over_http_steer_the_next_blocks():
    """Matrix-Game Actions with live on + POST /clipwan/matrix_game/keys while the loop runs: from the next
    block on the keys replace the timeline on the frames the authors' streaming replaces (their
    ``cond_current`` with ``replace``) — the same video as a timeline that says so from the start."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from comfyui_clipwan.nodes import action_nodes
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    model = tiny_model("universal")
    latent = torch.zeros(1, 16, 9, 4, 4)
    kw = dict(settings=get_preset("Matrix-Game 2.0").causal_settings(), clip_fea=torch.randn(1, 257, 1280),
              concat=torch.zeros(1, 20, 9, 4, 4), seed=2)
    (live,) = action_nodes.MatrixGameActions().build("auto", "0-: W", live=True, unique_id="mg-7")

    class Routes:
        routes = web.RouteTableDef()

    action_nodes.register_routes(Routes)
    app = web.Application()
    app.add_routes(Routes.routes)

    async def run():
        async with TestClient(TestServer(app)) as client:
            path = action_nodes.LIVE_KEYS_PATH
            assert (await client.post(path, json={"node": "nope", "keys": "W"})).status == 404
            out = torch.zeros(latent.shape)
            for block in iter_causal_blocks(model, latent, None, actions=live, **kw):
                out[:, :, block.start_frame:block.start_frame + 3] = block.x0
                if block.index == 0:
                    bad = await client.post(path, json={"node": "mg-7", "keys": "W + Z"})
                    assert bad.status == 400 and "'Z' is not a universal key" in (await bad.json())["error"]
                    ok = await client.post(path, json={"node": "mg-7", "keys": "W + L"})
                    assert ok.status == 200 and (await ok.json())["sent"] == 1
            return out

    streamed = asyncio.run(run())
    # block 1 = latent frames 3..5: pixel frames 9..20 take the keys, and every later block too
    planned = sample_causal(model, latent, None, actions=parse_timeline("0-8: W\n9-: W + L"), **kw)
    unsteered = sample_causal(model, latent, None, actions=parse_timeline("0-: W"), **kw)
    assert torch.allclose(streamed, planned, atol=1e-6)
    assert torch.equal(streamed[:, :, :3], unsteered[:, :, :3])
    assert (streamed - unsteered).abs().max() > 1e-3
    action_nodes.LIVE.pop("mg-7")


def test_cli_sample_with_an_action_file(tmp_path, capsys):
    """``sample --preset "Matrix-Game 2.0" --actions FILE`` on a released-layout file: the actions steer the
    latent (the same run with other actions differs), a Temple Run file for a universal model is refused."""
    from safetensors.torch import load_file

    from comfyui_clipwan.cli import main

    model = tmp_path / "base_distill.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in tiny_model("universal").state_dict().items()}, str(model))
    latents = {}
    for name, text in (("walk", "0-: W\n"), ("turn", "0-: W + L\n")):
        (tmp_path / f"{name}.txt").write_text(text)
        out = tmp_path / name
        assert main(["sample", "--model", str(model), "--preset", "Matrix-Game 2.0", "--actions",
                     str(tmp_path / f"{name}.txt"), "--width", "64", "--height", "32", "--length", "21",
                     "--out", str(out)]) == 0
        latents[name] = load_file(str(out / "wan_latent.safetensors"))["latent_tensor"]
    printed = capsys.readouterr().out
    assert "Matrix-Game actions 'universal'" in printed and "action timeline (1 segment(s)" in printed
    assert (latents["walk"] - latents["turn"]).abs().max() > 1e-3
    (tmp_path / "run.json").write_text(json.dumps({"keyboard_condition": torch.eye(7)[[0] * 21].tolist()}))
    assert main(["sample", "--model", str(model), "--preset", "Matrix-Game 2.0", "--actions",
                 str(tmp_path / "run.json"), "--width", "64", "--height", "32", "--length", "21",
                 "--out", str(tmp_path / "x")]) != 0
    assert "the actions have 7 keys, no mouse but the model's action module is 'universal' (4 keys + mouse)" in \
        capsys.readouterr().err
    assert not (tmp_path / "x" / "wan_latent.safetensors").exists()
