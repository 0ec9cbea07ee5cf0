"""Few-step flow matching as the causal Wan models (Self-Forcing, CausVid, LongLive) were distilled.

The one place for the timestep-shift formula. Flow convention (Wan / ComfyUI CONST): ``x_t = (1-σ)·x0 + σ·ε``,
the model predicts the flow ``ε - x0`` at timestep ``1000·σ``, so ``x0 = x_t - σ·flow``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

DEFAULT_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0


def shift_sigma(sigma, shift: float):
    """ComfyUI's / Wan's shifted flow sigma: ``shift·σ / (1 + (shift-1)·σ)`` (identity at shift 1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def parse_steps(steps: Union[str, Sequence[float]]) -> list[float]:
    """``"1000,750,500,250"`` -> ``[1000.0, 750.0, 500.0, 250.0]``. A trailing 0 (CausVid lists end in 0) is
    dropped: the clean pass at t=0 after each block is automatic."""
    if isinstance(steps, str):
        parts = [p.strip() for p in steps.replace(";", ",").split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"step list '{steps}' must be comma-separated numbers between 0 and 1000, "
                             f"e.g. '1000,750,500,250'.") from None
    else:
        values = [float(v) for v in steps]
    while values and values[-1] == 0:
        values.pop()
    if not values:
        raise ValueError("the step list is empty; give denoising timesteps such as '1000,750,500,250'.")
    if any(not (0 < v <= 1000) for v in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"step list {values} must be strictly decreasing timesteps in (0, 1000], "
                         f"e.g. '1000,750,500,250'.")
    return values


def denoising_sigmas(steps: Union[str, Sequence[float]], shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Sigmas (float64) of the step list warped by ``shift``: [1000,750,500,250] at shift 5 ->
    [1.0, 0.9375, 0.8333, 0.625] (timesteps 1000, 937.5, 833.3, 625 — Self-Forcing's warped list)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0 (got {shift}); Self-Forcing/LongLive use 5.0, CausVid 8.0.")
    raw = torch.tensor(parse_steps(steps), dtype=torch.float64) / 1000.0
    return shift_sigma(raw, float(shift))


def timestep(sigma) -> torch.Tensor:
    """Model timestep for a sigma (ComfyUI: multiplier 1000, no shift at this point)."""
    return torch.as_tensor(sigma, dtype=torch.float64) * 1000.0


def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x_t.double() - float(sigma) * flow.double()).to(x_t.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    return ((1 - float(sigma)) * x0.double() + float(sigma) * noise.double()).to(x0.dtype)
