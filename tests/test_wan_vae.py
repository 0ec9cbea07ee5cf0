"""Wan 2.1 VAE: key layouts (Wan's .pth, ComfyUI's .safetensors), real-size shapes on meta, streaming
decode == whole decode, encoder, errors. Oracles: an independent minimal whole-video decoder written here
over the raw state dict, and (optional, COMFYUI_DIR) ComfyUI's own WanVAE class."""

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfyui_clipwan.wan.vae import wan21 as V
TINY = V.WanVAEConfig(dim=8)


@pytest.fixture(scope="module")
def tiny():
    return V.WanVAE.random(TINY, seed=3)


# --- an independent minimal reference: whole video, plain functions over the state dict ---------------------

def _ref_conv(sd, key, x, time_pad=2, space_pad=1, stride=1):
    w, b = sd[key + ".weight"], sd[key + ".bias"]
    x = F.pad(x, (space_pad, space_pad, space_pad, space_pad, time_pad, 0))
    return F.conv3d(x, w, b, stride=(stride, 1, 1))


def _ref_norm(sd, key, x):
    return F.normalize(x, dim=1) * x.shape[1] ** 0.5 * sd[key + ".gamma"].view(1, -1, *[1] * (x.dim() - 2))


def _ref_res(sd, key, x):
    h = _ref_conv(sd, key + ".residual.2", F.silu(_ref_norm(sd, key + ".residual.0", x)))
    h = _ref_conv(sd, key + ".residual.6", F.silu(_ref_norm(sd, key + ".residual.3", h)))
    if key + ".shortcut.weight" in sd:
        x = _ref_conv(sd, key + ".shortcut", x, 0, 0)
    return x + h


def _ref_attn(sd, key, x):
    b, c, t, h, w = x.shape
    y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    y = _ref_norm(sd, key + ".norm", y)
    qkv = F.conv2d(y, sd[key + ".to_qkv.weight"], sd[key + ".to_qkv.bias"]).reshape(b * t, 3 * c, h * w)
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    a = torch.softmax(q.transpose(1, 2) @ k / c ** 0.5, dim=-1)  # [bt, hw, hw]
    o = (v @ a.transpose(1, 2)).reshape(b * t, c, h, w)
    o = F.conv2d(o, sd[key + ".proj.weight"], sd[key + ".proj.bias"])
    return x + o.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _ref_up(sd, key, x, temporal):
    if temporal:  # first frame kept; later frames doubled by a causal conv over the later frames alone
        later = _ref_conv(sd, key + ".time_conv", x[:, :, 1:], 2, 0)
        c = x.shape[1]
        pairs = torch.stack([later[:, :c], later[:, c:]], dim=3).flatten(2, 3)
        x = torch.cat([x[:, :, :1], pairs], dim=2)
    b, c, t, h, w = x.shape
    y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).repeat_interleave(2, 2).repeat_interleave(2, 3)
    y = F.conv2d(y, sd[key + ".resample.1.weight"], sd[key + ".resample.1.bias"], padding=1)
    return y.reshape(b, t, -1, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)


def reference_decode(sd, z):
    """Wan 2.1 decoder from its description (dims 4-4-4-2-1 x dim, 3 res blocks per level, time doubling
    at the first two upsamples), every frame at once."""
    x = _ref_conv(sd, "conv2", z, 0, 0)
    x = _ref_conv(sd, "decoder.conv1", x)
    x = _ref_attn(sd, "decoder.middle.1", _ref_res(sd, "decoder.middle.0", x))
    x = _ref_res(sd, "decoder.middle.2", x)
    i = 0
    for level in range(4):
        for _ in range(3):
            x = _ref_res(sd, f"decoder.upsamples.{i}", x)
            i += 1
        if level < 3:
            x = _ref_up(sd, f"decoder.upsamples.{i}", x, temporal=level < 2)
            i += 1
    return _ref_conv(sd, "decoder.head.2", F.silu(_ref_norm(sd, "decoder.head.0", x)))


# --- tests ----------------------------------------------------------------------------------------------

def test_real_size_keys_and_shapes_on_meta():
    with torch.device("meta"):
        tree = V.WanVAETree(V.REAL_CONFIG)
    shapes = {k: tuple(v.shape) for k, v in tree.state_dict().items()}
    # Wan2.1_VAE.pth: 194 tensors, 126.9M parameters
    assert len(shapes) == 194
    assert sum(p.numel() for p in tree.parameters()) == 126_892_531
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert shapes["encoder.downsamples.5.time_conv.weight"] == (192, 192, 3, 1, 1)
    assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3)
    assert shapes["conv1.weight"] == (32, 32, 1, 1, 1) and shapes["conv2.weight"] == (16, 16, 1, 1, 1)
    assert shapes["decoder.conv1.weight"] == (384, 16, 3, 3, 3)
    assert shapes["decoder.middle.1.to_qkv.weight"] == (1152, 384, 1, 1)
    assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["decoder.upsamples.3.resample.1.weight"] == (192, 384, 3, 3)
    assert shapes["decoder.upsamples.4.residual.2.weight"] == (384, 192, 3, 3, 3)
    assert shapes["decoder.upsamples.11.resample.1.weight"] == (96, 192, 3, 3)
    assert shapes["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
    assert "decoder.upsamples.12.shortcut.weight" not in shapes  # 96 -> 96: identity shortcut
    assert shapes["decoder.head.0.gamma"] == (96, 1, 1, 1) and shapes["decoder.head.2.weight"] == (3, 96, 3, 3, 3)
    assert V.config_from_shapes(shapes) == V.REAL_CONFIG


def test_whole_decode_matches_independent_reference(tiny):
    sd = {k: v.float() for k, v in tiny.tree.state_dict().items()}
    z = torch.randn(1, 16, 4, 4, 6)
    ref = reference_decode(sd, z)
    ours = tiny.decode_whole(z)
    assert ours.shape == (1, 3, 13, 32, 48) == ref.shape
    assert (ours - ref).abs().max() < 1e-4
    assert ref.abs().max() > 0.1  # not a degenerate all-zero output


@pytest.mark.parametrize("blocks", [[1, 3, 3], [1, 1, 1, 1, 1], [3, 1], [2, 3]])
def test_streaming_blocks_equal_whole_decode(tiny, blocks):
    z = torch.randn(1, 16, sum(blocks), 2, 3)
    whole = tiny.decode_whole(z)
    dec = tiny.stream_decoder()
    outs, start = [], 0
    for n in blocks:
        out = dec.decode(z[:, :, start:start + n])
        assert out.shape[2] == V.decoded_frames(n, first=start == 0)
        outs.append(out)
        start += n
    stream = torch.cat(outs, dim=2)
    assert stream.shape == whole.shape == (1, 3, 4 * sum(blocks) - 3, 16, 24)
    assert (stream - whole).abs().max() <= 1e-4


def test_feature_cache_does_not_grow_with_length(tiny):
    dec = tiny.stream_decoder()
    sizes = []
    for _ in range(6):
        dec.decode(torch.randn(1, 16, 1, 2, 3))
        sizes.append(sum(v.numel() for v in dec.cache.values() if isinstance(v, torch.Tensor)))
    assert sizes[2] == sizes[3] == sizes[5]  # steady state after the time upsamplers have seen 2 frames


def test_encode_streaming_equals_whole_sequence(tiny):
    px = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    mu = tiny.encode(px)
    assert mu.shape == (1, 16, 3, 4, 6)
    with torch.no_grad():
        whole = V.run_encoder(tiny.tree.encoder, px, None)
        whole_mu = tiny.tree.conv1(whole).chunk(2, dim=1)[0]
    assert (mu - whole_mu).abs().max() < 1e-4


def _save_wan_pth(tree, path):
    torch.save(tree.state_dict(), path)  # Wan2.1_VAE.pth: a flat state dict, fp32


def _save_comfy_safetensors(tree, path):
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tree.state_dict().items()}, path)


def test_loads_wan_pth_and_comfy_safetensors_layouts(tiny, tmp_path):
    _save_wan_pth(tiny.tree, tmp_path / "Wan2.1_VAE.pth")
    _save_comfy_safetensors(tiny.tree, tmp_path / "wan_2.1_vae.safetensors")
    z = torch.randn(1, 16, 2, 4, 6)
    ref = tiny.decode_whole(z)
    from_pth = V.WanVAE.from_file(str(tmp_path / "Wan2.1_VAE.pth"))
    assert from_pth.config == TINY and from_pth.source == "Wan2.1_VAE.pth"
    assert (from_pth.decode(z) - ref).abs().max() < 1e-5
    from_st = V.WanVAE.from_file(str(tmp_path / "wan_2.1_vae.safetensors"), dtype=torch.float32)
    assert (from_st.decode(z) - ref).abs().max() < 0.05  # bf16 weights
    # the same weights wrapped in a prefix (checkpoints that bundle the VAE)
    save_file({"first_stage_model." + k: v.contiguous() for k, v in tiny.tree.state_dict().items()},
              tmp_path / "bundled.safetensors")
    assert V.WanVAE.from_file(str(tmp_path / "bundled.safetensors")).config == TINY


def test_from_state_dict_assigns_without_copy(tiny):
    sd = tiny.tree.state_dict()
    vae = V.WanVAE.from_state_dict(sd)
    assert vae.tree.decoder.conv1.weight.data_ptr() == sd["decoder.conv1.weight"].data_ptr()


def test_errors_name_the_problem(tiny):
    sd = tiny.tree.state_dict()
    with pytest.raises(ValueError, match=r"is not a Wan VAE: key 'decoder.middle.0.residual.0.gamma' is missing"):
        V.WanVAE.from_state_dict({"decoder.conv_in.weight": torch.zeros(1)}, source="sd15_vae.safetensors")
    wan22 = dict(sd)
    wan22[V.WAN22_MARKER] = torch.zeros(1)
    with pytest.raises(ValueError, match="is a Wan 2.2 VAE"):
        V.WanVAE.from_state_dict(wan22, source="wan2.2_vae.safetensors")
    broken = dict(sd)
    broken["decoder.upsamples.3.time_conv.weight"] = torch.zeros(5, 5, 3, 1, 1)
    with pytest.raises(ValueError, match=r"wrong shapes \['decoder.upsamples.3.time_conv.weight \[5, 5, 3, 1, 1\]"):
        V.WanVAE.from_state_dict(broken, source="x.safetensors")
    missing = {k: v for k, v in sd.items() if k != "decoder.head.2.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['decoder.head.2.bias'\]"):
        V.WanVAE.from_state_dict(missing, source="x.safetensors")
    with pytest.raises(ValueError, match=r"latent block has shape \[1, 4, 1, 4, 6\]; expected \[B, 16"):
        tiny.stream_decoder().decode(torch.zeros(1, 4, 1, 4, 6))
    with pytest.raises(ValueError, match=r"encodes \[B, 3, 1\+4k, H, W\]"):
        tiny.encode(torch.zeros(1, 3, 4, 32, 32))


def test_images_round_trip():
    images = torch.rand(5, 16, 24, 3)
    px = V.images_to_pixels(images)
    assert px.shape == (1, 3, 5, 16, 24)
    assert torch.allclose(V.pixels_to_images(px), images, atol=1e-6)


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="needs a ComfyUI checkout in COMFYUI_DIR")
def test_against_comfyui_wanvae(tiny):
    from tests.integration.inprocess import import_comfy

    import_comfy()
    from comfy.ldm.wan.vae import WanVAE as ComfyWanVAE

    theirs = ComfyWanVAE(dim=TINY.dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True]).eval()
    theirs.load_state_dict(tiny.tree.state_dict())
    with torch.device("meta"):
        real = ComfyWanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                           temperal_downsample=[False, True, True])
        ours_real = V.WanVAETree(V.REAL_CONFIG)
    assert {k: v.shape for k, v in real.state_dict().items()} == {k: v.shape for k, v in ours_real.state_dict().items()}
    z = torch.randn(1, 16, 7, 4, 6)
    with torch.no_grad():
        ref = theirs.decode(z)
        ref_mu = theirs.encode(torch.linspace(-1, 1, 3 * 9 * 32 * 48).reshape(1, 3, 9, 32, 48))
    dec = tiny.stream_decoder()
    stream = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:4]), dec.decode(z[:, :, 4:])], dim=2)
    assert (stream - ref).abs().max() <= 1e-4
    adopted = V.WanVAE.adopt(theirs)  # ComfyUI's module tree, its own weights, no copy
    assert (adopted.decode(z) - ref).abs().max() <= 1e-4
    mu = adopted.encode(torch.linspace(-1, 1, 3 * 9 * 32 * 48).reshape(1, 3, 9, 32, 48))
    assert (mu - ref_mu).abs().max() <= 1e-4
