"""Causal Wan families: ApplyCausalWanLoRA (a LongLive-style LoRA file on a ComfyUI MODEL) and the
GET /clipwan/presets route the sampler's web presets menu reads (the table is ``wan/sampling/presets.py``).
"""

from __future__ import annotations

from . import comfy_bridge as bridge
from .model_files import resolve_model_file, validate_model_name
from ..wan.model.lora import check_merged_fits, check_strength, load_lora_file, lora_model_mismatch, lora_pairs
from ..wan.sampling.presets import web_payload

PRESETS_PATH = "/clipwan/presets"
COMFY_PREFIX = "diffusion_model."  # where ComfyUI's MODEL keeps the Wan DiT's weights


def comfy_lora_patches(lora: dict, source: str = "LoRA file") -> dict:
    """``{ComfyUI weight key: (up, down, alpha)}``: ComfyUI's LoRA patch computes
    ``strength · alpha/rank · up @ down`` — with alpha = rank when the file has none (LongLive), the same
    delta as ``wan.model.lora.merge_lora``."""
    out = {}
    for key, (down, up, alpha) in lora_pairs(lora, source).items():
        out[COMFY_PREFIX + key] = (up, down, float(down.shape[0] if alpha is None else alpha))
    return out


def check_patches_fit(patched, patches: dict, strength: float, source: str, lora=None) -> None:
    """The merge ComfyUI will do (``weight + strength · alpha/rank · up @ down``) must fit the MODEL's weights:
    the same shapes (a LoRA of another Wan is named as such) and a result finite in the weight's dtype —
    checked here, so a mismatch or an overflow is an error now, not a failure or NaN at sampling."""
    weights = patched.model_state_dict(COMFY_PREFIX) if hasattr(patched, "model_state_dict") else {}
    for key, (up, down, alpha) in patches.items():
        if key in weights:
            w = weights[key]
            if tuple(w.shape) != (up.shape[0], down.shape[1]):
                raise ValueError(f"{source}: '{key}' is {list(w.shape)} in the MODEL but the LoRA gives "
                                 f"{[up.shape[0], down.shape[1]]}; {lora_model_mismatch(weights, lora or {}, source)}")
            delta = (up.float() @ down.float()) * (float(alpha) / down.shape[0]) * strength
            check_merged_fits(key, w.float() + delta.to(w.device), w.dtype, strength, source)


class ApplyCausalWanLoRA:
    DESCRIPTION = ("Applies a causal Wan LoRA file — LongLive's lora.pt ({generator_lora, critic_lora, step}, "
                   "PEFT keys) or a flat PEFT/kohya LoRA — to a Wan 2.1 MODEL from Load Diffusion Model, as "
                   "ComfyUI weight patches (same result as the merge in Load Causal Wan Model).")
    CATEGORY = "ClipWan/loaders"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same MODEL with the LoRA added as weight patches (the base weights are not changed; "
                       "ComfyUI applies the patches when it loads the model).",)
    SEARCH_ALIASES = ["longlive lora", "longlive", "memflow lora", "memflow", "causal lora", "peft lora", "clipwan"]
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "Wan 2.1 MODEL (e.g. longlive_base.pt's weights via Load "
                                               "Diffusion Model)."}),
                "lora_name": (bridge.list_model_files("loras"), {
                    "tooltip": "LoRA file in models/loras, e.g. LongLive's lora.pt."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "LoRA scale (1.0 = as trained)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):  # identifying or authors' names: nodes/model_files.py
        return validate_model_name(lora_name, "loras")

    def apply(self, model, lora_name, strength=1.0):
        import os

        path = resolve_model_file(lora_name, "loras")
        name = os.path.basename(path)
        strength = check_strength(strength, name)  # NaN/inf: refused before anything is patched
        lora = load_lora_file(path)
        patches = comfy_lora_patches(lora, name)
        patched = model.clone()
        added = set(patched.add_patches({k: bridge.lora_weight_patch(*v) for k, v in patches.items()},
                                        float(strength)))
        missing = sorted(set(patches) - added)
        if missing:
            raise ValueError(f"{name} adapts {len(missing)} weight(s) the MODEL does not have, e.g. {missing[:3]}; "
                             f"is the MODEL a Wan 2.1 DiT of the size the LoRA was trained on?")
        check_patches_fit(patched, patches, strength, name, lora)
        return (patched,)


async def _presets_handler(request):
    from aiohttp import web

    return web.json_response(web_payload())


def register_routes(server) -> None:
    """Called by nodes/__init__.py inside ComfyUI: GET /clipwan/presets (also under /api)."""
    server.routes.get(PRESETS_PATH)(_presets_handler)


NODE_CLASS_MAPPINGS = {"ApplyCausalWanLoRA": ApplyCausalWanLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"ApplyCausalWanLoRA": "Apply Causal Wan LoRA (ClipWan)"}
