"""Released causal Wan checkpoints: every family's file layout (keys, prefixes, entries exactly as the authors
save them) through Load Causal Wan Model, LongLive's PEFT LoRA merged like PEFT merges it, the LoRA as
ComfyUI patches, and every preset run through the sampler node with a start image."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA, comfy_lora_patches
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler, LoadCausalWanModel, WanI2VConditioning
from comfyui_clipwan.wan import CausalWanModel, WanConfig
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.sampling.presets import PRESETS, get_preset, preset_names

TINY = WanConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, in_dim=16)
RANK = 256  # LongLive adapter.rank


def _weights(seed):
    return CausalWanModel.random(TINY, seed=seed).state_dict()


def _prefixed(sd, prefix):
    return {prefix + k: v.clone() for k, v in sd.items()}


def _fsdp(sd):
    """FSDP-wrapped generator keys as Causal Forcing / Rolling Forcing EMA copies carry them."""
    return {"model._fsdp_wrapped_module." + k: v.clone() for k, v in sd.items()}


# family -> (file name, builder(gen, ema, critic) -> object saved, entry the authors load, expected weights key)
LAYOUTS = {
    "Self-Forcing": ("self_forcing_dmd.pt", lambda g, e, c: {
        "generator": _prefixed(g, "model."), "critic": _prefixed(c, "model."), "generator_ema": _prefixed(e, "model.")},
        "ema"),
    "CausVid": ("model.pt", lambda g, e, c: {"generator": _prefixed(g, "model."), "critic": _prefixed(c, "model.")},
                "gen"),
    "CausVid i2v": ("model.pt", lambda g, e, c: {"model": _prefixed(g, "model.")}, "gen"),
    "LongLive 1.0": ("longlive_base.pt", lambda g, e, c: {"generator": _prefixed(g, "model.")}, "gen"),
    "Causal Forcing chunk-wise": ("causal_forcing.pt", lambda g, e, c: {
        "generator": _prefixed(g, "model."), "generator_ema": _fsdp(e), "critic": _prefixed(c, "model.")}, "gen"),
    "Causal Forcing frame-wise": ("causal_forcing.pt", lambda g, e, c: {
        "generator": _prefixed(g, "model."), "generator_ema": _fsdp(e), "critic": _prefixed(c, "model.")}, "ema"),
    "Causal Forcing++ frame-wise 2-step": ("framewise-2step.pt", lambda g, e, c: {
        "generator": _prefixed(g, "model."), "generator_ema": _fsdp(e), "critic": _prefixed(c, "model.")}, "ema"),
    "Rolling Forcing": ("rolling_forcing_dmd.pt", lambda g, e, c: {
        "generator": _prefixed(g, "model."), "generator_ema": _fsdp(e), "critic": _prefixed(c, "model.")}, "ema"),
    "Reward Forcing": ("rewardforcing.pt", lambda g, e, c: _prefixed(g, "model."), "gen"),
    "Krea Realtime 14B": ("krea-realtime-video-14b.safetensors", lambda g, e, c: _prefixed(g, "model."), "gen"),
    # MemFlow's inference.py: state_dict["generator"] (use_ema: false) into its WanDiffusionWrapper (model.<key>)
    "MemFlow": ("base.pt", lambda g, e, c: {"generator": _prefixed(g, "model.")}, "gen"),
}


def _write(path, obj):
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, str(path))
    return str(path)


@pytest.fixture(scope="module")
def sources():
    return {"gen": _weights(1), "ema": _weights(2), "critic": _weights(3)}


@pytest.mark.parametrize("family", list(LAYOUTS))
def test_every_released_layout_loads_the_authors_entry(family, sources, tmp_path):
    fname, build, want = LAYOUTS[family]
    path = _write(tmp_path / fname, build(sources["gen"], sources["ema"], sources["critic"]))
    # CausVid's i2v branch saves {model} (causal_inference_i2v loads state_dict["model"])
    entry = "model" if family == "CausVid i2v" else get_preset(family).checkpoint_entry
    (model,) = LoadCausalWanModel().load(path, "default", entry)
    got = model.state_dict()
    assert set(got) == set(sources[want])
    for k, v in sources[want].items():
        assert torch.equal(got[k], v), f"{family}: {k} differs from the {want} weights"


def test_auto_entry_prefers_ema_and_never_the_critic(sources, tmp_path):
    path = _write(tmp_path / "sf.pt", LAYOUTS["Self-Forcing"][1](sources["gen"], sources["ema"], sources["critic"]))
    (model,) = LoadCausalWanModel().load(path, "default", "auto")
    assert torch.equal(model.state_dict()["head.modulation"], sources["ema"]["head.modulation"])
    path = _write(tmp_path / "cv.pt", LAYOUTS["CausVid"][1](sources["gen"], sources["ema"], sources["critic"]))
    (model,) = LoadCausalWanModel().load(path, "default", "auto")
    assert torch.equal(model.state_dict()["head.modulation"], sources["gen"]["head.modulation"])


# --- LongLive's LoRA ------------------------------------------------------------------------------------------
def _lora_targets(tree):
    """LongLive's rule (utils/lora_utils.py): every nn.Linear inside the causal attention blocks."""
    return sorted(name for name, m in tree.named_modules()
                  if isinstance(m, torch.nn.Linear) and name.startswith("blocks."))


def _random_lora(base_sd, targets, seed):
    """A LoRA in PEFT's saved names (base_model.model.<module>.lora_A/B.weight), nonzero B."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in targets:
        w = base_sd[t + ".weight"]
        out[f"base_model.model.{t}.lora_A.weight"] = torch.randn(RANK, w.shape[1], generator=g) * 0.05
        out[f"base_model.model.{t}.lora_B.weight"] = torch.randn(w.shape[0], RANK, generator=g) * 0.05
    return out


@pytest.fixture(scope="module")
def longlive(tmp_path_factory, sources):
    folder = tmp_path_factory.mktemp("longlive")
    base = _write(folder / "longlive_base.pt", {"generator": _prefixed(sources["gen"], "model.")})
    tree = CausalWanModel.random(TINY, seed=1).tree
    targets = _lora_targets(tree)
    lora = _random_lora(sources["gen"], targets, seed=9)
    critic = _random_lora(sources["critic"], targets[:2], seed=10)
    path = _write(folder / "lora.pt", {"generator_lora": lora, "critic_lora": critic, "step": 3000})
    return {"base": base, "lora": path, "lora_sd": lora, "targets": targets}


def test_longlive_targets_are_every_block_linear(longlive):
    per_block = sorted({t.split(".", 2)[2] for t in longlive["targets"]})
    assert per_block == ["cross_attn.k", "cross_attn.o", "cross_attn.q", "cross_attn.v", "ffn.0", "ffn.2",
                         "self_attn.k", "self_attn.o", "self_attn.q", "self_attn.v"]


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_longlive_lora_merge_equals_peft(longlive, strength, sources):
    peft = pytest.importorskip("peft")
    tree = copy.deepcopy(CausalWanModel.random(TINY, seed=1).tree)
    tree.load_state_dict(sources["gen"])
    # LongLive: LoraConfig(r=rank, lora_alpha=alpha (= rank), target_modules=<every block Linear>);
    # strength s is the same as alpha = s·rank
    wrapped = peft.get_peft_model(tree, peft.LoraConfig(r=RANK, lora_alpha=RANK * strength,
                                                        target_modules=longlive["targets"]))
    result = peft.set_peft_model_state_dict(wrapped, longlive["lora_sd"])
    assert not result.unexpected_keys
    saved = peft.get_peft_model_state_dict(wrapped)
    assert set(saved) == set(longlive["lora_sd"])  # our synthetic file uses PEFT's own key names
    oracle = wrapped.merge_and_unload().state_dict()

    (model,) = LoadCausalWanModel().load(longlive["base"], "fp32", "generator", lora_name=longlive["lora"],
                                         lora_strength=strength)
    ours = model.state_dict()
    assert set(ours) == set(oracle)
    worst = max((ours[k] - oracle[k]).abs().max().item() for k in oracle)
    assert worst < 1e-6
    changed = (ours["blocks.1.ffn.2.weight"] - sources["gen"]["blocks.1.ffn.2.weight"]).abs().max().item()
    assert changed > 1e-3
    assert model.source == f"longlive_base.pt [generator] + LoRA lora.pt x{strength:g}"


def test_longlive_lora_merge_equals_written_out_formula(longlive, sources):
    """Without peft: W + (alpha/rank)·B@A with alpha = rank, for every target."""
    (model,) = LoadCausalWanModel().load(longlive["base"], "fp32", "generator", lora_name=longlive["lora"])
    ours = model.state_dict()
    sd = longlive["lora_sd"]
    for t in longlive["targets"]:
        a, b = sd[f"base_model.model.{t}.lora_A.weight"], sd[f"base_model.model.{t}.lora_B.weight"]
        want = sources["gen"][t + ".weight"] + b @ a
        torch.testing.assert_close(ours[t + ".weight"], want, atol=1e-6, rtol=0)
    assert torch.equal(ours["blocks.0.modulation"], sources["gen"]["blocks.0.modulation"])  # not a Linear


def test_lora_file_as_model_and_mismatched_lora_are_refused(longlive, tmp_path):
    with pytest.raises(ValueError) as e:
        LoadCausalWanModel().load(longlive["lora"], "default", "auto")
    assert str(e.value) == (
        "lora.pt is a LoRA adapter (LongLive's lora.pt: {generator_lora, critic_lora, step}), not a model. Load "
        "the base weights (longlive_base.pt) as the model and pick this file as lora_name (Load Causal Wan "
        "Model) or in Apply Causal Wan LoRA (ClipWan).")
    bad = dict(longlive["lora_sd"])
    bad["base_model.model.blocks.0.ffn.0.lora_A.weight"] = torch.zeros(RANK, 999)
    path = _write(tmp_path / "wrong.pt", {"generator_lora": bad})
    with pytest.raises(ValueError) as e:
        LoadCausalWanModel().load(longlive["base"], "default", "generator", lora_name=path)
    assert str(e.value) == ("wrong.pt: 'blocks.0.ffn.0.weight' is [64, 128] in the model but the LoRA gives "
                            "[64, 999]; the LoRA was trained on a different Wan size.")
    missing_b = {k: v for k, v in longlive["lora_sd"].items() if k != "base_model.model.blocks.0.ffn.2.lora_B.weight"}
    path = _write(tmp_path / "half.pt", {"generator_lora": missing_b})
    with pytest.raises(ValueError) as e:
        LoadCausalWanModel().load(longlive["base"], "default", "generator", lora_name=path)
    assert str(e.value) == ("half.pt: module 'base_model.model.blocks.0.ffn.2' has no lora_B (up) weight; the "
                            "LoRA file is incomplete.")


def test_comfy_patches_map_keys_and_give_the_merge_delta(longlive, sources):
    patches = comfy_lora_patches(longlive["lora_sd"])
    assert sorted(patches) == sorted("diffusion_model." + t + ".weight" for t in longlive["targets"])
    up, down, alpha = patches["diffusion_model.blocks.1.cross_attn.v.weight"]
    assert alpha == RANK  # ComfyUI scales by alpha / rank: 1, LongLive's alpha = rank
    (merged,) = LoadCausalWanModel().load(longlive["base"], "fp32", "generator", lora_name=longlive["lora"],
                                          lora_strength=0.7)
    key = "blocks.1.cross_attn.v.weight"
    # ComfyUI's LoRA patch: weight += strength * (alpha / rank) * up @ down
    comfy = sources["gen"][key] + 0.7 * (alpha / down.shape[0]) * (up @ down)
    torch.testing.assert_close(merged.state_dict()[key], comfy, atol=1e-6, rtol=0)
    assert bridge.lora_weight_patch(up, down, alpha)[0] == "lora"  # outside ComfyUI: the plain tuple


def test_apply_lora_node_refuses_a_model_without_the_targets(longlive):
    class Patcher:  # the two ModelPatcher methods the node calls; add_patches keeps only keys it has
        def clone(self):
            return self

        def add_patches(self, patches, strength):
            return [k for k in patches if "blocks.0." in k]

    with pytest.raises(ValueError) as e:
        ApplyCausalWanLoRA().apply(Patcher(), longlive["lora"], 1.0)
    assert str(e.value).startswith("lora.pt adapts 10 weight(s) the MODEL does not have, e.g. "
                                   "['diffusion_model.blocks.1.cross_attn.k.weight'")


# --- presets through the node, with a start image ---------------------------------------------------------------
class PixelVAE:
    """Deterministic stand-in for the Wan VAE encoder: [F,H,W,3] -> [1,16,(F-1)//4+1,H/8,W/8]."""

    def encode(self, pixels):
        x = F.avg_pool3d(pixels.movedim(-1, 0)[:, ::4].unsqueeze(0), (1, 8, 8))[0]
        return torch.cat([x * (i + 1) for i in range(6)], 0)[:16].unsqueeze(0) - 0.3


def _checkpoint(preset, sources, longlive, tmp_path):
    """(model file, LoRA) of a preset in its authors' layout; a row without a LAYOUTS entry (added later) gets
    the layout its checkpoint entry implies."""
    if preset.lora_file:
        return longlive["base"], longlive["lora"]
    if preset.base.startswith("Wan2.2"):
        from test_wan22 import _tiny_ti2v_file

        return _tiny_ti2v_file(tmp_path), "none"
    fname, build, _ = LAYOUTS.get(preset.name, (preset.model_file, LAYOUTS["Self-Forcing"][1], None))
    if fname.endswith(".safetensors"):
        build = LAYOUTS["Krea Realtime 14B"][1]
    return _write(tmp_path / fname, build(sources["gen"], sources["ema"], sources["critic"])), "none"


def _template_default_length(preset) -> int:
    """The length the i2v template's conditioning node starts with: Wan I2V Conditioning / core WanImageToVideo
    (81) for Wan 2.1, core Wan22ImageToVideoLatent (49, recorded from a real ComfyUI) for Wan 2.2."""
    if preset.base.startswith("Wan2.2"):
        import workflow_format as wf

        return wf.core_definitions()["Wan22ImageToVideoLatent"]["input"]["required"]["length"][1]["default"]
    return WanI2VConditioning.INPUT_TYPES()["required"]["length"][1]["default"]


def _start_image_latent(preset, length, seed=0):
    """(LATENT, positive, the start image's raw latent frame) as the template's conditioning node makes them."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, 8, 4096, generator=g)
    if preset.base.startswith("Wan2.2"):
        from test_wan22 import FakeWan22VAE

        from comfyui_clipwan.wan.conditioning.image import ti2v_latents

        samples, mask = ti2v_latents(32, 32, length, 1, torch.rand(1, 32, 32, 3, generator=g), FakeWan22VAE().encode)
        return {"samples": samples, "noise_mask": mask}, [[text, {}]], samples[:, :, :1]
    image = torch.rand(1, 16, 16, 3, generator=g)
    pos, _, latent = WanI2VConditioning().encode([[text, {}]], [[text, {}]], PixelVAE(), 16, 16, length, 1, None,
                                                 image)
    return latent, pos, pos[0][1]["concat_latent_image"][:, :, :1]


@pytest.mark.parametrize("length", ["template default", "recommended"])
@pytest.mark.parametrize("name", [n for n in preset_names() if get_preset(n).image_route != "clip"])
def test_each_preset_runs_with_a_start_image(name, length, sources, longlive, tmp_path, caplog):
    """Every first-frame row of the table (rows added later included; the Matrix-Game 2.0 rows, CLIP route, run in
    tests/test_matrix_game.py), as the web menu / family combo sets it, samples a
    start image through the node on the template's default length (which need not be whole blocks: a shorter
    last block, said in the log) and on the preset's recommended length (whole blocks, nothing said)."""
    preset = get_preset(name)
    base, lora = _checkpoint(preset, sources, longlive, tmp_path)
    (model,) = LoadCausalWanModel().load(base, "fp32", preset.checkpoint_entry, lora_name=lora)
    frames = _template_default_length(preset) if length == "template default" else preset.recommended_length
    latent_frames = (frames - 1) // 4 + 1
    latent, pos, image_latent = _start_image_latent(preset, frames)
    with caplog.at_level("WARNING", logger="comfyui_clipwan"):
        (out,) = CausalWanSampler().sample(model, pos, latent, seed=1, **preset.sampler_values())
    z = out["samples"]
    assert z.shape[2] == latent_frames and torch.isfinite(z).all()
    # the first latent frame is the start image's (first-frame latent, cached or clamped, copied to the output)
    torch.testing.assert_close(z[:, :, :1], image_latent, atol=1e-5, rtol=0)
    assert (z[:, :, 1:] - latent["samples"][:, :, 1:]).abs().mean() > 0.05
    first = 1 if preset.independent_first_frame else 0
    left = (latent_frames - first) % preset.frames_per_block
    notes = [r.getMessage() for r in caplog.records]
    assert not [m for m in notes if "differ from the family's values" in m]  # the widgets are the family's
    if left:
        assert length == "template default"
        assert [m for m in notes if "the last block has" in m] == [
            f"Causal Wan Sampler: video length {frames} = {latent_frames} latent frames is not a whole number of "
            f"blocks of {preset.frames_per_block}{' after the independent first frame' if first else ''}, so the "
            f"last block has {left} frame(s) instead of {preset.frames_per_block} (the authors' loop runs whole "
            f"blocks only); lengths that fit exactly: " + " or ".join(
                f"{4 * (f - 1) + 1} ({f} latent frames)" for f in
                (latent_frames - left, latent_frames - left + preset.frames_per_block) if f > first) + "."]
    else:
        assert not [m for m in notes if "the last block has" in m]


def test_i2v_template_default_length_is_not_whole_blocks_of_3():
    """Why the shorter last block exists: 81 frames = 21 latent frames; after the image's own frame 20 are left,
    not a multiple of 3 (Self-Forcing, LongLive, Causal Forcing chunk-wise, Reward Forcing, Krea ...)."""
    assert _template_default_length(get_preset("Self-Forcing")) == 81
    assert (21 - 1) % 3 == 2 and (22 - 1) % 3 == 0 and get_preset("Self-Forcing").recommended_length == 85


@pytest.mark.parametrize("name", [p.name for p in PRESETS if p.rules])
def test_family_loop_rules_reach_the_node(name, sources, longlive, tmp_path):
    """``family`` adds the row's loop rules to the widgets: the node's run equals the Python API run with the
    widgets' settings plus those rules spelled out, and differs from the same widgets without them."""
    from comfyui_clipwan.wan import CausalSettings, denormalize, normalize, sample_causal

    preset = get_preset(name)
    base, lora = _checkpoint(preset, sources, longlive, tmp_path)
    (model,) = LoadCausalWanModel().load(base, "fp32", preset.checkpoint_entry, lora_name=lora)
    latent, pos, image_latent = _start_image_latent(preset, preset.recommended_length, seed=2)
    values = preset.sampler_values()
    (with_rules,) = CausalWanSampler().sample(model, pos, latent, seed=3, **values)
    (custom,) = CausalWanSampler().sample(model, pos, latent, seed=3, **{**values, "family": "custom"})
    settings = CausalSettings(steps=preset.steps, shift=preset.shift, warp=preset.warp_steps,
                              frames_per_block=preset.frames_per_block, sink_size=preset.sink_size,
                              local_window=preset.local_window, independent_first_frame=preset.independent_first_frame,
                              guidance_scale=preset.guidance_scale, **dict(preset.rules))
    want = sample_causal(model, torch.zeros_like(latent["samples"]), pos[0][0], seed=3, settings=settings,
                         first_frames=normalize(image_latent))
    torch.testing.assert_close(with_rules["samples"], denormalize(want), atol=1e-5, rtol=0)
    assert (with_rules["samples"] - custom["samples"]).abs().max() > 1e-3


def test_family_with_other_widget_values_runs_the_widgets_and_says_so(sources, tmp_path, caplog):
    """Widgets are never overridden by the family: a run with family Reward Forcing and shift 3 / sink 2 runs
    shift 3 / sink 2 with Reward Forcing's loop rules, and one log line names the differences."""
    from comfyui_clipwan.wan import CausalSettings, denormalize, normalize, sample_causal

    preset = get_preset("Reward Forcing")
    base, lora = _checkpoint(preset, sources, None, tmp_path)
    (model,) = LoadCausalWanModel().load(base, "fp32", preset.checkpoint_entry)
    latent, pos, image_latent = _start_image_latent(preset, 37, seed=4)
    values = {**preset.sampler_values(), "shift": 3.0, "sink_size": 2, "steps": "1000, 750, 500, 250"}
    with caplog.at_level("WARNING", logger="comfyui_clipwan"):
        (out,) = CausalWanSampler().sample(model, pos, latent, seed=5, **values)
    assert [r.getMessage() for r in caplog.records] == [
        "Causal Wan Sampler: family Reward Forcing with the widgets as set, which differ from the family's values: "
        "shift 3.0 (family: 5.0); sink_size 2 (family: 3)"]
    settings = CausalSettings(steps=preset.steps, shift=3.0, frames_per_block=3, sink_size=2, local_window=9,
                              independent_first_frame=True, positions="slots", sink_ema=0.999)
    want = sample_causal(model, torch.zeros_like(latent["samples"]), pos[0][0], seed=5, settings=settings,
                         first_frames=normalize(image_latent))
    torch.testing.assert_close(out["samples"], denormalize(want), atol=1e-5, rtol=0)


def test_family_combo_is_the_last_input_and_lists_every_preset():
    """Appended after every earlier input, so workflows saved before it keep their widgets_values (the value
    it lacks is the default, "custom": the widgets alone, as before)."""
    # the stream node's own inputs added after it, in a later version, come after it for the same reason
    multi_shot = ["multi_shot_sink", "multi_shot_rope_offset", "scene_cut_prefix"]  # both nodes, layout 6
    later = {CausalWanSampler: multi_shot,
             CausalWanStreamVideo: ["score_every_n_frames", "score_prompts", "until_stopped"] + multi_shot
             + ["live_encode_priority", "score_budget_percent"]}
    for node in (CausalWanSampler, CausalWanStreamVideo):
        spec = node.INPUT_TYPES()
        names = list(spec["optional"])
        assert names[names.index("family") + 1:] == later[node]
        choices, opts = spec["optional"]["family"]
        assert choices == ["custom"] + preset_names() and opts["default"] == "custom"


def test_presets_name_the_real_files_and_routes():
    table = {p.name: (p.model_file, p.lora_file, p.checkpoint_entry, p.image_route) for p in PRESETS}
    assert table["LongLive 1.0"] == ("longlive_base.pt", "longlive_lora.pt", "generator", "first_frame")
    assert table["Self-Forcing"] == ("self_forcing_dmd.pt", "", "generator_ema", "first_frame")
    assert table["Krea Realtime 14B"][0] == "krea-realtime-video-14b.safetensors"
    assert all(p.image_route == "first_frame" and p.independent_first_frame for p in PRESETS
               if p.base.startswith("Wan2.1"))
    # LongLive 2.0 clamps the image into its first block of 8 instead of a 1-frame block
    ll2 = get_preset("LongLive 2.0")
    assert (ll2.model_file, ll2.checkpoint_entry, ll2.independent_first_frame) == ("longlive2_model_bf16.pt", "generator", False)
    assert (ll2.frames_per_block, ll2.sink_size, ll2.local_window, ll2.latent_frames) == (8, 8, 32, 16)
    with pytest.raises(ValueError) as e:
        get_preset("LongLive")
    assert str(e.value).startswith("unknown preset 'LongLive'; choose one of: Self-Forcing, CausVid, LongLive 1.0")
    assert dit is not None


def test_docs_model_table_is_the_preset_table():
    from pathlib import Path

    from comfyui_clipwan.wan.sampling.presets import markdown_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "wan.md").read_text()
    assert markdown_table() in docs


def test_cli_longlive_as_shipped_with_preset(longlive, tmp_path, capsys):
    """The docs' CLI line at tiny size: base + lora.pt merged, LongLive's preset, the image as frame 0."""
    from comfyui_clipwan.cli import main

    image_latent = torch.randn(1, 16, 1, 2, 2)
    save_file({"latent": image_latent}, str(tmp_path / "start_latent.safetensors"))
    out = tmp_path / "longlive_out"
    rc = main(["sample", "--model", longlive["base"], "--lora", longlive["lora"], "--preset", "LongLive 1.0",
               "--image-latent", str(tmp_path / "start_latent.safetensors"), "--length", "85", "--width", "16",
               "--height", "16", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "longlive_base.pt [generator] + LoRA lora.pt x1" in printed
    summary = json.loads((out / "wan_summary.json").read_text())
    assert summary["blocks"] == 1 + 7 and summary["latent_shape"] == [1, 16, 22, 2, 2]
    assert main(["sample", "--lora", longlive["lora"], "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --lora is merged into --model: give the base weights with --model (for LongLive: longlive_base.pt).")


@pytest.mark.parametrize("name", [p.name for p in PRESETS if p.rules and p.base.startswith("Wan2.1")])
def test_cli_preset_runs_the_family_loop_rules(name, sources, longlive, tmp_path):
    """``sample --preset`` runs the row's loop rules too: its latent equals the Python API run with the preset's
    values and rules spelled out (same model, image latent as frame 0, zero text)."""
    from safetensors.torch import load_file

    from comfyui_clipwan.cli import main
    from comfyui_clipwan.wan import CausalSettings, normalize, sample_causal

    preset = get_preset(name)
    base, lora = _checkpoint(preset, sources, longlive, tmp_path)
    image_latent = torch.randn(1, 16, 1, 2, 2, generator=torch.Generator().manual_seed(6))
    save_file({"latent": image_latent}, str(tmp_path / "start.safetensors"))
    args = ["sample", "--model", base, "--preset", name, "--image-latent", str(tmp_path / "start.safetensors"),
            "--length", str(preset.recommended_length), "--width", "16", "--height", "16", "--seed", "4",
            "--out", str(tmp_path / "out")]
    assert main(args + (["--lora", lora] if lora != "none" else [])) == 0
    got = load_file(str(tmp_path / "out" / "wan_latent.safetensors"))["latent_tensor"]
    (model,) = LoadCausalWanModel().load(base, "fp32", preset.checkpoint_entry, lora_name=lora)
    settings = CausalSettings(steps=preset.steps, shift=preset.shift, warp=preset.warp_steps,
                              frames_per_block=preset.frames_per_block, sink_size=preset.sink_size,
                              local_window=preset.local_window, independent_first_frame=preset.independent_first_frame,
                              **dict(preset.rules))
    want = sample_causal(model, torch.zeros(1, 16, preset.latent_frames, 2, 2), torch.zeros(1, 512, 4096), seed=4,
                         settings=settings, first_frames=normalize(image_latent))
    from comfyui_clipwan.wan import denormalize

    torch.testing.assert_close(got, denormalize(want), atol=1e-5, rtol=0)


def test_longlive_lora_at_real_1_3b_size_on_meta():
    """LongLive 1.3B: 30 blocks x 10 Linear layers adapted at rank 256 (its config) — names and shapes line up
    with the real model (meta tensors, nothing allocated)."""
    from comfyui_clipwan.wan.model.config import preset
    from comfyui_clipwan.wan.model.lora import merge_lora

    with torch.device("meta"):
        tree = dit.WanDiT(preset("1.3B"))
        base = tree.state_dict()
        targets = _lora_targets(tree)
        lora = {}
        for t in targets:
            out_f, in_f = base[t + ".weight"].shape
            lora[f"base_model.model.{t}.lora_A.weight"] = torch.empty(256, in_f)
            lora[f"base_model.model.{t}.lora_B.weight"] = torch.empty(out_f, 256)
    assert len(targets) == 300
    merged = merge_lora(base, lora)
    assert merged["blocks.29.ffn.0.weight"].shape == (8960, 1536)
    assert merged["blocks.0.self_attn.q.weight"].shape == (1536, 1536)
