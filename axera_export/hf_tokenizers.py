"""Tokenizers of the BERT/XLM-R families through the ``tokenizers`` package (Rust, no torch), so a board
serves Chinese-CLIP and Jina-CLIP without importing torch or transformers.

* ``WordPiece`` — Chinese-CLIP: BERT WordPiece over ``vocab.txt`` (text cleaned, CJK characters split one per
  token, lower-cased with accents stripped, punctuation split), then ``[CLS] … [SEP]`` cut at the context length
  (52 by default) and zero padded — exactly OFA-Sys ``cn_clip.clip.tokenize``. Checked token for token
  against transformers' pure-Python WordPiece (``BertTokenizerLegacy``) in the tests.
* ``TokenizerJson`` — a Hugging Face ``tokenizer.json`` as shipped beside Jina-CLIP v2 (XLM-R SentencePiece
  Unigram with its ``<s> … </s>`` template), truncated and padded with its own pad id to a fixed length.

Both return int32 [N, T]: the exported text graphs' input dtype (Pulsar2 ``src_dtype S32``).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _texts(texts) -> list:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("tokenize: no texts given")
    return texts


class WordPiece:
    """BERT WordPiece over a ``vocab.txt`` (one token per line, id = line number)."""

    def __init__(self, vocab_path: str, context_length: int = 52, lowercase: bool = True):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"WordPiece vocabulary not found: '{vocab_path}' (Chinese-CLIP's vocab.txt)")
        self.vocab_path, self.context_length = vocab_path, int(context_length)
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f) if line.rstrip("\n")}
        missing = [t for t in ("[CLS]", "[SEP]", "[UNK]", "[PAD]") if t not in self.vocab]
        if missing:
            raise ValueError(f"'{vocab_path}' is not a BERT vocab.txt: it lacks {missing}")
        self.cls, self.sep, self.pad = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[PAD]"]
        tok = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok

    def encode(self, text: str) -> list:
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: Sequence[str] | str, context_length: int | None = None) -> np.ndarray:
        t = int(context_length or self.context_length)
        texts = _texts(texts)
        out = np.full((len(texts), t), self.pad, np.int32)
        for row, enc in enumerate(self._tok.encode_batch(texts, add_special_tokens=False)):
            ids = [self.cls] + enc.ids[: t - 2] + [self.sep]
            out[row, :len(ids)] = ids
        return out


class TokenizerJson:
    """A Hugging Face ``tokenizer.json`` (its own normaliser, model and special-token template), fixed length."""

    def __init__(self, path: str, context_length: int, pad_id: int | None = None):
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: '{path}' (the tokenizer.json beside the model)")
        self.path, self.context_length = path, int(context_length)
        self._tok = Tokenizer.from_file(path)
        if pad_id is None:
            pad_id = self._tok.token_to_id("<pad>")
            if pad_id is None:
                raise ValueError(f"'{path}' has no '<pad>' token: give pad_id explicitly")
        self.pad = int(pad_id)
        self._tok.no_padding()
        self._tok.enable_truncation(self.context_length)

    def __call__(self, texts: Sequence[str] | str, context_length: int | None = None) -> np.ndarray:
        t = int(context_length or self.context_length)
        if t != self.context_length:
            self._tok.enable_truncation(t)
        texts = _texts(texts)
        out = np.full((len(texts), t), self.pad, np.int32)
        for row, enc in enumerate(self._tok.encode_batch(texts)):
            out[row, :len(enc.ids)] = enc.ids
        if t != self.context_length:
            self._tok.enable_truncation(self.context_length)
        return out
