"""LoRA files for Wan 2.1 DiTs, merged into the weights: LongLive's ``lora.pt`` (its trainer's
``{generator_lora, critic_lora, step}`` with PEFT keys) and flat PEFT / kohya-style tensor dicts.

PEFT's merge (``LoraLayer.merge``) adds ``(lora_B @ lora_A) · alpha / rank`` to each targeted Linear weight.
A PEFT state dict does not store alpha: it is the training config's ``adapter.alpha`` (LongLive: rank 256,
alpha 256, so the scale is 1). Everything here works on already-read tensor dicts, so any file reader can
feed it; ``read_file`` of ``checkpoint.py`` is only used by the file-level helper.
"""

from __future__ import annotations

import math
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
# kohya / musubi-tuner names: ``lora_unet_`` + the Wan module path with every "." written "_" (ComfyUI core's
# ``model_lora_keys_unet`` maps them the same way, from the model's keys); ``lycoris_`` is SimpleTuner's twin
_KOHYA_PREFIXES = ("lora_unet_", "lycoris_")
# Wan module names that themselves hold a "_" (every other "_" of a kohya name was a ".")
_WAN_NAMES_WITH_UNDERSCORE = ("self_attn", "cross_attn", "k_img", "v_img", "norm_k_img", "img_emb",
                              "text_embedding", "time_embedding", "time_projection", "patch_embedding")


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


def _kohya_to_wan(name: str) -> str:
    """``blocks_0_self_attn_k_img`` -> ``blocks.0.self_attn.k_img`` (greedy: the longest Wan name first)."""
    parts, out, i = name.split("_"), [], 0
    while i < len(parts):
        for n in (3, 2):
            joined = "_".join(parts[i:i + n])
            if len(parts[i:i + n]) == n and joined in _WAN_NAMES_WITH_UNDERSCORE:
                out.append(joined)
                i += n
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def _wan_module(path: str) -> str:
    for prefix in _KOHYA_PREFIXES:
        if path.startswith(prefix):
            return _kohya_to_wan(path[len(prefix):])
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


def check_strength(strength, source: str = "LoRA file") -> float:
    """The LoRA strength as a float; NaN / ±inf refused (they would turn every adapted weight into NaN)."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: LoRA strength {strength!r} is not a number; give e.g. 1.0.") from None
    if not math.isfinite(value):
        raise ValueError(f"{source}: LoRA strength {value} is not a finite number; give e.g. 1.0 (as trained), "
                         f"0.5 or -1.0.")
    return value


def check_merged_fits(key: str, merged: torch.Tensor, dtype: torch.dtype, strength: float,
                      source: str = "LoRA file") -> None:
    """Refuse a merge whose result (``merged``, the float32 sum) overflows the weight's ``dtype`` (a huge
    strength, or a LoRA with huge values): it would be stored as inf and every output would be NaN."""
    if merged.device.type == "meta" or not merged.numel():
        return
    dtype = dtype if dtype.is_floating_point else torch.float32
    limit = torch.finfo(dtype).max if dtype.itemsize >= 2 else torch.finfo(torch.bfloat16).max  # fp8: computed in bf16
    peak = float(merged.abs().max())
    if not math.isfinite(peak) or peak > limit:
        raise ValueError(f"{source} at strength {strength:g}: the merged weight '{key}' reaches {peak:.3g}, beyond "
                         f"what {str(dtype).replace('torch.', '')} holds ({limit:.3g}); lower the strength (1.0 = as "
                         f"trained) or load the model in a wider dtype.")


def lora_deltas(lora: Mapping[str, torch.Tensor], strength: float = 1.0, alpha: Optional[float] = None,
                source: str = "LoRA file") -> dict:
    """``{wan weight key: float32 delta}`` = ``strength · alpha/rank · (B @ A)``, PEFT's merge. ``alpha``
    None: the file's ``.alpha`` if any, else alpha = rank (scale 1, LongLive's config)."""
    strength = check_strength(strength, source)
    return {key: pair_delta(down, up, file_alpha, strength, alpha)
            for key, (down, up, file_alpha) in lora_pairs(lora, source).items()}


def pair_delta(down: torch.Tensor, up: torch.Tensor, file_alpha: Optional[float], strength: float,
               alpha: Optional[float] = None, device=None) -> torch.Tensor:
    """One weight's float32 delta ``strength · alpha/rank · (up @ down)`` (computed on ``device``, default where the
    pair is)."""
    rank = down.shape[0]
    a = alpha if alpha is not None else (file_alpha if file_alpha is not None else rank)
    return (up.to(device, torch.float32) @ down.to(device, torch.float32)) * (float(a) / rank) * float(strength)


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
                             f"{list(delta.shape)}; {lora_model_mismatch(state_dict, lora, source)}")
        total = w.float() + delta.to(w.device)
        check_merged_fits(key, total, w.dtype, float(strength), source)
        merged[key] = total.to(w.dtype)
    return merged


_WIDTH_LAYERS = re.compile(r"blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.weight$")  # [dim, dim] in every Wan


def lora_model_mismatch(state_dict: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor],
                        source: str = "LoRA file") -> str:
    """Which Wan the LoRA was trained on, against the model: generation and size told by the width
    (``config.KNOWN_SIZES``: 1536 = Wan 2.1 1.3B, 5120 = 14B, 3072 = Wan 2.2 TI2V-5B)."""
    from .config import KNOWN_SIZES

    names = {dim: ("Wan 2.2" if size == "TI2V-5B" else "Wan 2.1", size) for (dim, _, _), size in KNOWN_SIZES.items()}
    model_dim = next((int(v.shape[-1]) for k, v in state_dict.items() if k.endswith("head.modulation")), None)
    lora_dim = next((int(down.shape[1]) for k, (down, _, _) in lora_pairs(lora, source).items()
                     if _WIDTH_LAYERS.search(k)), None)
    if not model_dim or not lora_dim or model_dim == lora_dim:
        return "the LoRA was trained on a different Wan size."

    def said(dim):
        return f"{' '.join(names[dim])} (width {dim})" if dim in names else f"a width-{dim} Wan"

    other_generation = model_dim in names and lora_dim in names and names[model_dim][0] != names[lora_dim][0]
    kind = "another Wan generation" if other_generation else "another Wan size"
    return f"the LoRA was trained on {kind}: {said(lora_dim)}, the model is {said(model_dim)}. Use a LoRA made for it."


def load_lora_file(path: str) -> dict:
    """The generator LoRA tensors of a file (safetensors or weights-only torch)."""
    return select_lora(read_weights(path, "LoRA"), os.path.basename(path))


def merge_lora_file(state_dict: Mapping[str, torch.Tensor], path: str, strength: float = 1.0,
                    source: str = "", tensors: Optional[Mapping[str, torch.Tensor]] = None) -> tuple[dict, str]:
    """``state_dict`` with the LoRA file at ``path`` merged (``tensors``: its contents, already read), and
    ``source`` extended to say so."""
    name = os.path.basename(path)
    merged = merge_lora(state_dict, load_lora_file(path) if tensors is None else tensors, strength=strength,
                        source=name)
    return merged, f"{source} + LoRA {name} x{strength:g}"
