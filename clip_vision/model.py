"""The CLIP transformer: one pre-LN ``Block`` (vision and text towers) and the vision tower built from it.

Each block runs eagerly with a fused q|k|v GEMM and PyTorch SDPA (the Wan path's speed), or with
``export=True`` as the plain-op graph the Axera NPU compiler takes (ONNX export of both towers).

Parameter names follow the canonical HF names except that each block holds ONE fused ``qkv`` Linear
(one GEMM instead of three); ``block_names`` / ``gather`` / ``internal_to_canonical`` translate, and are the
only place that knows about the fusion.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Optional

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


def _residual_linear(residual: torch.Tensor, h: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``residual + layer(h)`` with the residual add folded into the GEMM (addmm's beta·C): one pass less."""
    return torch.addmm(residual, h, _cast(layer.weight, h).t()).add_(_cast(layer.bias, h))


ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
# Hugging Face ``hidden_act`` names of the tanh approximation (SigLIP's ``gelu_pytorch_tanh``).
HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def _activation(h: torch.Tensor, act: str, export: bool) -> torch.Tensor:
    # QuickGELU (OpenAI CLIP) exports as Mul+Sigmoid+Mul, exact GELU (LAION, Wan) as Div+Erf+Add+Mul, the tanh
    # approximation (SigLIP) as Mul/Pow/Add/Tanh: all NPU ops.
    if act == "quick_gelu":
        return h * torch.sigmoid(1.702 * h) if export else h.mul_(torch.sigmoid(1.702 * h))
    return F.gelu(h, approximate="tanh" if act == "gelu_tanh" else "none")


class Block(nn.Module):
    """``x + attn(ln1(x)); x + mlp(ln2(x))``: the pre-LN block of every CLIP tower, vision and text.

    Two ways to run the same weights:

    * eager (default): one fused q|k|v GEMM, PyTorch SDPA, the residual adds folded into the GEMMs;
    * ``export=True``: the plain-op graph the Axera NPU compiler takes (Pulsar2 compiles plain ONNX ops only;
      SDPA can export as fused or shape-dependent subgraphs): q|k|v as a Split, MatMul → Mul(scale) →
      [Add(mask)] → Softmax → MatMul, every reshape size a Python int (static graph, no Shape/Range ops).

    ``mask`` is additive ([T, T], the text tower's causal mask) or None.
    """

    def __init__(self, width: int, heads: int, mlp_dim: int, act: str, eps: float):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads, self.act = heads, act
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, export: bool = False) -> torch.Tensor:
        if export:
            return self._plain_ops(x, mask)
        b, t, w = x.shape
        qkv = _linear(_layer_norm(x, self.layer_norm1), self.qkv)
        q, k, v = qkv.view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if mask is None else mask.to(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b * t, w)
        x = _residual_linear(x.reshape(b * t, w), attn, self.out_proj)
        h = _activation(_linear(_layer_norm(x, self.layer_norm2), self.fc1), self.act, export=False)
        return _residual_linear(x, h, self.fc2).view(b, t, w)

    def _plain_ops(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, t, w = x.shape  # traced as constants: the export input shape is static
        d = w // self.heads

        def heads(y):
            return y.reshape(b, t, self.heads, d).transpose(1, 2)

        q, k, v = (heads(y) for y in self.qkv(self.layer_norm1(x)).split(w, dim=-1))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        if mask is not None:
            scores = scores + mask
        attn = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, w)
        x = x + self.out_proj(attn)
        return x + self.fc2(_activation(self.fc1(self.layer_norm2(x)), self.act, export=True))


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.patch_embedding = nn.Conv2d(3, w, config.patch_size, stride=config.patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.empty(config.num_tokens, w))
        self.pre_layrnorm = nn.LayerNorm(w, eps=config.eps)
        self.layers = nn.ModuleList(Block(w, config.heads, config.mlp_dim, config.act, config.eps)
                                    for _ in range(config.layers))
        self.post_layernorm = nn.LayerNorm(w, eps=config.eps)
        self.visual_projection = nn.Linear(w, config.proj_dim, bias=False) if config.proj_dim else None

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be [B,3,{c.image_size},{c.image_size}], "
                             f"got {list(pixel_values.shape)}; run preprocess_images first")
        b, grid = pixel_values.shape[0], c.image_size // c.patch_size
        x = F.conv2d(pixel_values, _cast(self.patch_embedding.weight, pixel_values), stride=c.patch_size)
        # explicit sizes and no Expand for batch 1: static ONNX graph (flatten() would trace a Shape op)
        x = x.reshape(b, c.width, grid * grid).transpose(1, 2)  # [B, grid², W]
        cls = _cast(self.class_embedding, x).view(1, 1, c.width)
        if b != 1:
            cls = cls.expand(b, 1, c.width)
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
            embeds = _linear(self.pool(last), self.visual_projection)
        return VisionHidden(last, penultimate, embeds)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """post_layernorm of the CLS token; a Slice (``x[:, 0]`` would be a 0-D Gather, which the AX650 lacks)."""
        b, _, w = hidden.shape
        return _layer_norm(hidden[:, :1].reshape(b, w), self.post_layernorm)

    def penultimate(self, pixel_values: torch.Tensor, export: bool = False) -> torch.Tensor:
        """Pixels → the output of all blocks but the last [B, tokens, W]: Wan's i2v features (the NPU graph
        of a Wan-features export)."""
        x = self.embed(pixel_values)
        for block in self.layers[:-1]:
            x = block(x, export=export)
        return x

    def pooled(self, pixel_values: torch.Tensor, export: bool = False) -> torch.Tensor:
        """Pixels → post-LN CLS [B, W]: the NPU part of the tower (the projection runs on the CPU)."""
        x = self.embed(pixel_values)
        for block in self.layers:
            x = block(x, export=export)
        return self.pool(x)


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
_BLOCK_NAMES = {"layer_norm1": ["layer_norm1"], "qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                "out_proj": ["self_attn.out_proj"], "layer_norm2": ["layer_norm2"], "fc1": ["mlp.fc1"],
                "fc2": ["mlp.fc2"]}


def block_names(internal: str, canonical: str):
    """Yield ``(internal_name, [canonical names])`` of one ``Block`` under the two prefixes; the fused qkv has
    three canonical sources (q, k, v). The HF encoder-layer names are the same for the vision and text towers."""
    for module, sources in _BLOCK_NAMES.items():
        for p in ("weight", "bias"):
            yield f"{internal}{module}.{p}", [f"{canonical}{src}.{p}" for src in sources]


def internal_names(config: VisionConfig):
    """Yield ``(internal_name, [canonical names])`` for every parameter of a ``VisionTransformer``."""
    for internal, canonical in _TOP_NAMES.items():
        if internal.startswith("visual_projection") and not config.proj_dim:
            continue
        yield internal, [canonical]
    for n in range(config.layers):
        yield from block_names(f"layers.{n}.", f"vision_model.encoder.layers.{n}.")


def gather(sd: Mapping[str, torch.Tensor], names: Iterable, dtype=None, device=None, release=None) -> dict:
    """Map canonical tensors onto internal names (``names`` as ``internal_names`` yields them), fusing q|k|v.

    Every result is a fresh tensor (never an alias of ``sd``); each source is copied straight into its slot
    of the destination, so there is no transient copy even when casting or fusing. ``release(canonical_name)``
    is called once a source has been consumed, so loaders can drop file pages (peak ≈ one model).
    """
    out = {}
    for internal, sources in names:
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


def canonical_to_internal(sd: Mapping[str, torch.Tensor], config: VisionConfig, dtype=None, device=None,
                          release=None) -> dict:
    """The vision tower's canonical tensors under our parameter names (see ``gather``)."""
    return gather(sd, internal_names(config), dtype, device, release)


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
