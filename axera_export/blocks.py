"""The pre-LN transformer block both CLIP towers use, written for ONNX export to the Axera NPU.

Why our own block: Pulsar2 compiles plain ONNX ops only. PyTorch's fused attention
(``scaled_dot_product_attention``, ``nn.MultiheadAttention``) can export as fused or shape-dependent
subgraphs, so the exported path spells attention out as MatMul → Mul(scale) → [Add(mask)] → Softmax → MatMul
with every reshape size a Python int (static graph, no Shape/Range ops). The eager path (``fast=True``) uses
SDPA so that the torch side of the benchmark/parity checks is the usual PyTorch implementation.

Parameter names follow the Hugging Face CLIP encoder layer (``self_attn.q_proj`` …, ``mlp.fc1``), the
canonical layout every converter in the pack maps to.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("gelu", "quick_gelu")


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    # QuickGELU (OpenAI CLIP) exports as Mul+Sigmoid+Mul, exact GELU (LAION) as Div+Erf+Add+Mul: both NPU ops.
    if act == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, fast: bool = False) -> torch.Tensor:
        b, t, w = x.shape  # traced as constants: the export input shape is static

        def heads(y):
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if fast:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = scores + mask
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, w))


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int, act: str):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
        self.act = act
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.fc1(x), self.act))


class EncoderLayer(nn.Module):
    """x + attn(ln1(x)); x + mlp(ln2(x)) — identical in the CLIP vision and text towers."""

    def __init__(self, width: int, heads: int, mlp_dim: int, act: str, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_dim, act)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, fast: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask, fast)
        return x + self.mlp(self.layer_norm2(x))
