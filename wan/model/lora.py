"""LoRA files for Wan 2.1 DiTs, merged into the weights: LongLive's ``lora.pt`` (its trainer's
``{generator_lora, critic_lora, step}`` with PEFT keys) and flat PEFT / kohya-style tensor dicts.

PEFT's merge (``LoraLayer.merge``) adds ``(lora_B @ lora_A) · alpha / rank`` to each targeted Linear weight.
A PEFT state dict does not store alpha: it is the training config's ``adapter.alpha`` (LongLive: rank 256,
alpha 256, so the scale is 1). Everything here works on already-read tensor dicts, so any file reader can
feed it; ``read_file`` of ``checkpoint.py`` is only used by the file-level helper.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

import torch

from ...weights import read_weights

# LongLive's trainer saves {"generator_lora": ..., "critic_lora": ..., "step": n}; the critic adapts the
# bidirectional teacher and is never used at inference.
LORA_ENTRY = "generator_lora"
_PEFT_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_]+)?\.weight$")
# prefixes around the Wan module path: PEFT's wrapper, ComfyUI's model, trainers' wrappers
_PREFIXES = ("base_model.model.", "diffusion_model.", "model.")


def is_lora_dict(obj) -> bool:
    """True for a LoRA file's contents (LongLive container or a flat dict with lora_A/lora_down keys)."""
    if not isinstance(obj, Mapping):
        return False
    if LORA_ENTRY in obj and isinstance(obj[LORA_ENTRY], Mapping):
        return True
    return any(isinstance(k, str) and _PEFT_KEY.match(k) for k in obj)


def select_lora(obj: Mapping, source: str = "LoRA file") -> dict:
    """The generator's LoRA tensors of a file's contents (``generator_lora`` entry, or the dict itself)."""
    if isinstance(obj, Mapping) and LORA_ENTRY in obj:
        obj = obj[LORA_ENTRY]
    if not is_lora_dict(obj):
        keys = ", ".join(str(k) for k in list(obj)[:6]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{source} is not a LoRA: no '{LORA_ENTRY}' entry and no lora_A/lora_B keys "
                         f"(first keys: {keys}). LongLive's adapter is its lora.pt; the base weights "
                         f"(longlive_base.pt) go into model_name.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _wan_module(path: str) -> str:
    path = path.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path


def lora_pairs(lora: Mapping[str, torch.Tensor], source: str = "LoRA file") -> dict:
    """``{wan weight key: (down [r, in], up [out, r], alpha or None)}`` from PEFT (``lora_A``/``lora_B``)
    or kohya (``lora_down``/``lora_up`` + ``.alpha``) names."""
    parts: dict = {}
    for key, value in lora.items():
        m = _PEFT_KEY.match(key)
        if m:
            slot = "down" if m["kind"] in ("lora_A", "lora_down") else "up"
            parts.setdefault(m["module"], {})[slot] = value
        elif key.endswith(".alpha"):
            parts.setdefault(key[: -len(".alpha")], {})["alpha"] = float(value)
    pairs = {}
    for module, p in parts.items():
        if "down" not in p or "up" not in p:
            missing = "lora_B (up)" if "up" not in p else "lora_A (down)"
            raise ValueError(f"{source}: module '{module}' has no {missing} weight; the LoRA file is incomplete.")
        down, up = p["down"], p["up"]
        if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"{source}: module '{module}' has lora_A {list(down.shape)} and lora_B "
                             f"{list(up.shape)}; expected [rank, in] and [out, rank] (Linear layers only).")
        pairs[_wan_module(module) + ".weight"] = (down, up, p.get("alpha"))
    if not pairs:
        raise ValueError(f"{source} holds no LoRA weight pairs (lora_A/lora_B).")
    return pairs


def lora_deltas(lora: Mapping[str, torch.Tensor], strength: float = 1.0, alpha: Optional[float] = None,
                source: str = "LoRA file") -> dict:
    """``{wan weight key: float32 delta}`` = ``strength · alpha/rank · (B @ A)``, PEFT's merge. ``alpha``
    None: the file's ``.alpha`` if any, else alpha = rank (scale 1, LongLive's config)."""
    out = {}
    for key, (down, up, file_alpha) in lora_pairs(lora, source).items():
        rank = down.shape[0]
        a = alpha if alpha is not None else (file_alpha if file_alpha is not None else rank)
        out[key] = (up.float() @ down.float()) * (float(a) / rank) * float(strength)
    return out


def merge_lora(state_dict: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor], strength: float = 1.0,
               alpha: Optional[float] = None, source: str = "LoRA file") -> dict:
    """A new Wan-named state dict with the LoRA merged (the sum in float32, stored in each weight's dtype).
    Every LoRA target must be a weight of the model with the same shape."""
    deltas = lora_deltas(lora, strength, alpha, source)
    merged = dict(state_dict)
    for key, delta in deltas.items():
        if key not in state_dict:
            near = [k for k in state_dict if k.endswith(key.split(".", 2)[-1])][:3]
            raise ValueError(f"{source} adapts '{key}', which the model does not have (similar: {near or 'none'}); "
                             f"is the LoRA for this model (Wan 2.1, same size)?")
        w = state_dict[key]
        if tuple(w.shape) != tuple(delta.shape):
            raise ValueError(f"{source}: '{key}' is {list(w.shape)} in the model but the LoRA gives "
                             f"{list(delta.shape)}; the LoRA was trained on a different Wan size.")
        merged[key] = (w.float() + delta.to(w.device)).to(w.dtype)
    return merged


def load_lora_file(path: str) -> dict:
    """The generator LoRA tensors of a file (safetensors or weights-only torch)."""
    return select_lora(read_weights(path, "LoRA"), os.path.basename(path))


def merge_lora_file(state_dict: Mapping[str, torch.Tensor], path: str, strength: float = 1.0,
                    source: str = "") -> tuple[dict, str]:
    """``state_dict`` with the LoRA file at ``path`` merged, and ``source`` extended to say so."""
    name = os.path.basename(path)
    merged = merge_lora(state_dict, load_lora_file(path), strength=strength, source=name)
    return merged, f"{source} + LoRA {name} x{strength:g}"
