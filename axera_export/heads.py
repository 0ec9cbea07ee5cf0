"""The CPU side of the NPU/CPU split of both CLIP towers (recorded in the export manifest).

The NPU graphs end at ``post_layernorm(CLS)`` [1, width] (vision) and the final-LN hidden states
[1, 77, width] (text). The projections (one small GEMM each) and the text tower's EOT pooling run here in fp32:
a data-dependent gather is what the NPU does worst, and keeping the last GEMM in fp32 keeps quantisation
error out of the embedding, as in Axera's CLIP demos that keep the heads outside the compiled model.
CLIP's heads, as the family rules write them (``families.base``: the one place for pooling and projections).
"""

from __future__ import annotations

import numpy as np

from .families.base import linear, pool_eot_argmax as eot_pool


def vision_head(pooled: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``pooled @ visual_projection.T`` in fp32."""
    return linear(pooled, projection)


def text_head(hidden: np.ndarray, input_ids: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """EOT pooling then ``pooled @ projection.T`` (HF Linear layout), fp32."""
    return linear(eot_pool(hidden, input_ids), projection)
