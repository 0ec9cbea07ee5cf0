"""Wan 2.2 VAE (48 channels, 16x): real key names and sizes on meta tensors, streaming decode == whole decode,
the shape moves (patchify, averaging / duplicating shortcuts) against einops formulas written here from
Wan2.2's vae2_2.py, and (with ``COMFYUI_DIR``) decode/encode against ComfyUI's own ``vae2_2.WanVAE``."""

import os

import pytest
import torch
from einops import rearrange

from comfyui_clipwan.wan.vae import wan22 as vae22
from comfyui_clipwan.wan.vae.wan22 import Wan22VAE, Wan22VAEConfig, Wan22VAETree, config_from_shapes

TINY = Wan22VAEConfig(dim=8, dec_dim=8, z_dim=4)


@pytest.fixture(scope="module")
def tiny():
    return Wan22VAE.random(TINY, seed=1)


def test_real_size_keys_and_shapes_on_meta():
    with torch.device("meta"):
        sd = Wan22VAETree().state_dict()
    # Wan-Video/Wan2.2 Wan2_2_VAE: dim 160, dec_dim 256, z_dim 48, dim_mult [1,2,4,4], 2 res blocks,
    # temperal_downsample [False, True, True]; 12 = 3 RGB channels patchified 2x2
    assert sd["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)
    assert sd["encoder.head.2.weight"].shape == (96, 640, 3, 3, 3)
    assert sd["conv1.weight"].shape == (96, 96, 1, 1, 1) and sd["conv2.weight"].shape == (48, 48, 1, 1, 1)
    assert sd["decoder.conv1.weight"].shape == (1024, 48, 3, 3, 3)
    assert sd["decoder.upsamples.0.upsamples.3.resample.1.weight"].shape == (1024, 1024, 3, 3)
    assert sd["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (2048, 1024, 3, 1, 1)
    assert sd["decoder.upsamples.2.upsamples.0.residual.2.weight"].shape == (512, 1024, 3, 3, 3)
    assert "decoder.upsamples.2.upsamples.3.time_conv.weight" not in sd  # third level: space only
    assert sd["decoder.head.2.weight"].shape == (12, 256, 3, 3, 3)
    assert sd["encoder.downsamples.1.downsamples.2.time_conv.weight"].shape == (320, 320, 3, 1, 1)
    assert len(sd) == 196 and 700e6 < sum(v.numel() for v in sd.values()) < 710e6
    assert config_from_shapes({k: v.shape for k, v in sd.items()}) == Wan22VAEConfig()
    prefixed = {"first_stage_model." + k: v for k, v in sd.items()}
    assert Wan22VAE.from_state_dict(prefixed, device="meta").config.describe() == (
        "Wan 2.2 VAE (dim 160, decoder dim 256, z_dim 48)")


def test_shape_moves_equal_wan22_formulas():
    x = torch.randn(2, 3, 5, 8, 12)
    p = vae22.patchify(x)
    torch.testing.assert_close(p, rearrange(x, "b c f (h q) (w r) -> b (c r q) f h w", q=2, r=2), atol=0, rtol=0)
    torch.testing.assert_close(vae22.unpatchify(p), x, atol=0, rtol=0)
    # AvgDown3D: pad frames in front to a multiple of ft, fold (ft, fs, fs) into channels, average groups
    y = torch.randn(1, 6, 5, 4, 4)
    ref = torch.nn.functional.pad(y, (0, 0, 0, 0, 1, 0))
    ref = rearrange(ref, "b c (t a) (h p) (w q) -> b (c a p q) t h w", a=2, p=2, q=2)
    ref = rearrange(ref, "b (o g) t h w -> b o g t h w", o=12).mean(2)
    torch.testing.assert_close(vae22.avg_down(y, 12, 2, 2), ref, atol=1e-6, rtol=0)
    # DupUp3D: repeat channels, unfold into (ft, fs, fs); first chunk drops ft - 1 frames
    z = torch.randn(1, 8, 3, 2, 2)
    ref = rearrange(z.repeat_interleave(4, dim=1), "b (o a p q) t h w -> b o (t a) (h p) (w q)", a=2, p=2, q=2)
    torch.testing.assert_close(vae22.dup_up(z, 4, 2, 2, first=False), ref, atol=0, rtol=0)
    torch.testing.assert_close(vae22.dup_up(z, 4, 2, 2, first=True), ref[:, :, 1:], atol=0, rtol=0)


def test_streaming_decode_equals_whole_decode(tiny):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 5, 2, 3, generator=g)
    whole = tiny.decode_whole(z)
    assert whole.shape == (1, 3, 17, 32, 48)  # 1 + 4·4 frames, 16x spatial
    assert whole.abs().mean() > 0.05
    stream = tiny.stream_decoder()
    parts = [stream.decode(z[:, :, a:b]) for a, b in ((0, 1), (1, 3), (3, 5))]
    assert [p.shape[2] for p in parts] == [1, 8, 8]
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-4, rtol=0)
    with pytest.raises(ValueError) as e:
        stream.decode(torch.zeros(1, 16, 1, 2, 3))
    assert str(e.value) == ("latent block has shape [1, 16, 1, 2, 3]; expected [B, 4, frames, h, w] (raw Wan 2.2 "
                            "VAE latents).")


def test_encode_shapes_and_wan21_file_refused(tiny, tmp_path):
    px = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    assert tiny.encode(px).shape == (1, 4, 2, 2, 3)
    from safetensors.torch import save_file

    from comfyui_clipwan.wan.vae import wan21 as v21
    save_file({k: v.contiguous() for k, v in v21.WanVAE.random(v21.WanVAEConfig(dim=8), seed=0).tree.state_dict()
               .items()}, str(tmp_path / "wan_2.1_vae.safetensors"))
    with pytest.raises(ValueError) as e:
        Wan22VAE.from_file(str(tmp_path / "wan_2.1_vae.safetensors"))
    assert str(e.value) == (
        "wan_2.1_vae.safetensors is not a Wan 2.2 VAE: key 'decoder.upsamples.0.upsamples.0.residual.0.gamma' is "
        "missing. It is a Wan 2.1 VAE (16 channels, 8x): use it with Wan 2.1 models. Use Wan2.2_VAE.pth or "
        "ComfyUI's wan2.2_vae.safetensors (models/vae).")
    save_file({"first_stage_model." + k: v.contiguous() for k, v in tiny.tree.state_dict().items()},
              str(tmp_path / "wan2.2_vae.safetensors"))
    loaded = Wan22VAE.from_file(str(tmp_path / "wan2.2_vae.safetensors"))
    assert loaded.config == TINY
    torch.testing.assert_close(loaded.encode(px), tiny.encode(px), atol=0, rtol=0)


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="set COMFYUI_DIR to a ComfyUI checkout")
def test_matches_comfyui_vae2_2(tiny):
    from integration.inprocess import import_comfy

    import_comfy()
    from comfy.ldm.wan.vae2_2 import WanVAE
    with torch.device("meta"):
        real = WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                      temperal_downsample=[False, True, True])
        ours = Wan22VAETree()
    assert {k: v.shape for k, v in real.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ref = WanVAE(dim=8, dec_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True])
    ref.load_state_dict(tiny.tree.state_dict(), strict=True)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 4, 2, 3, generator=g)
    px = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tiny.stream_decoder().decode(z), ref.decode(z), atol=1e-4, rtol=0)
        torch.testing.assert_close(tiny.encode(px), ref.encode(px), atol=1e-4, rtol=0)


def test_stream_video_ti2v_with_wan22_vae(tiny):
    """LongLive 2.0's loop on a tiny Wan 2.2 TI2V model streamed through the Wan 2.2 VAE block by block:
    the frames equal a whole decode of the sampled latent, and the first frame decodes the image latent."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig
    from comfyui_clipwan.wan.vae.latent import denormalize, normalize
    from comfyui_clipwan.wan.sampling.loop import CausalSettings, loop_rules_for
    from comfyui_clipwan.wan.video.stream import stream_video

    cfg = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=48, out_dim=48)
    model = CausalWanModel.random(cfg, seed=2)
    vae = Wan22VAE.random(Wan22VAEConfig(dim=8, dec_dim=8, z_dim=48), seed=3)
    pixels = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    image = normalize(vae.encode(pixels))  # [1, 48, 1, 2, 2]
    settings = loop_rules_for(CausalSettings(steps="4", frames_per_block=2, sink_size=2, local_window=4), cfg)
    text = torch.randn(1, 7, 4096)
    stream = stream_video(model, torch.zeros(1, 48, 6, 2, 2), text, vae=vae, keep_latent=True, seed=0,
                          settings=settings, first_frames=image, per_latent_frame=False)
    blocks = list(stream)
    assert [b.num_frames for b in blocks] == [5, 8, 8]  # 1 + 4 for the first latent pair, then 4 per frame
    frames = torch.cat([b.frames for b in blocks], 1)
    whole = vae.decode_whole(denormalize(stream.latent))
    torch.testing.assert_close(frames, ((whole.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(stream.latent[:, :, :1], image, atol=1e-5, rtol=0)


def test_load_vae_picks_the_generation(tiny, tmp_path):
    from safetensors.torch import save_file

    from comfyui_clipwan.wan.vae import wan21 as v21
    save_file({"vae." + k: v.contiguous() for k, v in tiny.tree.state_dict().items()}, str(tmp_path / "a.safetensors"))
    small21 = v21.WanVAE.random(v21.WanVAEConfig(dim=8), seed=0)
    save_file({k: v.contiguous() for k, v in small21.tree.state_dict().items()}, str(tmp_path / "b.safetensors"))
    assert type(vae22.load_vae(str(tmp_path / "a.safetensors"))) is Wan22VAE
    assert type(vae22.load_vae(str(tmp_path / "b.safetensors"))) is v21.WanVAE
    assert type(vae22.adopt_vae(tiny.tree)) is Wan22VAE and vae22.adopt_vae(tiny.tree).tree is tiny.tree
