"""Wan2.1-VACE: weights detected in Wan's, ComfyUI's and Scope's layouts (and a VACE module applied onto a causal
base), the hint path against an independent bidirectional VACE forward written here from Wan2.1's definition
(``wan/modules/vace_model.py``), causality of the per-block hints in the loop, and strength 0 = the plain run.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, config_from_shapes, preset, sample_causal
from comfyui_clipwan.wan.conditioning.control import VaceControl, vace_from_conditioning
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.model.vace import VaceStep
from comfyui_clipwan.wan.sampling.loop import SeededNoise
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule, renoise, x0_from_flow
from comfyui_clipwan.wan.vae.latent import denormalize, normalize

from test_wan_model import ref_attn, ref_rope, ref_rope_freqs

# 4 main blocks, 2 VACE blocks -> hints after main blocks 0 and 2 (every num_layers // count-th)
BASE = WanConfig(dim=128, ffn_dim=160, num_heads=1, num_layers=4, in_dim=16)
VACE = dataclasses.replace(BASE, vace_layers=(0, 2), vace_in_dim=96)


@pytest.fixture(scope="module")
def model():
    return CausalWanModel.random(VACE, seed=3)


# ------------------------------------------------------------------------------------------------
# independent reference: Wan2.1's VaceWanModel.forward written out over the raw state dict


def _ref_block(sd, p, cfg, tok, e0, ctx, grid, freqs):
    lin = lambda z, n: F.linear(z, sd[n + ".weight"], sd[n + ".bias"])
    rms = lambda z, n: z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * sd[n + ".weight"]
    ln = lambda z: F.layer_norm(z, z.shape[-1:], eps=1e-6)
    B, f = tok.shape[0], grid[0]
    H, D = cfg.num_heads, cfg.dim
    split = lambda z: z.view(B, z.shape[1], H, -1)
    per_tok = lambda m: m.repeat_interleave(grid[1] * grid[2], dim=1)
    m = sd[p + "modulation"] + e0
    sh1, sc1, g1, sh2, sc2, g2 = (per_tok(m[:, :, j]) for j in range(6))
    z = ln(tok) * (1 + sc1) + sh1
    q = ref_rope(split(rms(lin(z, p + "self_attn.q"), p + "self_attn.norm_q")), grid, freqs)
    k = ref_rope(split(rms(lin(z, p + "self_attn.k"), p + "self_attn.norm_k")), grid, freqs)
    tok = tok + lin(ref_attn(q, k, split(lin(z, p + "self_attn.v"))), p + "self_attn.o") * g1
    z = F.layer_norm(tok, (D,), sd[p + "norm3.weight"], sd[p + "norm3.bias"], 1e-6)
    q = split(rms(lin(z, p + "cross_attn.q"), p + "cross_attn.norm_q"))
    out = ref_attn(q, split(rms(lin(ctx, p + "cross_attn.k"), p + "cross_attn.norm_k")),
                   split(lin(ctx, p + "cross_attn.v")))
    tok = tok + lin(out, p + "cross_attn.o")
    z = ln(tok) * (1 + sc2) + sh2
    return tok + lin(F.gelu(lin(z, p + "ffn.0"), approximate="tanh"), p + "ffn.2") * g2


def ref_vace_forward(sd, cfg, x, t, text, vace_context, scale, vace_layers):
    """Wan2.1 VaceWanModel.forward: hints from the VACE blocks (block 0 starts from before_proj(c) + x), each
    added x scale after the main block it maps to; context and latent have the same frames."""
    lin = lambda z, n: F.linear(z, sd[n + ".weight"], sd[n + ".bias"])
    xt = F.conv3d(x, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2))
    B, D, f, h, w = xt.shape
    tok = xt.flatten(2).transpose(1, 2)
    c = F.conv3d(vace_context, sd["vace_patch_embedding.weight"], sd["vace_patch_embedding.bias"],
                 stride=(1, 2, 2)).flatten(2).transpose(1, 2)
    half = cfg.freq_dim // 2
    arg = t.double().view(B, 1, 1).expand(B, f, 1) * torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half)
    sinus = torch.cat([arg.cos(), arg.sin()], -1).float()
    e = lin(F.silu(lin(sinus, "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").view(B, f, 6, D)
    ctx = lin(F.gelu(lin(F.pad(text, (0, 0, 0, 512 - text.shape[1])), "text_embedding.0"), approximate="tanh"),
              "text_embedding.2")
    freqs = ref_rope_freqs(D // cfg.num_heads)
    hints = []
    for n in range(len(vace_layers)):
        p = f"vace_blocks.{n}."
        if n == 0:
            c = lin(c, p + "before_proj") + tok
        c = _ref_block(sd, p, cfg, c, e0, ctx, (f, h, w), freqs)
        hints.append(lin(c, p + "after_proj"))
    for i in range(cfg.num_layers):
        tok = _ref_block(sd, f"blocks.{i}.", cfg, tok, e0, ctx, (f, h, w), freqs)
        if i in vace_layers:
            tok = tok + hints[vace_layers.index(i)] * scale
    hm = sd["head.modulation"].unsqueeze(0) + e.unsqueeze(2)
    per_tok = lambda m: m.repeat_interleave(h * w, dim=1)
    z = F.layer_norm(tok, (D,), eps=1e-6) * (1 + per_tok(hm[:, :, 1])) + per_tok(hm[:, :, 0])
    z = lin(z, "head.head").view(B, f, h, w, 1, 2, 2, cfg.out_dim)
    return torch.einsum("bfhwpqrc->bcfphqwr", z).reshape(B, cfg.out_dim, f, h * 2, w * 2)


def _inputs(frames=3, seed=0, h=4, w=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, frames, h, w, generator=g)
    context = torch.randn(1, 96, frames, h, w, generator=g)
    text = torch.randn(1, 5, 4096, generator=g)
    return x, context, text


# ------------------------------------------------------------------------------------------------
# the forward


def test_bidirectional_vace_forward_matches_wan21_definition(model):
    x, context, text = _inputs()
    t = torch.tensor([640.0])
    ours = model.forward(x, t, text, vace=VaceStep([(context, 0.7)]))
    ref = ref_vace_forward(model.state_dict(), VACE, x, t, text, context, 0.7, [0, 2])
    plain = model.forward(x, t, text)
    assert (ref - plain).abs().mean() > 1e-3  # the hints change the output: the comparison tests them
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_several_contexts_add_their_hints_like_comfyui(model):
    x, c1, text = _inputs(seed=1)
    c2 = torch.randn_like(c1)
    t = torch.tensor([500.0])
    both = model.forward(x, t, text, vace=VaceStep([(c1, 0.5), (c2, 1.5)]))
    sd = model.state_dict()
    # the two hint sets add: reference with each context alone, combined through the hint differences
    r1 = ref_vace_forward(sd, VACE, x, t, text, c1, 0.5, [0, 2])
    assert (both - r1).abs().max() > 1e-3
    single = model.forward(x, t, text, vace=VaceStep([(c1, 0.5)]))
    torch.testing.assert_close(single, r1, atol=2e-5, rtol=1e-4)


def test_strength_zero_and_context_rule(model):
    x, context, text = _inputs()
    t = torch.tensor([300.0])
    plain = model.forward(x, t, text)
    torch.testing.assert_close(model.forward(x, t, text, vace=VaceStep([(context, 0.0)])), plain, atol=0, rtol=0)
    # Scope's token rule: a context with one reference frame in front is cut to the latent's frames
    ref_frame = torch.randn(1, 96, 1, 4, 6)
    cut = model.forward(x, t, text, vace=VaceStep([(torch.cat([ref_frame, context], 2), 1.0)]))
    same = model.forward(x, t, text, vace=VaceStep([(torch.cat([ref_frame, context[:, :, :2]], 2), 1.0)]))
    torch.testing.assert_close(cut, same, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------
# the loop


def _settings(**kw):
    return CausalSettings(steps="1000,750,500", frames_per_block=3, **kw)


def test_one_block_run_equals_bidirectional_steps(model):
    """A one-block causal run with VACE = the few-step rule applied by hand with the bidirectional VACE forward."""
    _, control, text = _inputs(seed=4)
    latent = torch.zeros(1, 16, 3, 4, 6)
    got = sample_causal(model, latent, text, seed=5, settings=_settings(),
                        vace=VaceControl(control=control, strength=0.8))
    sched = denoising_schedule("1000,750,500", 5.0, True)
    noise = SeededNoise(5)
    x = noise.initial(tuple(latent.shape), "cpu")
    for j, (sigma, t) in enumerate(zip(sched.sigmas, sched.timesteps)):
        flow = ref_vace_forward(model.state_dict(), VACE, x, torch.tensor([float(t)]), text, control, 0.8, [0, 2])
        x0 = x0_from_flow(x, flow, sigma)
        x = x0 if j + 1 == len(sched.sigmas) else renoise(x0, noise.step(0, j + 1, tuple(x0.shape), "cpu"),
                                                           sched.sigmas[j + 1])
    torch.testing.assert_close(got, x, atol=5e-5, rtol=1e-4)


def test_hints_are_per_block_and_causal(model):
    _, control, text = _inputs(frames=6, seed=6)
    latent = torch.zeros(1, 16, 6, 4, 6)
    run = lambda c, s=1.0: sample_causal(model, latent, text, seed=1, settings=_settings(),
                                         vace=VaceControl(control=c, strength=s))
    base = run(control)
    later = control.clone()
    later[:, :, 3:] = torch.randn_like(later[:, :, 3:])
    changed = run(later)
    torch.testing.assert_close(changed[:, :, :3], base[:, :, :3], atol=0, rtol=0)  # block 0 never sees block 1's
    assert (changed[:, :, 3:] - base[:, :, 3:]).abs().max() > 1e-3
    plain = sample_causal(model, latent, text, seed=1, settings=_settings())
    torch.testing.assert_close(run(control, 0.0), plain, atol=0, rtol=0)
    assert (base - plain).abs().max() > 1e-3


def test_reference_frames_stay_in_the_conditioning(model):
    _, control, text = _inputs(frames=6, seed=7)
    ref = torch.randn(1, 96, 1, 4, 6)
    latent = torch.zeros(1, 16, 6, 4, 6)
    out = sample_causal(model, latent, text, seed=2, settings=_settings(),
                        vace=VaceControl(control=control, reference=ref))
    assert out.shape == latent.shape  # no reference frame in the denoised latent
    # each block's context is [reference | the block's control frames] (Scope's rule)
    c = VaceControl(control=control, reference=ref)
    torch.testing.assert_close(c.block(3, 3), torch.cat([ref, control[:, :, 3:6]], 2))


def test_loop_refusals(model):
    _, control, text = _inputs(frames=3)
    latent = torch.zeros(1, 16, 3, 4, 6)
    plain = CausalWanModel.random(BASE, seed=0)
    with pytest.raises(ValueError, match="no VACE weights"):
        sample_causal(plain, latent, text, settings=_settings(), vace=VaceControl(control=control))
    with pytest.raises(ValueError, match="rolling"):
        sample_causal(model, latent, text, settings=_settings(loop="rolling"), vace=VaceControl(control=control))
    with pytest.raises(ValueError, match="covers 2 latent frames"):
        sample_causal(model, latent, text, settings=_settings(), vace=VaceControl(control=control[:, :, :2]))
    with pytest.raises(ValueError, match=r"\[1, 96, frames, 4, 6\]"):
        sample_causal(model, latent, text, settings=_settings(), vace=VaceControl(control=control[:, :80]))


# ------------------------------------------------------------------------------------------------
# weights


def _shapes(cfg):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in dit.WanDiT(cfg).state_dict().items()}


@pytest.mark.parametrize("size,count,layers", [("1.3B", 15, tuple(range(0, 30, 2))),
                                               ("14B", 8, (0, 5, 10, 15, 20, 25, 30, 35))])
def test_real_sizes_detected_on_meta(size, count, layers):
    cfg = dataclasses.replace(preset(size), vace_layers=layers, vace_in_dim=96)
    shapes = _shapes(cfg)
    assert shapes["vace_patch_embedding.weight"] == (cfg.dim, 96, 1, 2, 2)
    assert "vace_blocks.0.before_proj.weight" in shapes and "vace_blocks.1.before_proj.weight" not in shapes
    assert sum(k.endswith("after_proj.weight") for k in shapes) == count
    got = config_from_shapes(shapes)
    assert got.vace_layers == layers and got.vace_in_dim == 96 and got.model_type == "vace"


def test_layouts_wan_comfy_and_module_onto_causal_base(tmp_path, model):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    x, context, text = _inputs()
    t = torch.tensor([700.0])
    want = model.forward(x, t, text, vace=VaceStep([(context, 1.0)]))
    # Wan's layout (diffusion_pytorch_model.safetensors: bare names) and ComfyUI's checkpoint prefix
    save_file(sd, tmp_path / "wan.safetensors")
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, tmp_path / "comfy.safetensors")
    # Scope: a Self-Forcing-style base .pt + Kijai's VACE module file (vace_* keys only)
    base = {k: v for k, v in sd.items() if not k.startswith("vace_")}
    torch.save({"generator_ema": {"model." + k: v for k, v in base.items()}}, tmp_path / "base.pt")
    save_file({k: v for k, v in sd.items() if k.startswith("vace_")}, tmp_path / "module.safetensors")
    for path, vace in (("wan.safetensors", None), ("comfy.safetensors", None), ("base.pt", "module.safetensors"),
                       ("base.pt", "wan.safetensors")):  # a whole VACE checkpoint gives its VACE part too
        m = CausalWanModel.from_file(str(tmp_path / path), vace=vace and str(tmp_path / vace))
        assert m.config == VACE
        torch.testing.assert_close(m.forward(x, t, text, vace=VaceStep([(context, 1.0)])), want, atol=0, rtol=0)


def test_refuses_vace_of_another_size_or_generation(tmp_path):
    other = dataclasses.replace(VACE, dim=256, ffn_dim=320, num_heads=2)
    module = {k: v for k, v in CausalWanModel.random(other, seed=0).state_dict().items() if k.startswith("vace_")}
    save_file({k: v.contiguous() for k, v in module.items()}, tmp_path / "module_big.safetensors")
    torch.save(CausalWanModel.random(BASE, seed=0).state_dict(), tmp_path / "base.pt")
    with pytest.raises(ValueError, match="VACE weights are for a Wan dim 256.*use the VACE of the base's size"):
        CausalWanModel.from_file(str(tmp_path / "base.pt"), vace=str(tmp_path / "module_big.safetensors"))
    shapes = _shapes(VACE)
    wan22 = {**_shapes(dataclasses.replace(BASE, in_dim=48, out_dim=48)),
             **{k: v for k, v in shapes.items() if k.startswith("vace_")}}
    with pytest.raises(ValueError, match="Wan2.1-VACE is trained on the text-to-video Wan 2.1"):
        config_from_shapes(wan22)
    bad = dict(shapes, **{"vace_patch_embedding.weight": (128, 48, 1, 2, 2)})
    with pytest.raises(ValueError, match="another generation of VACE"):
        config_from_shapes(bad)
    three = {k: v for k, v in _shapes(dataclasses.replace(BASE, vace_layers=(0, 1, 2), vace_in_dim=96)).items()}
    with pytest.raises(ValueError, match="3 VACE blocks do not spread evenly over a Wan of 4 blocks"):
        config_from_shapes(three)
    save_file({"blocks.0.ffn.0.weight": torch.zeros(2, 2)}, tmp_path / "not_vace.safetensors")
    with pytest.raises(ValueError, match="has no VACE weights"):
        CausalWanModel.from_file(str(tmp_path / "base.pt"), vace=str(tmp_path / "not_vace.safetensors"))


# ------------------------------------------------------------------------------------------------
# ComfyUI's WanVaceToVideo conditioning, built here the way that node builds it (raw latents)


def test_wan_vace_to_video_conditioning_is_read_as_is():
    g = torch.Generator().manual_seed(9)
    T, R = 6, 1
    inactive, reactive = torch.randn(1, 16, T, 4, 6, generator=g), torch.randn(1, 16, T, 4, 6, generator=g)
    ref_latent = torch.randn(1, 16, R, 4, 6, generator=g)
    ref = torch.cat([ref_latent, denormalize(torch.zeros_like(ref_latent))], 1)  # core: process_out(zeros)
    frames = torch.cat([ref, torch.cat([inactive, reactive], 1)], 2)
    mask = torch.cat([torch.zeros(1, 64, R, 4, 6), torch.ones(1, 64, T, 4, 6)], 2)
    controls, r = vace_from_conditioning({"vace_frames": [frames], "vace_mask": [mask], "vace_strength": [0.6]},
                                         R + T, normalize)
    assert r == 1 and len(controls) == 1 and controls[0].strength == 0.6
    c = controls[0]
    torch.testing.assert_close(c.reference[:, :16], normalize(ref_latent))
    assert c.reference[:, 16:].abs().max() < 1e-5
    torch.testing.assert_close(c.control, torch.cat([normalize(inactive), normalize(reactive),
                                                     torch.ones(1, 64, T, 4, 6)], 1))
    # a control frame the user masked to 0 (first-frame extension) is not a reference: its reactive half is not 0
    mask2 = torch.cat([torch.zeros(1, 64, 2, 4, 6), torch.ones(1, 64, T - 2, 4, 6)], 2)
    assert vace_from_conditioning({"vace_frames": [frames[:, :, R:]], "vace_mask": [mask2]}, T, normalize)[1] == 0
    with pytest.raises(ValueError, match="covers 7 latent frames but the latent has 6"):
        vace_from_conditioning({"vace_frames": [frames], "vace_mask": [mask]}, T, normalize)
