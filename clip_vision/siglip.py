"""SigLIP / SigLIP2 (fixed resolution) towers in pure PyTorch: vision tower with its MAP head, text weights, loader.

The vision tower reuses the pack's CLIP ``Block`` (same pre-LN block; SigLIP's activation is the tanh GELU in
HF checkpoints, exact GELU in timm's): patch Conv2d with a bias, learned positions without a CLS token, the
blocks, ``post_layernorm`` over every token, then the multi-head attention pooling (MAP) head: one learned
``probe`` query attends over the tokens, ``out_proj``, then ``x + mlp(layernorm(x))``; the embedding is that
one token (no projection: its width is the embedding size). ``export=True`` runs it as plain ops the AX650
takes (MatMul/Softmax/LayerNorm, static reshapes; the probe is a constant, the token a Reshape, not a Gather).

The text tower is ``axera_export.text_model.TextTower`` without the causal mask; the embedding is the hidden
state at the LAST position (the tokenizer pads every text to the context length), then ``text_model.head``
(Linear with bias). Scores: ``sigmoid(exp(logit_scale)·cos + logit_bias)``.

Hyper-parameters come from tensor shapes; what shapes cannot tell (activation, heads, eps) from an HF
``config.json`` beside the file, else the defaults of the layout (``_defaults``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import hf_config_beside
from .loader import ClipVisionModel
from .model import HF_ACTIVATIONS, Block, VisionHidden, _activation, _layer_norm, block_names, gather
from .siglip_layouts import T, V, to_canonical

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
# Head counts of the released widths (shapes cannot tell): base 768, large 1024, so400m 1152, giant-opt 1536.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1152: 16, 1536: 16}
GEMMA_VOCAB = 256000  # SigLIP2's Gemma tokenizer; SigLIP's SentencePiece vocabularies are 32000 / 250000


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    name: str
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    act: str = "gelu_tanh"
    eps: float = 1e-6
    mean: Sequence[float] = SIGLIP_MEAN
    std: Sequence[float] = SIGLIP_STD

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def proj_dim(self) -> int:  # the embedding size (the MAP head's output; there is no projection)
        return self.width

    def replace(self, **changes) -> "SiglipVisionConfig":
        return dataclasses.replace(self, **changes)


class MapHead(nn.Module):
    """SigLIP's multi-head attention pooling: the names of HF ``SiglipMultiheadAttentionPoolingHead``."""

    def __init__(self, width: int, heads: int, mlp_dim: int, act: str, eps: float):
        super().__init__()
        self.heads, self.act = heads, act
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = nn.Module()
        self.attention.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.attention.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.attention.out_proj = nn.Linear(width, width)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, mlp_dim)
        self.mlp.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor, export: bool = False) -> torch.Tensor:
        b, t, w = x.shape  # constants when traced (static export shapes)
        d = w // self.heads
        weight, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        # the probe's query [1, H, 1, d] broadcasts over the batch; keys and values [B, H, T, d]
        q = F.linear(self.probe, weight[:w], bias[:w]).reshape(1, 1, self.heads, d).transpose(1, 2)
        kv = F.linear(x, weight[w:], bias[w:])
        k, v = (y.reshape(b, t, self.heads, d).transpose(1, 2) for y in kv.split(w, dim=-1))
        if export:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
            attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        else:
            attn = F.scaled_dot_product_attention(q.expand(b, -1, -1, -1), k, v)
        y = self.attention.out_proj(attn.transpose(1, 2).reshape(b, 1, w))
        y = y + self.mlp.fc2(_activation(self.mlp.fc1(self.layernorm(y)), self.act, export=True))
        return y.reshape(b, w)


class SiglipVisionTower(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Parameter(torch.empty(c.num_tokens, c.width))
        self.layers = nn.ModuleList(Block(c.width, c.heads, c.mlp_dim, c.act, c.eps) for _ in range(c.layers))
        self.post_layernorm = nn.LayerNorm(c.width, eps=c.eps)
        self.head = MapHead(c.width, c.heads, c.mlp_dim, c.act, c.eps)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be [B,3,{c.image_size},{c.image_size}], "
                             f"got {list(pixel_values.shape)}; run preprocess_images first")
        b = pixel_values.shape[0]
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixel_values if pixel_values.dtype == dtype else pixel_values.to(dtype))
        return x.reshape(b, c.width, c.num_tokens).transpose(1, 2) + self.position_embedding

    def forward(self, pixel_values: torch.Tensor, penultimate_only: bool = False) -> VisionHidden:
        x = self.embed(pixel_values)
        for block in self.layers[:-1]:
            x = block(x)
        penultimate = x
        if penultimate_only or len(self.layers) == 0:
            return VisionHidden(None, penultimate, None)
        last = _layer_norm(self.layers[-1](x), self.post_layernorm)  # HF's last_hidden_state is post-LN
        return VisionHidden(last, penultimate, self.head(last))

    def pooled(self, pixel_values: torch.Tensor, export: bool = False) -> torch.Tensor:
        """Pixels → the MAP head's embedding [B, W]: the whole tower runs on the NPU (no CPU head)."""
        x = self.embed(pixel_values)
        for block in self.layers:
            x = block(x, export=export)
        return self.head(self.post_layernorm(x), export=export)


def vision_names(config: SiglipVisionConfig):
    """Yield ``(internal_name, [canonical names])`` for every parameter of a ``SiglipVisionTower``."""
    for p in ("weight", "bias"):
        yield f"patch_embedding.{p}", [f"{V}embeddings.patch_embedding.{p}"]
    yield "position_embedding", [f"{V}embeddings.position_embedding.weight"]
    for n in range(config.layers):
        yield from block_names(f"layers.{n}.", f"{V}encoder.layers.{n}.")
    head = ["probe", "attention.in_proj_weight", "attention.in_proj_bias"]
    head += [f"{m}.{p}" for m in ("attention.out_proj", "layernorm", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
    for p in ("weight", "bias"):
        yield f"post_layernorm.{p}", [f"{V}post_layernorm.{p}"]
    for name in head:
        yield f"head.{name}", [f"{V}head.{name}"]


class SiglipVisionModel(ClipVisionModel):
    """A loaded SigLIP vision tower behind the ``ClipVisionModel`` interface (``encode``, ``encode_image``:
    ``image_embeds`` = the MAP head's embedding), so scores and the export take it like a CLIP tower."""

    def state_dict_hf(self) -> dict:
        own = dict(self.model.named_parameters())
        out = {}
        for internal, sources in vision_names(self.config):
            tensor = own[internal].detach()
            out.update(zip(sources, tensor.chunk(3, dim=0) if len(sources) == 3 else (tensor,)))
        return out

    def load_sd(self, sd):
        raise NotImplementedError("load a SigLIP checkpoint with clip_vision.siglip.load_siglip")


def _count(keys, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise ValueError(f"SigLIP checkpoint has gaps in its blocks '{prefix}N': found {sorted(found)}")
    return len(found)



def _settings(part: dict, width: int, default_act: str) -> dict:
    act = part.get("hidden_act", default_act)
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported SigLIP activation {act!r} (supported: {sorted(HF_ACTIVATIONS)})")
    heads = int(part.get("num_attention_heads") or HEADS_BY_WIDTH.get(width, max(1, width // 64)))
    return {"act": HF_ACTIVATIONS[act], "heads": heads, "eps": float(part.get("layer_norm_eps", 1e-6))}


def _defaults(layout: str, vocab: Optional[int]) -> tuple:
    """(vision act, text act) when no config.json says: HF SiglipConfig's tanh GELU; open_clip's timm trunk uses
    exact GELU, its SigLIP text tower exact GELU too, its SigLIP2 text tower (Gemma vocabulary) the tanh one."""
    if layout == "hf":
        return "gelu_tanh", "gelu_tanh"
    return "gelu", "gelu_tanh" if vocab == GEMMA_VOCAB else "gelu"


def vision_config(sd: Mapping[str, torch.Tensor], act: str, heads: int, eps: float) -> SiglipVisionConfig:
    patch = sd[f"{V}embeddings.patch_embedding.weight"]
    width, _, size, _ = patch.shape
    positions = sd[f"{V}embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"SigLIP position embedding has {positions} rows; expected a square patch grid")
    layers = _count(sd, f"{V}encoder.layers.")
    mlp = sd[f"{V}encoder.layers.0.mlp.fc1.weight"].shape[0]
    return SiglipVisionConfig(name=f"SigLIP ViT-{width}w/{size} @{grid * size}", image_size=grid * size,
                              patch_size=size, width=width, layers=layers, heads=heads, mlp_dim=mlp, act=act, eps=eps)


def build_vision(sd: Mapping[str, torch.Tensor], config: SiglipVisionConfig, source: str,
                 layout: str) -> SiglipVisionModel:
    tower = SiglipVisionTower(config)
    tower.load_state_dict(gather(sd, vision_names(config), dtype=torch.float32), strict=True)
    return SiglipVisionModel(tower, source=source, layout=layout)


def build_text(sd: Mapping[str, torch.Tensor], act: str, heads: int, eps: float, layout: str):
    """The text tower as the export's ``TextWeights`` (no causal mask, last-token pooling, head with bias)."""
    from ..axera_export.text_model import TextConfig, TextWeights

    vocab, width = sd[f"{T}embeddings.token_embedding.weight"].shape
    context = sd[f"{T}embeddings.position_embedding.weight"].shape[0]
    head = sd[f"{T}head.weight"].float()
    config = TextConfig(vocab_size=vocab, context_length=context, width=width,
                        layers=_count(sd, f"{T}encoder.layers."), heads=heads,
                        mlp_dim=sd[f"{T}encoder.layers.0.mlp.fc1.weight"].shape[0], act=act, eps=eps,
                        proj_dim=head.shape[0], causal=False)
    text = {k: v.float() for k, v in sd.items() if k.startswith(T) and not k.startswith(f"{T}head.")}
    scale, bias = sd.get("logit_scale"), sd.get("logit_bias")
    return TextWeights(config, text, head, float(scale.reshape(-1)[0]) if scale is not None else math.log(10.0),
                       layout, projection_bias=sd[f"{T}head.bias"].float(),
                       logit_bias=float(bias.reshape(-1)[0]) if bias is not None else -10.0, pooling="last")


def siglip_from_state_dict(sd: Mapping[str, torch.Tensor], parts=("vision", "text"), source: str = "state dict",
                           path: Optional[str] = None, config: Optional[dict] = None) -> tuple:
    """``(SiglipVisionModel | None, TextWeights | None, layout)`` from a SigLIP state dict in any layout;
    ``config``: an HF ``SiglipConfig`` dict (default: the ``config.json`` beside ``path``)."""
    canonical, layout = to_canonical(sd, source)
    cfg = config if config is not None else hf_config_beside(path)
    vocab = canonical.get(f"{T}embeddings.token_embedding.weight")
    vision_act, text_act = _defaults(layout, None if vocab is None else vocab.shape[0])
    vision = text = None
    if "vision" in parts:
        if f"{V}head.probe" not in canonical:
            raise ValueError(f"{source} has no SigLIP vision tower (no '{V}head.probe'); export parts=text")
        width = canonical[f"{V}embeddings.patch_embedding.weight"].shape[0]
        s = _settings(cfg.get("vision_config") or {}, width, vision_act)
        vision = build_vision(canonical, vision_config(canonical, **s), source, layout)
    if "text" in parts:
        if vocab is None:
            raise ValueError(f"{source} has no SigLIP text tower (no '{T}embeddings.token_embedding.weight', "
                             f"e.g. a SiglipVisionModel file); export parts=vision")
        text = build_text(canonical, **_settings(cfg.get("text_config") or {}, vocab.shape[1], text_act),
                          layout=layout)
    return vision, text, layout


def load_siglip(path: str, parts=("vision", "text")) -> tuple:
    """A SigLIP checkpoint file (safetensors / weights-only torch) → ``(vision, text, layout)``."""
    from .checkpoint import open_checkpoint

    reader = open_checkpoint(path, "SigLIP")
    sd = {k: reader.get(k) for k in reader.keys}
    return siglip_from_state_dict(sd, parts, f"'{os.path.basename(path)}'", path)


def random_siglip_state_dict(image_size: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                             mlp_dim: int = 3072, vocab_size: int = 32000, context_length: int = 64,
                             text_layers: Optional[int] = None, seed: int = 0) -> dict:
    """Seeded random-init SigLIP under the real HF ``SiglipModel`` key names (google/siglip-base-patch16-224
    sizes by default; NOT pretrained). Scales as transformers' init (normal·width^-0.5, LayerNorm 1/0)."""
    g = torch.Generator().manual_seed(seed)
    std = width ** -0.5

    def normal(*shape):
        return torch.randn(shape, generator=g) * std

    sd = {f"{V}embeddings.patch_embedding.weight": normal(width, 3, patch_size, patch_size),
          f"{V}embeddings.patch_embedding.bias": torch.zeros(width),
          f"{V}embeddings.position_embedding.weight": normal((image_size // patch_size) ** 2, width),
          f"{T}embeddings.token_embedding.weight": normal(vocab_size, width),
          f"{T}embeddings.position_embedding.weight": normal(context_length, width),
          f"{V}head.probe": normal(1, 1, width),
          f"{V}head.attention.in_proj_weight": normal(3 * width, width),
          f"{V}head.attention.in_proj_bias": torch.zeros(3 * width),
          f"{T}head.weight": normal(width, width), f"{T}head.bias": torch.zeros(width),
          "logit_scale": torch.tensor([math.log(10.0)]), "logit_bias": torch.tensor([-10.0])}
    for tower, n in ((V, layers), (T, layers if text_layers is None else text_layers)):
        blocks = [f"{tower}encoder.layers.{i}." for i in range(n)]
        for b in blocks:
            for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
                sd[f"{b}self_attn.{m}.weight"], sd[f"{b}self_attn.{m}.bias"] = normal(width, width), torch.zeros(width)
            sd[f"{b}mlp.fc1.weight"], sd[f"{b}mlp.fc1.bias"] = normal(mlp_dim, width), torch.zeros(mlp_dim)
            sd[f"{b}mlp.fc2.weight"], sd[f"{b}mlp.fc2.bias"] = normal(width, mlp_dim), torch.zeros(width)
        norms = [f"{b}{ln}" for b in blocks for ln in ("layer_norm1", "layer_norm2")]
        norms.append(f"{V}post_layernorm" if tower == V else f"{T}final_layer_norm")
        for ln in norms:
            sd[f"{ln}.weight"], sd[f"{ln}.bias"] = torch.ones(width), torch.zeros(width)
    sd[f"{V}head.attention.out_proj.weight"], sd[f"{V}head.attention.out_proj.bias"] = normal(width, width), \
        torch.zeros(width)
    sd[f"{V}head.layernorm.weight"], sd[f"{V}head.layernorm.bias"] = torch.ones(width), torch.zeros(width)
    sd[f"{V}head.mlp.fc1.weight"], sd[f"{V}head.mlp.fc1.bias"] = normal(mlp_dim, width), torch.zeros(mlp_dim)
    sd[f"{V}head.mlp.fc2.weight"], sd[f"{V}head.mlp.fc2.bias"] = normal(width, mlp_dim), torch.zeros(width)
    return sd


# --- scoring (clip_vision.scores): the SigLIP pair behind the CLIP-score interfaces -----------------------------
def is_siglip_file(path: str) -> bool:
    """Whether a checkpoint holds a SigLIP tower (key names only; nothing is loaded)."""
    from .checkpoint import open_checkpoint
    from .siglip_layouts import detect_layout

    return detect_layout(open_checkpoint(path, "CLIP").keys) is not None


class SiglipTextModule(nn.Module):
    """Token ids → SigLIP text embedding: the tower, the hidden state at the last position, ``text_model.head``."""

    def __init__(self, weights):
        super().__init__()
        self.tower = weights.build()
        self.head = nn.Linear(weights.config.width, weights.projection.shape[0])
        self.head.load_state_dict({"weight": weights.projection, "bias": weights.projection_bias})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(ids)[:, -1])


def siglip_score_models(path: str, tokenizer: Optional[str] = None, text: bool = True) -> tuple:
    """``(SiglipVisionModel, TextTower | None)`` of a SigLIP checkpoint for ``clip_vision.scores``; the tokenizer
    (``spiece.model`` / SigLIP2 ``tokenizer.json``) from ``tokenizer`` (file or folder) or beside the file."""
    from ..axera_export.families.siglip import FAMILY
    from .text_tower import TextTower

    has_text = text and detect_text(path)
    vision, weights, _ = load_siglip(path, ("vision", "text") if has_text else ("vision",))
    if not has_text:
        return vision, None
    c = weights.config
    tok = FAMILY.find_tokenizer(os.fspath(tokenizer) if tokenizer else os.path.dirname(os.path.abspath(path)),
                                c.vocab_size, c.context_length)
    return vision, TextTower(SiglipTextModule(weights), lambda prompts: torch.from_numpy(tok(prompts)).long(),
                             "siglip", f"'{path}'", weights.projection.shape[0])


def detect_text(path: str) -> bool:
    from .checkpoint import open_checkpoint
    from .siglip_layouts import strip_wrapper

    keys = list(open_checkpoint(path, "SigLIP").keys)
    prefix = strip_wrapper(keys)
    return any(k[len(prefix):] in (f"{T}embeddings.token_embedding.weight", "text.token_embedding.weight")
               for k in keys)
