"""Few-step flow matching exactly as the causal Wan models (Self-Forcing, CausVid, LongLive, Causal Forcing,
Rolling/Reward Forcing, Krea) were distilled and are run by their authors.

The one place for the timestep-shift formula and the step-list rules. Flow convention (Wan / ComfyUI CONST):
``x_t = (1-σ)·x0 + σ·ε``, the model predicts the flow ``ε - x0``, so ``x0 = x_t - σ·flow``.

Upstream rule (their ``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`` with
``set_timesteps(1000)``): a float32 grid of 1000 points ``σ_i = shift·s_i / (1 + (shift-1)·s_i)``,
``s = linspace(1, 0, 1001)[:-1]``, timesteps ``1000·σ_i``. A step list of integers is used two ways:

* **warped** (``warp_denoising_step: true``: Self-Forcing, LongLive, Causal Forcing, Rolling/Reward Forcing;
  Krea's realtime server warps its ``1000,750,500,250,0`` the same way):
  step ``k`` becomes the grid timestep ``timesteps[1000 - k]`` — [1000,750,500,250] at shift 5 gives
  t = [1000, 937.5, 833.3, 625];
* **unwarped** (CausVid ``[1000,757,522]`` at shift 8; Krea's offline config ``[1000,937,833,625,0]``): the integer
  ``k`` itself is fed to the model as its timestep.

In both cases σ (for ``x0 = x_t - σ·flow`` and for re-noising) is the σ of the grid point *nearest* to the
timestep, so for unwarped lists σ is not ``t/1000`` and depends on the shift.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence, Union

import torch

DEFAULT_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0
GRID_POINTS = 1000  # num_train_timesteps of every causal Wan trainer
MAX_STEP_COUNT = 50  # a lone integer up to this is a number of steps, not a timestep


def shift_sigma(sigma, shift: float):
    """ComfyUI's / Wan's shifted flow sigma: ``shift·σ / (1 + (shift-1)·σ)`` (identity at shift 1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_grid(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas, timesteps)`` of the upstream 1000-point grid, float32 like theirs (so the values are
    bit-identical to what their scheduler computes)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0 (got {shift}); Self-Forcing/LongLive use 5.0, CausVid 8.0.")
    s = torch.linspace(1.0, 0.0, GRID_POINTS + 1, dtype=torch.float32)[:-1]
    sigmas = float(shift) * s / (1 + (float(shift) - 1) * s)
    return sigmas, sigmas * GRID_POINTS


def nearest_sigma(timestep: float, shift: float) -> float:
    """σ of the grid point nearest to ``timestep`` (upstream's ``argmin |timesteps - t|`` lookup, done in
    float64 as their flow->x0 conversion does)."""
    sigmas, timesteps = flow_grid(shift)
    i = int(torch.argmin((timesteps.double() - float(timestep)).abs()))
    return float(sigmas[i])


def expand_step_count(count: int) -> list[int]:
    """``count`` evenly spaced timesteps from 1000, truncated to integers: 4 -> [1000, 750, 500, 250]
    (Self-Forcing, LongLive, Causal Forcing 4-step), 2 -> [1000, 500] (Causal Forcing++ 2-step),
    5 -> [1000, 800, 600, 400, 200] (Rolling Forcing), 1 -> [1000]."""
    return [int(v) for v in torch.linspace(1000.0, 0.0, count + 1, dtype=torch.float32)[:-1].tolist()]


def _is_count(values: list[float], text: bool) -> bool:
    return text and len(values) == 1 and values[0] == int(values[0]) and 1 <= values[0] <= MAX_STEP_COUNT


def parse_steps(steps: Union[str, Sequence[float]], warp: bool = True) -> list[int]:
    """The integer timestep list of a ``steps`` value.

    * ``"1000,750,500,250"`` -> ``[1000, 750, 500, 250]``. A trailing 0 is a last step **at t = 0** (σ the
      grid's smallest, ≈0.005 at shift 5, for the re-noise before it and x0 after it), as Self-Forcing's
      ``CausalInferencePipeline`` and Krea's realtime server run a list that ends in 0 (Krea's default,
      ``1000,750,500,250,0`` warped). CausVid's pipeline drops its list's trailing 0 instead, so the CausVid
      preset leaves it out.
    * a lone whole number from 1 to 50 (``"4"``) is a step **count**, expanded by :func:`expand_step_count`;
      only with ``warp`` on (an evenly spaced unwarped list is no family's schedule).
    """
    is_text = isinstance(steps, str)
    if is_text:
        parts = [p for p in re.split(r"[,;\s]+", steps.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"steps '{steps}' must be a step count such as '4' or comma-separated timesteps "
                             f"between 1 and 1000 such as '1000,750,500,250'.") from None
    else:
        values = [float(v) for v in steps]
    if _is_count(values, is_text):
        if not warp:
            raise ValueError(f"steps '{steps.strip()}' is a step count; with warp off type the timesteps "
                             f"themselves, e.g. '1000,757,522' (CausVid).")
        return expand_step_count(int(values[0]))
    if len(values) == 1 and values[0] == 0:
        raise ValueError("steps '0': give a step count from 1 to 50 such as '4', or timesteps such as "
                         "'1000,750,500,250'.")
    if not values:
        raise ValueError("the step list is empty; give a step count such as '4' or timesteps such as "
                         "'1000,750,500,250'.")
    if any(v != int(v) for v in values):
        raise ValueError(f"step list {values} must hold whole timesteps (the authors' lists are integers), "
                         f"e.g. '1000,750,500,250'.")
    values = [int(v) for v in values]
    if any(not (0 < v <= 1000) for v in values[:-1]) or not 0 <= values[-1] <= 1000 \
            or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"step list {values} must be strictly decreasing timesteps in (0, 1000], only the last "
                         f"may be 0, e.g. '1000,750,500,250' or '1000,750,500,250,0'.")
    return values


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per denoising step: the timestep the model is given and the σ used for x0 and re-noising."""

    timesteps: tuple
    sigmas: tuple

    def __len__(self) -> int:
        return len(self.sigmas)


def denoising_schedule(steps: Union[str, Sequence[float]], shift: float = DEFAULT_SHIFT,
                       warp: bool = True) -> Schedule:
    """The upstream schedule of a step list (see the module docstring)."""
    values = parse_steps(steps, warp)
    if warp:  # timesteps[1000 - k]; k = 1000 -> the grid's first point
        _, timesteps = flow_grid(shift)
        ts = [float(timesteps[GRID_POINTS - k]) if k else 0.0 for k in values]  # the grid padded with a 0
    else:
        ts = [float(k) for k in values]
    return Schedule(tuple(ts), tuple(nearest_sigma(t, shift) for t in ts))


def explicit_schedule(sigmas: Sequence[float]) -> Schedule:
    """The schedule of explicit sigmas (a ComfyUI SIGMAS list: BasicScheduler, ManualSigmas, ...): one step per
    sigma but the last, which must be 0 (a block is finished clean before it is cached). Step ``j`` runs the
    model at timestep ``1000·σ_j`` (ComfyUI's flow ``sigma -> timestep``, no shift: the list is already
    shifted), takes ``x0 = x - σ_j·flow`` and re-noises to ``σ_{j+1}``, as core's ``ar_video`` sampler does.
    ``[1, 0.9375, 0.8333, 0.625, 0]`` (float32) is exactly ``denoising_schedule("1000,750,500,250", 5)``."""
    values = [float(v) for v in (sigmas.flatten().tolist() if torch.is_tensor(sigmas) else sigmas)]
    if len(values) < 2 or values[-1] != 0.0:
        raise ValueError(f"explicit sigmas {values}: give at least one step and end the list with 0 (a causal "
                         f"block must finish clean before it is cached), e.g. 1.0, 0.9375, 0.8333, 0.625, 0.")
    steps = values[:-1]
    if any(not 0.0 < v <= 1.0 for v in steps) or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"explicit sigmas {values} must be strictly decreasing flow sigmas in (0, 1] before the "
                         f"closing 0 (a Wan model's scheduler output, e.g. BasicScheduler or ManualSigmas).")
    # the product in float32, as ComfyUI's model_sampling.timestep and the upstream grid both compute it
    timesteps = (torch.tensor(steps, dtype=torch.float32) * GRID_POINTS).tolist()
    return Schedule(tuple(timesteps), tuple(steps))


def denoising_sigmas(steps: Union[str, Sequence[float]], shift: float = DEFAULT_SHIFT,
                     warp: bool = True) -> torch.Tensor:
    """Sigmas (float64) of :func:`denoising_schedule`: [1000,750,500,250] at shift 5, warped ->
    [1.0, 0.9375, 0.8333, 0.625]."""
    return torch.tensor(denoising_schedule(steps, shift, warp).sigmas, dtype=torch.float64)


def timestep(sigma) -> torch.Tensor:
    """Model timestep for a sigma (ComfyUI: multiplier 1000, no shift at this point)."""
    return torch.as_tensor(sigma, dtype=torch.float64) * 1000.0


def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x_t.double() - float(sigma) * flow.double()).to(x_t.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    return ((1 - float(sigma)) * x0.double() + float(sigma) * noise.double()).to(x0.dtype)
