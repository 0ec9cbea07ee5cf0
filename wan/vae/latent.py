"""Wan VAE latent spaces (Wan 2.1: 16 channels, 8x spatial; Wan 2.2: 48 channels, 16x spatial): normalisation,
checks, and a latent -> RGB preview approximation.

LATENT dicts in ComfyUI carry *raw* VAE latents; the DiT works on normalised ones ``(z - mean) / std``
with the VAE's per-channel statistics (Wan-Video/Wan2.1 ``wan/modules/vae.py`` and Wan2.2
``wan/modules/vae2_2.py``, same numbers in every port). The channel count tells the two formats apart, so
``normalize``/``denormalize`` pick the format from the tensor. Inside ComfyUI the nodes use the MODEL's own
``process_latent_in/out`` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class LatentFormat:
    name: str
    channels: int
    spatial: int  # pixels per latent pixel (each side)
    mean: tuple
    std: tuple
    temporal: int = 4  # 1 + 4k pixel frames -> 1 + k latent frames (both VAEs)


WAN21 = LatentFormat("Wan 2.1", 16, 8, (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921), (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160))
WAN22 = LatentFormat("Wan 2.2", 48, 16, (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667), (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744))
FORMATS = {f.channels: f for f in (WAN21, WAN22)}
LATENT_CHANNELS = WAN21.channels  # the Wan 2.1 default (i2v conditioning, CLIP-conditioned models)


def latent_format(channels: int) -> LatentFormat:
    """The Wan latent format with ``channels`` channels (16 = Wan 2.1, 48 = Wan 2.2)."""
    if int(channels) not in FORMATS:
        raise ValueError(f"a latent with {channels} channels is not a Wan latent: Wan 2.1 latents have 16 "
                         f"channels, Wan 2.2 (TI2V-5B VAE) latents 48.")
    return FORMATS[int(channels)]


def _stats(z: torch.Tensor):
    fmt = latent_format(z.shape[1])
    shape = (1, fmt.channels) + (1,) * (z.dim() - 2)
    mean = torch.tensor(fmt.mean, dtype=z.dtype, device=z.device).view(shape)
    std = torch.tensor(fmt.std, dtype=z.dtype, device=z.device).view(shape)
    return mean, std


def normalize(z: torch.Tensor) -> torch.Tensor:
    """Raw Wan VAE latent (16 or 48 channels) -> the DiT's space."""
    mean, std = _stats(z)
    return (z - mean) / std


def denormalize(z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(z)
    return z * std + mean


TIME_RATIO = 4  # the Wan VAE's time compression: one latent frame = 4 pixel frames (the first: 1)


def pixel_length_to_latent_frames(length: int) -> int:
    """Wan VAE: 1 + 4k pixel frames -> 1 + k latent frames (``(length - 1) // 4 + 1``)."""
    return (int(length) - 1) // TIME_RATIO + 1


def latent_frames_to_pixel_length(frames: int) -> int:
    """The pixel frames a latent of ``frames`` latent frames decodes to (1 + 4·(frames - 1))."""
    return 1 + TIME_RATIO * (int(frames) - 1)


def pixel_frame_to_latent_frame(frame: int) -> int:
    """The latent frame whose decode holds output frame ``frame`` (0-based): latent frame 0 is pixel frame 0, latent
    frame k >= 1 pixel frames 4k-3 .. 4k — the same count as ``pixel_length_to_latent_frames(frame)``."""
    return pixel_length_to_latent_frames(int(frame)) if int(frame) > 0 else 0


def latent_frame_to_pixel_frame(frame: int) -> int:
    """The first output frame decoded from latent frame ``frame`` (the inverse of the rule above)."""
    return 0 if int(frame) <= 0 else TIME_RATIO * (int(frame) - 1) + 1


def check_latent(z: torch.Tensor, what: str = "latent", channels: int = LATENT_CHANNELS) -> None:
    """A 5-D Wan latent with ``channels`` channels (16 for Wan 2.1 models, 48 for Wan 2.2 TI2V), finite."""
    fmt = latent_format(channels)
    if not isinstance(z, torch.Tensor) or z.dim() != 5:
        shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{what} has shape {shape}; a {fmt.name} video latent is 5-D [batch, {fmt.channels}, "
                         f"frames, height/{fmt.spatial}, width/{fmt.spatial}] (make it with WanI2VConditioning "
                         f"or an empty Wan video latent).")
    if z.shape[1] != fmt.channels:
        other = "Wan 2.2 (48-ch)" if fmt.channels == 16 else "Wan 2.1 (16-ch)"
        raise ValueError(f"{what} has {z.shape[1]} channels; the model takes {fmt.name} latents with "
                         f"{fmt.channels} (shape {list(z.shape)}). Use a {fmt.name} latent (its VAE), not an "
                         f"SD/Flux image latent or a {other} one.")
    if not torch.isfinite(z).all():
        bad = "NaN" if torch.isnan(z).any() else "Inf"
        raise ValueError(f"{what} contains {bad} values; the latent is corrupt (check the node that made it, "
                         f"e.g. a VAE run in fp16 overflowing).")


class LatentPreviewer:
    """Latent -> RGB approximation for previews when no ComfyUI previewer is available.

    Not a decoder: it projects the latent channels (16 or 48) onto their 3 principal directions (fitted once per
    video on the first frames it sees, so colours stay stable from block to block) and stretches them to
    0..255. It shows motion and layout, not true colours.
    """

    def __init__(self):
        self._basis: Optional[torch.Tensor] = None
        self._lo = self._hi = None

    def _fit(self, pixels: torch.Tensor) -> None:  # pixels [N, C]
        mean = pixels.mean(0, keepdim=True)
        centered = pixels - mean
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        basis = vh[:3].T  # [C, 3]
        proj = centered @ basis
        # fix the sign of each direction so the picture does not flip between runs
        basis = basis * torch.sign(proj.sum(0, keepdim=True) + 1e-12)
        proj = centered @ basis
        self._mean, self._basis = mean, basis
        self._lo = torch.quantile(proj, 0.01, dim=0)
        self._hi = torch.quantile(proj, 0.99, dim=0)

    def frames(self, z: torch.Tensor, scale: int = 4) -> np.ndarray:
        """``z [C, F, h, w]`` (one video) -> uint8 ``[F, h*scale, w*scale, 3]``."""
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
