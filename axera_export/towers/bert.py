"""Chinese-CLIP's text tower: BERT (post-LN), pooled at [CLS], projected on the CPU.

Written from the definitions (OFA-Sys/Chinese-CLIP ``cn_clip/clip/modeling_bert.py`` + ``model.py``
``encode_text``; transformers' ``ChineseCLIPTextModel``): embeddings = word[ids] + position[0..T) +
token_type[0] → LayerNorm; each layer ``x = LN(x + attn(x)); x = LN(x + fc2(gelu(fc1(x))))`` with the padded
keys masked (pad id 0, ``[PAD]``); the text embedding is ``hidden[:, 0] @ text_projection``.

Layouts (the ONE place that knows them for this tower; canonical = HF names without the ``text_model.`` root):

* HF ``ChineseCLIPModel`` — ``text_model.embeddings.{word,position,token_type}_embeddings.weight``,
  ``text_model.embeddings.LayerNorm``, ``text_model.encoder.layer.N.attention.self.{query,key,value}``,
  ``…attention.output.{dense,LayerNorm}``, ``…intermediate.dense``, ``…output.{dense,LayerNorm}``;
  ``text_projection.weight`` [proj, width] (a Linear, no bias); ``logit_scale``.
* OFA-Sys ``cn_clip`` (``clip_cn_vit-*.pt``: ``{"state_dict": {"module.…"}}``) — the same BERT names under
  ``bert.`` (plus an unused ``bert.pooler``); ``text_projection`` [width, proj] used as ``x @ P``; ``logit_scale``.

NPU/CPU split: the graph maps int32 ids [1, T] to the [CLS] hidden state [1, width] (a Slice, no data-dependent
gather); the projection runs on the CPU in fp32 (``heads``), like CLIP's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import attention, embed, key_padding_bias, layer_count, merge_heads, split_heads, strip_wrappers

# cn_clip's ``tokenize(texts, context_length=52)`` default (OFA-Sys/Chinese-CLIP cn_clip/clip/utils.py) and the
# 1×52 text model AXERA ships (AXERA-TECH/libclip.axera README: cnclip_vit_l14_336px_text_u16.axmodel).
CONTEXT_LENGTH = 52
PAD_ID = 0  # [PAD] in Chinese-CLIP's vocab.txt; cn_clip masks keys with ``text.ne(pad_index)``
LAYOUTS = ("hf", "cn_clip")
_ROOTS = {"hf": "text_model.", "cn_clip": "bert."}
_MARKER = "encoder.layer.0.attention.self.query.weight"
ACTIVATIONS = ("gelu", "gelu_new", "relu")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    max_positions: int = 512
    type_vocab_size: int = 2
    context_length: int = CONTEXT_LENGTH
    act: str = "gelu"
    eps: float = 1e-12
    proj_dim: Optional[int] = None
    pad_id: int = PAD_ID

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"BERT activation must be one of {ACTIVATIONS}, got {self.act!r}")
        if self.width % self.heads:
            raise ValueError(f"BERT width {self.width} is not divisible by {self.heads} heads")
        if not 2 <= self.context_length <= self.max_positions:
            raise ValueError(f"context length {self.context_length} must be in [2, {self.max_positions}] "
                             f"(the checkpoint has {self.max_positions} position embeddings)")


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "gelu":  # exact erf GELU (BERT's "gelu"): Div+Erf+Add+Mul on the NPU
        return F.gelu(x)
    if act == "gelu_new":
        return F.gelu(x, approximate="tanh")
    return F.relu(x)


class _Pair(nn.Module):
    """``dense`` + ``LayerNorm``: BERT's attention-output and output sub-modules (names as in HF/cn_clip)."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, w)


class _Attention(nn.Module):
    def __init__(self, w: int, eps: float):
        super().__init__()
        self.self = _SelfAttention(w)
        self.output = _Pair(w, w, eps)


class _Intermediate(nn.Module):
    def __init__(self, w: int, mlp: int):
        super().__init__()
        self.dense = nn.Linear(w, mlp)


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads, self.act = c.heads, c.act
        self.attention = _Attention(c.width, c.eps)
        self.intermediate = _Intermediate(c.width, c.mlp_dim)
        self.output = _Pair(c.mlp_dim, c.width, c.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, export: bool = False) -> torch.Tensor:
        s = self.attention.self
        q, k, v = (split_heads(proj(x), self.heads) for proj in (s.query, s.key, s.value))
        a = self.attention.output
        x = a.LayerNorm(x + a.dense(merge_heads(attention(q, k, v, bias, export))))
        h = _act(self.intermediate.dense(x), self.act)
        return self.output.LayerNorm(x + self.output.dense(h))


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.width)
        self.position_embeddings = nn.Embedding(c.max_positions, c.width)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.width)
        self.LayerNorm = nn.LayerNorm(c.width, eps=c.eps)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.layers))


class BertTextTower(nn.Module):
    """int ids [B, T] → the [CLS] hidden state [B, width] (the NPU part). Parameter names = canonical names."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, export: bool = False) -> torch.Tensor:
        """``export=True``: the plain-op graph for ONNX; else the same maths with PyTorch SDPA."""
        c = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] != c.context_length:
            raise ValueError(f"input_ids must be [B,{c.context_length}], got {list(input_ids.shape)}")
        b, t = input_ids.shape
        e = self.embeddings
        # position ids 0..T-1 and token type 0 for every token: constants folded into one [T, W] table
        fixed = e.position_embeddings.weight[:t] + e.token_type_embeddings.weight[:1]
        x = e.LayerNorm(embed(e.word_embeddings.weight, input_ids) + fixed)
        bias = key_padding_bias(input_ids, c.pad_id)
        for layer in self.encoder.layer:
            x = layer(x, bias, export)
        return x[:, :1].reshape(b, c.width)  # a Slice: [CLS] is always row 0


@dataclasses.dataclass
class BertTextWeights:
    """The tower in canonical names plus what the CPU side needs (projection, logit scale)."""

    config: BertConfig
    state_dict: dict  # tower tensors, canonical names without the root (float32)
    projection: Optional[torch.Tensor]  # [proj_dim, width] (HF Linear layout) or None
    logit_scale: float
    layout: str

    def build(self) -> BertTextTower:
        tower = BertTextTower(self.config)
        tower.load_state_dict(self.state_dict, strict=True)
        return tower.eval().requires_grad_(False)

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reference torch path: ids → projected text embeddings (not normalised)."""
        with torch.inference_mode():
            pooled = self.build()(input_ids)
        return torch.from_numpy(cls_head(pooled.numpy(), self.projection.numpy()))


def cls_head(pooled: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """CPU side: ``pooled @ text_projection.T`` in fp32 (the pooling already happened on the NPU)."""
    return np.asarray(pooled, np.float32) @ np.asarray(projection, np.float32).T


def detect_layout(keys) -> tuple[str, str]:
    """``(layout, root)`` of a Chinese-CLIP text tower among ``keys`` (any wrapper prefix), or a clear error."""
    keys = list(keys)
    for layout in LAYOUTS:
        suffix = _ROOTS[layout] + _MARKER
        for key in keys:
            if key.endswith(suffix):
                return layout, key[: -len(_MARKER)]
    raise ValueError(
        "no Chinese-CLIP (BERT) text tower found: expected Hugging Face ChineseCLIPModel keys "
        f"('text_model.{_MARKER}') or OFA-Sys cn_clip keys ('bert.{_MARKER}'); {len(keys)} keys seen, e.g. "
        f"{keys[:5]}. A vision-only file can only be exported with parts=vision.")


def bert_weights_from_state_dict(sd: Mapping[str, torch.Tensor], heads: Optional[int] = None,
                                 act: Optional[str] = None, eps: Optional[float] = None,
                                 context_length: int = CONTEXT_LENGTH) -> BertTextWeights:
    """A full Chinese-CLIP state dict (HF or cn_clip layout) → ``BertTextWeights``.

    Shapes cannot tell heads/activation/eps: defaults are 64-wide heads (every Chinese-CLIP text tower:
    RBT3 and RoBERTa-wwm-ext base/large), exact GELU and 1e-12 (BERT's); ``load`` reads them from a
    ``config.json`` beside the file when there is one.
    """
    sd = strip_wrappers(dict(sd))
    layout, root = detect_layout(sd.keys())
    outer = root[: -len(_ROOTS[layout])]
    tower = {k[len(root):]: v.float() for k, v in sd.items()
             if k.startswith(root) and not k[len(root):].startswith("pooler.")
             and not k.endswith("position_ids")}
    if layout == "hf":
        projection = sd.get(outer + "text_projection.weight")
    else:
        projection = sd.get(outer + "text_projection")
        projection = None if projection is None else projection.t()
    words = tower.get("embeddings.word_embeddings.weight")
    if words is None:
        raise ValueError(f"the {layout} text tower has no '{root}embeddings.word_embeddings.weight'")
    vocab, width = words.shape
    n_layers = layer_count(tower.keys(), "encoder.layer.")
    heads = heads or max(1, width // 64)
    config = BertConfig(vocab_size=vocab, width=width, layers=n_layers, heads=heads,
                        mlp_dim=tower["encoder.layer.0.intermediate.dense.weight"].shape[0],
                        max_positions=tower["embeddings.position_embeddings.weight"].shape[0],
                        type_vocab_size=tower["embeddings.token_type_embeddings.weight"].shape[0],
                        context_length=context_length, act=act or "gelu", eps=eps or 1e-12,
                        proj_dim=None if projection is None else projection.shape[0])
    missing = sorted(set(BertTextTower(config).state_dict()) - set(tower))
    if missing:
        raise ValueError(f"the {layout} Chinese-CLIP text tower (root {root!r}) is incomplete: missing "
                         f"{len(missing)} keys such as {[root + m for m in missing[:5]]}")
    scale = sd.get(outer + "logit_scale")
    logit_scale = float(scale.float().reshape(-1)[0]) if scale is not None else math.log(1 / 0.07)
    return BertTextWeights(config, tower, None if projection is None else projection.float().contiguous(),
                           logit_scale, layout)


def hf_text_overrides(cfg: Mapping) -> dict:
    """``heads``/``act``/``eps`` from an HF ``ChineseCLIPConfig`` dict (its ``text_config``)."""
    text = cfg.get("text_config") if isinstance(cfg, Mapping) else None
    if not isinstance(text, Mapping):
        return {}
    out = {"heads": text.get("num_attention_heads"), "act": text.get("hidden_act"), "eps": text.get("layer_norm_eps")}
    return {k: v for k, v in out.items() if v is not None}


def random_state_dict(config: BertConfig, seed: int = 0, layout: str = "hf") -> dict:
    """A seeded random-init Chinese-CLIP text tower + projection + logit_scale under the real key names of
    ``layout`` (tests and the tiny benchmark models; BERT's init: N(0, 0.02), LayerNorm 1/0)."""
    g = torch.Generator().manual_seed(seed)
    tower = BertTextTower(config)
    root = _ROOTS[layout]
    out = {}
    for name, p in tower.state_dict().items():
        if "LayerNorm" in name:
            t = torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
        else:
            t = torch.randn(p.shape, generator=g) * 0.02
        out[root + name] = t
    proj = torch.randn(config.proj_dim or config.width, config.width, generator=g) * config.width ** -0.5
    out["text_projection.weight" if layout == "hf" else "text_projection"] = proj if layout == "hf" else proj.t()
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return out
