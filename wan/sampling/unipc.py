"""UniPC multistep flow solver, the per-block step rule of LongLive 2.0 (Wan 2.2 TI2V-5B).

LongLive 2.0 does not run the Self-Forcing rule (x0, then fresh noise to the next σ): every block starts a new
UniPC solver (order 2, B(h) = e^h - 1 ("bh2"), updates on the predicted x0, lower order on the final step,
corrector on every step after the first) over ``n`` steps, deterministic after the block's initial noise.

Schedule (``n`` steps, shift ``s``): ``σ_i`` = the shift formula applied to ``linspace(0.999, 0, n + 1)[:-1]``
(0.999 = the largest σ of a 1000-point training grid), then a final σ = 0. The model is fed the *integer*
timestep ``floor(1000·σ_i)`` while the solver uses ``σ_i`` itself (4 steps at shift 5: t = 999, 937, 833, 624).

Written from the UniPC paper's update rule (Zhao et al. 2023, predictor UniP-2 with ρ = 1/2, corrector UniC
solved from the B(h) linear system) in λ = log(α/σ), with α = 1 - σ for flow matching.
"""

from __future__ import annotations

import math
from typing import List

import torch

from .scheduler import shift_sigma

SOLVER_ORDER = 2
TRAIN_SIGMA_MAX = float(torch.tensor(0.999, dtype=torch.float32))  # 1 - 1/1000 of the training grid, as stored


def unipc_schedule(num_steps: int, shift: float) -> "tuple[list[float], list[float]]":
    """``(model timesteps, sigmas)``: ``num_steps`` integer timesteps and ``num_steps + 1`` sigmas (last 0)."""
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"the UniPC solver needs at least 1 step (got {num_steps}).")
    if shift <= 0:
        raise ValueError(f"shift must be > 0 (got {shift}); LongLive 2.0 uses 5.0.")
    raw = torch.linspace(TRAIN_SIGMA_MAX, 0.0, n + 1, dtype=torch.float64)[:-1]
    sigmas = shift_sigma(raw, float(shift))
    timesteps = torch.floor(sigmas * 1000.0).tolist()
    # the solver works with the float32 sigmas the reference stores
    stored = sigmas.to(torch.float32).double().tolist() + [0.0]
    return timesteps, stored


def _lam(sigma: float) -> float:
    return math.inf if sigma == 0 else math.log(1.0 - sigma) - math.log(sigma)


class UniPCSolver:
    """One block's solver state. ``step(i, x, flow)`` turns the model's flow at step ``i`` into the sample
    for step ``i + 1`` (the clean sample after the last step)."""

    def __init__(self, sigmas: List[float]):
        self.sigmas = list(sigmas)
        self.steps = len(self.sigmas) - 1
        self.x0s: List[torch.Tensor] = []  # the last SOLVER_ORDER x0 predictions, newest last
        self.index = 0  # the step expected next
        self.last_sample = None
        self.order = 0
        self.warm = 0  # steps done, capped at SOLVER_ORDER (multistep warm-up)

    def _coeffs(self, s0: float, t: float):
        h = _lam(t) - _lam(s0)
        hh = -h
        phi1 = math.expm1(hh)  # h·φ1(h) = e^{-h} - 1 on the x0 form; equal to B(h) for bh2
        return h, hh, phi1, phi1

    def _base(self, x, s0: float, t: float, m0):
        _, _, phi1, _ = self._coeffs(s0, t)
        return (t / s0) * x - (1.0 - t) * phi1 * m0

    def _correct(self, x_t, model_t):
        """UniC: refine the current sample with the model output just computed at it."""
        i, p = self.index, self.order  # this step's index; order of the predictor that produced x_t
        s0, t = self.sigmas[i - 1], self.sigmas[i]
        h, hh, phi1, bh = self._coeffs(s0, t)
        m0 = self.x0s[-1]
        rks, d1s = [], []
        for k in range(1, p):
            rk = (_lam(self.sigmas[i - 1 - k]) - _lam(s0)) / h
            rks.append(rk)
            d1s.append((self.x0s[-1 - k] - m0) / rk)
        rks.append(1.0)
        b, hphi, fact = [], phi1 / hh - 1.0, 1
        for k in range(1, p + 1):
            b.append(hphi * fact / bh)
            fact *= k + 1
            hphi = hphi / hh - 1.0 / fact
        if p == 1:
            rhos = [0.5]
        else:
            r = torch.tensor([[rk ** (k - 1) for rk in rks] for k in range(1, p + 1)], dtype=torch.float64)
            rhos = torch.linalg.solve(r, torch.tensor(b, dtype=torch.float64)).tolist()
        res = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(x_t))
        res = res + rhos[-1] * (model_t - m0)
        return (self._base(self.last_sample, s0, t, m0) - (1.0 - t) * bh * res).to(x_t.dtype)

    def _predict(self, x):
        """UniP: extrapolate from the newest x0 predictions to the next sigma."""
        i = self.index
        s0, t = self.sigmas[i], self.sigmas[i + 1]
        m0 = self.x0s[-1]
        out = self._base(x, s0, t, m0)
        if self.order == 2:
            h, _, _, bh = self._coeffs(s0, t)
            rk = (_lam(self.sigmas[i - 1]) - _lam(s0)) / h
            out = out - (1.0 - t) * bh * 0.5 * (self.x0s[-2] - m0) / rk
        return out.to(x.dtype)

    def step(self, i: int, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        if i != self.index or i >= self.steps:
            raise RuntimeError(f"UniPC solver: step {i} called out of order (expected {self.index} of "
                               f"{self.steps}).")
        model_x0 = x - self.sigmas[i] * flow.to(x.dtype)
        if i > 0:
            x = self._correct(x, model_x0)
        self.x0s = (self.x0s + [model_x0])[-SOLVER_ORDER:]
        self.order = min(SOLVER_ORDER, self.steps - i, self.warm + 1)  # lower order at the end and at warm-up
        self.last_sample = x
        self.warm = min(self.warm + 1, SOLVER_ORDER)
        out = self._predict(x)
        self.index += 1
        return out
