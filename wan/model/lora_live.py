"""A LoRA merged at load whose strength changes while a run plays (a timeline's ``LoraChange``, the live route).

The pack merges a LoRA into the weights when it loads them (``CausalWanModel.from_file(lora=...)``: LoadCausalWanModel's
lora_name, the CLI's ``--lora``); the model remembers it (``model.loras``). A strength change writes
``W = W_loaded + (s_new - s_loaded)·alpha/rank·B@A`` (PEFT's merge delta, ``lora.lora_deltas``) into every adapted
weight in place, computed in float32 from a CPU copy of the weights as loaded (taken at the first change), so a
strength is always the same function of the loaded weights (no rounding builds up over many changes, and
``restore`` puts the loaded weights back bit for bit when the run ends). That copy holds the adapted weights once,
on the CPU, for the run.

Which families allow it: any LoRA a user merges onto a causal model (a style LoRA on Self-Forcing, CausVid, Causal
Forcing ...). Refused where the LoRA *is* the distilled generator — LongLive 1.0 and MemFlow ship their causal model
as base + LoRA (``presets.lora_rank``): another strength there is not a weaker style but a different, undistilled
model. Refused too for fp8 weights (a delta cannot be added to them in place without re-quantising) and for a
ComfyUI MODEL with Apply Causal Wan LoRA (those are ComfyUI weight patches, not weights this pack merged).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import torch

from .lora import check_merged_fits, check_strength, lora_pairs, pair_delta


@dataclasses.dataclass
class MergedLora:
    name: str
    tensors: Mapping[str, torch.Tensor]  # the file's generator LoRA (lora_A/lora_B pairs, rank-sized)
    loaded: float  # the strength merged at load
    strength: float  # the strength in the weights now
    saved: Optional[Dict[str, torch.Tensor]] = None  # the adapted weights as loaded (CPU), from the first change


def remember(tree, name: str, tensors: Mapping[str, torch.Tensor], strength: float) -> None:
    """Record on the module ``tree`` (a ``CausalWanModel.tree``, or ComfyUI's diffusion model) a LoRA merged into
    its weights at ``strength``."""
    loras = getattr(tree, "clipwan_loras", None)
    if loras is None:
        tree.clipwan_loras = loras = {}
    loras[name] = MergedLora(name, dict(tensors), float(strength), float(strength))


def merged(model) -> dict:
    """``{name: MergedLora}`` of a ``CausalWanModel`` (empty: none merged by the pack)."""
    return getattr(model.tree, "clipwan_loras", None) or {}


def find(model, name: str = "") -> MergedLora:
    """The merged LoRA ``name`` ("" = the only one), or a clear error naming the fix."""
    loras = merged(model)
    if not loras:
        raise ValueError("this model has no LoRA merged by the pack: a live LoRA strength needs the LoRA loaded with "
                         "Load Causal Wan Model's lora_name (CLI: --lora); Apply Causal Wan LoRA on a ComfyUI MODEL "
                         "adds ComfyUI weight patches, which cannot change while a run plays.")
    if not name:
        if len(loras) > 1:
            raise ValueError(f"the model has {len(loras)} LoRAs ({', '.join(loras)}); name the one to change.")
        return next(iter(loras.values()))
    if name not in loras:
        raise ValueError(f"LoRA '{name}' is not merged into this model (it has: {', '.join(loras)}).")
    return loras[name]


def check_live(model, name: str = "", family: str = "") -> MergedLora:
    """Refuse a live strength change the model or its family does not allow (module docstring), else the LoRA."""
    record = find(model, name)
    if family:
        from ..sampling.presets import family_preset

        preset = family_preset(family)
        if preset is not None and preset.lora_rank:
            raise ValueError(f"family '{family}': its LoRA ({record.name}) IS the distilled causal model (base + "
                             f"rank-{preset.lora_rank} LoRA as released), so its strength must stay "
                             f"{record.loaded:g}; change the strength of a style LoRA on another family instead.")
    params = dict(model.tree.named_parameters())
    for key in lora_pairs(record.tensors, record.name):
        w = params.get(key)
        if w is None:
            raise ValueError(f"LoRA {record.name} adapts '{key}', which this model does not have.")
        if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"LoRA {record.name}: '{key}' is stored as {str(w.dtype).replace('torch.', '')}; a live "
                             f"strength change needs bf16/fp16/fp32 weights (load the model with weight_dtype "
                             f"default or bf16).")
    return record


@torch.no_grad()
def set_strength(model, name: str, strength: float) -> None:
    """Put the LoRA at ``strength`` (in place, in every adapted weight's dtype)."""
    record = find(model, name)
    strength = check_strength(strength, record.name)
    if strength == record.strength:
        return
    params = dict(model.tree.named_parameters())
    pairs = lora_pairs(record.tensors, record.name)
    if record.saved is None:
        record.saved = {key: params[key].detach().to("cpu", copy=True) for key in pairs}
    for key, (down, up, alpha) in pairs.items():  # one weight at a time, on its device: no model-sized temporaries
        w = params[key]
        delta = pair_delta(down, up, alpha, strength - record.loaded, device=w.device)
        total = record.saved[key].to(w.device).float() + delta  # the loaded weight moved in its own dtype, fp32 sum
        check_merged_fits(key, total, w.dtype, strength, record.name)
        w.data.copy_(total.to(w.dtype))
    record.strength = strength


@torch.no_grad()
def restore(model) -> None:
    """Every LoRA back at its loaded strength, the loaded weights exactly (called when a run ends)."""
    for record in merged(model).values():
        if record.saved is not None:
            params = dict(model.tree.named_parameters())
            for key, w in record.saved.items():
                params[key].data.copy_(w.to(params[key].device))
            record.saved = None
        record.strength = record.loaded
