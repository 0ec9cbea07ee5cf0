"""CLIP vision checkpoints: the file is read by the pack's one weights reader (``weights.py``: safetensors over
a memory map, or ``torch.load(weights_only=True, mmap=True)``), tensor by tensor; this module adds what only
CLIP needs (hyper-parameters from metadata or a ``config.json`` beside the file).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from ..weights import open_weights


def open_checkpoint(path, what: str = "CLIP vision"):
    """A reader with ``keys``, ``shape(key)``, ``get(key)``, ``release(key)``, ``metadata`` (see weights.py)."""
    return open_weights(path, what)


def hf_config_beside(path: Optional[str]) -> dict:
    """The Hugging Face ``config.json`` beside a checkpoint file (how HF repos ship it), or {} when there is none or
    it is not a JSON object."""
    if not path:
        return {}
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def config_overrides(path: str, reader, width: int) -> dict:
    """Hyper-parameters that shapes cannot tell (activation, heads), from metadata shipped with the weights.

    Sources, later wins: an HF ``config.json`` beside the file whose hidden size matches the weights, then the
    safetensors metadata (a ``config`` JSON string, or plain ``hidden_act``/``act``… entries).
    """
    overrides: dict = {}
    cfg = hf_config_beside(path)
    vision = cfg.get("vision_config", cfg)
    if isinstance(vision, dict) and vision.get("hidden_size") == width:
        overrides.update(vision)
    meta = dict(reader.metadata or {})
    if "config" in meta:
        try:
            cfg = json.loads(meta["config"])
            if isinstance(cfg, dict):
                overrides.update(cfg.get("vision_config", cfg))
        except ValueError:
            pass
    for key in ("hidden_act", "act", "num_attention_heads", "heads", "layer_norm_eps", "eps"):
        if key in meta:
            value = meta[key]
            if key in ("num_attention_heads", "heads"):
                value = int(value)
            elif key in ("layer_norm_eps", "eps"):
                value = float(value)
            overrides[key] = value
    return overrides
