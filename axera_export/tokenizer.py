"""CLIP byte-level BPE tokenizer, torch-free (numpy + ``regex``), so a board serves without importing torch.

The algorithm is CLIP's, written from its definition and checked token for token against open_clip's
``SimpleTokenizer`` in the tests: text cleaned (ftfy when installed, HTML unescaped twice, whitespace
collapsed, lower-cased), split by CLIP's pattern, each piece byte-encoded and merged by BPE rank, wrapped in
start/end-of-text, zero padded, cut at the context length with end-of-text kept last.

The vocabulary is CLIP's ``bpe_simple_vocab_16e6.txt.gz``: an export carries a copy (``tokenizer/``, written by
``export_clip``) so the board needs no open_clip; without one we read the file open_clip ships (found without
importing open_clip, which would import torch).

Returns int32 ids because that is what the exported text graph takes and what Pulsar2/axengine expect
(`src_dtype S32`; axengine asserts the exact dtype).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from typing import Optional, Sequence

import numpy as np

CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file
_SPECIAL = ("<start_of_text>", "<end_of_text>")


def default_vocab_path() -> str:
    """open_clip's copy of CLIP's BPE vocabulary (located, not imported: importing open_clip imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, VOCAB_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"CLIP's BPE vocabulary {VOCAB_FILE} was not found: export with comfyui-clipwan "
                            f"(the export folder carries tokenizer/{VOCAB_FILE}) or pip install open_clip_torch")


def _byte_alphabet() -> dict:
    """Byte → printable unicode character, CLIP/GPT-2's reversible byte encoding (no whitespace/control chars).
    Insertion order matters: it is the order of the first 256 vocabulary entries (printable bytes first)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in keep}
    for extra, byte in enumerate(b for b in range(256) if b not in table):
        table[byte] = chr(256 + extra)
    return table


class ClipBPE:
    """Text → token ids with CLIP's vocabulary (one instance per vocabulary file; thread-safe for reading)."""

    def __init__(self, vocab_path: Optional[str] = None):
        import regex  # a dependency of open_clip; small, pure C, installs on a board

        self.vocab_path = vocab_path or default_vocab_path()
        with gzip.open(self.vocab_path) as f:
            lines = f.read().decode("utf-8").split("\n")[1:_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self._bytes = _byte_alphabet()
        symbols = list(self._bytes.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(_SPECIAL)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.sot, self.eot = self.encoder[_SPECIAL[0]], self.encoder[_SPECIAL[1]]
        self._pattern = regex.compile("|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                      r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        self._words: dict = {}

    def _merge(self, piece: str) -> list:
        """BPE of one byte-encoded piece: repeatedly join the adjacent pair with the lowest merge rank."""
        cached = self._words.get(piece)
        if cached is not None:
            return cached
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, 1 << 30), i) for i, pair in enumerate(zip(word, word[1:]))]
            rank, at = min(ranked)
            if rank == 1 << 30:
                break
            first, second = word[at], word[at + 1]
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._words) < 100_000:
            self._words[piece] = word
        return word

    def encode(self, text: str) -> list:
        text = _clean(text)
        ids = []
        for piece in self._pattern.findall(text):
            if piece in _SPECIAL:
                ids.append(self.encoder[piece])
                continue
            encoded = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._merge(encoded))
        return ids

    def __call__(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        out = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            tokens = [self.sot] + self.encode(text) + [self.eot]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = self.eot
            out[row, :len(tokens)] = tokens
        return out


def _clean(text: str) -> str:
    try:
        import ftfy  # mends mojibake as CLIP's training text was; optional on a board
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


@functools.lru_cache(maxsize=4)
def bpe(vocab_path: Optional[str] = None) -> ClipBPE:
    return ClipBPE(vocab_path)


def tokenize(texts: Sequence[str] | str, context_length: int = CONTEXT_LENGTH,
             vocab_path: Optional[str] = None) -> np.ndarray:
    """Texts → int32 ids [N, context_length] (start token, BPE, end-of-text, zero padding; long texts cut)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("tokenize: no texts given")
    return bpe(vocab_path)(texts, context_length)
