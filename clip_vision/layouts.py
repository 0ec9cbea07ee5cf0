"""Key layouts of CLIP vision checkpoints, and the ONE converter from each to the canonical layout.

Canonical = HF ``CLIPVisionModelWithProjection`` / ComfyUI ``clip_vision_*.safetensors`` names
(``vision_model.…``, ``visual_projection.weight``), so a converted dict also loads in ComfyUI core with
``comfy.clip_vision.load_clipvision_from_sd``.

Supported source layouts (each may sit under any wrapper prefix such as ``module.`` or ``model.``):

* ``"wan"``       Wan 2.1 ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``: ``visual.patch_embedding``,
                  ``visual.cls_embedding``, ``visual.transformer.N.attn.to_qkv`` … (+ ``textual.*``, ``log_scale``)
* ``"open_clip"`` OpenCLIP ``visual.conv1`` … ``visual.transformer.resblocks.N`` … ``visual.proj``; the full CLIP
                  model (text tower at the top level) or the visual tower alone (no ``visual.`` root)
* ``"hf"``        HF ``CLIPVisionModel(WithProjection)`` / full ``CLIPModel`` / ComfyUI clip_vision files (also the
                  bare ``embeddings.…``/``encoder.layers.N…`` state dict of a transformers-5 ``CLIPVisionModel``)

A conversion is a *plan*: one ``Step`` per canonical tensor, naming its single source key and a cheap
reshaping op. The plan needs key names only, so loaders can read just the vision tensors from a file
(text towers are never materialised) and convert them one at a time.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Optional

import torch

LAYOUTS = ("wan", "open_clip", "hf")

# Per-block names: canonical suffix (under vision_model.encoder.layers.N.) → source suffix, for each layout.
_BLOCK = {
    "wan": {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
            "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"},
    "open_clip": {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"},
}
# Fused q|k|v projection of each source layout: (weight key, bias key) under the block.
_FUSED_QKV = {"wan": ("attn.to_qkv.weight", "attn.to_qkv.bias"),
              "open_clip": ("attn.in_proj_weight", "attn.in_proj_bias")}
# Block container under the root.
_BLOCKS_AT = {"wan": "transformer.", "open_clip": "transformer.resblocks.", "hf": "encoder.layers."}
# (canonical key, source key, op) outside the blocks; "?" marks optional (projection heads).
_TOP = {
    "wan": [("vision_model.embeddings.class_embedding", "cls_embedding", "flatten"),
            ("vision_model.embeddings.patch_embedding.weight", "patch_embedding.weight", "copy"),
            ("vision_model.embeddings.position_embedding.weight", "pos_embedding", "last2"),
            ("vision_model.pre_layrnorm.weight", "pre_norm.weight", "copy"),
            ("vision_model.pre_layrnorm.bias", "pre_norm.bias", "copy"),
            ("vision_model.post_layernorm.weight", "post_norm.weight", "copy"),
            ("vision_model.post_layernorm.bias", "post_norm.bias", "copy"),
            ("visual_projection.weight", "head?", "transpose")],
    "open_clip": [("vision_model.embeddings.class_embedding", "class_embedding", "flatten"),
                  ("vision_model.embeddings.patch_embedding.weight", "conv1.weight", "copy"),
                  ("vision_model.embeddings.position_embedding.weight", "positional_embedding", "last2"),
                  ("vision_model.pre_layrnorm.weight", "ln_pre.weight", "copy"),
                  ("vision_model.pre_layrnorm.bias", "ln_pre.bias", "copy"),
                  ("vision_model.post_layernorm.weight", "ln_post.weight", "copy"),
                  ("vision_model.post_layernorm.bias", "ln_post.bias", "copy"),
                  ("visual_projection.weight", "proj?", "transpose")],
}
_HF_TOP = ["vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
           "vision_model.embeddings.position_embedding.weight", "vision_model.pre_layrnorm.weight",
           "vision_model.pre_layrnorm.bias", "vision_model.post_layernorm.weight",
           "vision_model.post_layernorm.bias", "visual_projection.weight?"]
_HF_BLOCK = ["layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
             "layer_norm2", "mlp.fc1", "mlp.fc2"]

# How each layout is recognised: (marker key under the root, confirming key under the same root).
_MARKERS = {
    "wan": ("transformer.0.attn.to_qkv.weight", "cls_embedding"),
    "open_clip": ("transformer.resblocks.0.attn.in_proj_weight", "conv1.weight"),
    # root = everything before "encoder.", usually "vision_model." (transformers 5 also saves a bare
    # CLIPVisionModel without it); the projection sits beside the vision_model, not under it.
    "hf": ("encoder.layers.0.self_attn.q_proj.weight", "embeddings.patch_embedding.weight"),
}


@dataclasses.dataclass(frozen=True)
class Step:
    """One canonical tensor = ``op(source[src])``. Ops are views (no copy) on real tensors."""

    dst: str
    src: str
    op: str = "copy"  # copy | flatten | last2 | transpose | chunk0 | chunk1 | chunk2

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.op == "copy":
            return tensor
        if self.op == "flatten":  # Wan cls_embedding [1,1,W] → [W]
            return tensor.reshape(-1)
        if self.op == "last2":  # Wan pos_embedding [1,T,W] → [T,W]
            return tensor.reshape(tensor.shape[-2:])
        if self.op == "transpose":  # [W,P] head/proj (x @ proj) → HF Linear weight [P,W]
            return tensor.t()
        if self.op.startswith("chunk"):  # fused rows q|k|v → one third
            return tensor.chunk(3, dim=0)[int(self.op[-1])]
        raise AssertionError(self.op)

    def shape(self, src_shape) -> tuple:
        src_shape = tuple(src_shape)
        if self.op == "flatten":
            n = 1
            for s in src_shape:
                n *= s
            return (n,)
        if self.op == "last2":
            return src_shape[-2:]
        if self.op == "transpose":
            return (src_shape[1], src_shape[0])
        if self.op.startswith("chunk"):
            return (src_shape[0] // 3,) + src_shape[1:]
        return src_shape


@dataclasses.dataclass(frozen=True)
class Plan:
    layout: str
    prefix: str  # wrapper + tower root in the source, e.g. "module.visual."
    layers: int
    steps: tuple

    @property
    def source_keys(self) -> list:
        return [s.src for s in self.steps]


def _find_root(keys: set, layout: str) -> Optional[str]:
    marker, confirm = _MARKERS[layout]
    roots = sorted((k[: -len(marker)] for k in keys if k.endswith(marker)), key=len)
    for root in roots:
        if root + confirm in keys:
            return root
    return None


def _count_blocks(keys: set, container: str) -> int:
    pattern = re.compile(re.escape(container) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys for m in [pattern.match(k)] if m}
    return max(found) + 1 if found else 0


def _describe_keys(keys: list, limit: int = 12) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} keys seen: {shown}{more}" if keys else "the file holds no tensors"


def plan_conversion(keys: Iterable[str], source: str = "state dict") -> Plan:
    """Recognise the layout of ``keys`` and plan the conversion to canonical names.

    Raises ValueError naming what was expected and listing the keys seen when no vision tower is found,
    or listing the missing keys when a recognised tower is incomplete.
    """
    keys = [k for k in keys if isinstance(k, str)]
    key_set = set(keys)
    for layout in ("hf", "wan", "open_clip"):
        root = _find_root(key_set, layout)
        if root is not None:
            break
    else:
        raise ValueError(
            f"{source}: no CLIP vision tower found. Expected Wan .pth keys ('visual.transformer.0.attn.to_qkv"
            f".weight'), OpenCLIP keys ('visual.transformer.resblocks.0.attn.in_proj_weight') or HF/ComfyUI "
            f"keys ('vision_model.encoder.layers.0.self_attn.q_proj.weight'); {_describe_keys(keys)}. "
            f"Use a CLIP vision file (e.g. clip_vision_h.safetensors or Wan's "
            f"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), not a text encoder or a diffusion model."
        )
    layers = _count_blocks(key_set, root + _BLOCKS_AT[layout])
    steps = []
    if layout == "hf":
        outer = root[: -len("vision_model.")] if root.endswith("vision_model.") else root

        def source_name(name):
            return root + name[len("vision_model."):] if name.startswith("vision_model.") else outer + name

        for name in _HF_TOP:
            if name.endswith("?"):
                name = name[:-1]
                if source_name(name) not in key_set:
                    continue
            steps.append(Step(name, source_name(name)))
        for n in range(layers):
            for part in _HF_BLOCK:
                for p in ("weight", "bias"):
                    name = f"vision_model.encoder.layers.{n}.{part}.{p}"
                    steps.append(Step(name, source_name(name)))
    else:
        for dst, src, op in _TOP[layout]:
            if src.endswith("?"):
                src = src[:-1]
                if root + src not in key_set:
                    continue
            steps.append(Step(dst, root + src, op))
        container = root + _BLOCKS_AT[layout]
        w_qkv, b_qkv = _FUSED_QKV[layout]
        for n in range(layers):
            block, dst_block = f"{container}{n}.", f"vision_model.encoder.layers.{n}."
            for i, qkv in enumerate(("q_proj", "k_proj", "v_proj")):
                steps.append(Step(f"{dst_block}self_attn.{qkv}.weight", block + w_qkv, f"chunk{i}"))
                steps.append(Step(f"{dst_block}self_attn.{qkv}.bias", block + b_qkv, f"chunk{i}"))
            for dst, src in _BLOCK[layout].items():
                for p in ("weight", "bias"):
                    steps.append(Step(f"{dst_block}{dst}.{p}", f"{block}{src}.{p}"))
    missing = sorted({s.src for s in steps if s.src not in key_set})
    if missing:
        raise ValueError(
            f"{source}: the {layout!r} CLIP vision tower (prefix {root!r}, {layers} blocks) is incomplete; "
            f"missing {len(missing)} keys: {missing[:10]}{' …' if len(missing) > 10 else ''}. "
            f"The file is damaged or was saved partially; download it again."
        )
    return Plan(layout=layout, prefix=root, layers=layers, steps=tuple(steps))


def convert_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> tuple[dict, str]:
    """Convert a CLIP vision state dict in any supported layout to canonical HF/ComfyUI names.

    Returns ``(canonical_sd, layout_name)``. Tensors are views of the input where possible (mmap-friendly);
    text-tower and other unrelated keys are ignored.
    """
    plan = plan_conversion(sd.keys(), source)
    return {s.dst: s.apply(sd[s.src]) for s in plan.steps}, plan.layout
