"""The ONE image preprocessing implementation for CLIP vision (nodes, CLI and the Axera export use it).

Two modes, because the two pipelines users compare against differ numerically:

* ``"center"`` — identical to ComfyUI's ``clip_preprocess(crop=True)`` (CLIPVisionEncode, WanImageToVideo
  workflows): only when H,W ≠ size, scale the short side to ``size`` (``round``), bicubic with antialias,
  centre crop at ``(dim - size) // 2``; then quantise to 8-bit levels; then normalise.
* ``"none"`` (alias ``"squash"``) — Wan 2.1's own pipeline: bicubic squash straight to size×size
  (no crop, no antialias, ``align_corners=False``), no 8-bit rounding, then normalise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import VisionConfig

CROP_MODES = ("center", "none")
_ALIASES = {True: "center", False: "none", "center": "center", "none": "none", "squash": "none"}


def normalize_crop(crop) -> str:
    """Map ``True/False/"center"/"none"/"squash"`` to ``"center"`` or ``"none"``."""
    try:
        return _ALIASES[crop]
    except (KeyError, TypeError):
        raise ValueError(f"crop must be 'center' or 'none' (or True/False), got {crop!r}") from None


def to_rgb_bchw(images: torch.Tensor) -> torch.Tensor:
    """Validate a ComfyUI IMAGE (BHWC, float in [0,1]; HWC accepted) and return float32 RGB BCHW."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor [B,H,W,C], got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"image must be [B,H,W,C] (ComfyUI IMAGE), got shape {list(images.shape)}")
    b, h, w, c = images.shape
    if b == 0:
        raise ValueError("image batch is empty (0 images); connect a node that outputs at least one image")
    if h == 0 or w == 0:
        raise ValueError(f"image has zero size {h}x{w}")
    if c not in (1, 3, 4):
        raise ValueError(f"image has {c} channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) in the last "
                         f"dimension of [B,H,W,C] — got shape {list(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError("image contains NaN or infinite values; check the node that produced it")
    if c == 1:  # grayscale → RGB
        images = images.expand(b, h, w, 3)
    elif c == 4:  # RGBA → RGB: ComfyUI drops alpha (no compositing), so do we
        images = images[..., :3]
    return images.permute(0, 3, 1, 2).contiguous()


def preprocess_images(images_bhwc: torch.Tensor, config: VisionConfig, crop="center") -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] in [0,1] → normalised pixel values [B,3,S,S] float32 (S = config.image_size)."""
    mode = normalize_crop(crop)
    x = to_rgb_bchw(images_bhwc)
    size = config.image_size
    if mode == "center":
        h, w = x.shape[2], x.shape[3]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            new_h, new_w = round(scale * h), round(scale * w)
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True)
            top, left = (new_h - size) // 2, (new_w - size) // 2
            x = x[:, :, top:top + size, left:left + size]
        x = torch.clip(255.0 * x, 0, 255).round() / 255.0  # ComfyUI quantises to 8-bit levels
    else:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(config.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
