"""CLIP text towers for scoring: prompts → projected text embeddings in the image embeddings' space.

Two families, one interface (``TextTower.encode(prompts) -> [N, D]`` float32 on the CPU, not normalised):

* **XLM-RoBERTa** (multilingual): the text tower of OpenCLIP's ``xlm-roberta-large-ViT-H-14``, which Wan 2.1
  ships beside its vision tower in ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``. A post-LN
  BERT encoder; the text embedding is the mean of the last hidden states over the non-padding tokens, then a
  two-layer MLP head (Linear → GELU → Linear, no biases). Read from Wan's layout (``textual.*``) or OpenCLIP's
  (``text.transformer.*`` = a Hugging Face ``XLMRobertaModel``, ``text.proj.{0,2}``). Tokenizer:
  ``xlm-roberta-large``'s (a folder, ``tokenizer.json`` or ``sentencepiece.bpe.model``); padding is masked, so
  the result does not depend on the padded length.
* **CLIP** (OpenAI / OpenCLIP / Hugging Face ``CLIPModel``): the causal text transformer the Axera export
  already loads (``axera_export.text_model``, the one place that knows those layouts); pooled at the
  end-of-text token, then ``text_projection``. Tokenizer: open_clip's BPE, bundled (works offline).

Hyper-parameters come from the shapes; what shapes cannot tell (head count; the CLIP activation) from an HF
``config.json`` beside the file, else 64-wide heads and the defaults named in ``load_text_tower``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import open_weights

# Wan's layout (``XLMRobertaCLIP.textual``): our module uses these names, so Wan's keys load as they are.
WAN_TEXT_PREFIX = "textual."
# OpenCLIP ``HFTextEncoder`` over transformers' ``XLMRobertaModel``: HF name → our name.
_HF_XLMR_TOP = {"embeddings.word_embeddings.weight": "token_embedding.weight",
                "embeddings.token_type_embeddings.weight": "type_embedding.weight",
                "embeddings.position_embeddings.weight": "pos_embedding.weight",
                "embeddings.LayerNorm.weight": "norm.weight", "embeddings.LayerNorm.bias": "norm.bias"}
_HF_XLMR_BLOCK = {"attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
                  "attention.output.dense": "attn.o", "attention.output.LayerNorm": "norm1",
                  "intermediate.dense": "ffn.0", "output.dense": "ffn.2", "output.LayerNorm": "norm2"}
_MARKERS = {  # layout → key (under any wrapper prefix) that identifies it
    "wan_xlmr": "textual.blocks.0.attn.q.weight",
    "open_clip_xlmr": "text.transformer.encoder.layer.0.attention.self.query.weight",
}
XLMR_PAD_ID = 1  # <pad> in xlm-roberta's vocabulary (<s>=0, </s>=2)


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig:
    vocab_size: int = 250002
    max_positions: int = 514
    type_size: int = 1
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_dim: int = 4096
    head_dim: int = 1024  # the MLP head's hidden size: (width + proj_dim) // 2
    proj_dim: int = 1024
    pad_id: int = XLMR_PAD_ID
    eps: float = 1e-5

    @property
    def max_tokens(self) -> int:
        """Longest tokenized prompt: positions start after the padding id (RoBERTa's numbering)."""
        return self.max_positions - self.pad_id - 1


class _PostNormBlock(nn.Module):
    """BERT's block: ``x = LN1(x + attn(x)); x = LN2(x + ffn(x))``."""

    def __init__(self, c: XLMRobertaConfig):
        super().__init__()
        self.heads = c.heads
        self.attn = nn.ModuleDict({name: nn.Linear(c.width, c.width) for name in ("q", "k", "v", "o")})
        self.norm1 = nn.LayerNorm(c.width, eps=c.eps)
        self.ffn = nn.Sequential(nn.Linear(c.width, c.mlp_dim), nn.GELU(), nn.Linear(c.mlp_dim, c.width))
        self.norm2 = nn.LayerNorm(c.width, eps=c.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape

        def split(y):
            return y.view(b, t, self.heads, w // self.heads).transpose(1, 2)

        q, k, v = (split(self.attn[n](x)) for n in ("q", "k", "v"))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, w)
        x = self.norm1(x + self.attn["o"](attn))
        return self.norm2(x + self.ffn(x))


class XLMRobertaTower(nn.Module):
    """Token ids → the projected text embedding (masked mean pool + MLP head)."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        c = self.config = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.type_embedding = nn.Embedding(c.type_size, c.width)
        self.pos_embedding = nn.Embedding(c.max_positions, c.width)
        self.norm = nn.LayerNorm(c.width, eps=c.eps)  # on the embeddings (post-LN model)
        self.blocks = nn.ModuleList(_PostNormBlock(c) for _ in range(c.layers))
        self.head = nn.Sequential(nn.Linear(c.width, c.head_dim, bias=False), nn.GELU(),
                                  nn.Linear(c.head_dim, c.proj_dim, bias=False))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        keep = ids.ne(c.pad_id)
        # RoBERTa numbers positions from pad_id + 1 over the real tokens; padding sits at position pad_id
        positions = c.pad_id + torch.cumsum(keep, dim=1) * keep
        x = self.token_embedding(ids) + self.type_embedding.weight[0] + self.pos_embedding(positions)
        x = self.norm(x)
        mask = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None]
        for block in self.blocks:
            x = block(x, mask)
        weights = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return self.head(pooled)


def _root(keys, marker: str) -> Optional[str]:
    found = sorted((k[: -len(marker)] for k in keys if k.endswith(marker)), key=len)
    return found[0] if found else None


def xlmr_layout(keys) -> Optional[tuple]:
    """``(layout, wrapper prefix)`` when ``keys`` hold an XLM-RoBERTa text tower, else None."""
    keys = list(keys)
    for layout, marker in _MARKERS.items():
        root = _root(keys, marker)
        if root is not None:
            return layout, root
    return None


def xlmr_to_internal(sd: Mapping[str, torch.Tensor], layout: str, root: str = "") -> dict:
    """An XLM-R text tower (Wan or OpenCLIP layout, under the wrapper prefix ``root``) → our parameter names."""
    out = {}
    if layout == "wan_xlmr":
        prefix = root + WAN_TEXT_PREFIX
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    prefix = root + "text.transformer."
    block = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in sd.items():
        if key.startswith(root + "text.proj."):  # Sequential(Linear, GELU, Linear) → head.0 / head.2
            out["head." + key[len(root + "text.proj."):]] = value
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _HF_XLMR_TOP:
            out[_HF_XLMR_TOP[name]] = value
            continue
        m = block.match(name)
        if m and m.group(2) in _HF_XLMR_BLOCK:
            out[f"blocks.{m.group(1)}.{_HF_XLMR_BLOCK[m.group(2)]}.{m.group(3)}"] = value
    return out


def xlmr_config(sd: Mapping[str, torch.Tensor], heads: Optional[int] = None) -> XLMRobertaConfig:
    """Shapes → config (heads: given, else 64-wide as xlm-roberta-large's 16 × 64)."""
    need = ["token_embedding.weight", "pos_embedding.weight", "type_embedding.weight", "blocks.0.ffn.0.weight",
            "head.0.weight", "head.2.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"the XLM-RoBERTa text tower is incomplete: missing {missing}")
    vocab, width = sd["token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    heads = heads or max(1, width // 64)
    if width % heads:
        raise ValueError(f"XLM-RoBERTa width {width} is not divisible by {heads} heads")
    return XLMRobertaConfig(vocab_size=vocab, max_positions=sd["pos_embedding.weight"].shape[0],
                            type_size=sd["type_embedding.weight"].shape[0], width=width, heads=heads, layers=layers,
                            mlp_dim=sd["blocks.0.ffn.0.weight"].shape[0], head_dim=sd["head.0.weight"].shape[0],
                            proj_dim=sd["head.2.weight"].shape[0])


class TextTower:
    """A loaded text tower with its tokenizer: ``encode(prompts) -> [N, proj_dim]`` (float32, CPU)."""

    def __init__(self, module: nn.Module, tokenize, kind: str, source: str, embed_dim: int):
        self.module = module.eval().requires_grad_(False)
        self.tokenize = tokenize  # list[str] -> LongTensor [N, T]
        self.kind = kind  # "xlm-roberta" | "clip"
        self.source = source
        self.embed_dim = embed_dim

    def __repr__(self):
        return f"TextTower({self.kind}, {self.embed_dim}-d, {self.source})"

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts to encode")
        ids = self.tokenize(prompts)
        return self.module(ids).float().cpu()


# ---------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------
XLMR_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")


def load_xlmr_tokenizer(path: str):
    """xlm-roberta-large's tokenizer from a folder, a ``tokenizer.json`` or a ``sentencepiece.bpe.model``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer '{path}' does not exist; give the xlm-roberta-large tokenizer (a folder, "
                                f"tokenizer.json or sentencepiece.bpe.model from FacebookAI/xlm-roberta-large).")
    if os.path.isdir(path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    if path.endswith(".json"):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    if path.endswith(".model"):
        from transformers import XLMRobertaTokenizer

        return XLMRobertaTokenizer(vocab_file=path)
    raise ValueError(f"tokenizer '{os.path.basename(path)}': expected a folder, a tokenizer.json or a "
                     f"sentencepiece.bpe.model (xlm-roberta-large).")


def find_xlmr_tokenizer(weights_path: str) -> Optional[str]:
    """The tokenizer beside the weights: ``xlm-roberta-large/`` or a tokenizer file in the same folder."""
    folder = os.path.dirname(os.path.abspath(weights_path))
    for name in ("xlm-roberta-large",) + XLMR_TOKENIZER_FILES:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return candidate
    return None


def _xlmr_tokenize(tokenizer, config: XLMRobertaConfig):
    from ..wan.text.umt5 import clean_prompt  # Wan's cleaning ('whitespace'), the same for both its towers

    def tokenize(prompts):
        batch = tokenizer([clean_prompt(p) for p in prompts], padding=True, truncation=True,
                          max_length=config.max_tokens, return_tensors="pt")
        ids = batch["input_ids"].long()
        if ids.max() >= config.vocab_size:
            raise ValueError(f"the tokenizer gives id {int(ids.max())} but the text tower has {config.vocab_size} "
                             f"tokens: use xlm-roberta-large's tokenizer with this checkpoint")
        return ids
    return tokenize


def _clip_tokenize(context_length: int, vocab_size: int):
    def tokenize(prompts):
        from ..axera_export.tokenizer import tokenize as bpe

        ids = torch.from_numpy(bpe(prompts, context_length)).long()
        if ids.max() >= vocab_size:
            raise ValueError(f"the CLIP BPE tokenizer gives id {int(ids.max())} but the text tower has only "
                             f"{vocab_size} tokens; this is not an OpenAI-vocabulary CLIP text tower")
        return ids
    return tokenize


class _ClipTextModule(nn.Module):
    """The causal CLIP text transformer (``axera_export.text_model.TextTower``) + EOT pooling + projection."""

    def __init__(self, tower: nn.Module, projection: torch.Tensor):
        super().__init__()
        self.tower = tower
        self.register_buffer("projection", projection.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(ids)
        # end-of-text = the largest id in CLIP's vocabulary, so it sits at argmax (OpenAI / OpenCLIP pooling)
        pooled = hidden[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]
        return pooled @ self.projection.t()


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def text_tower_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict",
                               tokenizer=None, act: Optional[str] = None, heads: Optional[int] = None,
                               eps: Optional[float] = None) -> TextTower:
    """A text tower from a full CLIP state dict (Wan's .pth, OpenCLIP, HF ``CLIPModel``; vision keys ignored).

    ``tokenizer``: XLM-R only, a loaded tokenizer or a path (see ``load_xlmr_tokenizer``). ``act``/``heads``/
    ``eps``: what shapes cannot tell (CLIP: QuickGELU up to 768 wide, exact GELU above; 64-wide heads)."""
    found = xlmr_layout(sd.keys())
    if found is not None:
        layout, root = found
        internal = {k: v.float() for k, v in xlmr_to_internal(sd, layout, root).items()}
        config = xlmr_config(internal, heads)
        if tokenizer is None:
            raise ValueError(f"{source}: the XLM-RoBERTa text tower needs xlm-roberta-large's tokenizer: give its "
                             f"folder, tokenizer.json or sentencepiece.bpe.model (CLI --tokenizer, node input "
                             f"'tokenizer'), or put it beside the weights as 'xlm-roberta-large/'.")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_xlmr_tokenizer(os.fspath(tokenizer))
        with torch.device("meta"):
            module = XLMRobertaTower(config)
        try:
            module.load_state_dict(internal, strict=True, assign=True)
        except RuntimeError as exc:
            raise ValueError(f"{source}: the XLM-RoBERTa text tower does not fit its detected shape: {exc}") from None
        return TextTower(module, _xlmr_tokenize(tokenizer, config), "xlm-roberta", source, config.proj_dim)
    from ..axera_export.text_model import text_weights_from_state_dict

    text_sd = {k: v for k, v in sd.items() if not any(p.startswith("visual") or p == "vision_model"
                                                         for p in k.split("."))}
    try:
        weights = text_weights_from_state_dict(text_sd, act=act, heads=heads, eps=eps)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc} Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth and "
                         f"full OpenCLIP / Hugging Face CLIP checkpoints hold a text tower; clip_vision_h.safetensors "
                         f"does not (CLIP-I and frame consistency still work without one).") from None
    if weights.projection is None:
        raise ValueError(f"{source}: the CLIP text tower has no 'text_projection' (a text-encoder-only file such as "
                         f"clip_l.safetensors): CLIP-T needs a full CLIP checkpoint with both projections")
    module = _ClipTextModule(weights.build(), weights.projection)
    c = weights.config
    return TextTower(module, _clip_tokenize(c.context_length, c.vocab_size), "clip", source, c.proj_dim)


def load_text_tower(path, tokenizer=None, act: Optional[str] = None) -> TextTower:
    """The text tower of a CLIP checkpoint file; only its text tensors are read (the vision tower is skipped).

    XLM-R towers need xlm-roberta-large's tokenizer: ``tokenizer`` (path or object), else one found beside
    the weights (``find_xlmr_tokenizer``)."""
    from ..axera_export.sources import text_overrides

    path = os.fspath(path)
    reader = open_weights(path, "CLIP text tower")
    keys = [k for k in reader.keys if not any(p.startswith("visual") or p == "vision_model" for p in k.split("."))]
    sd = {k: reader.get(k) for k in keys}
    overrides = text_overrides(path)
    if act:
        overrides["act"] = act
    if xlmr_layout(sd.keys()) is not None:
        tokenizer = tokenizer if tokenizer is not None else find_xlmr_tokenizer(path)
        return text_tower_from_state_dict(sd, f"'{path}'", tokenizer=tokenizer, heads=overrides.get("heads"))
    return text_tower_from_state_dict(sd, f"'{path}'", **overrides)


def num_parameters(tower: TextTower) -> int:
    return sum(math.prod(p.shape) for p in tower.module.parameters())


def default_text_tower(seed: int = 0) -> TextTower:
    """The embedded default: a seeded random-init openai/clip-vit-base-patch32-shaped text tower (NOT pretrained),
    the text half of the pack's default CLIP pair (``axera_export.default_source``; vision: ViT-B/32)."""
    from ..axera_export.text_model import VIT_B32_TEXT, default_text_state_dict

    source = f"embedded default: seeded random-init ViT-B/32 CLIP text tower (seed {seed + 1}), not pretrained"
    return text_tower_from_state_dict(default_text_state_dict(VIT_B32_TEXT, seed=seed + 1), source,
                                      act=VIT_B32_TEXT.act)
