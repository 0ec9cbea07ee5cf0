"""CLIP (OpenAI / OpenCLIP ``CLIP``, Hugging Face ``CLIPModel``): the family the export started with.

* layouts: HF ``CLIPModel`` (``text_model.*``, ``vision_model.*``, ``visual_projection``, ``text_projection``) and
  OpenCLIP/OpenAI (``visual.*``, ``transformer.resblocks.*``, ``text_projection`` as ``x @ P``); read by
  ``clip_vision`` (vision) and ``text_model`` (text), the one place each.
* tokenizer: CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``, carried in the export), start/end-of-text,
  zero padding to 77.
* text pooling: end-of-text (``argmax(ids)``); heads on the CPU: ``visual_projection``, ``text_projection``.
* score: softmax over the candidates of ``exp(logit_scale)·cos``.
* image: the tower's size, OpenAI mean/std, ComfyUI's centre crop (or Wan's squash).
"""

from __future__ import annotations

import os

from .base import Family, Tokenizer


class ClipFamily(Family):
    name = "clip"
    title = "CLIP (OpenAI / OpenCLIP / HF CLIPModel)"
    layouts = ("hf", "openclip")
    score_rule = "softmax"
    text_pooling = "eot_argmax"

    def detect(self, keys):
        # The fallback family: anything the other families do not claim is read by CLIP's loaders, which
        # name the keys they expect when there is no CLIP tower either.
        return None

    def load(self, path, parts):
        from ..sources import load_clip_source

        return load_clip_source(path, parts)

    def default_source(self, seed: int = 0, **sizes):
        from ..sources import default_source

        return default_source(seed, **sizes)

    def vision_heads(self, vision) -> dict:
        return {"visual_projection": vision.model.visual_projection.weight.detach().float().numpy()}

    def export_tokenizer(self, source) -> Tokenizer:
        from ..tokenizer import VOCAB_FILE, default_vocab_path

        return self._bpe(default_vocab_path(), source.text.config.context_length, VOCAB_FILE)

    def tokenizer(self, block, folder) -> Tokenizer:
        from ..tokenizer import VOCAB_FILE, default_vocab_path

        vocab = os.path.join(folder, "tokenizer", VOCAB_FILE)
        path = vocab if os.path.isfile(vocab) else default_vocab_path()  # older exports: open_clip's copy
        return self._bpe(path, block["tokenizer"]["context_length"], VOCAB_FILE)

    @staticmethod
    def _bpe(path: str, context_length: int, name: str) -> Tokenizer:
        from ..tokenizer import tokenize

        return Tokenizer(lambda texts: tokenize(texts, context_length, path), context_length, {name: path},
                         {"kind": "clip_bpe", "name": "CLIP BPE"})


FAMILY = ClipFamily()
