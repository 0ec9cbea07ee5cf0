"""Output checks of the sampler: a NaN latent is refused where it appears, naming the block, instead of
surfacing later as a black video or an SVD failure inside the preview."""

from __future__ import annotations

import torch


def check_finite_latent(x0: torch.Tensor, block: int, start: int, compute_dtype=None) -> None:
    """Raise if the denoised latent of a block holds NaN/Inf (one reduction over a block: negligible)."""
    if torch.isfinite(x0).all():
        return
    frames = x0.shape[2]
    dtype = str(compute_dtype).replace("torch.", "") if compute_dtype is not None else "the compute dtype"
    raise ValueError(f"the sampled latent of block {block} (latent frames {start}..{start + frames - 1}) contains "
                     f"NaN or Inf values: the model's activations overflowed in {dtype}, or an input (text "
                     f"embedding, CLIP features, image latent) holds NaN. Load the model in bf16 or fp32 and "
                     f"check the inputs.")
