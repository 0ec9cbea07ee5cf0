"""Reading Wan 2.1 DiT weights from the layouts people have: Wan / ComfyUI ``.safetensors``, Self-Forcing /
CausVid / LongLive ``.pt`` (``generator`` / ``generator_ema`` / ``model`` entries, ``model.`` prefixes,
FSDP wrappers). Keys are mapped by prefix only. Never unpickles code: safetensors, or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

from ...dtypes import resolve_dtype as _resolve_dtype
from ...weights import WRAPPER_KEYS, read_weights
from .lora import LORA_ENTRY

ANCHOR = "head.modulation"  # present in every Wan 2.1 DiT, in no other model ComfyUI knows
CONTAINER_KEYS = WRAPPER_KEYS  # the pack's one list of training-checkpoint wrappers (EMA first)


def read_file(path: str) -> Mapping:
    """Raw contents of a weights file (a flat tensor dict, or a dict of such dicts for .pt checkpoints), read by
    the pack's one weights reader: format told from the bytes, zero-copy maps, NaN/Inf refused, no pickled code."""
    return read_weights(path, "Wan model")


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def select_state_dict(obj: Mapping, entry: str = "auto", source: str = "checkpoint",
                      prefer: Optional[str] = None) -> tuple[dict, str]:
    """Pick the DiT tensor dict out of a checkpoint; returns (tensors, entry name or ''). ``prefer`` (a family's
    entry) is taken with ``entry`` auto where the file has it; a file without it (a flat .safetensors of the
    same weights) loads by the auto rule instead of failing."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a dict of tensors, found {type(obj).__name__}.")
    if LORA_ENTRY in obj:
        raise ValueError(f"{source} is a LoRA adapter (LongLive's lora.pt: {{generator_lora, critic_lora, step}}), "
                         f"not a model. Load the base weights (longlive_base.pt) as the model and pick this file "
                         f"as lora_name (Load Causal Wan Model) or in Apply Causal Wan LoRA (ClipWan).")
    flat = any(str(k).endswith(ANCHOR) for k in obj)  # the DiT's tensors at the top level: no entries at all
    if entry not in ("auto", "", None) and not (flat and entry not in obj):
        # an entry names a part of a training checkpoint; a flat file (a .safetensors of the same weights) has
        # only the one state dict, so an entry (a preset's, or the widget's) never refuses it
        if entry not in obj or not _is_tensor_dict(obj[entry]):
            found = [k for k in obj if _is_tensor_dict(obj[k])]
            raise ValueError(f"{source} has no tensor entry '{entry}'; entries with tensors: {found or 'none'}.")
        return dict(obj[entry]), entry
    if flat:
        return dict(obj), ""
    if prefer not in (None, "", "auto") and prefer in obj and _is_tensor_dict(obj[prefer]):
        return dict(obj[prefer]), prefer
    for key in CONTAINER_KEYS:  # Self-Forcing: prefer the EMA generator, like its demo/inference --use_ema
        if key in obj and _is_tensor_dict(obj[key]):
            return dict(obj[key]), key
    return dict(obj), ""


def strip_to_wan_keys(sd: Mapping, source: str = "checkpoint") -> dict:
    """Map any supported layout to Wan's key names by removing prefixes (``model.``,
    ``model.diffusion_model.``, ``diffusion_model.``, ``_fsdp_wrapped_module.`` ...)."""
    keys = [str(k) for k in sd]
    if any(".lora_A." in k or ".lora_down." in k or "base_layer" in k for k in keys):
        raise ValueError(f"{source} contains LoRA adapter weights (lora_A/lora_down/base_layer keys). Load the "
                         f"base Wan model and apply the LoRA with a LoRA loader, or merge it into the weights first.")
    sd = {k.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", ""): v for k, v in sd.items()}
    anchors = [k for k in sd if k.endswith(ANCHOR)]
    if not anchors:
        sample = ", ".join(keys[:6])
        hint = ""
        if any(k.startswith("condition_embedder.") or k.startswith("proj_out.") for k in keys):
            hint = " This is a diffusers-format Wan transformer; use the original Wan or ComfyUI repackaged file."
        elif any("visual." in k or "vision_model." in k for k in keys):
            hint = " This looks like a CLIP vision model; load it with the CLIP vision loader instead."
        raise ValueError(f"unknown checkpoint layout in {source}: no Wan 2.1 DiT key '{ANCHOR}' "
                         f"(first keys: {sample}).{hint} Supported: Wan 2.1 / ComfyUI diffusion_models files and "
                         f"Self-Forcing / CausVid / LongLive .pt checkpoints (generator, generator_ema, model).")
    prefix = min(anchors, key=len)[: -len(ANCHOR)]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def wan_state_dict_from(raw: Mapping, entry: str = "auto", name: str = "checkpoint",
                        prefer: Optional[str] = None) -> tuple[dict, str]:
    """Wan-named tensors of an already-read checkpoint (any reader) and where they came from."""
    sd, picked = select_state_dict(raw, entry, name, prefer)
    sd = strip_to_wan_keys(sd, name + (f"['{picked}']" if picked else ""))
    return sd, name + (f" [{picked}]" if picked else "")


def load_wan_state_dict(path: str, entry: str = "auto", prefer: Optional[str] = None) -> tuple[dict, str]:
    """Wan-named tensors of a weights file and a short description of where they came from."""
    return wan_state_dict_from(read_file(path), entry, os.path.basename(path), prefer)


def resolve_dtype(dtype: Optional[object]) -> Optional[torch.dtype]:
    """A Wan weight / cache dtype: default/auto (None) keeps the file's or the model's dtype."""
    return _resolve_dtype(dtype, allow_default=True)
