"""Tiny TAEHV decoder for Wan 2.1 (taew2_1): key layout, streaming == whole-video decode (independent
parallel reference written here from TAEHV's description; optional: ComfyUI's TAEHV class), file loading."""

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfyui_clipwan.wan.vae import taehv as T
@pytest.fixture(scope="module")
def tae():
    return T.TAEHV.random(seed=5)


def reference_decode(sd, z):
    """Whole video at once: every MemBlock sees the previous frame of its input (zeros before the first),
    TGrow turns frames into stride frames, the first 3 outputs are dropped. z [B,16,T,h,w] -> [B,T,3,H,W]."""
    b, c, t = z.shape[:3]
    x = z.transpose(1, 2).flatten(0, 1)
    x = torch.tanh(x / 3) * 3
    x = F.relu(F.conv2d(x, sd["decoder.1.weight"], sd["decoder.1.bias"], padding=1))
    i = 3
    for stage, stride in enumerate((1, 2, 2)):
        for _ in range(3):
            frames = x.unflatten(0, (b, t))
            past = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :t].flatten(0, 1)
            h = torch.cat([x, past], 1)
            h = F.relu(F.conv2d(h, sd[f"decoder.{i}.conv.0.weight"], sd[f"decoder.{i}.conv.0.bias"], padding=1))
            h = F.relu(F.conv2d(h, sd[f"decoder.{i}.conv.2.weight"], sd[f"decoder.{i}.conv.2.bias"], padding=1))
            h = F.conv2d(h, sd[f"decoder.{i}.conv.4.weight"], sd[f"decoder.{i}.conv.4.bias"], padding=1)
            x = F.relu(h + x)
            i += 1
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        grown = F.conv2d(x, sd[f"decoder.{i + 1}.conv.weight"])
        x = grown.reshape(-1, x.shape[1], *x.shape[2:])
        t *= stride
        x = F.conv2d(x, sd[f"decoder.{i + 2}.weight"], padding=1)
        i += 3
    x = F.conv2d(F.relu(x), sd["decoder.22.weight"], sd["decoder.22.bias"], padding=1)
    return x.unflatten(0, (b, t))[:, 3:].clamp(0, 1)


def test_key_layout_matches_taew2_1():
    sd = T.TAEHVDecoder().state_dict()
    assert sd["decoder.1.weight"].shape == (256, 16, 3, 3)
    assert sd["decoder.3.conv.0.weight"].shape == (256, 512, 3, 3)
    assert sd["decoder.7.conv.weight"].shape == (256, 256, 1, 1)  # stage 1: no time growth
    assert sd["decoder.13.conv.weight"].shape == (256, 128, 1, 1)  # stride 2
    assert sd["decoder.14.weight"].shape == (64, 128, 3, 3) and "decoder.14.bias" not in sd
    assert sd["decoder.22.weight"].shape == (3, 64, 3, 3)


@pytest.mark.parametrize("blocks", [[1, 3, 3], [7], [1, 1, 1, 1, 1, 1, 1]])
def test_streaming_equals_whole_video_reference(tae, blocks):
    sd = tae.module.state_dict()
    z = torch.randn(1, 16, sum(blocks), 2, 3)
    ref = reference_decode(sd, z)  # [B, T, 3, H, W] in 0..1
    dec = tae.stream_decoder()
    outs, start = [], 0
    for n in blocks:
        outs.append(dec.decode(z[:, :, start:start + n]))
        start += n
    ours = (torch.cat(outs, 2) + 1) / 2  # [B, 3, F, H, W]
    assert ours.shape == (1, 3, 4 * sum(blocks) - 3, 16, 24)
    assert (ours.transpose(1, 2) - ref).abs().max() < 1e-5
    assert ref.std() > 0.01


def test_loads_pth_and_safetensors_with_encoder_keys(tae, tmp_path):
    sd = dict(tae.module.state_dict())
    sd["encoder.0.weight"] = torch.zeros(64, 3, 3, 3)  # released files carry the encoder too: ignored
    # taew2_1 stores the stage-1 TGrow at stride 2 in some versions: the loader keeps the last frame's half
    sd["decoder.7.conv.weight"] = torch.cat([torch.zeros(256, 256, 1, 1), sd["decoder.7.conv.weight"]])
    torch.save(sd, tmp_path / "taew2_1.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "taew2_1.safetensors")
    z = torch.randn(1, 16, 2, 2, 3)
    ref = tae.decode(z)
    for name in ("taew2_1.pth", "taew2_1.safetensors"):
        loaded = T.TAEHV.from_file(str(tmp_path / name))
        assert (loaded.decode(z) - ref).abs().max() < 1e-6
    assert T.find_tiny_decoder(str(tmp_path)) == str(tmp_path / "taew2_1.pth")
    assert T.find_tiny_decoder(str(tmp_path / "nope")) is None


def test_errors(tae):
    with pytest.raises(ValueError, match="is not a TAEHV tiny autoencoder"):
        T.TAEHV.from_state_dict({"decoder.conv_in.weight": torch.zeros(1)}, source="taesd_decoder.pth")
    sd = dict(tae.module.state_dict())
    sd["decoder.1.weight"] = torch.zeros(256, 48, 3, 3)
    with pytest.raises(ValueError, match="decodes 48-channel latents to 3 channels; the Wan 2.1 tiny decoder"):
        T.TAEHV.from_state_dict(sd, source="taew2_2.pth")
    with pytest.raises(ValueError, match=r"latent block has shape \[1, 4, 1, 2, 3\]"):
        tae.stream_decoder().decode(torch.zeros(1, 4, 1, 2, 3))


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="needs a ComfyUI checkout in COMFYUI_DIR")
def test_against_comfyui_taehv(tae):
    from tests.integration.inprocess import import_comfy

    import_comfy()
    from comfy.taesd.taehv import TAEHV as ComfyTAEHV

    theirs = ComfyTAEHV(latent_channels=16, parallel=True).eval()
    missing, _ = theirs.load_state_dict(tae.module.state_dict(), strict=False)
    assert all(k.startswith("encoder.") for k in missing)
    z = torch.randn(1, 16, 4, 2, 3)
    with torch.no_grad():
        ref = theirs.decode(z).clamp(0, 1)  # [B, 3, F, H, W]
    dec = tae.stream_decoder()
    ours = (torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:])], 2) + 1) / 2
    assert ours.shape == ref.shape and (ours - ref).abs().max() < 1e-5
