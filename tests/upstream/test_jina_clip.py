"""Jina-CLIP v2 towers vs Jina's own remote code (optional; NOT run in this repository's CI).

* ``UPSTREAM_JINA_CLIP_DIR``: a snapshot of the Hugging Face repo ``jinaai/jina-clip-implementation`` (flat
  files: ``eva_model.py``, ``rope_embeddings.py``, ``modeling_clip.py``, …). Needs: torch, einops, timm
  (``eva_model.py`` imports its layers when present), transformers.
* ``UPSTREAM_JINA_XLMR_DIR``: a snapshot of ``jinaai/xlm-roberta-flash-implementation`` (``modeling_lora.py``,
  ``modeling_xlm_roberta.py``, ``configuration_xlm_roberta.py``, ``rotary.py``, ``mha.py``, ``mlp.py``,
  ``block.py``, ``embedding.py``, ``xlm_padding.py``, …). Needs: torch, einops, transformers; no flash-attn
  (``use_flash_attn=False``).

The remote-code files use package-relative imports, so each folder is imported as a synthetic package. Both
towers are built tiny from their own classes, our random-init state dicts (real key names) are loaded into them
with ``strict=True``, and the outputs compared (≤ 1e-5). Each test skips cleanly without its variable.
"""

import importlib.machinery
import importlib.util
import os
import sys
from functools import partial

import pytest
import torch

from comfyui_clipwan.axera_export.towers.eva import EvaConfig, eva_weights_from_state_dict, random_state_dict


def _package(var: str, name: str, marker: str):
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is not set (point it at a snapshot of Jina's remote code to run this parity test)")
    if not os.path.isfile(os.path.join(path, marker)):
        pytest.fail(f"{var}={path} does not look like Jina's remote code (no {marker} in it)")
    # a namespace-like package over the folder: its modules' ``from .x import y`` then resolve inside it
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [path]
    sys.modules[name] = importlib.util.module_from_spec(spec)
    return path


def test_eva_vision_matches_jina_remote_code():
    _package("UPSTREAM_JINA_CLIP_DIR", "jina_clip_upstream", "eva_model.py")
    from jina_clip_upstream.eva_model import EVAVisionTransformer

    config = EvaConfig(image_size=60, patch_size=14, width=64, layers=2, heads=2, mlp_dim=170, proj_dim=48)
    sd = random_state_dict(config, seed=0)
    theirs = EVAVisionTransformer(img_size=60, patch_size=14, num_classes=48, use_mean_pooling=False, embed_dim=64,
                                  depth=2, num_heads=2, mlp_ratio=170 / 64, qkv_bias=True,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), rope=True, pt_hw_seq_len=16,
                                  intp_freq=True, naiveswiglu=True, subln=True, proj_type="linear",
                                  xattn=False).eval()
    theirs.load_state_dict({k[len("vision_model."):]: v for k, v in sd.items()}, strict=True)
    ours = eva_weights_from_state_dict(sd, {"image_size": 60, "head_width": 32})
    pixels = torch.randn(2, 3, 60, 60, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = theirs(pixels)
    assert (ours.encode(pixels) - ref).abs().max().item() < 1e-5


def test_xlmr_text_matches_jina_remote_code():
    _package("UPSTREAM_JINA_XLMR_DIR", "jina_xlmr_upstream", "modeling_lora.py")
    from jina_xlmr_upstream.configuration_xlm_roberta import XLMRobertaFlashConfig
    from jina_xlmr_upstream.modeling_lora import XLMRobertaLoRA

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from test_jina_text import CONFIG, HEADS, LAYERS, MLP, RANK, TASKS, VOCAB, W, _ids, _jina_state_dict

    from comfyui_clipwan.axera_export.towers.xlmr import xlmr_weights_from_state_dict

    cfg = XLMRobertaFlashConfig(vocab_size=VOCAB, hidden_size=W, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                intermediate_size=MLP, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
                                position_embedding_type="rotary", rotary_emb_base=20000.0, use_flash_attn=False,
                                lora_adaptations=TASKS, lora_rank=RANK, lora_alpha=2, lora_dropout_p=0.0,
                                task_instructions={t: "" for t in TASKS}, hidden_act="gelu")
    theirs = XLMRobertaLoRA(cfg, add_pooling_layer=False).eval()
    sd = _jina_state_dict()
    theirs.load_state_dict({"roberta." + k[len("text_model.transformer.roberta."):]: v for k, v in sd.items()
                            if k.startswith("text_model.transformer.roberta.")}, strict=True)
    ids = _ids([5, 12, 77]).long()
    mask = (ids != 1).long()
    with torch.no_grad():
        hidden = theirs(input_ids=ids, attention_mask=mask,
                        adapter_mask=torch.full((3,), 0, dtype=torch.int32)).last_hidden_state
    ref = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(-1, keepdim=True)
    ours = xlmr_weights_from_state_dict(sd, CONFIG, lora_task=TASKS[0]).encode(ids.int())
    assert (ours - ref).abs().max().item() < 1e-5
