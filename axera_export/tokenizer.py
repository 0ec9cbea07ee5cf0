"""CLIP BPE tokenizer: open_clip's, whose vocabulary ships inside the package (works offline).

Returns int32 ids because that is what the exported text graph takes and what Pulsar2/axengine expect
(`src_dtype S32`; axengine asserts the exact dtype).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

CONTEXT_LENGTH = 77


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: Sequence[str] | str, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """Texts → int32 ids [N, context_length] (start token, BPE, end-of-text, zero padding; long texts cut)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("tokenize: no texts given")
    ids = _tokenizer(context_length)(texts, context_length=context_length)
    return ids.numpy().astype(np.int32)
