"""Jina-CLIP v2 (jinaai/jina-clip-v2): EVA02 image tower, Jina-XLM-RoBERTa text tower, softmax scores.

* layout: Jina's remote-code ``JinaCLIPModel`` (``vision_model.*`` EVA02 names, ``text_model.transformer.*``
  XLM-R with LoRA parametrisations, ``logit_scale``), read by ``jinaclip.load_jinaclip`` with its ``config.json``.
* tokenizer: the XLM-R ``tokenizer.json`` beside the model (carried in the export), ``<s> … </s>``, padded with
  ``<pad>`` (id 1) to the static context length (77 by default: mean pooling ignores the padding).
* text pooling: mean over the non-pad tokens (``mean``), done in the NPU graph: the text graph outputs
  [1, width]. The LoRA adapter of the CLIP task is merged into the weights at export.
* heads on the CPU: the vision ``head`` (Linear + bias) when the checkpoint has one, the text projection when it
  has one; Matryoshka ``truncate_dim`` cuts their rows. Score: softmax of ``exp(logit_scale)·cos``.
* image: shortest side to the tower's size + centre crop (Jina's ``image_transform`` default), OpenAI mean/std.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .base import Family, Tokenizer, check_tokenizer_fits, exported_tokenizer_files, linear, source_tokenizer_file

TOKENIZER_FILE = "tokenizer.json"


class JinaClipFamily(Family):
    name = "jinaclip"
    title = "Jina-CLIP v2 (jinaai/jina-clip-v2)"
    layouts = ("jina",)
    score_rule = "softmax"
    text_pooling = "mean"  # pooled in the NPU graph: text_head gets [B, width]
    default_crop = "center"
    cpu_split = {
        "vision": {"npu": "patch Conv → +CLS/positions → EVA02 blocks (2D RoPE, SwiGLU, sub-LN) → norm of the CLS "
                          "token (output image_pooled)",
                   "cpu": ["head (fp32 GEMM + bias; Matryoshka rows)", "L2 normalisation"]},
        "text": {"npu": "token Gather (1-D ids) + token type → LN → post-LN rotary encoder layers (LoRA merged) "
                        "with the pad mask (ids == 1) → mean over the non-pad tokens (output text_hidden [1, width])",
                 "cpu": ["projection when the checkpoint has one (fp32; Matryoshka rows)", "L2 normalisation"]}}

    def detect(self, keys) -> Optional[str]:
        for key in keys:
            if key.endswith("blocks.0.attn.q_proj.weight") and "vision_model." in key:
                return "jina"
            if ".encoder.layers.0.mixer.Wqkv." in key:
                return "jina"
        return None

    def load(self, path, parts, tokenizer: Optional[str] = None, **options):
        from ..jinaclip import load_jinaclip
        from ..sources import ClipSource

        vision, text = load_jinaclip(path, parts, **options)
        task = f", LoRA task {text.lora_task}" if text is not None and text.lora_task else ""
        return ClipSource(f"'{os.path.basename(path)}' (Jina-CLIP v2{task})", False, vision, text,
                          family=self.name, tokenizer_path=tokenizer or os.path.dirname(os.path.abspath(path)))

    def default_source(self, seed: int = 0, tokenizer: Optional[str] = None, truncate_dim: Optional[int] = None,
                       **sizes):
        """Seeded random-init Jina-CLIP at jina-clip-v2's sizes (``sizes``: ``vision_layers``, ``text_layers``,
        ``width``… of ``jinaclip.random_jinaclip``); NOT pretrained."""
        from ..jinaclip import jinaclip_from_state_dict, random_jinaclip
        from ..sources import ClipSource

        sd, cfg = random_jinaclip(seed=seed, **sizes)
        vision, text = jinaclip_from_state_dict(sd, cfg, source="random-init", truncate_dim=truncate_dim)
        vision.layout = text.layout = "default"
        return ClipSource(f"embedded default: seeded random-init Jina-CLIP v2 ({vision.config.layers} vision / "
                          f"{text.config.layers} text layers, {vision.config.image_size} px, seed {seed}), not "
                          f"pretrained", True, vision, text, family=self.name, tokenizer_path=tokenizer)

    def vision_heads(self, vision) -> dict:
        return vision.head()

    def text_heads(self, text) -> dict:
        return text.head()

    def text_head(self, hidden: np.ndarray, ids: np.ndarray, heads: dict) -> np.ndarray:
        return linear(hidden, heads.get("text_projection"), heads.get("text_projection_bias"))

    # --- tokenizer -------------------------------------------------------------------------------------
    def export_tokenizer(self, source) -> Tokenizer:
        path = source_tokenizer_file(source, TOKENIZER_FILE, "Jina-CLIP's")
        cfg = source.text.config
        return check_tokenizer_fits(self._build(path, cfg.context_length, cfg.pad_id), path, cfg.vocab_size)

    def manifest_block(self, source, tokenizer) -> dict:
        block = super().manifest_block(source, tokenizer)
        if tokenizer is not None:
            block["tokenizer"]["pad_id"] = source.text.config.pad_id
            block["lora_task"] = source.text.lora_task
        dim = getattr(source.vision, "truncate_dim", None) or getattr(source.text, "truncate_dim", None)
        block["truncate_dim"] = dim
        return block

    def tokenizer(self, block, folder) -> Tokenizer:
        info = block["tokenizer"]
        path = os.path.join(folder, "tokenizer", TOKENIZER_FILE)
        exported_tokenizer_files(folder, [path])
        return self._build(path, info["context_length"], info.get("pad_id", 1))

    @staticmethod
    def _build(path: str, context_length: int, pad_id: int) -> Tokenizer:
        from ..hf_tokenizers import TokenizerJson

        tok = TokenizerJson(path, context_length, pad_id)
        return Tokenizer(tok, context_length, {TOKENIZER_FILE: path},
                         {"kind": "tokenizer_json", "name": "Jina-CLIP XLM-R tokenizer",
                          "vocab_size": tok._tok.get_vocab_size()})


FAMILY = JinaClipFamily()
