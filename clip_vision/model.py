"""Our CLIP vision transformer: pre-LN ViT with fused q|k|v and PyTorch SDPA attention.

Parameter names follow the canonical HF names except that each block holds ONE fused ``qkv`` Linear
(one GEMM instead of three); ``canonical_to_internal`` / ``internal_to_canonical`` translate, and are the
only place that knows about the fusion.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig


@dataclasses.dataclass
class VisionHidden:
    last_hidden_state: Optional[torch.Tensor]  # output of the last block, no post-LN
    penultimate_hidden_states: torch.Tensor  # output of all blocks but the last, no LN (Wan's clip_fea)
    image_embeds: Optional[torch.Tensor]  # visual_projection(post_layernorm(CLS of last)); None w/o projection


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    # Half-precision LayerNorm statistics lose accuracy: normalise in fp32 like OpenCLIP and Wan do.
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(),
                            norm.eps).to(x.dtype)
    return F.layer_norm(x, norm.normalized_shape, _cast(norm.weight, x), _cast(norm.bias, x), norm.eps)


def _cast(t: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    # Weights stored in fp16 on a CPU are computed in fp32 (CPUs lack fast fp16 GEMMs); ComfyUI core does
    # the same ("manual cast"), so our numbers match core's.
    return t if t is None or t.dtype == like.dtype else t.to(like.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, _cast(layer.weight, x), _cast(layer.bias, x))


class Block(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        w = config.width
        self.heads = config.heads
        self.quick_gelu = config.act == "quick_gelu"
        self.layer_norm1 = nn.LayerNorm(w, eps=config.eps)
        self.qkv = nn.Linear(w, 3 * w)
        self.out_proj = nn.Linear(w, w)
        self.layer_norm2 = nn.LayerNorm(w, eps=config.eps)
        self.fc1 = nn.Linear(w, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        qkv = _linear(_layer_norm(x, self.layer_norm1), self.qkv)
        q, k, v = qkv.view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * t, w)
        x = _residual_linear(x.reshape(b * t, w), attn, self.out_proj)
        h = _linear(_layer_norm(x, self.layer_norm2), self.fc1)
        h = h.mul_(torch.sigmoid(1.702 * h)) if self.quick_gelu else F.gelu(h)
        return _residual_linear(x, h, self.fc2).view(b, t, w)


def _residual_linear(residual: torch.Tensor, h: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``residual + layer(h)`` with the residual add folded into the GEMM (addmm's beta·C): one pass less."""
    return torch.addmm(residual, h, _cast(layer.weight, h).t()).add_(_cast(layer.bias, h))


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.patch_embedding = nn.Conv2d(3, w, config.patch_size, stride=config.patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.empty(config.num_tokens, w))
        self.pre_layrnorm = nn.LayerNorm(w, eps=config.eps)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.post_layernorm = nn.LayerNorm(w, eps=config.eps)
        self.visual_projection = nn.Linear(w, config.proj_dim, bias=False) if config.proj_dim else None

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be [B,3,{c.image_size},{c.image_size}], "
                             f"got {list(pixel_values.shape)}; run preprocess_images first")
        x = F.conv2d(pixel_values, _cast(self.patch_embedding.weight, pixel_values), stride=c.patch_size)
        x = x.flatten(2).transpose(1, 2)  # [B, grid², W]
        cls = _cast(self.class_embedding, x).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + _cast(self.position_embedding, x)
        return _layer_norm(x, self.pre_layrnorm)

    def forward(self, pixel_values: torch.Tensor, penultimate_only: bool = False) -> VisionHidden:
        """Run the tower. ``penultimate_only`` stops after the first ``layers-1`` blocks (all Wan needs)."""
        x = self.embed(pixel_values)
        for block in self.layers[:-1]:
            x = block(x)
        penultimate = x
        if penultimate_only or len(self.layers) == 0:
            return VisionHidden(None, penultimate, None)
        last = self.layers[-1](x)
        embeds = None
        if self.visual_projection is not None:
            embeds = _linear(_layer_norm(last[:, 0], self.post_layernorm), self.visual_projection)
        return VisionHidden(last, penultimate, embeds)


_TOP_NAMES = {  # internal → canonical, outside blocks
    "class_embedding": "vision_model.embeddings.class_embedding",
    "patch_embedding.weight": "vision_model.embeddings.patch_embedding.weight",
    "position_embedding": "vision_model.embeddings.position_embedding.weight",
    "pre_layrnorm.weight": "vision_model.pre_layrnorm.weight",
    "pre_layrnorm.bias": "vision_model.pre_layrnorm.bias",
    "post_layernorm.weight": "vision_model.post_layernorm.weight",
    "post_layernorm.bias": "vision_model.post_layernorm.bias",
    "visual_projection.weight": "visual_projection.weight",
}
_BLOCK_NAMES = {"layer_norm1": "layer_norm1", "out_proj": "self_attn.out_proj", "layer_norm2": "layer_norm2",
                "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def internal_names(config: VisionConfig):
    """Yield ``(internal_name, [canonical names])``; the fused qkv has three canonical sources (q, k, v)."""
    for internal, canonical in _TOP_NAMES.items():
        if internal.startswith("visual_projection") and not config.proj_dim:
            continue
        yield internal, [canonical]
    for n in range(config.layers):
        hf = f"vision_model.encoder.layers.{n}."
        for p in ("weight", "bias"):
            yield f"layers.{n}.layer_norm1.{p}", [f"{hf}layer_norm1.{p}"]
            yield f"layers.{n}.qkv.{p}", [f"{hf}self_attn.{x}_proj.{p}" for x in "qkv"]
        for internal, canonical in _BLOCK_NAMES.items():
            if internal == "layer_norm1":
                continue
            for p in ("weight", "bias"):
                yield f"layers.{n}.{internal}.{p}", [f"{hf}{canonical}.{p}"]


def canonical_to_internal(sd: Mapping[str, torch.Tensor], config: VisionConfig, dtype=None, device=None,
                          release=None) -> dict:
    """Map canonical tensors onto our parameter names, fusing q|k|v, casting as it goes.

    Every result is a fresh tensor (never an alias of ``sd``); each source is copied straight into its slot
    of the destination, so there is no transient copy even when casting or fusing. ``release(canonical_name)``
    is called once a source has been consumed, so loaders can drop file pages (peak ≈ one model).
    """
    out = {}
    for internal, sources in internal_names(config):
        parts = [sd[name] for name in sources]
        rows = sum(p.shape[0] for p in parts) if parts[0].ndim else None
        shape = parts[0].shape if rows is None else (rows,) + tuple(parts[0].shape[1:])
        tensor = torch.empty(shape, dtype=dtype or parts[0].dtype, device=device or parts[0].device)
        row = 0
        for part in parts:
            if rows is None:
                tensor.copy_(part)
            else:
                tensor[row:row + part.shape[0]].copy_(part)
                row += part.shape[0]
        out[internal] = tensor
        if release is not None:
            for name in sources:
                release(name)
    return out


def internal_to_canonical(module: VisionTransformer) -> dict:
    """Our parameters under canonical HF/ComfyUI names (q, k, v split back out as views)."""
    own = dict(module.named_parameters())
    out = {}
    for internal, sources in internal_names(module.config):
        tensor = own[internal].detach()
        parts = tensor.chunk(3, dim=0) if len(sources) == 3 else (tensor,)
        out.update(zip(sources, parts))
    return out


def build_empty(config: VisionConfig) -> VisionTransformer:
    """The module on the meta device: no memory until real tensors are assigned with load_state_dict(assign)."""
    with torch.device("meta"):
        return VisionTransformer(config)
