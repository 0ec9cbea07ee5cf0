"""Image and LoRA changes on a timeline (wan/timeline/controls.py, wan/model/lora_live.py), each against a reference
built here from scratch: the CLIP route = the cross-attention K/V computed from the new features at the change
(once); a blend = the linear mix written here; the concat route = Wan's y rebuilt with the new known frame; the
first-frame route = a cache-free block-causal reference that clamps the frame; a LoRA strength = the weights
re-merged at that strength. Live changes replay exactly from the sidecar; bad changes fail before any block."""

import threading

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit, lora_live
from comfyui_clipwan.wan.model.lora import merge_lora
from comfyui_clipwan.wan.sampling.loop import SamplerHooks, block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule
from comfyui_clipwan.wan.timeline import LiveControl, files, load, parse_text
from comfyui_clipwan.wan.timeline.controls import ImageChange, LoraChange

T2V = WanConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)
I2V = WanConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_dim=36, text_dim=32, text_len=8, has_img_emb=True)
H = W = 4
FRAMES = 8
S = CausalSettings(steps=[1000, 500], frames_per_block=2)


def encoder(text):
    g = torch.Generator().manual_seed(sum(map(ord, text)))
    return torch.randn(1, 5, 32, generator=g)


def feats(seed):
    return torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed))


def sharp(config, seed):
    sd = CausalWanModel.random(config, seed=seed).state_dict()
    for k in sd:  # sharpened attention so what the cache and the context hold shows in the output
        if ".norm_q." in k or ".norm_k" in k:
            sd[k] = sd[k] * 4.0
    return CausalWanModel.from_state_dict(sd)


@pytest.fixture(scope="module")
def i2v():
    return sharp(I2V, 4)


@pytest.fixture(scope="module")
def t2v():
    return sharp(T2V, 3)


def y_of(seed=9):
    return torch.randn(1, 20, FRAMES, H, W, generator=torch.Generator().manual_seed(seed))


def timeline(*changes):
    t = parse_text("0: a fox").encode(encoder)
    for c in changes:
        t.controls.insert(c)
    return t


class Counter(SamplerHooks):
    def __init__(self):
        self.context = 0

    def on_forward_start(self, kind, block):
        self.context += kind == "context"


class ScratchContext(SamplerHooks):
    """The reference: before block ``b``'s first denoising step, the positive branch's cross-attention K/V are
    computed from scratch (dit.encode_context) from ``contexts[b]`` (CLIP features)."""

    def __init__(self, model, text, contexts):
        self.model, self.text, self.contexts, self.loop, self.done = model, text, contexts, None, set()

    def on_forward_start(self, kind, block):
        if kind == "denoise" and block in self.contexts and block not in self.done:
            self.done.add(block)
            self.loop.branches[0].ctx = dit.encode_context(self.model.tree, self.model.config, self.text,
                                                           self.contexts[block], torch.float32, 1)


def run_with_scratch(model, contexts, clip, y):
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    hooks = ScratchContext(model, encoder("a fox"), contexts)
    loop = iter_causal_blocks(model, torch.zeros(1, 16, FRAMES, H, W), encoder("a fox"), seed=5, settings=S,
                              clip_fea=clip, concat=y, hooks=hooks)
    hooks.loop = loop
    return torch.cat([r.x0 for r in loop], dim=2)


def run(model, t=None, clip=None, y=None, hooks=None, first=None, settings=S):
    return sample_causal(model, torch.zeros(1, 16, FRAMES, H, W), None if t else encoder("a fox"), seed=5,
                         settings=settings, clip_fea=clip, concat=y, first_frames=first, timeline=t, hooks=hooks)


# --- the CLIP route ---------------------------------------------------------------------------------------------------
def test_clip_change_equals_context_from_scratch_once(i2v):
    a, b, y = feats(1), feats(2), y_of()
    count = Counter()
    ours = run(i2v, timeline(ImageChange(block=2, clip_fea=b)), clip=a, y=y, hooks=count)
    assert count.context == 2  # the run's context, then ONE rebuild at the change (not one per block after it)
    ref = run_with_scratch(i2v, {2: b}, a, y)
    assert (ours - ref).abs().max() < 1e-5
    plain = run(i2v, timeline(), clip=a, y=y)
    assert torch.equal(plain[:, :, :4], ours[:, :, :4]) and (plain[:, :, 4:] - ours[:, :, 4:]).abs().max() > 1e-3


def test_clip_blend_equals_the_linear_mix(i2v):
    a, b, y = feats(1), feats(2), y_of()
    count = Counter()
    ours = run(i2v, timeline(ImageChange(block=1, clip_fea=b, blend_blocks=3)), clip=a, y=y, hooks=count)
    assert count.context == 1 + 3  # one rebuild per blend block
    mix = {1 + k: (1 - t) * a + t * b for k, t in enumerate((0.0, 0.5, 1.0))}  # linspace(0, 1, 3)
    ref = run_with_scratch(i2v, mix, a, y)
    assert (ours - ref).abs().max() < 1e-5
    # between two given images (blend_from), not from the one in use
    c = feats(3)
    ours = run(i2v, timeline(ImageChange(block=1, clip_fea=b, blend_from=c, blend_blocks=2)), clip=a, y=y)
    assert (ours - run_with_scratch(i2v, {1: c, 2: b}, a, y)).abs().max() < 1e-5


# --- the concat and first-frame routes --------------------------------------------------------------------------------
def test_concat_change_equals_y_rebuilt_with_the_new_known_frame(i2v):
    a, y = feats(1), y_of()
    latent = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(7))
    ours = run(i2v, timeline(ImageChange(block=2, latent=latent)), clip=a, y=y)
    y2 = y.clone()
    y2[:, :4, 4] = 1.0  # block 2 starts at latent frame 4: Wan's "known" mask there, the new image's latent
    y2[:, 4:, 4] = latent[:, :, 0]
    ref = run(i2v, timeline(), clip=a, y=y2)
    assert torch.equal(ours, ref)
    assert (ours[:, :, 4:] - run(i2v, timeline(), clip=a, y=y)[:, :, 4:]).abs().max() > 1e-3


def clamped_reference(model, text, seed, s, frame, clean):
    """Every block recomputed from scratch over all frames so far (no cache, block-causal mask, no window); latent
    frame ``frame`` is the clean ``clean`` at timestep 0 throughout its block (the clamp rule, written here)."""
    cfg = model.config
    layout = block_layout(FRAMES, s.frames_per_block)
    sched = denoising_schedule(s.steps, s.shift, s.warp)
    tok = (H // 2) * (W // 2)
    noise = initial_noise(seed, (1, 16, FRAMES, H, W))
    out = torch.zeros(1, 16, FRAMES, H, W)
    ctx = dit.encode_context(model.tree, cfg, text, None, torch.float32, 1)
    for bi, (st, n) in enumerate(layout):
        e = st + n
        block_of = torch.arange(e) // s.frames_per_block
        qf = block_of.repeat_interleave(tok)
        mask = qf[None, :] <= qf[:, None]
        x = noise[:, :, st:e].clone()
        for j, sigma in enumerate(sched.sigmas):
            t = torch.full((1, n), float(sched.timesteps[j]), dtype=torch.float64)
            if st <= frame < e:
                x[:, :, frame - st] = clean[:, :, 0]
                t[:, frame - st] = 0
            tf = torch.cat([torch.zeros(1, st, dtype=torch.float64), t], 1)
            flow = dit.transformer(model.tree, cfg, torch.cat([out[:, :, :st], x], 2), tf, ctx, attn_mask=mask)
            x0 = x - sigma * flow[:, :, st:e]
            if j + 1 < len(sched.sigmas):
                x = (1 - sched.sigmas[j + 1]) * x0 + sched.sigmas[j + 1] * step_noise(seed, bi, j + 1, x0.shape, None)
            else:
                x = x0
        if st <= frame < e:
            x[:, :, frame - st] = clean[:, :, 0]
        out[:, :, st:e] = x
    return out


def test_first_frame_change_equals_the_clamp_reference(t2v):
    latent = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(8))
    ours = run(t2v, timeline(ImageChange(block=2, latent=latent)))
    assert torch.equal(ours[:, :, 4:5], latent)  # the block starts exactly at the new image
    ref = clamped_reference(t2v, encoder("a fox"), 5, S, 4, latent)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours[:, :, 5:] - run(t2v, timeline())[:, :, 5:]).abs().max() > 1e-3


# --- LoRA strength ----------------------------------------------------------------------------------------------------
def lora_tensors(config, rank=4, seed=11):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(config.num_layers):
        for mod in ("self_attn.q", "cross_attn.v", "ffn.0"):
            d_out = config.ffn_dim if mod == "ffn.0" else config.dim
            out[f"base_model.model.blocks.{i}.{mod}.lora_A.weight"] = torch.randn(rank, config.dim, generator=g) * 0.3
            out[f"base_model.model.blocks.{i}.{mod}.lora_B.weight"] = torch.randn(d_out, rank, generator=g) * 0.3
    return out


@pytest.fixture()
def lora_model(tmp_path, t2v):
    from safetensors.torch import save_file

    base = {k: v.clone().contiguous() for k, v in t2v.state_dict().items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(lora_tensors(T2V), str(tmp_path / "style.safetensors"))
    model = CausalWanModel.from_file(str(tmp_path / "base.safetensors"), lora=str(tmp_path / "style.safetensors"),
                                     lora_strength=1.0)
    return model, base


def test_strength_change_equals_remerging_and_restores_exactly(lora_model):
    model, base = lora_model
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    for strength in (0.3, -0.5, 1.7):
        lora_live.set_strength(model, "", strength)
        fresh = merge_lora(base, lora_tensors(T2V), strength)
        assert max(float((model.state_dict()[k] - fresh[k]).abs().max()) for k in fresh) <= 1e-5
    lora_live.restore(model)
    assert all(torch.equal(model.state_dict()[k], loaded[k]) for k in loaded)


class RemergeAt(SamplerHooks):
    """The reference: before block ``block`` the weights are re-merged from the base at ``strength``."""

    def __init__(self, model, base, block, strength):
        self.model, self.base, self.block, self.strength, self.done = model, base, block, strength, False

    def on_forward_start(self, kind, block):
        if kind == "denoise" and block == self.block and not self.done:
            self.done = True
            fresh = merge_lora(self.base, lora_tensors(T2V), self.strength)
            with torch.no_grad():
                for k, p in self.model.tree.named_parameters():
                    p.copy_(fresh[k])


def test_lora_change_in_a_run_equals_remerged_weights(lora_model):
    model, base = lora_model
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    ours = run(model, timeline(LoraChange(block=2, strength=0.25)))
    assert all(torch.equal(model.state_dict()[k], loaded[k]) for k in loaded)  # the run put the loaded weights back
    ref = run(model, timeline(), hooks=RemergeAt(model, base, 2, 0.25))
    with torch.no_grad():
        for k, p in model.tree.named_parameters():
            p.copy_(loaded[k])
    assert (ours - ref).abs().max() < 1e-4
    assert (ours[:, :, 4:] - run(model, timeline())[:, :, 4:]).abs().max() > 1e-3


def test_lora_change_refused_where_the_lora_is_the_model(lora_model, t2v):
    model, _ = lora_model
    family = CausalSettings(**{**S.__dict__, "family": "LongLive 1.0"})
    with pytest.raises(ValueError, match=r"IS the distilled causal model.*strength must stay 1"):
        run(model, timeline(LoraChange(block=2, strength=0.5)), settings=family)
    with pytest.raises(ValueError, match=r"no LoRA merged by the pack.*lora_name"):
        run(t2v, timeline(LoraChange(block=2, strength=0.5)))


# --- errors before any block ------------------------------------------------------------------------------------------
def test_bad_changes_fail_before_any_block(t2v, i2v):
    count = Counter()
    with pytest.raises(ValueError, match=r"CLIP reference change needs a model with an image embedding.*start"):
        run(t2v, timeline(ImageChange(block=2, clip_fea=feats(1))), hooks=count)
    with pytest.raises(ValueError, match=r"latent is \[1, 16, 1, 8, 8\].*\[1, 16, 1, 4, 4\].*32x32"):
        run(t2v, timeline(ImageChange(block=2, latent=torch.zeros(1, 16, 1, 8, 8))), hooks=count)
    assert count.context == 0
    with pytest.raises(ValueError, match=r"1280-wide"):
        ImageChange(block=2, clip_fea=torch.zeros(1, 257, 1024)).check()
    with pytest.raises(ValueError, match=r"block 1 or later.*start image"):
        ImageChange(block=0, clip_fea=feats(1)).check()
    with pytest.raises(ValueError, match=r"one VAE-encoded frame"):
        ImageChange(block=1, latent=torch.zeros(1, 16, 3, 4, 4)).check()
    with pytest.raises(ValueError, match=r"blend moves the CLIP reference only"):
        ImageChange(block=1, latent=torch.zeros(1, 16, 1, 4, 4), blend_blocks=2).check()


# --- live, and replay from the sidecar --------------------------------------------------------------------------------
class Live(SamplerHooks):
    """Plays the user: during block ``at``, sends the requests (from another thread) and waits until they are ready."""

    def __init__(self, live, at, send):
        self.live, self.at, self.send, self.threads = live, at, send, []

    def on_step(self, block, step, total_steps):
        if block == self.at and step == 0:
            th = threading.Thread(target=self.send, args=(self.live,))
            th.start()
            th.join()
            self.live.wait_encoded()

    def on_block(self, result):
        self.live.mark_block_done(result.index)


def test_live_image_and_lora_apply_at_the_next_block_and_replay_exactly(lora_model, tmp_path):
    model, _ = lora_model
    t = timeline()
    t.live = LiveControl(encoder)
    threads = []

    def image_encoder(image, route):  # stands in for CLIP vision + VAE: the latent from the pixels
        threads.append(threading.current_thread().name)
        return None, image.permute(0, 3, 1, 2)[:, :1].repeat(1, 16, 1, 1)[:, :, None] * 2 - 1

    t.live.image_encoder = image_encoder
    picture = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(3))

    def send(live):
        live.request_image(picture, label="fox.png")
        live.request_lora(0.4)

    live_run = run(model, t, hooks=Live(t.live, 1, send))
    assert threads and threads[0].startswith("clipwan-live-encode")  # encoded off the sampling thread
    events = t.live.status()
    assert [(e["kind"], e["block"], e["state"]) for e in events] == [("image", 2, "applied"), ("lora", 2, "applied")]
    assert [c.block for c in t.controls.images] == [2] and t.controls.loras[0].strength == 0.4
    path = files.save(t, str(tmp_path / "run.timeline.json"), block_layout(FRAMES, 2))
    replay_t = load(path)
    assert replay_t.controls.images[0].label == "fox.png"
    assert torch.equal(run(model, replay_t), live_run)
    plain = run(model, timeline())
    assert torch.equal(plain[:, :, :4], live_run[:, :, :4])
    assert (plain[:, :, 4:] - live_run[:, :, 4:]).abs().max() > 1e-3
    t.live.close()


def test_live_changes_the_run_refuses_are_marked_failed_and_the_run_goes_on(t2v):
    t = timeline()
    t.live = LiveControl(encoder)

    def send(live):
        live.request_lora(0.5)  # the model has no merged LoRA

    out = run(t2v, t, hooks=Live(t.live, 0, send))
    [event] = t.live.status()
    assert event["state"] == "failed" and "no LoRA merged by the pack" in event["error"]
    assert torch.equal(out, run(t2v, timeline()))
    with pytest.raises(ValueError, match=r"reads no CLIP reference"):
        t.live.request_image(clip_fea=feats(1), route="clip")  # expect: the run's model is text-to-video
    t.live.close()


def test_bench_live_image_quick(tmp_path):
    """``bench live --image --quick`` runs: a ready image is applied at the very next block."""
    import argparse
    import json

    from comfyui_clipwan.benchmarks import bench_live

    parser = argparse.ArgumentParser()
    bench_live.add_arguments(parser)
    args = parser.parse_args(["--image", "--quick", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert bench_live.run(args) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["sent_ready"]["latency_blocks"] == [1, 1]
    # encoded live: when it lands depends on how busy the cores are (a CPU shares them with the sampler), but never
    # before the boundary after the request
    assert figures["encoded_live"]["requests"] == 2
    assert all(b >= 1 for b in figures["encoded_live"]["latency_blocks"])
    assert figures["image_kv_ms"] > 0 and figures["lora_change_ms"] > 0


def test_a_stopped_run_puts_the_loaded_lora_weights_back(lora_model):
    """Cancel (check_interrupt raising mid-run, as ComfyUI's Cancel does) after a strength change: the weights are the
    loaded ones again, bit for bit."""
    model, _ = lora_model
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {"blocks": 0}

    class Stop(SamplerHooks):
        def on_block(self, result):
            seen["blocks"] += 1

    def interrupt():
        if seen["blocks"] >= 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        sample_causal(model, torch.zeros(1, 16, FRAMES, H, W), None, seed=5, settings=S, hooks=Stop(),
                      timeline=timeline(LoraChange(block=1, strength=-0.7)), check_interrupt=interrupt)
    assert seen["blocks"] == 3
    assert all(torch.equal(model.state_dict()[k], loaded[k]) for k in loaded)


def test_matrix_game_image_change_rebuilds_its_image_only_context():
    """Matrix-Game 2.0 has no text: its whole cross-attention context is the CLIP image, so a change rebuilds it (from
    scratch in the reference) — the actions keep steering."""
    from test_matrix_game import tiny_model

    from comfyui_clipwan.wan.conditioning.actions import parse_timeline
    from comfyui_clipwan.wan.sampling.presets import get_preset
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    model = tiny_model("universal")
    a, b = feats(1), feats(2)
    kw = dict(settings=get_preset("Matrix-Game 2.0").causal_settings(), clip_fea=a, seed=1,
              concat=torch.zeros(1, 20, 6, 4, 4), actions=parse_timeline("0-: W"))
    t = parse_text("0: (no text)").encode(lambda text: torch.zeros(1, 4, model.config.text_dim))
    t.controls.insert(ImageChange(block=1, clip_fea=b))
    ours = sample_causal(model, torch.zeros(1, 16, 6, 4, 4), None, timeline=t, **kw)
    hooks = ScratchContext(model, None, {1: b})
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 6, 4, 4), torch.zeros(1, 4, model.config.text_dim),
                              hooks=hooks, **kw)
    hooks.loop = loop
    ref = torch.cat([r.x0 for r in loop], dim=2)
    assert (ours - ref).abs().max() < 1e-5
    plain = sample_causal(model, torch.zeros(1, 16, 6, 4, 4), torch.zeros(1, 4, model.config.text_dim), **kw)
    assert torch.equal(plain[:, :, :3], ours[:, :, :3]) and (plain[:, :, 3:] - ours[:, :, 3:]).abs().max() > 1e-3
