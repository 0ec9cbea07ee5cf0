"""Jina-CLIP v2's vision tower: EVA02 (2D rotary position embedding, SwiGLU MLP, sub-LN), pooled at CLS.

Written from the EVA02 definition as Jina's remote code builds it (``eva_model.py`` / ``rope_embeddings.py`` of
jinaai/jina-clip-implementation, read in a public single-file copy of that code; EVA-CLIP's
``eva_vit_model.py`` is the same module): ``x = cat(cls, patch_conv(pixels)) + pos_embed``; blocks
``x += γ1·attn(norm1(x)); x += γ2·mlp(norm2(x))`` (or the post-norm order); attention with separate q/k/v
projections (bias on q and v only), RoPE on every token but CLS (interleaved pairs, frequencies
``1/θ^(2i/d)`` on a ``pt_hw_seq_len`` grid stretched to the real grid when ``intp_freq``), an inner LayerNorm
before the output projection (sub-LN); SwiGLU ``w3(ffn_ln(silu(w1 x) · w2 x))``; final ``norm``, CLS token,
``head`` (a Linear, on the CPU here). LayerNorm eps 1e-6.

Layout (canonical = Jina's names under ``vision_model.``; EVA-CLIP's ``visual.`` checkpoints use the same):
``patch_embed.proj.{weight,bias}``, ``cls_token`` [1,1,W], ``pos_embed`` [1,N+1,W],
``blocks.N.{norm1, attn.{q_proj,k_proj,v_proj}.weight, attn.{q_bias,v_bias}, attn.inner_attn_ln, attn.proj,
norm2, mlp.{w1,w2,ffn_ln,w3}}`` (``attn.qkv.weight`` and ``mlp.{fc1,fc2}`` without sub-LN / SwiGLU;
``gamma_1/2`` with layer scale), ``norm``, ``head.{weight,bias}``. RoPE tables are not in the checkpoint
(non-persistent buffers): they are recomputed from the config.

Export: one static graph; RoPE as ``q·cos + (q @ R)·sin`` with a constant ±1 matrix R and a CLS row of
cos 1 / sin 0 (no Slice/Concat/Neg); SiLU as Sigmoid·Mul.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import attention, merge_heads, rotary, rotation_matrix, split_heads, strip_wrappers, layer_count

# What the checkpoint cannot tell, by default: EVA02-CLIP-L-14's vision_cfg (EVA-CLIP model_configs
# EVA02-CLIP-L-14.json: rope, pt_hw_seq_len 16, intp_freq, naiveswiglu, subln, head_width 64). A Jina-CLIP
# ``config.json`` beside the weights overrides every one of them (``vision_config_from_json``).
HEAD_WIDTH = 64
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Jina's transform.py: OPENAI_DATASET_MEAN/STD
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_MARKERS = ("blocks.0.attn.q_proj.weight", "blocks.0.attn.qkv.weight")


@dataclasses.dataclass(frozen=True)
class EvaConfig:
    name: str = dataclasses.field(default="EVA02", compare=False)
    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 2730
    swiglu: bool = True
    subln: bool = True
    rope: bool = True
    pt_hw_seq_len: int = 16
    intp_freq: bool = True
    post_norm: bool = False
    qkv_bias: bool = True
    layer_scale: bool = False
    eps: float = 1e-6
    proj_dim: Optional[int] = None  # the head's output size (None: Identity head)
    head_bias: bool = True
    mean: Sequence[float] = OPENAI_MEAN
    std: Sequence[float] = OPENAI_STD

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2 + 1

    def __post_init__(self):
        if self.width % self.heads or (self.width // self.heads) % 4:
            raise ValueError(f"EVA width {self.width} / {self.heads} heads must give a head size divisible by 4 "
                             f"(2D RoPE rotates pairs on two axes)")
        if self.rope and not self.intp_freq and self.grid != self.pt_hw_seq_len:
            raise ValueError(f"RoPE without intp_freq needs the patch grid ({self.grid}) to equal pt_hw_seq_len "
                             f"({self.pt_hw_seq_len}); set intp_freq (as EVA02/Jina do) or the right image size")


def rope_tables(config: EvaConfig, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N+1, head_dim] (row 0 = CLS: cos 1, sin 0), EVA's ``VisionRotaryEmbeddingFast`` in float64."""
    d = config.width // config.heads
    dim = d // 2  # each axis gets half of the head
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
    ft = config.grid if config.intp_freq else config.pt_hw_seq_len
    t = torch.arange(ft, dtype=torch.float64) / ft * config.pt_hw_seq_len
    f = torch.repeat_interleave(t[:, None] * freqs[None, :], 2, dim=-1)  # '... n -> ... (n r)', r=2
    g = config.grid
    grid = torch.cat([f[:, None, :].expand(g, g, dim), f[None, :, :].expand(g, g, dim)], dim=-1).reshape(g * g, d)
    cos = torch.cat([torch.ones(1, d, dtype=torch.float64), grid.cos()])
    sin = torch.cat([torch.zeros(1, d, dtype=torch.float64), grid.sin()])
    return cos.float(), sin.float()


class _Attention(nn.Module):
    def __init__(self, c: EvaConfig):
        super().__init__()
        w = c.width
        self.heads, self.subln = c.heads, c.subln
        if c.subln:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(w, w, bias=False) for _ in range(3))
        else:
            self.qkv = nn.Linear(w, 3 * w, bias=False)
        if c.qkv_bias:
            self.q_bias, self.v_bias = nn.Parameter(torch.zeros(w)), nn.Parameter(torch.zeros(w))
        else:
            self.q_bias = self.v_bias = None
        self.inner_attn_ln = nn.LayerNorm(w, eps=c.eps) if c.subln else nn.Identity()
        self.proj = nn.Linear(w, w)

    def forward(self, x, rope, export=False):
        w = x.shape[-1]
        if self.subln:
            wq, wk, wv = self.q_proj.weight, self.k_proj.weight, self.v_proj.weight
        else:
            wq, wk, wv = self.qkv.weight.split(w, dim=0)
        q, k, v = F.linear(x, wq, self.q_bias), F.linear(x, wk), F.linear(x, wv, self.v_bias)
        q, k, v = (split_heads(y, self.heads) for y in (q, k, v))
        if rope is not None:
            q, k = rotary(q, *rope), rotary(k, *rope)
        return self.proj(self.inner_attn_ln(merge_heads(attention(q, k, v, export=export))))


class _SwiGLU(nn.Module):
    def __init__(self, c: EvaConfig):
        super().__init__()
        self.w1, self.w2 = nn.Linear(c.width, c.mlp_dim), nn.Linear(c.width, c.mlp_dim)
        self.ffn_ln = nn.LayerNorm(c.mlp_dim, eps=c.eps) if c.subln else nn.Identity()
        self.w3 = nn.Linear(c.mlp_dim, c.width)

    def forward(self, x):
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class _Mlp(nn.Module):
    def __init__(self, c: EvaConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.width, c.mlp_dim)
        self.ffn_ln = nn.LayerNorm(c.mlp_dim, eps=c.eps) if c.subln else nn.Identity()
        self.fc2 = nn.Linear(c.mlp_dim, c.width)

    def forward(self, x):
        return self.fc2(self.ffn_ln(F.gelu(self.fc1(x))))


class EvaBlock(nn.Module):
    def __init__(self, c: EvaConfig):
        super().__init__()
        self.post_norm = c.post_norm
        self.norm1, self.norm2 = nn.LayerNorm(c.width, eps=c.eps), nn.LayerNorm(c.width, eps=c.eps)
        self.attn = _Attention(c)
        self.mlp = _SwiGLU(c) if c.swiglu else _Mlp(c)
        if c.layer_scale:
            self.gamma_1, self.gamma_2 = nn.Parameter(torch.ones(c.width)), nn.Parameter(torch.ones(c.width))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, rope, export=False):
        scale = (lambda g, y: y) if self.gamma_1 is None else (lambda g, y: g * y)
        if self.post_norm:
            x = x + scale(self.gamma_1, self.norm1(self.attn(x, rope, export)))
            return x + scale(self.gamma_2, self.norm2(self.mlp(x)))
        x = x + scale(self.gamma_1, self.attn(self.norm1(x), rope, export))
        return x + scale(self.gamma_2, self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, c: EvaConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size)


class EvaVisionTower(nn.Module):
    """Pixels [B,3,S,S] → normed CLS token [B, width] (the NPU part; the head runs on the CPU)."""

    def __init__(self, config: EvaConfig):
        super().__init__()
        c = self.config = config
        self.patch_embed = _PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.width))
        self.blocks = nn.ModuleList(EvaBlock(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width, eps=c.eps)
        if c.rope:
            cos, sin = rope_tables(c)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            self.register_buffer("rope_rot", rotation_matrix(c.width // c.heads, interleaved=True), persistent=False)

    def forward(self, pixel_values: torch.Tensor, export: bool = False) -> torch.Tensor:
        c = self.config
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be [B,3,{c.image_size},{c.image_size}], got "
                             f"{list(pixel_values.shape)}")
        b, g = pixel_values.shape[0], c.grid
        x = self.patch_embed.proj(pixel_values)  # a stride-p conv drops the remainder (512 px, patch 14: 36×14)
        x = x.reshape(b, c.width, g * g).transpose(1, 2)
        cls = self.cls_token if b == 1 else self.cls_token.expand(b, 1, c.width)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        rope = (self.rope_cos, self.rope_sin, self.rope_rot) if c.rope else None
        for block in self.blocks:
            x = block(x, rope, export)
        return self.norm(x)[:, :1].reshape(b, c.width)  # a Slice, not a 0-D Gather

    pooled = forward  # the export pipeline traces ``tower.pooled(pixels, export=True)`` (as for CLIP's tower)


def linear_head(pooled: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray] = None) -> np.ndarray:
    """CPU side of a tower head in fp32: ``pooled @ W.T (+ b)``; None = identity head."""
    x = np.asarray(pooled, np.float32)
    if weight is None:
        return x
    x = x @ np.asarray(weight, np.float32).T
    return x if bias is None else x + np.asarray(bias, np.float32)


@dataclasses.dataclass
class EvaWeights:
    config: EvaConfig
    state_dict: dict  # tower tensors, canonical names without the root (float32), head excluded
    head_weight: Optional[torch.Tensor]
    head_bias: Optional[torch.Tensor]
    layout: str = "jina"

    def build(self) -> EvaVisionTower:
        tower = EvaVisionTower(self.config)
        tower.load_state_dict(self.state_dict, strict=True)
        return tower.eval().requires_grad_(False)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            pooled = self.build()(pixel_values).numpy()
        hw = None if self.head_weight is None else self.head_weight.numpy()
        hb = None if self.head_bias is None else self.head_bias.numpy()
        return torch.from_numpy(linear_head(pooled, hw, hb))


@dataclasses.dataclass
class EvaOutput:
    image_embeds: torch.Tensor


class EvaVisionModel:
    """What the export pipeline asks of a vision source (``ClipVisionModel``'s fp32-CPU surface): ``config``,
    ``model.pooled``, ``encode(pixels).image_embeds`` (head applied, Matryoshka-truncated when asked)."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, weights: EvaWeights, source: str, truncate_dim: Optional[int] = None):
        self.weights, self.source, self.layout = weights, source, weights.layout
        self.truncate_dim = truncate_dim
        self.model = weights.build()

    @property
    def config(self) -> EvaConfig:
        """The tower's config with ``proj_dim`` = the embedding size the CPU head gives (the width for an
        identity head; the Matryoshka size when truncated): what ``proj_dim`` means to the export pipeline."""
        c = self.weights.config
        return dataclasses.replace(c, proj_dim=self.truncate_dim or c.proj_dim or c.width)

    def head(self) -> dict:
        """The CPU head as ``cpu_heads.npz`` entries (rows cut to ``truncate_dim``: Matryoshka)."""
        w, b = self.weights.head_weight, self.weights.head_bias
        if w is None:
            if not self.truncate_dim:
                return {}
            w = torch.eye(self.config.width)
        d = self.truncate_dim or w.shape[0]
        out = {"visual_projection": w[:d].numpy()}
        if b is not None:
            out["visual_projection_bias"] = b[:d].numpy()
        return out

    def encode(self, pixel_values: torch.Tensor) -> EvaOutput:
        with torch.inference_mode():
            pooled = self.model(pixel_values.float()).numpy()
        h = self.head()
        return EvaOutput(torch.from_numpy(linear_head(pooled, h.get("visual_projection"),
                                                      h.get("visual_projection_bias"))))


def find_root(keys) -> str:
    keys = set(keys)
    for marker in _MARKERS:
        for key in sorted(keys, key=len):
            if key.endswith(marker):
                root = key[: -len(marker)]
                if root + "cls_token" in keys and root + "patch_embed.proj.weight" in keys:
                    return root
    raise ValueError("no EVA02 vision tower found: expected Jina-CLIP keys 'vision_model.blocks.0.attn.q_proj."
                     "weight', 'vision_model.cls_token', 'vision_model.patch_embed.proj.weight' (or EVA-CLIP's "
                     f"under 'visual.'); {len(keys)} keys seen, e.g. {sorted(keys)[:5]}")


def vision_config_from_json(cfg: Mapping) -> dict:
    """EvaConfig fields from a Jina-CLIP ``config.json`` (``vision_config``: JinaCLIPVisionConfig names)."""
    v = cfg.get("vision_config", cfg) if isinstance(cfg, Mapping) else {}
    names = {"image_size": "image_size", "rope_embeddings": "rope", "pt_hw_seq_len": "pt_hw_seq_len",
             "intp_freq": "intp_freq", "post_norm": "post_norm", "naive_swiglu": "swiglu", "subln": "subln",
             "qkv_bias": "qkv_bias", "head_width": "head_width"}
    out = {ours: v[theirs] for theirs, ours in names.items() if isinstance(v, Mapping) and v.get(theirs) is not None}
    return out


def eva_weights_from_state_dict(sd: Mapping[str, torch.Tensor], overrides: Optional[Mapping] = None) -> EvaWeights:
    """An EVA02 vision state dict (any wrapper prefix; the text tower and others are ignored) → ``EvaWeights``.

    Shapes give width, depth, patch, grid, MLP size, sub-LN/SwiGLU/layer-scale/q-v-bias presence and the head;
    ``overrides`` (``vision_config_from_json``) give image size, RoPE settings, post-norm and head width.
    """
    sd = strip_wrappers(dict(sd))
    root = find_root(sd.keys())
    o = dict(overrides or {})
    tower = {k[len(root):]: v.float() for k, v in sd.items() if k.startswith(root) and "rope" not in k[len(root):]}
    width, _, patch, _ = tower["patch_embed.proj.weight"].shape
    tokens = tower["pos_embed"].shape[-2]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"{root}pos_embed has {tokens} rows; expected a square patch grid + 1 CLS token")
    image_size = int(o.get("image_size") or grid * patch)
    if image_size // patch != grid:
        raise ValueError(f"image_size {image_size} with patch {patch} gives a {image_size // patch}² grid but "
                         f"{root}pos_embed holds {grid}²")
    subln = "blocks.0.attn.q_proj.weight" in tower
    swiglu = "blocks.0.mlp.w1.weight" in tower
    mlp_dim = tower["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    head_width = int(o.get("head_width") or HEAD_WIDTH)
    head_w, head_b = tower.pop("head.weight", None), tower.pop("head.bias", None)
    config = EvaConfig(image_size=image_size, patch_size=patch, width=width,
                       layers=layer_count(tower.keys(), "blocks."), heads=max(1, width // head_width),
                       mlp_dim=mlp_dim, swiglu=swiglu, subln=subln, rope=bool(o.get("rope", True)),
                       pt_hw_seq_len=int(o.get("pt_hw_seq_len", 16)), intp_freq=bool(o.get("intp_freq", True)),
                       post_norm=bool(o.get("post_norm", False)), qkv_bias="blocks.0.attn.q_bias" in tower,
                       layer_scale="blocks.0.gamma_1" in tower,
                       proj_dim=None if head_w is None else head_w.shape[0], head_bias=head_b is not None)
    if "swiglu" in o and bool(o["swiglu"]) != swiglu:
        raise ValueError(f"config.json says naive_swiglu={o['swiglu']} but the weights have "
                         f"{'w1/w2/w3' if swiglu else 'fc1/fc2'} MLPs")
    expected = set(EvaVisionTower(config).state_dict())
    missing = sorted(expected - set(tower))
    if missing:
        raise ValueError(f"the EVA02 vision tower (root {root!r}) is incomplete: missing {len(missing)} keys such "
                         f"as {[root + m for m in missing[:5]]}")
    tower = {k: v for k, v in tower.items() if k in expected}
    return EvaWeights(config, tower, head_w, head_b, layout="jina" if root.endswith("vision_model.") else "eva")


def random_state_dict(config: EvaConfig, seed: int = 0, root: str = "vision_model.") -> dict:
    """A seeded random-init EVA02 tower + head under the real Jina key names (tests, tiny benchmarks):
    LayerNorm gains ≈1, biases and embeddings N(0, 0.02), matrices N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in EvaVisionTower(config).state_dict().items():
        if name.startswith("rope_"):
            continue
        if (p.ndim == 1 and ("norm" in name or "_ln" in name) and name.endswith("weight")) or "gamma" in name:
            t = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        elif p.ndim == 2:
            t = torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5
        else:
            t = torch.randn(p.shape, generator=g) * 0.02
        out[root + name] = t
    if config.proj_dim:
        out[root + "head.weight"] = torch.randn(config.proj_dim, config.width, generator=g) * config.width ** -0.5
        if config.head_bias:
            out[root + "head.bias"] = torch.randn(config.proj_dim, generator=g) * 0.02
    return out
