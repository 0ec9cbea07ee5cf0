"""The CPU side of the NPU/CPU split of both CLIP towers (recorded in the export manifest).

The NPU graphs end at ``post_layernorm(CLS)`` [1, width] (vision) and the final-LN hidden states
[1, 77, width] (text). The projections (one small GEMM each) and the text tower's EOT pooling run here in fp32:
a data-dependent gather is what the NPU does worst, and keeping the last GEMM in fp32 keeps quantisation
error out of the embedding, as in Axera's CLIP demos that keep the heads outside the compiled model.
"""

from __future__ import annotations

import numpy as np


def vision_head(pooled: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``pooled @ visual_projection.T`` in fp32."""
    return np.asarray(pooled, np.float32) @ np.asarray(projection, np.float32).T


def eot_pool(hidden: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    """Hidden state at the end-of-text token of each row ([B,T,W], [B,T] → [B,W]); the end-of-text id is
    the largest in CLIP's vocabulary, so it sits at ``argmax(ids)``."""
    index = np.asarray(input_ids).astype(np.int64).argmax(axis=-1)
    return np.asarray(hidden)[np.arange(hidden.shape[0]), index]


def text_head(hidden: np.ndarray, input_ids: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """EOT pooling then ``pooled @ projection.T`` (HF Linear layout), fp32."""
    return eot_pool(hidden, input_ids).astype(np.float32) @ np.asarray(projection, np.float32).T
