"""Key layouts of SigLIP / SigLIP2 checkpoints, and the ONE converter from each to the canonical layout.

Canonical = Hugging Face ``SiglipModel`` names (SigLIP2's fixed-resolution checkpoints use the same class):

* vision: ``vision_model.embeddings.patch_embedding.{weight,bias}`` (a Conv2d), ``.position_embedding.weight``
  ([grid², W], no CLS token), ``vision_model.encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj,
  layer_norm2, mlp.fc1, mlp.fc2}``, ``vision_model.post_layernorm``, and the MAP pooling head
  ``vision_model.head.{probe [1,1,W], attention.in_proj_weight/bias (q|k|v stacked), attention.out_proj,
  layernorm, mlp.fc1, mlp.fc2}``;
* text: ``text_model.embeddings.{token_embedding, position_embedding}``, ``text_model.encoder.layers.N.*`` (the
  same block names), ``text_model.final_layer_norm``, ``text_model.head`` (Linear with bias);
* ``logit_scale`` [1], ``logit_bias`` [1].

Source layouts (under any wrapper prefix such as ``module.``):

* ``"hf"``: the canonical names (``SiglipModel``; ``SiglipVisionModel`` alone: the vision keys only).
* ``"open_clip"``: open_clip's ``ViT-*-SigLIP*`` (``CustomTextCLIP``): ``visual.trunk.*`` is a timm ViT
  (``patch_embed.proj``, ``pos_embed`` [1,N,W], ``blocks.N.{norm1, attn.qkv (fused), attn.proj, norm2,
  mlp.fc1, mlp.fc2}``, ``norm``, ``attn_pool.{latent, q, kv, proj, norm, mlp.fc1, mlp.fc2}``), ``text.*`` an
  open_clip ``TextTransformer`` (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N.*``,
  ``ln_final``, ``text_projection`` a Linear with bias), ``logit_scale`` and ``logit_bias`` as scalars.

SigLIP2 NaFlex checkpoints (``Siglip2Model``: a Linear patch embedding over flattened patches, positions resized
per image) are recognised and refused: their variable resolution is no static graph for the NPU.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch

LAYOUTS = ("hf", "open_clip")
V, T = "vision_model.", "text_model."
_WRAPPERS = ("module.", "model.", "clip_model.")

# How each layout is recognised: any of these keys (after the wrapper prefix).
_MARKERS = {
    "hf": (V + "head.probe", T + "head.weight"),
    "open_clip": ("visual.trunk.attn_pool.latent", "text.text_projection.bias"),
}
_TIMM_BLOCK = {"norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TIMM_POOL = {"attn_pool.proj": "head.attention.out_proj", "attn_pool.norm": "head.layernorm",
              "attn_pool.mlp.fc1": "head.mlp.fc1", "attn_pool.mlp.fc2": "head.mlp.fc2"}
_OC_TEXT_BLOCK = {"ln_1": "layer_norm1", "attn.out_proj": "self_attn.out_proj", "ln_2": "layer_norm2",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def strip_wrapper(keys) -> str:
    """The wrapper prefix all keys share (``module.`` …), or ``""``."""
    keys = list(keys)
    prefix = ""
    for wrapper in _WRAPPERS:
        if keys and all(k.startswith(prefix + wrapper) for k in keys):
            prefix += wrapper
    return prefix


def detect_layout(keys) -> Optional[str]:
    """``"hf"`` / ``"open_clip"`` when these keys hold a SigLIP tower, else None (not a SigLIP file)."""
    keys = list(keys)
    prefix = strip_wrapper(keys)
    found = {k[len(prefix):] for k in keys}
    for layout, markers in _MARKERS.items():
        if any(m in found for m in markers):
            return layout
    return None


def check_not_naflex(sd: Mapping[str, torch.Tensor], source: str) -> None:
    weight = sd.get(V + "embeddings.patch_embedding.weight")
    if weight is not None and weight.ndim == 2:
        raise ValueError(
            f"{source} is a SigLIP2 NaFlex checkpoint (patch_embedding is a Linear over flattened patches, "
            f"{list(weight.shape)}): its resolution and position embedding change per image, which is no static "
            f"graph for the NPU. Use a fixed-resolution SigLIP2 checkpoint (google/siglip2-base-patch16-224, "
            f"-256, -384, -512, so400m-patch14-384 …), which this pack supports.")


def _chunk_qkv(out: dict, dst: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0), bias.chunk(3, dim=0)):
        out[f"{dst}self_attn.{name}.weight"], out[f"{dst}self_attn.{name}.bias"] = w, b


def _open_clip_to_hf(sd: Mapping[str, torch.Tensor]) -> dict:
    out = {}
    trunk, text = "visual.trunk.", "text."
    if trunk + "pos_embed" in sd:
        out[V + "embeddings.patch_embedding.weight"] = sd[trunk + "patch_embed.proj.weight"]
        out[V + "embeddings.patch_embedding.bias"] = sd[trunk + "patch_embed.proj.bias"]
        pos = sd[trunk + "pos_embed"]
        out[V + "embeddings.position_embedding.weight"] = pos.reshape(pos.shape[-2:])
        for p in ("weight", "bias"):
            out[f"{V}post_layernorm.{p}"] = sd[f"{trunk}norm.{p}"]
            # the MAP head: timm keeps q and k|v apart, HF (nn.MultiheadAttention) stacks q|k|v
            out[f"{V}head.attention.in_proj_{p}"] = torch.cat([sd[f"{trunk}attn_pool.q.{p}"],
                                                               sd[f"{trunk}attn_pool.kv.{p}"]])
            for src, dst in _TIMM_POOL.items():
                out[f"{V}{dst}.{p}"] = sd[f"{trunk}{src}.{p}"]
        out[V + "head.probe"] = sd[trunk + "attn_pool.latent"]
        block = re.compile(re.escape(trunk) + r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
        for key, value in sd.items():
            m = block.match(key)
            if not m:
                continue
            n, module, p = m.groups()
            dst = f"{V}encoder.layers.{n}."
            if module == "attn.qkv":
                if p == "weight":
                    _chunk_qkv(out, dst, value, sd[f"{trunk}blocks.{n}.attn.qkv.bias"])
            elif module in _TIMM_BLOCK:
                out[f"{dst}{_TIMM_BLOCK[module]}.{p}"] = value
    if text + "token_embedding.weight" in sd:
        out[T + "embeddings.token_embedding.weight"] = sd[text + "token_embedding.weight"]
        out[T + "embeddings.position_embedding.weight"] = sd[text + "positional_embedding"]
        for p in ("weight", "bias"):
            out[f"{T}final_layer_norm.{p}"] = sd[f"{text}ln_final.{p}"]
            out[f"{T}head.{p}"] = sd[f"{text}text_projection.{p}"]
        block = re.compile(re.escape(text) + r"transformer\.resblocks\.(\d+)\.(.+)$")
        for key, value in sd.items():
            m = block.match(key)
            if not m:
                continue
            n, rest = m.groups()
            dst = f"{T}encoder.layers.{n}."
            if rest == "attn.in_proj_weight":
                _chunk_qkv(out, dst, value, sd[f"{text}transformer.resblocks.{n}.attn.in_proj_bias"])
                continue
            module, _, p = rest.rpartition(".")
            if module in _OC_TEXT_BLOCK:
                out[f"{dst}{_OC_TEXT_BLOCK[module]}.{p}"] = value
    for name in ("logit_scale", "logit_bias"):
        if name in sd:
            out[name] = sd[name].reshape(1)
    return out


def to_canonical(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> tuple:
    """A SigLIP state dict in any supported layout → ``(canonical HF SiglipModel dict, layout)`` (views where
    possible; unrelated keys dropped)."""
    prefix = strip_wrapper(sd.keys())
    sd = {k[len(prefix):]: v for k, v in sd.items()}
    layout = detect_layout(sd.keys())
    if layout is None:
        raise ValueError(f"{source}: no SigLIP tower found; expected Hugging Face SiglipModel keys "
                         f"('{V}head.probe', '{T}head.weight') or open_clip ViT-*-SigLIP keys "
                         f"('visual.trunk.attn_pool.latent', 'text.text_projection.bias')")
    if layout == "hf":
        check_not_naflex(sd, source)
        out = {k: v for k, v in sd.items() if k.startswith((V, T)) or k in ("logit_scale", "logit_bias")}
        return {k: v for k, v in out.items() if not k.endswith("position_ids")}, layout
    try:
        return _open_clip_to_hf(sd), layout
    except KeyError as exc:
        raise ValueError(f"{source}: the open_clip SigLIP checkpoint is incomplete: key {exc} is missing; the file "
                         f"is damaged or was saved partially") from None
