"""TAEHV-style tiny decoder for Wan 2.1 latents (the ``taew2_1`` / ``lighttaew2_1`` weights of
madebyollin/taehv, placed by the user in ``models/vae_approx``): a fast approximation of the Wan VAE for
live frames, with the same streaming interface as ``wan.vae.wan21.StreamingDecoder``.

Architecture (key names ``decoder.<index>.*`` of TAEHV's ``nn.Sequential``): a soft clamp, a 3x3 conv,
then three stages of three ``MemBlock`` s (a conv block that also sees the *previous frame's* input at the
same depth), a 2x spatial upsample, a ``TGrow`` (a 1x1 conv that turns each frame into ``stride`` frames)
and a conv; a final conv to RGB in [0, 1]. Time is causal (a MemBlock looks one frame back), so decoding
block after block with each MemBlock's last input kept gives the same frames as decoding the whole video.
Like Wan's VAE the first latent frame yields one frame: the first ``t_upscale - 1`` outputs are dropped.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .latent import LATENT_CHANNELS

FILE_PREFIXES = ("taew2_1", "lighttaew2_1")  # names ComfyUI's previewer also looks for
STAGE_WIDTHS = (256, 128, 64, 64)
TIME_UPSCALE = (False, True, True)  # per stage: TGrow stride 2 or 1 (first latent frame -> 1, others -> 4)


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in * 2, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()


class TGrow(nn.Module):
    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)


def build_decoder(latent_channels: int = LATENT_CHANNELS, widths=STAGE_WIDTHS, time_upscale=TIME_UPSCALE) -> nn.Sequential:
    """TAEHV's decoder ``nn.Sequential`` with its exact indices (they are the checkpoint's key names)."""
    w = widths
    layers = [Clamp(), _conv(latent_channels, w[0]), nn.ReLU()]
    for stage in range(3):
        n = w[stage]
        layers += [MemBlock(n, n), MemBlock(n, n), MemBlock(n, n), nn.Upsample(scale_factor=2),
                   TGrow(n, 2 if time_upscale[stage] else 1), _conv(n, w[stage + 1], bias=False)]
    layers += [nn.ReLU(), _conv(w[3], 3)]
    return nn.Sequential(*layers)


class TAEHVDecoder(nn.Module):
    """Holds ``decoder`` (so state-dict keys are ``decoder.N...`` like TAEHV's files)."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, widths=STAGE_WIDTHS):
        super().__init__()
        self.decoder = build_decoder(latent_channels, widths)
        self.t_upscale = 2 ** sum(1 for m in self.decoder if isinstance(m, TGrow) and m.stride == 2)


def _mem_block(block: MemBlock, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    return F.relu(block.conv(torch.cat([x, past], dim=1)) + block.skip(x))


class TAEHV:
    """Loaded tiny decoder; ``stream_decoder()`` gives the streaming interface of ``wan.vae.wan21.WanVAE``."""

    def __init__(self, module: TAEHVDecoder, source: str = ""):
        self.module = module.eval().requires_grad_(False)
        self.source = source
        p = next(module.parameters())
        self.device, self.dtype = p.device, p.dtype

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str = "state dict", device="cpu",
                        dtype=torch.float32) -> "TAEHV":
        if "decoder.1.weight" not in sd or "decoder.22.weight" not in sd:
            raise ValueError(f"{source} is not a TAEHV tiny autoencoder (keys 'decoder.1.weight' and "
                             f"'decoder.22.weight' missing); use taew2_1.pth / taew2_1.safetensors from "
                             f"madebyollin/taehv in models/vae_approx.")
        channels = int(sd["decoder.1.weight"].shape[1])
        if channels != LATENT_CHANNELS or int(sd["decoder.22.weight"].shape[0]) != 3:
            raise ValueError(f"{source} decodes {channels}-channel latents to {int(sd['decoder.22.weight'].shape[0])}"
                             f" channels; the Wan 2.1 tiny decoder (taew2_1) takes 16 channels to RGB (taew2_2 / "
                             f"taehv are for other latent spaces).")
        module = TAEHVDecoder(channels)
        expected = module.state_dict()
        tensors = {}
        for key, ref in expected.items():
            if key not in sd:
                raise ValueError(f"{source}: key '{key}' is missing; the file is not a complete taew2_1 decoder.")
            value = sd[key]
            if value.shape[0] > ref.shape[0] and ".conv." in key and value.shape[1:] == ref.shape[1:]:
                value = value[-ref.shape[0]:]  # a TGrow stored with stride 2 used at stride 1: last frame's half
            if tuple(value.shape) != tuple(ref.shape):
                raise ValueError(f"{source}: '{key}' has shape {list(value.shape)}, expected {list(ref.shape)}.")
            tensors[key] = value.to(device=device, dtype=dtype)
        module.load_state_dict(tensors, strict=True)
        return cls(module, source)

    @classmethod
    def from_file(cls, path: str, device="cpu", dtype=torch.float32) -> "TAEHV":
        from ..model.checkpoint import read_file

        return cls.from_state_dict(read_file(path), source=os.path.basename(path), device=device, dtype=dtype)

    @classmethod
    def random(cls, seed: int = 0, widths=STAGE_WIDTHS) -> "TAEHV":
        module = TAEHVDecoder(LATENT_CHANNELS, widths)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name, p in module.named_parameters():
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if name.endswith("bias") else fan_in ** -0.5))
        return cls(module, f"random-init seed {seed} (not trained)")

    def stream_decoder(self) -> "TAEHVStreamingDecoder":
        return TAEHVStreamingDecoder(self)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.stream_decoder().decode(z)


class TAEHVStreamingDecoder:
    """``decode(raw_latent_block [B,16,n,h,w])`` -> pixels ``[B, 3, F, 8h, 8w]`` in [-1, 1]; each MemBlock's
    last input frame is carried to the next call."""

    def __init__(self, tae: TAEHV):
        self.tae = tae
        self.memory: dict = {}
        self.to_trim = tae.module.t_upscale - 1

    def reset(self) -> None:
        self.memory = {}
        self.to_trim = self.tae.module.t_upscale - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"latent block has shape {list(z.shape)}; expected [B, 16, frames, h, w].")
        b, _, t = z.shape[:3]
        x = z.to(device=self.tae.device, dtype=self.tae.dtype).transpose(1, 2).flatten(0, 1)  # [B*T, C, h, w]
        with torch.no_grad():
            for i, layer in enumerate(self.tae.module.decoder):
                if isinstance(layer, MemBlock):
                    frames = x.unflatten(0, (b, t))
                    prev = self.memory.get(i)
                    prev = torch.zeros_like(frames[:, :1]) if prev is None else prev
                    past = torch.cat([prev, frames[:, :-1]], dim=1).flatten(0, 1)
                    self.memory[i] = frames[:, -1:].clone()
                    x = _mem_block(layer, x, past)
                elif isinstance(layer, TGrow):
                    c = x.shape[1]
                    x = layer.conv(x).reshape(-1, c, *x.shape[2:])  # each frame -> `stride` frames, in order
                    t = t * layer.stride
                else:
                    x = layer(x)
        frames = x.unflatten(0, (b, t)).clamp(0, 1)
        if self.to_trim:
            drop = min(self.to_trim, frames.shape[1])
            frames = frames[:, drop:]
            self.to_trim -= drop
        return (frames * 2 - 1).transpose(1, 2).float()  # [B, 3, F, H, W]


def find_tiny_decoder(folder: Optional[str]) -> Optional[str]:
    """The first ``taew2_1*`` / ``lighttaew2_1*`` weights file in ``folder`` (``models/vae_approx``), or None."""
    if not folder or not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder)):
        if name.startswith(FILE_PREFIXES) and name.endswith((".pth", ".safetensors", ".pt")):
            return os.path.join(folder, name)
    return None
