"""Wan DiT forward, config detection, checkpoint layouts, scheduler and RoPE.

The DiT is checked against an independent minimal Wan 2.1 forward written here from the published maths
(complex float64 RoPE, explicit softmax attention, einsum unpatchify), reading the raw state dict.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_clipwan.wan import CausalWanModel, WanConfig, config_from_shapes, preset
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.model.checkpoint import load_wan_state_dict, strip_to_wan_keys
from comfyui_clipwan.wan.model.rope import apply_rope, rope_cos_sin

TINY_I2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True)
TINY_T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)


# ------------------------------------------------------------------------------------------------
# independent reference (from the Wan 2.1 maths; shares no code with the pack)


def ref_rope_freqs(d, max_pos=64):
    def params(dim):
        f = torch.outer(torch.arange(max_pos, dtype=torch.float64),
                        1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=torch.float64).div(dim)))
        return torch.polar(torch.ones_like(f), f)

    return torch.cat([params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))], dim=1)


def ref_rope(x, grid, freqs, f0=0):  # x [B, L, H, d]
    f, h, w = grid
    c = x.shape[-1] // 2
    parts = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    table = torch.cat([parts[0][f0:f0 + f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       parts[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       parts[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * table).flatten(-2).float()


def ref_attn(q, k, v, mask=None):  # [B, L, H, d]
    s = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v).flatten(2)


def ref_forward(sd, cfg, x, t, text, clip=None, y=None, mask=None, t_frames=None):
    """Wan 2.1 WanModel.forward written out; t_frames gives per-frame timesteps (causal models)."""
    lin = lambda z, n: F.linear(z, sd[n + ".weight"], sd[n + ".bias"])
    rms = lambda z, n: z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * sd[n + ".weight"]
    ln = lambda z: F.layer_norm(z, z.shape[-1:], eps=1e-6)
    if y is not None:
        x = torch.cat([x, y], 1)
    xt = F.conv3d(x, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2))
    B, D, f, h, w = xt.shape
    tok = xt.flatten(2).transpose(1, 2)
    tf = t_frames if t_frames is not None else t.view(B, 1).expand(B, f)
    half = cfg.freq_dim // 2
    arg = tf.double()[..., None] * torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half)
    sinus = torch.cat([arg.cos(), arg.sin()], -1).float()  # [B, f, 256]
    e = lin(F.silu(lin(sinus, "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").view(B, f, 6, D)
    txt = F.pad(text, (0, 0, 0, 512 - text.shape[1]))
    ctx = lin(F.gelu(lin(txt, "text_embedding.0"), approximate="tanh"), "text_embedding.2")
    img = None
    if clip is not None:
        z = F.layer_norm(clip, (1280,), sd["img_emb.proj.0.weight"], sd["img_emb.proj.0.bias"])
        z = lin(F.gelu(lin(z, "img_emb.proj.1")), "img_emb.proj.3")
        img = F.layer_norm(z, (D,), sd["img_emb.proj.4.weight"], sd["img_emb.proj.4.bias"])
    freqs = ref_rope_freqs(D // cfg.num_heads)
    H = cfg.num_heads
    split = lambda z: z.view(B, z.shape[1], H, -1)
    per_tok = lambda m: m.repeat_interleave(h * w, dim=1)  # [B, f, D] -> [B, L, D]
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        m = (sd[p + "modulation"] + e0)  # [B, f, 6, D]
        sh1, sc1, g1, sh2, sc2, g2 = (per_tok(m[:, :, j]) for j in range(6))
        z = ln(tok) * (1 + sc1) + sh1
        q = ref_rope(split(rms(lin(z, p + "self_attn.q"), p + "self_attn.norm_q")), (f, h, w), freqs)
        k = ref_rope(split(rms(lin(z, p + "self_attn.k"), p + "self_attn.norm_k")), (f, h, w), freqs)
        v = split(lin(z, p + "self_attn.v"))
        tok = tok + lin(ref_attn(q, k, v, mask), p + "self_attn.o") * g1
        z = F.layer_norm(tok, (D,), sd[p + "norm3.weight"], sd[p + "norm3.bias"], 1e-6)
        q = split(rms(lin(z, p + "cross_attn.q"), p + "cross_attn.norm_q"))
        out = ref_attn(q, split(rms(lin(ctx, p + "cross_attn.k"), p + "cross_attn.norm_k")),
                       split(lin(ctx, p + "cross_attn.v")))
        if img is not None:
            out = out + ref_attn(q, split(rms(lin(img, p + "cross_attn.k_img"), p + "cross_attn.norm_k_img")),
                                 split(lin(img, p + "cross_attn.v_img")))
        tok = tok + lin(out, p + "cross_attn.o")
        z = ln(tok) * (1 + sc2) + sh2
        tok = tok + lin(F.gelu(lin(z, p + "ffn.0"), approximate="tanh"), p + "ffn.2") * g2
    hm = sd["head.modulation"].unsqueeze(0) + e.unsqueeze(2)  # [B, f, 2, D]
    z = ln(tok) * (1 + per_tok(hm[:, :, 1])) + per_tok(hm[:, :, 0])
    z = lin(z, "head.head").view(B, f, h, w, 1, 2, 2, cfg.out_dim)
    return torch.einsum("bfhwpqrc->bcfphqwr", z).reshape(B, cfg.out_dim, f, h * 2, w * 2)


# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def i2v_model():
    return CausalWanModel.random(TINY_I2V, seed=1, )


def test_forward_matches_independent_reference_i2v(i2v_model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 12, generator=g)
    y = torch.randn(1, 20, 3, 8, 12, generator=g)
    text = torch.randn(1, 20, 4096, generator=g)
    clip = torch.randn(1, 257, 1280, generator=g)
    t = torch.tensor([700.0])
    ours = i2v_model.forward(x, t, text, clip, y)
    ref = ref_forward(i2v_model.state_dict(), TINY_I2V, x, t, text, clip, y)
    assert ours.shape == (1, 16, 3, 8, 12)
    assert ref.abs().mean() > 0.05  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_forward_matches_reference_per_frame_timesteps_t2v():
    m = CausalWanModel.random(TINY_T2V, seed=2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 4, 4, 4, generator=g)
    text = torch.randn(1, 7, 4096, generator=g)
    tf = torch.tensor([[0.0, 0.0, 500.0, 500.0], [1000.0, 937.5, 0.0, 10.0]])
    ours = dit.transformer(m.tree, TINY_T2V, x, tf, dit.encode_context(m.tree, TINY_T2V, text, None,
                                                                          torch.float32, 2))
    ref = ref_forward(m.state_dict(), TINY_T2V, x, None, text.expand(2, -1, -1), t_frames=tf)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_rope_offset_equals_complex_reference_past_1024():
    d = 128
    x = torch.randn(1, 3 * 2 * 2, 2, d)
    for start in (0, 30, 1100):
        cos, sin = rope_cos_sin(d, start, 3, 2, 2)
        ours = apply_rope(x, cos, sin)
        ref = ref_rope(x, (3, 2, 2), ref_rope_freqs(d, max_pos=start + 3), f0=start)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # a block at frame 30 is rotated differently from the same block at frame 0 (offset really applied)
    a = apply_rope(x, *rope_cos_sin(d, 0, 3, 2, 2))
    b = apply_rope(x, *rope_cos_sin(d, 30, 3, 2, 2))
    assert (a - b).abs().max() > 0.1


@pytest.mark.parametrize("size,kind", [("1.3B", "t2v"), ("14B", "i2v"), ("1.3B", "i2v")])
def test_config_detection_real_sizes_on_meta(size, kind):
    cfg = preset(size, kind)
    with torch.device("meta"):
        tree = dit.WanDiT(cfg)
    sd = tree.state_dict()
    n_params = sum(v.numel() for v in sd.values())
    expected_b = {"1.3B": (1.3, 1.7), "14B": (14.0, 16.6)}[size]
    assert expected_b[0] * 1e9 < n_params < expected_b[1] * 1e9
    wrapped = {"generator_ema": {"model." + k: v for k, v in sd.items()}}
    detected = config_from_shapes({k: v.shape for k, v in strip_to_wan_keys(wrapped["generator_ema"]).items()})
    assert detected == cfg
    assert detected.head_dim == 128 and detected.size_name == size
    assert detected.model_type == kind and detected.in_dim == (36 if kind == "i2v" else 16)
    assert "blocks.0.cross_attn.k_img.weight" in sd if kind == "i2v" else "blocks.0.cross_attn.k_img.weight" not in sd


def test_loads_self_forcing_pt_and_comfy_safetensors(tmp_path, i2v_model):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in i2v_model.state_dict().items()}
    pt = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {"model." + k: v * 0 for k, v in sd.items()},
                "generator_ema": {"model._fsdp_wrapped_module." + k: v for k, v in sd.items()},
                "critic": {"x": torch.zeros(1)}}, pt)
    st = tmp_path / "wan_i2v.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in sd.items()}, str(st))
    x, t, text = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 4096)
    want = i2v_model.forward(x, t, text)
    for path in (pt, st):
        m = CausalWanModel.from_file(str(path))
        assert m.config == TINY_I2V
        torch.testing.assert_close(m.forward(x, t, text), want, atol=1e-6, rtol=1e-5)  # mmap alignment
    assert "generator_ema" in CausalWanModel.from_file(str(pt)).source  # EMA preferred, like --use_ema
    m = CausalWanModel.from_file(str(pt), entry="generator")  # explicit entry: the zeroed generator
    assert m.state_dict()["head.head.weight"].abs().sum() == 0


def test_unknown_layout_and_bad_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "clip.safetensors"
    save_file({"vision_model.embeddings.class_embedding": torch.zeros(4)}, str(p))
    with pytest.raises(ValueError) as e:
        load_wan_state_dict(str(p))
    assert str(e.value) == (
        "unknown checkpoint layout in clip.safetensors: no Wan 2.1 DiT key 'head.modulation' (first keys: "
        "vision_model.embeddings.class_embedding). This looks like a CLIP vision model; load it with the CLIP "
        "vision loader instead. Supported: Wan 2.1 / ComfyUI diffusion_models files and Self-Forcing / CausVid "
        "/ LongLive .pt checkpoints (generator, generator_ema, model).")
    with pytest.raises(FileNotFoundError, match="^Wan model file not found: '/nope.pt'$"):
        load_wan_state_dict("/nope.pt")
    lora = {"blocks.0.self_attn.q.lora_A.weight": torch.zeros(1), "head.modulation": torch.zeros(1, 2, 8)}
    with pytest.raises(ValueError, match="contains LoRA adapter weights"):
        strip_to_wan_keys(lora)


