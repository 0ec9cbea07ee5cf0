"""What goes through ``torch.onnx.export``: a tower in its export mode, and the vision tower's CPU side.

Both towers are the pack's own CLIP transformer (``clip_vision.model.Block``); ``ExportGraph`` runs one
with ``export=True`` so the trace is the plain-op graph Pulsar2 compiles.

Split for the NPU (recorded in the manifest): the vision graph ends at ``post_layernorm(CLS)`` [1, width];
the visual projection (one small GEMM) runs on the CPU in fp32 (``vision_head``) so its quantisation error
never reaches the embedding, as in Axera's CLIP demos that keep the heads outside the compiled model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ExportGraph(nn.Module):
    """``getattr(tower, method)(x, export=True)`` as a module: the vision tower's ``pooled`` (pixels → post-LN
    CLS) or the text tower's ``forward`` (ids → final-LN hidden states)."""

    def __init__(self, tower: nn.Module, method: str = "forward"):
        super().__init__()
        self.tower = tower.eval()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.tower, self.method)(x, export=True)


def vision_head(pooled: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """CPU side of the vision split: ``pooled @ visual_projection.T`` in fp32."""
    return np.asarray(pooled, np.float32) @ np.asarray(projection, np.float32).T
