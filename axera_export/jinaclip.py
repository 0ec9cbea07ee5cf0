"""Jina-CLIP v2 as an export source: EVA02 vision (``towers.eva``) + Jina-XLM-RoBERTa text (``towers.xlmr``).

A Jina-CLIP v2 folder as published (``model.safetensors`` + ``config.json`` + ``tokenizer.json``): the
hyper-parameters the weights cannot tell (image size 512 with patch 14, RoPE settings, rotary base, the LoRA
task and alpha, ``truncate_dim``) come from ``config.json``; a missing one the text tower needs is an error
naming the field (``towers.xlmr``), never a guess.

Matryoshka: ``truncate_dim`` keeps the first d dimensions of both embeddings, done by cutting the rows of the
CPU heads (the NPU graphs are unchanged), then L2 normalisation as usual.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

from ..clip_vision.checkpoint import hf_config_beside
from ..weights import open_weights
from .towers.eva import (EvaConfig, EvaVisionModel, eva_weights_from_state_dict, find_root as vision_root,
                         random_state_dict as random_eva_state_dict, vision_config_from_json)
from .towers.xlmr import CONTEXT_LENGTH, find_root as text_root, xlmr_weights_from_state_dict



def matryoshka_dim(cfg: Mapping, truncate_dim: Optional[int]) -> Optional[int]:
    """``truncate_dim`` (argument, else config.json's), checked against ``matryoshka_dimensions`` when listed."""
    d = truncate_dim if truncate_dim is not None else cfg.get("truncate_dim")
    if d is None:
        return None
    allowed = cfg.get("matryoshka_dimensions")
    if allowed and int(d) not in allowed:
        raise ValueError(f"truncate_dim {d} is not one of the model's Matryoshka dimensions {allowed}")
    return int(d)


def jinaclip_from_state_dict(sd: Mapping[str, torch.Tensor], cfg: Optional[Mapping] = None, parts=("vision", "text"),
                             source: str = "Jina-CLIP", lora_task: Optional[str] = None,
                             context_length: int = CONTEXT_LENGTH, truncate_dim: Optional[int] = None,
                             rotary_base: Optional[float] = None) -> tuple:
    cfg = dict(cfg or {})
    dim = matryoshka_dim(cfg, truncate_dim)
    vision = text = None
    if "vision" in parts:
        root = vision_root(sd.keys())
        weights = eva_weights_from_state_dict({k: v for k, v in sd.items() if k.startswith(root)},
                                              vision_config_from_json(cfg))
        vision = EvaVisionModel(weights, source, dim)
    if "text" in parts:
        root = text_root(sd.keys())
        outer = root.split("transformer.")[0] if "transformer." in root else ""
        keep = {k: v for k, v in sd.items() if k.startswith(root) or k.startswith(outer + "proj.")
                or k == "logit_scale"}
        text = xlmr_weights_from_state_dict(keep, cfg, lora_task=lora_task, rotary_base=rotary_base,
                                            context_length=context_length)
        text.truncate_dim = dim
    return vision, text


def load_jinaclip(path: str, parts=("vision", "text"), **options) -> tuple:
    """A Jina-CLIP v2 checkpoint file (``config.json`` beside it supplies what shapes cannot tell)."""
    reader = open_weights(path, "Jina-CLIP")
    sd = {k: reader.get(k) for k in reader.keys}
    try:
        return jinaclip_from_state_dict(sd, hf_config_beside(path), parts, f"'{os.path.basename(path)}'", **options)
    except ValueError as exc:
        raise ValueError(f"'{path}': {exc}") from None


# jina-clip-v2: EVA02-L/14 at 512 px (pos_embed 36²+1) + Jina-XLM-RoBERTa (24 × 1024, XLM-R's 250002 tokens),
# 1024-d embeddings (JinaCLIPVisionConfig/TextConfig fields as the config.json carries them).
V2_SIZES = dict(image_size=512, patch_size=14, vision_layers=24, vision_width=1024, vision_mlp=2730,
                text_layers=24, width=1024, text_mlp=4096, vocab_size=250002, rotary_base=10000.0)


def random_jinaclip(seed: int = 0, **sizes) -> tuple[dict, dict]:
    """A seeded random-init Jina-CLIP v2 under the real key names (LoRA-free, merged text weights) and the
    config.json fields a load needs. The rotary base of a random model is RoPE's usual 10000 (``rotary_base``)."""
    s = dict(V2_SIZES, **sizes)
    unknown = set(s) - set(V2_SIZES)
    if unknown:
        raise ValueError(f"unknown Jina-CLIP size(s) {sorted(unknown)}; known: {sorted(V2_SIZES)}")
    vw, tw = s["vision_width"], s["width"]
    vcfg = EvaConfig(image_size=s["image_size"], patch_size=s["patch_size"], width=vw, layers=s["vision_layers"],
                     heads=max(1, vw // 64), mlp_dim=s["vision_mlp"], proj_dim=None)
    sd = random_eva_state_dict(vcfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    root = "text_model.transformer.roberta."

    def normal(shape, std):
        return torch.randn(shape, generator=g) * std

    sd[root + "embeddings.word_embeddings.weight"] = normal((s["vocab_size"], tw), 0.02)
    sd[root + "embeddings.token_type_embeddings.weight"] = normal((1, tw), 0.02)
    sd[root + "emb_ln.weight"], sd[root + "emb_ln.bias"] = torch.ones(tw), torch.zeros(tw)
    for n in range(s["text_layers"]):
        p = f"{root}encoder.layers.{n}."
        for name, shape in (("mixer.Wqkv", (3 * tw, tw)), ("mixer.out_proj", (tw, tw)),
                            ("mlp.fc1", (s["text_mlp"], tw)), ("mlp.fc2", (tw, s["text_mlp"]))):
            sd[p + name + ".weight"] = normal(shape, shape[1] ** -0.5)
            sd[p + name + ".bias"] = normal((shape[0],), 0.02)
        for ln in ("norm1", "norm2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = torch.ones(tw), torch.zeros(tw)
    sd["logit_scale"] = torch.tensor(4.6052)
    cfg = {"vision_config": {"image_size": s["image_size"], "head_width": 64, "rope_embeddings": True,
                             "pt_hw_seq_len": 16, "intp_freq": True, "naive_swiglu": True, "subln": True},
           "text_config": {"hf_model_config_kwargs": {"rotary_emb_base": s["rotary_base"],
                                                      "num_attention_heads": max(1, tw // 64)}}}
    return sd, cfg
