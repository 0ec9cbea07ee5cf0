"""Wan's 3D rotary position embedding (frame, height, width) with an absolute frame offset.

Per head dim d (128 in Wan 2.1) the d/2 rotation pairs are split into frame / height / width groups of
(d - 4*(d//6))/2, d//6, d//6 pairs (22, 21, 21); each group has its own frequencies 1/10000^(2i/n_axis).
Pair (x[2i], x[2i+1]) is rotated by the angle ``position * freq``. Angles are computed in float64 from the
position directly (Wan tabulates positions 0..1023; computing them is identical there and keeps working for
frame positions past 1023 in long causal videos).

Causal inference needs the *absolute* frame index: a block starting at latent frame 30 uses frame positions
30, 31, 32 for its queries and for the keys it writes into the cache, whatever the cache window holds. The first
position may be fractional (LongLive 2.0's multi-shot RoPE offset ``shot·φ`` need not be a whole number).
"""

from __future__ import annotations

from functools import lru_cache

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of rotation pairs for (frame, height, width)."""
    hw = head_dim // 6
    return (head_dim - 4 * hw) // 2, hw, hw


def _inv_freq(pairs: int, axis_dim: int) -> torch.Tensor:
    return 1.0 / torch.pow(10000.0, torch.arange(0, axis_dim, 2, dtype=torch.float64)[:pairs] / axis_dim)


# A block uses the same table for all its passes (steps + clean pass), then moves on: a tiny cache keeps
# memory flat however many blocks a video has.
@lru_cache(maxsize=4)
def _cos_sin(head_dim: int, start_frame, frames: int, height: int, width: int, device: str):
    pf, ph, pw = axis_pairs(head_dim)
    f = torch.arange(frames, dtype=torch.float64, device=device) + start_frame  # exact for whole numbers
    h = torch.arange(height, dtype=torch.float64, device=device)
    w = torch.arange(width, dtype=torch.float64, device=device)
    ang_f = torch.outer(f, _inv_freq(pf, 2 * pf).to(device))  # [F, pf]
    ang_h = torch.outer(h, _inv_freq(ph, 2 * ph).to(device))
    ang_w = torch.outer(w, _inv_freq(pw, 2 * pw).to(device))
    angles = torch.cat([
        ang_f[:, None, None, :].expand(frames, height, width, pf),
        ang_h[None, :, None, :].expand(frames, height, width, ph),
        ang_w[None, None, :, :].expand(frames, height, width, pw),
    ], dim=-1).reshape(frames * height * width, 1, pf + ph + pw)  # [L, 1 (heads), d/2]
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_cos_sin(head_dim: int, start_frame, frames: int, height: int, width: int,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[L, 1, head_dim/2]`` (float64 maths, float32 result) for a grid of tokens
    ``frames x height x width`` (patch units) whose first frame has absolute index ``start_frame`` (a whole
    number, or a fractional position)."""
    device = torch.device(device if device is not None else "cpu")
    start_frame = int(start_frame) if float(start_frame).is_integer() else float(start_frame)
    if device.type == "mps":  # no float64 there: compute on the CPU and move
        cos, sin = _cos_sin(head_dim, start_frame, int(frames), int(height), int(width), "cpu")
        return cos.to(device), sin.to(device)
    return _cos_sin(head_dim, start_frame, int(frames), int(height), int(width), str(device))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, L, heads, head_dim]`` pairwise; computed in float32, returned in x's dtype."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
