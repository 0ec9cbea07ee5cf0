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

import os
from typing import Mapping, Optional

import torch

from ..clip_vision import ClipVisionModel, VisionTransformer, detect_config
from ..clip_vision.checkpoint import hf_config_beside
from ..clip_vision.layouts import plan_conversion
from ..weights import open_weights
from .towers.bert import CONTEXT_LENGTH, BertTextWeights, bert_weights_from_state_dict, hf_text_overrides

# Preprocessing of every Chinese-CLIP release: OpenAI CLIP's mean/std (cn_clip image_transform; the HF
# preprocessor_config.json of OFA-Sys/chinese-clip-vit-* lists the same numbers), resize to the tower's size.
VISION_ACT = "quick_gelu"



def vision_overrides(cfg: Mapping) -> dict:
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
    cfg = hf_config_beside(path)
    text = None
    if "text" in parts:
        try:
            text = bert_weights_from_state_dict(sd, context_length=context_length or CONTEXT_LENGTH,
                                                **hf_text_overrides(cfg))
        except ValueError as exc:
            raise ValueError(f"'{path}': {exc}") from None
    vision = None
    if "vision" in parts:
        vision = cnclip_vision(sd, vision_overrides(cfg), source=f"'{os.path.basename(path)}'")
    return vision, text


# chinese-clip-vit-base-patch16: ViT-B/16 + RoBERTa-wwm-ext-base-chinese (cn_clip model_configs), 512-d embeds
BASE_SIZES = dict(vision_layers=12, vision_width=768, patch_size=16, image_size=224, text_layers=12, width=768,
                  vocab_size=21128, proj_dim=512)


def random_cnclip_state_dict(seed: int = 0, **sizes) -> tuple[dict, dict]:
    """A seeded random-init Chinese-CLIP under the real HF ``ChineseCLIPModel`` key names; ``sizes`` override
    ``BASE_SIZES``. Returns ``(state_dict, config)`` with ``config`` an HF-style ``{"vision_config": {...},
    "text_config": {...}}`` of what shapes cannot tell (64-wide heads, as every release; QuickGELU vision)."""
    from ..clip_vision.config import VisionConfig
    from ..clip_vision.loader import _init_std
    from ..clip_vision.model import VisionTransformer, internal_to_canonical
    from .towers.bert import BertConfig, random_state_dict

    s = dict(BASE_SIZES, **sizes)
    unknown = set(s) - set(BASE_SIZES)
    if unknown:
        raise ValueError(f"unknown Chinese-CLIP size(s) {sorted(unknown)}; known: {sorted(BASE_SIZES)}")
    vw, tw = s["vision_width"], s["width"]
    text_cfg = BertConfig(vocab_size=s["vocab_size"], width=tw, layers=s["text_layers"], heads=max(1, tw // 64),
                          mlp_dim=4 * tw, proj_dim=s["proj_dim"])
    sd = random_state_dict(text_cfg, seed=seed, layout="hf")
    vcfg = VisionConfig(name="ViT", image_size=s["image_size"], patch_size=s["patch_size"], width=vw,
                        layers=s["vision_layers"], heads=max(1, vw // 64), mlp_dim=4 * vw, act=VISION_ACT,
                        proj_dim=s["proj_dim"])
    g = torch.Generator().manual_seed(seed + 1)
    model = VisionTransformer(vcfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = _init_std(name, vcfg)
            if std is None:
                p.copy_(torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    sd.update({k: v.clone() for k, v in internal_to_canonical(model).items()})
    return sd, {"vision_config": {"hidden_act": VISION_ACT, "num_attention_heads": vcfg.heads},
                "text_config": {"num_attention_heads": text_cfg.heads}}
