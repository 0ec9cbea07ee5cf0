"""Wan 2.1 VAE latent space: normalisation, checks, and a latent -> RGB preview approximation.

LATENT dicts in ComfyUI carry *raw* VAE latents; the DiT works on normalised ones ``(z - mean) / std``
with Wan 2.1's per-channel statistics (Wan-Video/Wan2.1 ``wan/modules/vae.py``, same numbers in every Wan
2.1 port). Inside ComfyUI the nodes use the MODEL's own ``process_latent_in/out`` instead.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

LATENT_CHANNELS = 16
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def _stats(z: torch.Tensor):
    shape = (1, LATENT_CHANNELS) + (1,) * (z.dim() - 2)
    mean = torch.tensor(WAN21_MEAN, dtype=z.dtype, device=z.device).view(shape)
    std = torch.tensor(WAN21_STD, dtype=z.dtype, device=z.device).view(shape)
    return mean, std


def normalize(z: torch.Tensor) -> torch.Tensor:
    """Raw Wan VAE latent -> the DiT's space."""
    mean, std = _stats(z)
    return (z - mean) / std


def denormalize(z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(z)
    return z * std + mean


def pixel_length_to_latent_frames(length: int) -> int:
    """Wan VAE: 1 + 4k pixel frames -> 1 + k latent frames (``(length - 1) // 4 + 1``)."""
    return (int(length) - 1) // 4 + 1


def check_latent(z: torch.Tensor, what: str = "latent") -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 5:
        shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{what} has shape {shape}; a Wan video latent is 5-D [batch, 16, frames, "
                         f"height/8, width/8] (make it with WanI2VConditioning or an empty Wan video latent).")
    if z.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"{what} has {z.shape[1]} channels; Wan 2.1 latents have {LATENT_CHANNELS} "
                         f"(shape {list(z.shape)}). Use a Wan 2.1 latent, not an SD/Flux (4/16-ch image) "
                         f"or Wan 2.2 (48-ch) one.")
    if not torch.isfinite(z).all():
        bad = "NaN" if torch.isnan(z).any() else "Inf"
        raise ValueError(f"{what} contains {bad} values; the latent is corrupt (check the node that made it, "
                         f"e.g. a VAE run in fp16 overflowing).")


class LatentPreviewer:
    """Latent -> RGB approximation for previews when no ComfyUI previewer is available.

    Not a decoder: it projects the 16 latent channels onto their 3 principal directions (fitted once per
    video on the first frames it sees, so colours stay stable from block to block) and stretches them to
    0..255. It shows motion and layout, not true colours.
    """

    def __init__(self):
        self._basis: Optional[torch.Tensor] = None
        self._lo = self._hi = None

    def _fit(self, pixels: torch.Tensor) -> None:  # pixels [N, 16]
        mean = pixels.mean(0, keepdim=True)
        centered = pixels - mean
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        basis = vh[:3].T  # [16, 3]
        proj = centered @ basis
        # fix the sign of each direction so the picture does not flip between runs
        basis = basis * torch.sign(proj.sum(0, keepdim=True) + 1e-12)
        proj = centered @ basis
        self._mean, self._basis = mean, basis
        self._lo = torch.quantile(proj, 0.01, dim=0)
        self._hi = torch.quantile(proj, 0.99, dim=0)

    def frames(self, z: torch.Tensor, scale: int = 4) -> np.ndarray:
        """``z [16, F, h, w]`` (one video) -> uint8 ``[F, h*scale, w*scale, 3]``."""
        z = z.detach().float().cpu()
        pixels = z.permute(1, 2, 3, 0).reshape(-1, z.shape[0])
        if self._basis is None:
            self._fit(pixels[: 64 * 64 * 4] if pixels.shape[0] > 64 * 64 * 4 else pixels)
        rgb = ((pixels - self._mean) @ self._basis - self._lo) / (self._hi - self._lo).clamp_min(1e-6)
        rgb = rgb.clamp(0, 1).reshape(z.shape[1], z.shape[2], z.shape[3], 3)
        if scale > 1:
            rgb = rgb.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        return (rgb * 255).round().to(torch.uint8).numpy()


def frames_to_pil(frames: np.ndarray):
    from PIL import Image

    return [Image.fromarray(f) for f in frames]


def save_animation(frames: np.ndarray, path: str, fps: int = 16) -> str:
    """Animated WebP (or GIF by extension) of uint8 frames ``[F, H, W, 3]``."""
    images = frames_to_pil(frames)
    fmt = "GIF" if path.lower().endswith(".gif") else "WEBP"
    extra = {"lossless": False, "quality": 80} if fmt == "WEBP" else {}
    images[0].save(path, format=fmt, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, **extra)
    return path
