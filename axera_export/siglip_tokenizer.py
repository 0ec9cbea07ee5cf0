"""SigLIP / SigLIP2 tokenizers, torch-free (the board serves with numpy + sentencepiece or ``tokenizers``).

Both give int32 ids [N, context_length] (64 for every released SigLIP): the text ids, end-of-sequence, then
padding to the full length on the right (the model pools the LAST position, so texts must be padded to the
length it was trained with: HF's "padding='max_length', max_length=64"). Long texts are cut, the
end-of-sequence kept last. Written from the definitions and checked id for id against transformers'
``SiglipTokenizer`` / ``Siglip2Tokenizer`` on the same files in the tests.

* SigLIP (``google/siglip-*``): SentencePiece ``spiece.model``. Text canonicalised as HF and big_vision do:
  lower-cased, ASCII punctuation removed, whitespace runs collapsed, stripped; end-of-sequence and padding are
  both ``</s>``.
* SigLIP2 (``google/siglip2-*``): Gemma's ``tokenizer.json`` (read by ``tokenizers``), text lower-cased (the
  training default; HF's ``Siglip2Tokenizer`` adds the same ``Lowercase`` normaliser); begin/end tokens as the
  file's post-processor adds them (as transformers does), padding ``<pad>`` on the right, or the ``pad_token`` /
  ``padding_side`` a ``tokenizer_config.json`` beside it names.
"""

from __future__ import annotations

import json
import os
import re
import string
from typing import Optional, Sequence

import numpy as np

SPIECE_FILE = "spiece.model"
GEMMA_FILE = "tokenizer.json"
GEMMA_CONFIG_FILE = "tokenizer_config.json"
CONTEXT_LENGTH = 64
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str, lower: bool = True) -> str:
    """SigLIP's text canonicalisation (HF ``SiglipTokenizer.canonicalize_text``, big_vision's)."""
    if lower:
        text = text.lower()
    return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()


def _pack(rows: Sequence[list], context_length: int, eos: int, pad: int) -> np.ndarray:
    """ids (cut to fit) + [eos], padded on the right with ``pad`` to ``context_length``."""
    out = np.full((len(rows), context_length), pad, np.int32)
    for i, ids in enumerate(rows):
        ids = list(ids)[:context_length - 1] + [eos]
        out[i, :len(ids)] = ids
    return out


def missing_file(name: str, where: str, family: str) -> FileNotFoundError:
    repo = "google/siglip2-base-patch16-224" if name == GEMMA_FILE else "google/siglip-base-patch16-224"
    return FileNotFoundError(
        f"{family} needs its tokenizer file '{name}', which is not in '{where}': download '{name}' from the "
        f"model's Hugging Face repository (e.g. {repo}) and put it beside the checkpoint, or give its path "
        f"(tokenizer=..., CLI --tokenizer)")


class SentencePieceTokenizer:
    """SigLIP: ``spiece.model`` + canonicalisation + ``</s>`` end and padding."""

    kind = "sentencepiece"

    def __init__(self, path: str, context_length: int = CONTEXT_LENGTH, lower: bool = True):
        import sentencepiece

        if not os.path.isfile(path):
            raise missing_file(SPIECE_FILE, os.path.dirname(path) or ".", "SigLIP")
        self.path, self.context_length, self.lower = path, context_length, lower
        self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.eos = self.sp.piece_to_id("</s>")
        if self.sp.id_to_piece(self.eos) != "</s>":
            raise ValueError(f"'{path}' has no '</s>' piece: not a SigLIP SentencePiece model")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self.sp.encode(canonicalize(t, self.lower)) for t in texts]
        return _pack(rows, self.context_length, self.eos, self.eos)


class GemmaTokenizer:
    """SigLIP2: Gemma's ``tokenizer.json`` via ``tokenizers``, lower-cased; special tokens as the file's own
    post-processor adds them (what transformers does with the file), cut and padded with ``<pad>`` to 64."""

    kind = "gemma"

    def __init__(self, path: str, context_length: int = CONTEXT_LENGTH, config: Optional[dict] = None):
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise missing_file(GEMMA_FILE, os.path.dirname(path) or ".", "SigLIP2")
        self.path, self.context_length = path, context_length
        self.tok = Tokenizer.from_file(path)
        cfg = dict(config or {})
        pad = cfg.get("pad_token", "<pad>")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad = self.tok.token_to_id(pad)
        if self.pad is None:
            raise ValueError(f"'{path}' has no padding token {pad!r} in its vocabulary: not a Gemma tokenizer")
        # right unless the tokenizer_config.json says otherwise: big_vision pads on the right, as SigLIP2 trained
        self.tok.enable_padding(direction=cfg.get("padding_side", "right"), pad_id=self.pad, pad_token=pad,
                                length=context_length)
        self.tok.enable_truncation(max_length=context_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = self.tok.encode_batch([t.lower() for t in texts])
        return np.asarray([e.ids for e in rows], np.int32).reshape(len(texts), self.context_length)


def read_gemma_config(folder: str) -> dict:
    """The fields of a ``tokenizer_config.json`` in ``folder`` that the Gemma rule reads ({} when absent)."""
    path = os.path.join(folder, GEMMA_CONFIG_FILE)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    keys = ("pad_token", "padding_side")
    return {k: cfg[k] for k in keys if k in cfg}
