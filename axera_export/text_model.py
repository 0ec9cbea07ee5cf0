"""CLIP text tower: config, the tower built from the shared CLIP block, and the checkpoint-layout converters.

Layouts (the ONE place that knows them for the text side):

* Hugging Face ``CLIPModel`` — ``text_model.embeddings.token_embedding.weight``, ``text_model.encoder.layers.N.
  self_attn.{q,k,v,out}_proj``, ``text_model.final_layer_norm``, ``text_projection.weight`` ([proj, width],
  a Linear), ``logit_scale``. This is the canonical layout our module uses.
* OpenCLIP / OpenAI ``CLIP`` — ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N.
  {ln_1, attn.in_proj_weight (q|k|v stacked), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final``,
  ``text_projection`` ([width, proj], used as ``x @ P``), ``logit_scale``.

Split for the NPU (recorded in the export manifest): the graph maps int32 token ids [1,77] to the final-LN
hidden states [1,77,W]; EOT pooling (argmax of the ids — the end-of-text id is the largest in CLIP's
vocabulary) and the text projection run on the CPU in fp32 (``heads.text_head``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional

import torch
from torch import nn

from ..clip_vision.model import ACTIVATIONS, Block, block_names, gather
from .families.base import POOLINGS, linear

# Additive causal-mask value. exp(-100) ≈ 4e-44 is an exact zero weight in fp32, and unlike -inf/-1e4 it
# keeps the value range of the masked scores small, which matters once Pulsar2 quantises that Add to U16.
MASK_VALUE = -100.0
DEFAULT_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: str = "quick_gelu"
    eps: float = 1e-5
    proj_dim: Optional[int] = 512
    causal: bool = True  # CLIP's text attention is causal; SigLIP's attends both ways (no mask in the graph)

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"TextConfig.act must be one of {ACTIVATIONS}, got {self.act!r}")


# openai/clip-vit-base-patch32 (transformers CLIPTextConfig defaults).
VIT_B32_TEXT = TextConfig()

_HF = "text_model."
_HF_TOKEN = _HF + "embeddings.token_embedding.weight"
_HF_POS = _HF + "embeddings.position_embedding.weight"
_HF_LAYER = _HF + "encoder.layers."


class TextTower(nn.Module):
    """Token ids → final-LN hidden states (the part that runs on the NPU)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        c = self.config = config
        self.token_embedding = nn.Parameter(torch.empty(c.vocab_size, c.width))
        self.position_embedding = nn.Parameter(torch.empty(c.context_length, c.width))
        self.layers = nn.ModuleList(Block(c.width, c.heads, c.mlp_dim, c.act, c.eps) for _ in range(c.layers))
        self.final_layer_norm = nn.LayerNorm(c.width, eps=c.eps)
        causal = torch.full((c.context_length, c.context_length), MASK_VALUE).triu(1) if c.causal else None
        # A constant in the graph (no Trilu/Range op for Pulsar2 to reject).
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, input_ids: torch.Tensor, export: bool = False) -> torch.Tensor:
        """``export=True``: the plain-op graph for ONNX (see ``Block``); else the eager SDPA path."""
        c = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] != c.context_length:
            raise ValueError(f"input_ids must be [B,{c.context_length}], got {list(input_ids.shape)}")
        b, t = input_ids.shape
        # Gather with 1-D indices: the only Gather form the AX650 NPU supports.
        x = self.token_embedding[input_ids.reshape(b * t)].view(b, t, c.width) + self.position_embedding
        for layer in self.layers:
            x = layer(x, self.causal_mask, export)
        return self.final_layer_norm(x)


@dataclasses.dataclass
class TextWeights:
    """A text tower in canonical (HF) names plus what the CPU side needs."""

    config: TextConfig
    state_dict: dict  # text_model.* tensors (float32)
    projection: Optional[torch.Tensor]  # [proj_dim, width] (HF Linear weight) or None
    logit_scale: float
    layout: str
    projection_bias: Optional[torch.Tensor] = None  # SigLIP's text head is a Linear with a bias
    logit_bias: float = 0.0  # SigLIP's sigmoid bias (CLIP: none)
    pooling: str = "eot_argmax"  # families.base.POOLINGS: which hidden state the head reads

    def build(self) -> TextTower:
        tower = TextTower(self.config)
        tower.load_state_dict(gather(self.state_dict, text_names(self.config)), strict=True)
        return tower.eval()

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reference torch path (eager): ids → projected text embeddings (no normalisation)."""
        tower = self.build()
        with torch.inference_mode():
            hidden = tower(input_ids)
        pooled = POOLINGS[self.pooling](hidden.numpy(), input_ids.numpy())
        bias = None if self.projection_bias is None else self.projection_bias.numpy()
        return torch.from_numpy(linear(pooled, self.projection.numpy(), bias))


def text_names(config: TextConfig):
    """Yield ``(internal_name, [canonical names])`` for every parameter of a ``TextTower``."""
    yield "token_embedding", [_HF_TOKEN]
    yield "position_embedding", [_HF_POS]
    for n in range(config.layers):
        yield from block_names(f"layers.{n}.", f"{_HF_LAYER}{n}.")
    for p in ("weight", "bias"):
        yield f"final_layer_norm.{p}", [f"{_HF}final_layer_norm.{p}"]


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict:
    # DataParallel / wrapper prefixes seen in the wild; never the meaningful "text_model." or "visual.".
    out = dict(sd)
    for prefix in ("module.", "clip_model.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def detect_text_layout(keys) -> str:
    keys = set(keys)
    if _HF_TOKEN in keys:
        return "hf"
    if "token_embedding.weight" in keys and any(k.startswith("transformer.resblocks.") for k in keys):
        return "openclip"
    raise ValueError(
        "no CLIP text tower found in this checkpoint: expected Hugging Face keys "
        f"('{_HF_TOKEN}', ...) or OpenCLIP keys ('token_embedding.weight', 'transformer.resblocks.0.*'). "
        "A vision-only file (e.g. clip_vision_h.safetensors) can only be exported with parts=vision."
    )


def _openclip_to_hf(sd: Mapping[str, torch.Tensor]) -> dict:
    """OpenCLIP text keys → HF names (q|k|v split out of in_proj; text_projection transposed)."""
    out = {
        _HF_TOKEN: sd["token_embedding.weight"],
        _HF_POS: sd["positional_embedding"],
        _HF + "final_layer_norm.weight": sd["ln_final.weight"],
        _HF + "final_layer_norm.bias": sd["ln_final.bias"],
    }
    block = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
    simple = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
              "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for key, value in sd.items():
        m = block.match(key)
        if not m:
            continue
        n, rest = m.groups()
        dst = f"{_HF_LAYER}{n}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{dst}self_attn.{name}_proj.{kind}"] = part
            continue
        module, _, param = rest.rpartition(".")
        if module in simple:
            out[f"{dst}{simple[module]}.{param}"] = value
    if "text_projection" in sd:
        out["text_projection.weight"] = sd["text_projection"].t()
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    return out


def _layer_count(keys) -> int:
    found = {int(k[len(_HF_LAYER):].split(".", 1)[0]) for k in keys if k.startswith(_HF_LAYER)}
    if not found:
        raise ValueError(f"text checkpoint has no '{_HF_LAYER}N.*' blocks")
    if found != set(range(max(found) + 1)):
        raise ValueError(f"text checkpoint has gaps in its blocks: found {sorted(found)}")
    return max(found) + 1


def text_weights_from_state_dict(sd: Mapping[str, torch.Tensor], act: Optional[str] = None,
                                 heads: Optional[int] = None, eps: Optional[float] = None) -> TextWeights:
    """Full CLIP state dict (HF or OpenCLIP layout) → ``TextWeights`` in canonical names.

    Shapes cannot tell the activation or the head count. Defaults: QuickGELU for OpenAI-trained 512/768-wide
    towers, exact GELU for LAION's wider ones (ViT-H/bigG); 64-wide heads (true of every CLIP text tower).
    ``act``/``heads``/``eps`` override them (``load_source`` reads them from an HF ``config.json``).
    """
    sd = _strip_prefix(sd)
    layout = detect_text_layout(sd.keys())
    canonical = _openclip_to_hf(sd) if layout == "openclip" else dict(sd)
    text = {k: v.float() for k, v in canonical.items()
            if k.startswith(_HF) and not k.endswith("position_ids")}
    vocab, width = text[_HF_TOKEN].shape
    context = text[_HF_POS].shape[0]
    layers = _layer_count(text.keys())
    mlp_dim = text[f"{_HF_LAYER}0.mlp.fc1.weight"].shape[0]
    projection = canonical.get("text_projection.weight")
    if act is None:
        act = "quick_gelu" if width <= 768 else "gelu"
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported text activation {act!r} (supported: {', '.join(ACTIVATIONS)})")
    if width % (heads or max(1, width // 64)):
        raise ValueError(f"text width {width} is not divisible by {heads} heads")
    config = TextConfig(vocab_size=vocab, context_length=context, width=width, layers=layers,
                        heads=heads or max(1, width // 64), mlp_dim=mlp_dim, act=act, eps=eps or 1e-5,
                        proj_dim=None if projection is None else projection.shape[0])
    scale = canonical.get("logit_scale")
    logit_scale = float(scale.float().reshape(-1)[0]) if scale is not None else DEFAULT_LOGIT_SCALE
    return TextWeights(config, text, None if projection is None else projection.float(), logit_scale, layout)


def default_text_state_dict(config: TextConfig = VIT_B32_TEXT, seed: int = 0) -> dict:
    """A seeded random-init text tower + projection + logit_scale under the real HF key names.

    Init scales follow OpenCLIP's ``init_parameters`` so activations have realistic magnitudes.
    """
    g = torch.Generator().manual_seed(seed)
    w, n = config.width, config.layers

    def normal(shape, std):
        return torch.randn(shape, generator=g) * std

    attn_std, proj_std, fc_std = w ** -0.5, (w ** -0.5) * ((2 * n) ** -0.5), (2 * w) ** -0.5
    sd = {
        _HF_TOKEN: normal((config.vocab_size, w), 0.02),
        _HF_POS: normal((config.context_length, w), 0.01),
        _HF + "final_layer_norm.weight": torch.ones(w),
        _HF + "final_layer_norm.bias": torch.zeros(w),
    }
    for i in range(n):
        p = f"{_HF_LAYER}{i}."
        for name in ("q", "k", "v"):
            sd[f"{p}self_attn.{name}_proj.weight"] = normal((w, w), attn_std)
            sd[f"{p}self_attn.{name}_proj.bias"] = torch.zeros(w)
        sd[f"{p}self_attn.out_proj.weight"] = normal((w, w), proj_std)
        sd[f"{p}self_attn.out_proj.bias"] = torch.zeros(w)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[f"{p}{ln}.weight"] = torch.ones(w)
            sd[f"{p}{ln}.bias"] = torch.zeros(w)
        sd[f"{p}mlp.fc1.weight"] = normal((config.mlp_dim, w), fc_std)
        sd[f"{p}mlp.fc1.bias"] = torch.zeros(config.mlp_dim)
        sd[f"{p}mlp.fc2.weight"] = normal((w, config.mlp_dim), proj_std)
        sd[f"{p}mlp.fc2.bias"] = torch.zeros(w)
    if config.proj_dim:
        sd["text_projection.weight"] = normal((config.proj_dim, w), w ** -0.5)
    sd["logit_scale"] = torch.tensor(DEFAULT_LOGIT_SCALE)
    return sd
