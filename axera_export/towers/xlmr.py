"""Jina-CLIP v2's text tower: Jina-XLM-RoBERTa (the jina-embeddings-v3 backbone), mean-pooled.

Written from the definitions in public code: Jina's remote code (``hf_model.py`` HFTextEncoder: attention mask
``ids != pad_token_id``, ``MeanPooler``, ``proj`` Identity/Linear; ``modeling_lora.py`` LoRAParametrization:
``W + (B[t] @ A[t]) · alpha/rank`` for Linear, ``W + (A[t] @ B[t]) · alpha/rank`` for Embedding) and vLLM's
independent port of the backbone (``vllm/model_executor/models/bert_with_rope.py`` ``JinaRobertaModel``:
key names, post-LN block ``h = norm1(h + out_proj(attn)); h = norm2(h + fc2(act(fc1(h))))``, rotary on q/k in
GPT-NeoX (half-split) style over the whole head, embeddings = word + token_type[0] → ``emb_ln``, no absolute
positions).

LoRA: the checkpoint carries one adapter per task (``lora_adaptations``; torch parametrisations
``<layer>.parametrizations.weight.{original,0.lora_A,0.lora_B}``) on every Linear and Embedding. The CLIP text
path runs ONE task (Jina's ``text_config.default_lora_task``), so that adapter is merged into the weights at load
time: the NPU graph is a plain post-LN encoder. Checkpoints with merged weights (plain ``.weight``) load as is.

Layout (canonical = the backbone's own names, below any of the roots ``text_model.transformer.roberta.``,
``text_model.transformer.``, ``roberta.``): ``embeddings.{word,token_type}_embeddings``, ``emb_ln``,
``encoder.layers.N.{mixer.Wqkv, mixer.out_proj, norm1, mlp.fc1, mlp.fc2, norm2}``; the CLIP projection is
``text_model.proj`` (a Linear when the config asks for one, else absent = identity).

NPU/CPU split: ids [1, T] → masked mean of the last hidden states [1, width] (the pad mask is computed in the
graph from the ids: Equal/Cast/Mul/ReduceSum/Div); projection, Matryoshka truncation and L2 norm on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .ops import (attention, embed, key_padding_bias, layer_count, masked_mean, merge_heads, rotary,
                  rotation_matrix, split_heads)

PAD_ID = 1  # XLM-R's <pad> (libclip.axera pads Jina-CLIP v2 ids with 1 too: CLIPTextEncoder.hpp PAD_TOKEN)
CONTEXT_LENGTH = 77  # static graph length; mean pooling over real tokens makes the result independent of it
_ROOTS = ("text_model.transformer.roberta.", "text_model.transformer.", "roberta.", "")
_MARKER = "encoder.layers.0.mixer.Wqkv."
_PARAM = ".parametrizations.weight."


@dataclasses.dataclass(frozen=True)
class XlmrConfig:
    vocab_size: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    rotary_base: float
    type_vocab_size: int = 1
    context_length: int = CONTEXT_LENGTH
    eps: float = 1e-5
    act: str = "gelu"
    pad_id: int = PAD_ID
    proj_dim: Optional[int] = None

    def __post_init__(self):
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} / {self.heads} heads must give an even head size (rotary)")
        if self.act not in ("gelu", "gelu_new", "relu"):
            raise ValueError(f"unsupported activation {self.act!r}")


def rotary_tables(config: XlmrConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, head_dim] for positions 0..T-1, half-split layout (float64 maths, fp32 tables)."""
    d = config.width // config.heads
    inv = 1.0 / (config.rotary_base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.arange(config.context_length, dtype=torch.float64)[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _act(x, act):
    return F.gelu(x) if act == "gelu" else F.gelu(x, approximate="tanh") if act == "gelu_new" else F.relu(x)


class _Mixer(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.Wqkv, self.out_proj = nn.Linear(w, 3 * w), nn.Linear(w, w)


class _Mlp(nn.Module):
    def __init__(self, w: int, mlp: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(w, mlp), nn.Linear(mlp, w)


class XlmrBlock(nn.Module):
    def __init__(self, c: XlmrConfig):
        super().__init__()
        self.heads, self.act = c.heads, c.act
        self.mixer, self.mlp = _Mixer(c.width), _Mlp(c.width, c.mlp_dim)
        self.norm1, self.norm2 = nn.LayerNorm(c.width, eps=c.eps), nn.LayerNorm(c.width, eps=c.eps)

    def forward(self, x, bias, rope, export=False):
        q, k, v = (split_heads(y, self.heads) for y in self.mixer.Wqkv(x).split(x.shape[-1], dim=-1))
        q, k = rotary(q, *rope), rotary(k, *rope)
        x = self.norm1(x + self.mixer.out_proj(merge_heads(attention(q, k, v, bias, export))))
        return self.norm2(x + self.mlp.fc2(_act(self.mlp.fc1(x), self.act)))


class _Embeddings(nn.Module):
    def __init__(self, c: XlmrConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.width)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.width)


class _Encoder(nn.Module):
    def __init__(self, c: XlmrConfig):
        super().__init__()
        self.layers = nn.ModuleList(XlmrBlock(c) for _ in range(c.layers))


class XlmrTextTower(nn.Module):
    """int ids [B, T] → mean of the non-pad last hidden states [B, width] (the NPU part)."""

    def __init__(self, config: XlmrConfig):
        super().__init__()
        c = self.config = config
        self.embeddings = _Embeddings(c)
        self.emb_ln = nn.LayerNorm(c.width, eps=c.eps)
        self.encoder = _Encoder(c)
        cos, sin = rotary_tables(c)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_rot", rotation_matrix(c.width // c.heads, interleaved=False), persistent=False)

    def forward(self, input_ids: torch.Tensor, export: bool = False) -> torch.Tensor:
        c = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] != c.context_length:
            raise ValueError(f"input_ids must be [B,{c.context_length}], got {list(input_ids.shape)}")
        e = self.embeddings
        x = self.emb_ln(embed(e.word_embeddings.weight, input_ids) + e.token_type_embeddings.weight[:1])
        bias = key_padding_bias(input_ids, c.pad_id)
        rope = (self.rope_cos, self.rope_sin, self.rope_rot)
        for block in self.encoder.layers:
            x = block(x, bias, rope, export)
        return masked_mean(x, input_ids, c.pad_id)


@dataclasses.dataclass
class XlmrWeights:
    config: XlmrConfig
    state_dict: dict  # merged tower tensors, canonical names (float32)
    projection: Optional[torch.Tensor]  # [proj, width] or None (identity)
    projection_bias: Optional[torch.Tensor]
    logit_scale: float
    lora_task: Optional[str]
    layout: str
    truncate_dim: Optional[int] = None  # Matryoshka: keep the first d dimensions (rows of the CPU head)

    def build(self) -> XlmrTextTower:
        tower = XlmrTextTower(self.config)
        tower.load_state_dict(self.state_dict, strict=True)
        return tower.eval().requires_grad_(False)

    def head(self) -> dict:
        """The CPU head as ``cpu_heads.npz`` entries: projection (identity when the checkpoint has none and no
        truncation is asked) with its rows cut to ``truncate_dim``."""
        w, b = self.projection, self.projection_bias
        if w is None:
            if not self.truncate_dim:
                return {}
            w = torch.eye(self.config.width)
        d = self.truncate_dim or w.shape[0]
        out = {"text_projection": w[:d].numpy()}
        if b is not None:
            out["text_projection_bias"] = b[:d].numpy()
        return out

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reference torch path: ids → (projected, truncated) text embeddings, not normalised."""
        with torch.inference_mode():
            pooled = self.build()(input_ids)
        h = self.head()
        if "text_projection" in h:
            bias = h.get("text_projection_bias")
            pooled = F.linear(pooled, torch.from_numpy(h["text_projection"]),
                              None if bias is None else torch.from_numpy(bias))
        return pooled


def find_root(keys) -> str:
    keys = list(keys)
    for root in _ROOTS:
        if any(k.startswith(root + _MARKER) for k in keys):
            return root
    raise ValueError("no Jina-XLM-RoBERTa text tower found: expected Jina-CLIP v2 keys such as "
                     f"'text_model.transformer.roberta.{_MARKER}weight' (or its LoRA parametrisation "
                     f"'…{_MARKER[:-1]}{_PARAM}original'); {len(keys)} keys seen, e.g. {keys[:5]}")


def merge_lora(tower: Mapping[str, torch.Tensor], task_index: Optional[int], alpha: Optional[float]) -> dict:
    """Fold the adapter ``task_index`` into every parametrised weight (Jina's ``LoRAParametrization``)."""
    out = {}
    for name, value in tower.items():
        if _PARAM not in name:
            out[name] = value
            continue
        layer, _, part = name.partition(_PARAM)
        if part != "original":
            continue
        a, b = tower[f"{layer}{_PARAM}0.lora_A"].float(), tower[f"{layer}{_PARAM}0.lora_B"].float()
        if task_index is None or alpha is None:
            raise ValueError("this checkpoint carries LoRA adapters (…parametrizations.weight.0.lora_A): the task "
                             "to merge and lora_alpha come from Jina's config.json (text_config.default_lora_task, "
                             "hf_model_config_kwargs.lora_adaptations / lora_alpha); put it beside the weights or "
                             "pass lora_task and lora_alpha")
        if not 0 <= task_index < a.shape[0]:
            raise ValueError(f"LoRA task index {task_index} is out of range: '{layer}' has {a.shape[0]} adapters")
        weight = value.float()
        if "embeddings" in layer:  # fan_in_fan_out: A [n, vocab, r], B [n, r, dim]
            delta = a[task_index] @ b[task_index]
            rank = a.shape[-1]
        else:  # A [n, r, in], B [n, out, r]
            delta = b[task_index] @ a[task_index]
            rank = a.shape[1]
        out[layer + ".weight"] = weight + delta.view(weight.shape) * (alpha / rank)
    return out


def _text_config_json(cfg: Mapping) -> dict:
    text = cfg.get("text_config", {}) if isinstance(cfg, Mapping) else {}
    kwargs = dict(text.get("hf_model_config_kwargs") or {}) if isinstance(text, Mapping) else {}
    return {"text": text if isinstance(text, Mapping) else {}, "backbone": kwargs, "top": cfg}


def xlmr_weights_from_state_dict(sd: Mapping[str, torch.Tensor], cfg: Optional[Mapping] = None,
                                 lora_task: Optional[str] = None, rotary_base: Optional[float] = None,
                                 context_length: int = CONTEXT_LENGTH, heads: Optional[int] = None) -> XlmrWeights:
    """A Jina-CLIP v2 state dict → ``XlmrWeights`` (LoRA merged for one task).

    ``cfg`` is Jina-CLIP's ``config.json`` (a dict): rotary base, eps, heads, LoRA alpha, the adapter list and
    the default task come from it (``text_config`` and its ``hf_model_config_kwargs``, else the top level as in
    a bare jina-embeddings-v3 config). ``lora_task``/``rotary_base`` override it. What is missing and needed is
    an error naming the field, never a guess.
    """
    parts = _text_config_json(cfg or {})
    text, backbone, top = parts["text"], parts["backbone"], parts["top"]

    def field(name, default=None):
        for src in (backbone, top):
            if isinstance(src, Mapping) and src.get(name) is not None:
                return src[name]
        return default

    root = find_root(sd.keys())
    tower = {k[len(root):]: v for k, v in sd.items() if k.startswith(root) and not k[len(root):].startswith("pooler.")}
    tower = {k: v for k, v in tower.items() if k.split(".", 1)[0] in ("embeddings", "emb_ln", "encoder")}
    adapters = field("lora_adaptations")
    task = lora_task or text.get("default_lora_task") or field("default_lora_task")
    has_lora = any(_PARAM in k for k in tower)
    index = None
    if has_lora and task is not None:
        if isinstance(task, int):
            index = task
        elif adapters and task in adapters:
            index = list(adapters).index(task)
        else:
            raise ValueError(f"LoRA task {task!r} is not among the checkpoint's adapters {adapters}; choose one")
    merged = {k: v.float() for k, v in merge_lora(tower, index, field("lora_alpha")).items()}
    words = merged.get("embeddings.word_embeddings.weight")
    if words is None:
        raise ValueError(f"the text tower (root {root!r}) has no embeddings.word_embeddings")
    vocab, width = words.shape
    base = rotary_base or field("rotary_emb_base")
    if base is None:
        raise ValueError("the rotary base of Jina-XLM-RoBERTa is not in the weights: give Jina's config.json "
                         "(rotary_emb_base) beside them, or pass rotary_base")
    heads = heads or field("num_attention_heads") or max(1, width // 64)
    outer = root[: -len("transformer.roberta.")] if root.endswith("transformer.roberta.") else \
        root[: -len("transformer.")] if root.endswith("transformer.") else ""
    proj, proj_b = sd.get(outer + "proj.weight"), sd.get(outer + "proj.bias")
    config = XlmrConfig(vocab_size=vocab, width=width, layers=layer_count(merged.keys(), "encoder.layers."),
                        heads=int(heads), mlp_dim=merged["encoder.layers.0.mlp.fc1.weight"].shape[0],
                        rotary_base=float(base),
                        type_vocab_size=merged["embeddings.token_type_embeddings.weight"].shape[0],
                        context_length=int(context_length), eps=float(field("layer_norm_eps", 1e-5)),
                        act=str(field("hidden_act", "gelu")), pad_id=int(field("pad_token_id", PAD_ID)),
                        proj_dim=None if proj is None else proj.shape[0])
    expected = set(XlmrTextTower(config).state_dict()) - {"rope_cos", "rope_sin", "rope_rot"}
    missing = sorted(expected - set(merged))
    if missing:
        raise ValueError(f"the Jina-XLM-RoBERTa text tower (root {root!r}) is incomplete: missing {len(missing)} "
                         f"keys such as {[root + m for m in missing[:5]]}")
    scale = sd.get("logit_scale")
    return XlmrWeights(config, {k: merged[k] for k in expected},
                       None if proj is None else proj.float(), None if proj_b is None else proj_b.float(),
                       float(scale.float().reshape(-1)[0]) if scale is not None else math.log(1 / 0.07),
                       task if has_lora else None, "lora" if has_lora else "merged")
