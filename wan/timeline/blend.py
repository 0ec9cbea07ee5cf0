"""Text-embedding mixes and transitions, as Daydream Scope's embedding blender defines them
(daydreamlive/scope ``src/scope/core/pipelines/blending.py``; restated here, not copied):

* weights are normalised to sum 1 (all zero or negative: equal weights);
* a *mix* of several prompts at once ("spatial"): ``slerp`` of exactly two embeddings at ``t = w[1]``, otherwise
  the weighted sum rescaled to the weighted mean of the embeddings' norms (Frobenius norm of the whole tensor);
* a *transition* over N blocks ("temporal") from the embedding in use to the target: N embeddings at
  ``t = linspace(0, 1, N)`` (so the first block still gets the source and the last one the target), each
  ``torch.lerp`` (linear, no rescaling) or ``slerp``; a target closer than 0.01 (norm of the difference) to the
  source starts no transition;
* ``slerp`` works per token (last dimension): both embeddings normalised (+1e-8), ``ω = acos(clamp(dot))``;
  when every token's ``ω`` is below 1e-4 it falls back to linear; else ``sin((1-t)ω)/(sin ω + 1e-8)·a +
  sin(tω)/(sin ω + 1e-8)·b`` on the un-normalised embeddings.

Embeddings of different lengths are zero-padded to Wan's 512 text tokens first (the DiT pads them so anyway, and
Scope's encoder hands out 512-token embeddings, so the padded tokens take part in slerp's parallel test as there).
Everything is computed in float32.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..text.umt5 import TEXT_LEN

INTERPOLATIONS = ("linear", "slerp")
EPSILON = 1e-8
PARALLEL = 1e-4  # every token's angle below this: slerp falls back to linear
MIN_CHANGE = 0.01  # a transition target closer than this to the source starts no transition


def check_interpolation(method: str, what: str = "interpolation") -> str:
    if method not in INTERPOLATIONS:
        raise ValueError(f"{what} '{method}' is not one of {list(INTERPOLATIONS)}.")
    return method


def pad_tokens(embeddings: Sequence[torch.Tensor]) -> list:
    """``[B, L_i, D]`` tensors -> float32, all zero-padded to ``max(512, L_i)`` tokens."""
    length = max([TEXT_LEN] + [e.shape[1] for e in embeddings])
    return [F.pad(e.float(), (0, 0, 0, length - e.shape[1])) for e in embeddings]


def normalize_weights(weights: Sequence[float]) -> torch.Tensor:
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    total = w.sum()
    return w / total if total > 0 else torch.full_like(w, 1.0 / len(w))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    an = a / (a.norm(dim=-1, keepdim=True) + EPSILON)
    bn = b / (b.norm(dim=-1, keepdim=True) + EPSILON)
    omega = torch.acos(torch.clamp((an * bn).sum(-1, keepdim=True), -1.0, 1.0))
    if omega.abs().max() < PARALLEL:
        return (1.0 - t) * a + t * b
    sin = torch.sin(omega)
    return torch.sin((1.0 - t) * omega) / (sin + EPSILON) * a + torch.sin(t * omega) / (sin + EPSILON) * b


def mix(embeddings: Sequence[torch.Tensor], weights: Sequence[float], method: str = "linear") -> torch.Tensor:
    """Several prompts at once, weighted (Scope's spatial blend). One embedding comes back as it is (float32)."""
    check_interpolation(method, "mix method")
    if len(embeddings) != len(weights) or not embeddings:
        raise ValueError(f"a prompt mix needs one weight per prompt (got {len(embeddings)} prompt(s) and "
                         f"{len(weights)} weight(s)).")
    if len(embeddings) == 1:
        return embeddings[0].float()
    embeddings = pad_tokens(embeddings)
    w = normalize_weights(weights)
    if method == "slerp" and len(embeddings) == 2:
        return slerp(embeddings[0], embeddings[1], float(w[1]))
    target_norm = sum(e.norm() * wi for e, wi in zip(embeddings, w))
    out = sum(wi * e for e, wi in zip(embeddings, w))
    norm = out.norm()
    return out * (target_norm / norm) if norm > EPSILON else out


def transition(source: torch.Tensor, target: torch.Tensor, blocks: int, method: str = "linear") -> list:
    """The embeddings of the ``blocks`` blocks of a smooth change from ``source`` to ``target`` (Scope's temporal
    blend); ``[]`` when the two are closer than ``MIN_CHANGE`` (no transition: the source stays)."""
    check_interpolation(method, "blend interpolation")
    source, target = pad_tokens([source, target])
    if (target - source).norm() < MIN_CHANGE:
        return []
    out = []
    for t in torch.linspace(0, 1, steps=int(blocks)):
        out.append(slerp(source, target, float(t)) if method == "slerp" else torch.lerp(source, target, t))
    return out
