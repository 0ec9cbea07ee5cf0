"""Dtype names users type (node widgets, CLI flags) → torch dtypes: the one table and the one resolver every
loader reads (CLIP vision, CLIP text, Wan, the KV cache)."""

from typing import Optional

import torch

DTYPE_BY_NAME = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DEFAULT_NAMES = ("default", "auto")  # "keep the file's / the model's dtype" where a loader allows it


def resolve_dtype(dtype, allow_default: bool = False) -> Optional[torch.dtype]:
    """A dtype name or torch dtype → torch dtype; with ``allow_default``, None/"default"/"auto" → None."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() in DEFAULT_NAMES):
        if allow_default:
            return None
    elif isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in DTYPE_BY_NAME:
        return DTYPE_BY_NAME[dtype.strip().lower()]
    names = ("default", "auto") + tuple(DTYPE_BY_NAME) if allow_default else tuple(DTYPE_BY_NAME)
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)} (or a floating torch dtype).")
