"""CLIP image preprocessing in numpy: the torch-free twin of ``clip_vision.preprocess_images`` for the runtime.

A board serving an exported CLIP should not import torch for one resize, so the runtime preprocesses here.
Same two modes and the same arithmetic as ``clip_vision/preprocess.py`` (the definition, which the tests use as
the oracle): ``center`` = ComfyUI's ``clip_preprocess`` (short side to ``size`` with PyTorch's antialiased
bicubic — Keys a = −0.5, support scaled by the downscale factor, as PIL — centre crop, 8-bit levels),
``none`` = Wan's squash (PyTorch bicubic a = −0.75, ``align_corners=False``, edge-clamped, no antialias).

Both resizes are separable, written as two small weight matrices: ``out = Wy @ image @ Wxᵀ`` per channel.
"""

from __future__ import annotations

import numpy as np

CROP_MODES = ("center", "none")
_ALIASES = {"center": "center", "none": "none", "squash": "none", True: "center", False: "none"}


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def antialias_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of PyTorch's ``bicubic, antialias=True`` (PIL's filter: support grows with the
    downscale factor; each row normalised to sum 1)."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)[:, None]
    lo = np.maximum(np.trunc(center - support + 0.5), 0)  # the window PyTorch sums over, per output pixel
    hi = np.minimum(np.trunc(center + support + 0.5), in_size)
    j = np.arange(in_size)[None, :]
    weights = np.where((j >= lo) & (j < hi), _cubic((j - center + 0.5) * inv, -0.5), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=weights, where=total != 0)


def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of PyTorch's ``bicubic, align_corners=False`` without antialias (a = −0.75, the
    four taps clamped at the borders)."""
    scale = in_size / out_size
    real = scale * (np.arange(out_size) + 0.5) - 0.5
    base = np.floor(real)
    t = (real - base)[:, None]
    taps = _cubic(np.concatenate([t + 1, t, 1 - t, 2 - t], axis=1), -0.75)  # [out, 4]
    cols = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.repeat(np.arange(out_size), 4), cols.ravel()), taps.ravel())
    return weights


def to_rgb_bhwc(images) -> np.ndarray:
    """A ComfyUI IMAGE (torch tensor or numpy, [B,H,W,C] or [H,W,C], C = 1/3/4, float in [0,1] or uint8) →
    float32 [B,H,W,3]; grayscale expanded, alpha dropped (as ComfyUI does)."""
    x = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"image must be [B,H,W,C] (ComfyUI IMAGE), got shape {list(x.shape)}")
    b, h, w, c = x.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"image batch is empty or has zero size: shape {list(x.shape)}")
    if c not in (1, 3, 4):
        raise ValueError(f"image has {c} channels; expected 1, 3 or 4 in the last dimension of [B,H,W,C]")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or infinite values; check what produced it")
    if c == 1:
        x = np.repeat(x, 3, axis=-1)
    return x[..., :3]


def preprocess(images, image_size: int, mean, std, crop: str = "center") -> np.ndarray:
    """IMAGE [B,H,W,C] in [0,1] → normalised pixel values float32 [B,3,S,S] (S = ``image_size``)."""
    mode = _ALIASES.get(crop)
    if mode is None:
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    x = to_rgb_bhwc(images)
    _, h, w, _ = x.shape
    size = image_size
    if mode == "center":
        if (h, w) != (size, size):
            scale = size / min(h, w)
            new_h, new_w = round(scale * h), round(scale * w)
            top, left = (new_h - size) // 2, (new_w - size) // 2
            wy = antialias_weights(h, new_h)[top:top + size]
            wx = antialias_weights(w, new_w)[left:left + size]
            x = _resize(x, wy, wx)
        x = np.round(np.clip(255.0 * x, 0, 255)) / 255.0  # ComfyUI quantises to 8-bit levels
    else:
        x = _resize(x, bicubic_weights(h, size), bicubic_weights(w, size))
    out = (x.transpose(0, 3, 1, 2) - np.asarray(mean, np.float32).reshape(1, 3, 1, 1)) \
        / np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _resize(x: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """[B,H,W,3] → [B,len(wy),len(wx),3]: per channel ``Wy @ x @ Wxᵀ`` (two BLAS matmuls), in float32."""
    planes = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # [B,3,H,W]
    out = wy.astype(np.float32) @ planes @ wx.T.astype(np.float32)
    return out.transpose(0, 2, 3, 1)
