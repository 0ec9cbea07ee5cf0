"""What can be exported: a full CLIP file (HF or OpenCLIP layout), a loaded CLIP_VISION, or the default.

Vision weights always go through the pack's ``clip_vision`` loader (the one place that knows vision
layouts); text weights through ``text_model`` (the one place that knows text layouts). Files are read with
the pack's one weights reader (``weights.py``: safetensors, or ``torch.load(weights_only=True, mmap=True)``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch

from ..clip_vision import ClipVisionModel, VisionTransformer, default_clip_vision, detect_config, load_clip_vision
from ..clip_vision.checkpoint import hf_config_beside, open_checkpoint
from .text_model import (VIT_B32_TEXT, TextConfig, TextWeights, default_text_state_dict,
                         text_weights_from_state_dict)

PARTS = ("vision", "text")


def parse_parts(parts) -> tuple:
    """``"vision,text"`` / ``"both"`` / ``["vision"]`` → ordered tuple of part names."""
    if isinstance(parts, str):
        parts = ["vision", "text"] if parts.strip().lower() in ("both", "all") else parts.split(",")
    chosen = [p.strip().lower() for p in parts if p.strip()]
    bad = [p for p in chosen if p not in PARTS]
    if bad or not chosen:
        raise ValueError(f"parts must be a comma list of {PARTS} (or 'both'), got {parts!r}")
    return tuple(p for p in PARTS if p in chosen)


@dataclasses.dataclass
class ClipSource:
    description: str
    random_init: bool
    vision: Optional[ClipVisionModel] = None
    text: Optional[TextWeights] = None
    family: str = "clip"  # families.FAMILIES key: the rules the export and the runtime follow
    tokenizer_path: Optional[str] = None  # a tokenizer file/folder the family reads (None: the family's default)

    def require(self, parts) -> None:
        if "vision" in parts and self.vision is None:
            raise ValueError(f"{self.description} has no vision tower; export parts=text only")
        if "text" in parts and self.text is None:
            raise ValueError(f"{self.description} has no text tower (a CLIP_VISION / vision-only file); "
                             f"export parts=vision, or give a full CLIP checkpoint")
        # CLIP's zero-shot needs the projection; Jina-CLIP's text head may be an identity (no proj) by design
        if "text" in parts and self.text.projection is None and self.family == "clip":
            raise ValueError(f"{self.description}: the text tower has no 'text_projection' (a text-encoder-only "
                             f"file such as clip_l.safetensors); zero-shot needs a full CLIP checkpoint")


def default_source(seed: int = 0, vision_name: str = "ViT-B/32", vision_layers: Optional[int] = None,
                   text_config: TextConfig = VIT_B32_TEXT) -> ClipSource:
    """The embedded default: seeded random-init openai/clip-vit-base-patch32-shaped CLIP (NOT pretrained)."""
    vision = default_clip_vision(vision_name, seed=seed, layers=vision_layers)
    text = text_weights_from_state_dict(default_text_state_dict(text_config, seed=seed + 1),
                                        act=text_config.act)
    text.layout = "default"
    depth = "" if vision_layers is None else f", vision reduced to {vision_layers} layers"
    return ClipSource(f"embedded default: seeded random-init {vision_name} CLIP (seed {seed}{depth}), "
                      f"not pretrained", True, vision, text)


def _is_text_key(key: str) -> bool:
    # "visual.*" (OpenCLIP), "vision_model.*" / "visual_projection.*" (HF), under any wrapper prefix.
    return not any(part.startswith("visual") or part == "vision_model" for part in key.split("."))


def text_overrides(path: str) -> dict:
    """``hidden_act``/``num_attention_heads``/``layer_norm_eps`` of an HF ``config.json`` beside the file."""
    text = hf_config_beside(path).get("text_config")
    if not isinstance(text, dict):
        return {}
    out = {"act": text.get("hidden_act"), "heads": text.get("num_attention_heads"), "eps": text.get("layer_norm_eps")}
    return {k: v for k, v in out.items() if v is not None}


def load_source(path: str, parts=PARTS, text_act: Optional[str] = None,
                tokenizer: Optional[str] = None) -> ClipSource:
    """A checkpoint of any family ``families`` knows (recognised by its key names), reading only the towers
    asked for; ``text_act`` applies to CLIP files, ``tokenizer`` (a file or folder) to families whose
    tokenizer is not bundled (SigLIP: default = the checkpoint's folder)."""
    from . import families

    path = os.fspath(path)
    family, _ = families.detect(open_checkpoint(path, "CLIP").keys)
    if family.name == "clip":
        return load_clip_source(path, parts, text_act)
    return family.load(path, parse_parts(parts), tokenizer)


def load_clip_source(path: str, parts=PARTS, text_act: Optional[str] = None) -> ClipSource:
    """A full CLIP checkpoint (HF ``CLIPModel`` or OpenCLIP ``CLIP``), reading only the towers asked for.

    Hyper-parameters shapes cannot tell come from an HF ``config.json`` beside the file when there is one;
    ``text_act`` overrides the text activation.
    """
    path = os.fspath(path)
    parts = parse_parts(parts)
    vision = load_clip_vision(path) if "vision" in parts else None
    text = None
    if "text" in parts:
        reader = open_checkpoint(path, "CLIP")
        sd = {k: reader.get(k) for k in reader.keys if _is_text_key(k)}
        try:
            overrides = text_overrides(path)
            if text_act:
                overrides["act"] = text_act
            text = text_weights_from_state_dict(sd, **overrides)
        except ValueError as exc:
            raise ValueError(f"'{path}': {exc}") from None
    return ClipSource(f"'{os.path.basename(path)}'", False, vision, text)


def clip_vision_from_state_dict(sd, source: str) -> ClipVisionModel:
    """A CPU fp32 ``ClipVisionModel`` from a vision state dict in any layout clip_vision knows.

    Adapter over clip_vision's public API (detect_config + VisionTransformer + load_sd): used for ComfyUI
    core's CLIP_VISION objects (``get_sd()``) and for an fp32 CPU parity reference of fp16/GPU models.
    """
    sd = {k: v.detach().float().cpu() for k, v in sd.items()}
    model = ClipVisionModel(VisionTransformer(detect_config(sd)), source=source, layout="hf")
    model.load_sd(sd)
    return model


def fp32_cpu(model: ClipVisionModel) -> ClipVisionModel:
    """The model itself when it is fp32 on the CPU, else an fp32 CPU copy (the parity reference)."""
    if model.dtype == torch.float32 and model.device.type == "cpu":
        return model
    return clip_vision_from_state_dict(model.state_dict_hf(), model.source)


def vision_source(model: ClipVisionModel) -> ClipSource:
    """A CLIP_VISION already loaded by the pack (vision only: e.g. Wan's ViT-H/14)."""
    random_init = "random-init" in str(getattr(model, "source", ""))
    return ClipSource(f"CLIP_VISION ({model.source})", random_init, vision=model)
