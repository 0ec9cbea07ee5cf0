"""Chinese-CLIP (OFA-Sys): a CLIP ViT image tower with a Chinese BERT text tower, softmax scores.

* layouts: HF ``ChineseCLIPModel`` (``OFA-Sys/chinese-clip-vit-*``: ``vision_model.*``, ``text_model.*`` BERT,
  ``visual_projection``, ``text_projection``) and OFA-Sys ``cn_clip`` checkpoints (``clip_cn_vit-*.pt``:
  ``visual.*`` OpenAI layout, ``bert.*``, ``text_projection`` as ``x @ P``): vision through ``clip_vision``, text
  through ``towers.bert`` (``cnclip.load_cnclip``).
* tokenizer: BERT WordPiece over the model's ``vocab.txt`` (carried in the export), ``[CLS] … [SEP]``, zero
  padding to 52 (cn_clip's default context; AXERA's CN-CLIP text axmodel is 1×52 as well).
* text pooling: [CLS] (``first``), done in the NPU graph (a Slice): the text graph outputs [1, width].
* score: CLIP's softmax of ``exp(logit_scale)·cos``.
* image: squash-resize to the tower's size (cn_clip's ``image_transform``: ``Resize((S, S))``, no crop), OpenAI
  mean/std.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .base import Family, Tokenizer, check_tokenizer_fits, exported_tokenizer_files, linear, source_tokenizer_file

VOCAB_FILE = "vocab.txt"


class CnClipFamily(Family):
    name = "cnclip"
    title = "Chinese-CLIP (OFA-Sys cn_clip / HF ChineseCLIPModel)"
    layouts = ("hf", "cn_clip")
    score_rule = "softmax"
    text_pooling = "first"  # pooled in the NPU graph: text_head gets [B, width]
    default_crop = "none"
    cpu_split = {"text": {"npu": "token Gather (1-D ids) + positions + token type → LN → post-LN BERT layers with "
                                 "the pad mask (ids == 0) → [CLS] row by Slice (output text_hidden [1, width])",
                          "cpu": ["text_projection (fp32 GEMM)", "L2 normalisation"]}}

    def detect(self, keys) -> Optional[str]:
        for key in keys:
            if key.endswith("text_model.encoder.layer.0.attention.self.query.weight"):
                return "hf"
            if key.endswith("bert.encoder.layer.0.attention.self.query.weight"):
                return "cn_clip"
        return None

    def load(self, path, parts, tokenizer: Optional[str] = None, context_length: Optional[int] = None):
        from ..cnclip import load_cnclip
        from ..sources import ClipSource

        vision, text = load_cnclip(path, parts, context_length)
        layout = (text or vision).layout
        return ClipSource(f"'{os.path.basename(path)}' (Chinese-CLIP, {layout} layout)", False, vision, text,
                          family=self.name, tokenizer_path=tokenizer or os.path.dirname(os.path.abspath(path)))

    def default_source(self, seed: int = 0, tokenizer: Optional[str] = None, **sizes):
        """Seeded random-init Chinese-CLIP at chinese-clip-vit-base-patch16's sizes (``sizes``: ``vision_layers``,
        ``text_layers``, ``width``… of ``cnclip.random_cnclip_state_dict``); NOT pretrained."""
        from ..cnclip import cnclip_vision, random_cnclip_state_dict, vision_overrides
        from ..sources import ClipSource
        from ..towers.bert import bert_weights_from_state_dict, hf_text_overrides

        sd, cfg = random_cnclip_state_dict(seed=seed, **sizes)
        text = bert_weights_from_state_dict(sd, **hf_text_overrides(cfg))
        vision = cnclip_vision(sd, vision_overrides(cfg), source="random-init")
        vision.layout = text.layout = "default"
        return ClipSource(f"embedded default: seeded random-init Chinese-CLIP ({vision.config.layers} vision / "
                          f"{text.config.layers} text layers, width {text.config.width}, seed {seed}), not "
                          f"pretrained", True, vision, text, family=self.name, tokenizer_path=tokenizer)

    def vision_heads(self, vision) -> dict:
        return {"visual_projection": vision.model.visual_projection.weight.detach().float().numpy()}

    def text_heads(self, text) -> dict:
        return {"text_projection": text.projection.numpy()}

    def text_head(self, hidden: np.ndarray, ids: np.ndarray, heads: dict) -> np.ndarray:
        return linear(hidden, heads.get("text_projection"))

    # --- tokenizer -------------------------------------------------------------------------------------
    def export_tokenizer(self, source) -> Tokenizer:
        path = source_tokenizer_file(source, VOCAB_FILE, "Chinese-CLIP's WordPiece vocabulary",
                                     " (cn_clip ships it as cn_clip/clip/vocab.txt)")
        return check_tokenizer_fits(self._build(path, source.text.config.context_length), path,
                                    source.text.config.vocab_size)

    def tokenizer(self, block, folder) -> Tokenizer:
        info = block["tokenizer"]
        path = os.path.join(folder, "tokenizer", VOCAB_FILE)
        exported_tokenizer_files(folder, [path])
        return self._build(path, info["context_length"])

    @staticmethod
    def _build(path: str, context_length: int) -> Tokenizer:
        from ..hf_tokenizers import WordPiece

        tok = WordPiece(path, context_length)
        return Tokenizer(tok, context_length, {VOCAB_FILE: path},
                         {"kind": "wordpiece", "name": "Chinese-CLIP WordPiece", "vocab_size": len(tok.vocab)})


FAMILY = CnClipFamily()
