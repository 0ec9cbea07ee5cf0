"""CLIP vision tower for ONNX export: pixels → post-LN CLS token (the NPU part).

Weights come in canonical Hugging Face names (``vision_model.*``, ``visual_projection.weight``) — what the
pack's ``clip_vision`` converters produce from any layout — with the ``VisionConfig`` detected there.

Split for the NPU (recorded in the manifest): the graph ends at ``post_layernorm(CLS)`` [1, width]; the
visual projection (one small GEMM) runs on the CPU in fp32 (``vision_head``) so its quantisation error never
reaches the embedding, as in Axera's CLIP demos that keep the heads outside the compiled model.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from .blocks import EncoderLayer

_HF = "vision_model."


class VisionTower(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = self.config = config
        self.grid = c.image_size // c.patch_size
        self.class_embedding = nn.Parameter(torch.empty(c.width))
        self.patch_embedding = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.empty(self.grid * self.grid + 1, c.width))
        self.pre_layrnorm = nn.LayerNorm(c.width, eps=c.eps)
        self.layers = nn.ModuleList(EncoderLayer(c.width, c.heads, c.mlp_dim, c.act, c.eps) for _ in range(c.layers))
        self.post_layernorm = nn.LayerNorm(c.width, eps=c.eps)

    def forward(self, pixel_values: torch.Tensor, fast: bool = False) -> torch.Tensor:
        c = self.config
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be [B,3,{c.image_size},{c.image_size}], "
                             f"got {list(pixel_values.shape)}")
        b = pixel_values.shape[0]
        # Conv → Reshape → Transpose; explicit sizes (flatten() would trace a Shape op)
        x = self.patch_embedding(pixel_values).reshape(b, c.width, self.grid * self.grid).transpose(1, 2)
        cls = self.class_embedding.view(1, 1, c.width)
        if b != 1:  # the export batch is 1: no Expand (whose traced size would need a Shape op)
            cls = cls.expand(b, 1, c.width)
        x = torch.cat([cls, x], dim=1)
        x = self.pre_layrnorm(x + self.position_embedding)
        for layer in self.layers:
            x = layer(x, None, fast)
        # CLS token as Slice + Reshape: x[:, 0] would be a Gather with a 0-D index, which the AX650 lacks
        return self.post_layernorm(x[:, :1].reshape(b, c.width))


def vision_tower_from_canonical(config, sd: Mapping[str, torch.Tensor]) -> VisionTower:
    """Build the export tower from canonical (HF) vision tensors; strict, so a missing key is named."""
    own = {}
    for key, value in sd.items():
        if not key.startswith(_HF):
            continue
        k = key[len(_HF):]
        if k.startswith("embeddings."):
            k = {"embeddings.class_embedding": "class_embedding",
                 "embeddings.patch_embedding.weight": "patch_embedding.weight",
                 "embeddings.position_embedding.weight": "position_embedding"}.get(k)
            if k is None:
                continue  # position_ids buffer of old HF files
        elif k.startswith("encoder."):
            k = k[len("encoder."):]
        own[k] = value.float()
    tower = VisionTower(config)
    missing, unexpected = tower.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise ValueError(f"vision weights do not fit a {config.name} tower with {config.layers} layers: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return tower.eval()


def vision_head(pooled: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """CPU side of the vision split: ``pooled @ visual_projection.T`` in fp32."""
    return np.asarray(pooled, np.float32) @ np.asarray(projection, np.float32).T
