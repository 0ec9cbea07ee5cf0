"""Chinese-CLIP as an export source: the vision tower through the pack's ``clip_vision`` loader (it is a plain
CLIP ViT in both layouts), the text tower through ``towers.bert``.

* HF ``ChineseCLIPModel`` (``OFA-Sys/chinese-clip-vit-*``): vision under ``vision_model.*`` +
  ``visual_projection.weight`` = the HF CLIP vision layout clip_vision already reads; hyper-parameters from the
  ``config.json`` beside the file (``vision_config.hidden_act`` is ``quick_gelu``, ``text_config`` heads/eps).
* OFA-Sys ``cn_clip`` checkpoints: vision under ``visual.*`` = the OpenAI/OpenCLIP layout clip_vision reads
  (conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks.N.{attn.in_proj_*,…}, ln_post,
  proj). cn_clip's ``VisualTransformer`` always uses QuickGELU (``cn_clip/clip/model.py``
  ``ResidualAttentionBlock``), whatever the size, so that is the activation given to clip_vision here.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import torch

from ..clip_vision import ClipVisionModel, VisionTransformer, detect_config
from ..clip_vision.layouts import plan_conversion
from ..weights import open_weights
from .towers.bert import CONTEXT_LENGTH, BertTextWeights, bert_weights_from_state_dict, hf_text_overrides

# Preprocessing of every Chinese-CLIP release: OpenAI CLIP's mean/std (cn_clip image_transform; the HF
# preprocessor_config.json of OFA-Sys/chinese-clip-vit-* lists the same numbers), resize to the tower's size.
VISION_ACT = "quick_gelu"


def _config_json(path: Optional[str]) -> dict:
    if not path:
        return {}
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    try:
        with open(beside) as f:
            cfg = json.load(f)
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


def vision_overrides(cfg: Mapping, layout: str) -> dict:
    """What shapes cannot tell the vision tower: QuickGELU for cn_clip, the HF config's fields otherwise."""
    vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), Mapping) else {}
    out = {"act": VISION_ACT}
    for key in ("hidden_act", "num_attention_heads", "layer_norm_eps"):
        if vision.get(key) is not None:
            out[key] = vision[key]
    if "hidden_act" in out:
        out.pop("act")
    return out


def cnclip_vision(sd: Mapping[str, torch.Tensor], overrides: Optional[Mapping] = None,
                  source: str = "Chinese-CLIP") -> ClipVisionModel:
    """The vision tower of a Chinese-CLIP state dict (either layout) as an fp32 CPU ``ClipVisionModel``."""
    plan = plan_conversion(sd.keys(), source)
    vision = {s.src: sd[s.src].float() for s in plan.steps}
    config = detect_config(vision, dict(overrides or {"act": VISION_ACT}))
    model = ClipVisionModel(VisionTransformer(config), source=source, layout=plan.layout)
    model.load_sd(vision)
    return model


def load_cnclip(path: str, parts=("vision", "text"), context_length: Optional[int] = None
                ) -> tuple[Optional[ClipVisionModel], Optional[BertTextWeights]]:
    """A Chinese-CLIP checkpoint file (HF ``model.safetensors``/``pytorch_model.bin`` or a cn_clip ``.pt``)."""
    reader = open_weights(path, "Chinese-CLIP")
    sd = {k: reader.get(k) for k in reader.keys}
    cfg = _config_json(path)
    text = None
    if "text" in parts:
        try:
            text = bert_weights_from_state_dict(sd, context_length=context_length or CONTEXT_LENGTH,
                                                **hf_text_overrides(cfg))
        except ValueError as exc:
            raise ValueError(f"'{path}': {exc}") from None
    vision = None
    if "vision" in parts:
        layout = "hf" if text is None or text.layout == "hf" else "cn_clip"
        vision = cnclip_vision(sd, vision_overrides(cfg, layout), source=f"'{os.path.basename(path)}'")
    return vision, text
