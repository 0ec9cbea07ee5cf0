"""Graph pieces the towers share, each written so that it exports as ops on the AX650 list with static shapes.

* ``embed``: the token Gather with 1-D indices (the only Gather form the AX650 NPU supports).
* ``key_padding_bias``: the additive attention bias of padded keys, computed IN the graph from the ids
  (Equal → Cast(float) → Mul), so the board feeds ids only, like CLIP.
* ``rotation_matrix`` / ``rotary``: RoPE as ``x·cos + (x @ R)·sin`` with R a constant ±1 permutation matrix
  (no Neg/Slice/Concat; the MatMul is exact in fp32: each output is one input times ±1).
* ``masked_mean``: mean over the non-pad tokens (ReduceSum/Div), Jina's mean pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Additive mask value for padded keys: exp(-100) ≈ 4e-44 is an exact zero weight in fp32 and keeps the value
# range small for a U16-quantised Add (the same constant as CLIP's causal mask, text_model.MASK_VALUE).
MASK_VALUE = -100.0


def embed(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``table[ids]`` as a Gather with 1-D indices: [B,T] ids → [B,T,W]."""
    b, t = ids.shape
    return table[ids.reshape(b * t)].view(b, t, table.shape[1])


def is_pad(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``ids == pad_id`` compared in the ids' own dtype (a Python int would trace a Cast to int64, which the
    AX650 lacks)."""
    return ids == torch.tensor(pad_id, dtype=ids.dtype)


def key_padding_bias(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """[B,T] ids → [B,1,1,T] additive bias: MASK_VALUE where the key is padding, 0 elsewhere."""
    b, t = ids.shape
    return is_pad(ids, pad_id).to(torch.float32).mul(MASK_VALUE).view(b, 1, 1, t)


def masked_mean(hidden: torch.Tensor, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean of the hidden states of the non-pad tokens: [B,T,W], [B,T] → [B,W] (1 − pad: no Not op needed)."""
    keep = (1.0 - is_pad(ids, pad_id).to(hidden.dtype)).unsqueeze(-1)
    return (hidden * keep).sum(dim=1) / keep.sum(dim=1)


def rotation_matrix(dim: int, interleaved: bool) -> torch.Tensor:
    """R with ``x @ R == rotate_half(x)``.

    interleaved (EVA / GPT-J): pairs (x0,x1),(x2,x3)… → (-x1, x0, -x3, x2, …);
    halves (GPT-NeoX / flash-attn default): (x1 | x2) → (-x2 | x1).
    """
    r = torch.zeros(dim, dim)
    if interleaved:
        for i in range(0, dim, 2):
            r[i + 1, i] = -1.0  # out[i] = -x[i+1]
            r[i, i + 1] = 1.0  # out[i+1] = x[i]
    else:
        half = dim // 2
        for i in range(half):
            r[i + half, i] = -1.0  # out[i] = -x[i+half]
            r[i, i + half] = 1.0  # out[i+half] = x[i]
    return r


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` with cos/sin broadcast over [B,H,T,D]."""
    return x * cos + torch.matmul(x, rot) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias=None, export: bool = True) -> torch.Tensor:
    """Attention over [B,H,T,D]. ``export``: the plain-op graph (MatMul → Mul(scale) → [Add(bias)] → Softmax →
    MatMul) the NPU compiler takes; else PyTorch SDPA (the eager path: same maths, fused kernels)."""
    if not export:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, w = x.shape  # traced as constants: the export input shape is static
    return x.reshape(b, t, heads, w // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def layer_count(keys, prefix: str) -> int:
    """Blocks named ``<prefix>N.*`` must be 0..n-1; returns n (a clear error on none or gaps)."""
    found = set()
    for key in keys:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    if not found:
        raise ValueError(f"no '{prefix}N.*' blocks in the checkpoint")
    if found != set(range(max(found) + 1)):
        raise ValueError(f"the checkpoint has gaps in its '{prefix}N' blocks: found {sorted(found)}")
    return max(found) + 1


def strip_wrappers(sd: dict) -> dict:
    """Drop DataParallel/wrapper prefixes every key shares (``module.`` of OFA's cn_clip checkpoints, …)."""
    out = dict(sd)
    for prefix in ("module.", "model.", "clip_model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out
