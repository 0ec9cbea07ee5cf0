"""The family interface (see the package docstring) and the rules families share; numpy only at import.

The defaults are CLIP's: a family subclass overrides what differs. Pooling and score rules are written once
here (``POOLINGS``, ``SCORE_RULES``) and chosen by name, so the manifest can say which one an export uses.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np

DEFAULT_LOGIT_SCALE = math.log(100.0)


def pool_eot_argmax(hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Hidden state at the end-of-text token of each row ([B,T,W], [B,T] → [B,W]); CLIP's end-of-text id is the
    largest of its vocabulary, so it sits at ``argmax(ids)``."""
    index = np.asarray(ids).astype(np.int64).argmax(axis=-1)
    return np.asarray(hidden)[np.arange(hidden.shape[0]), index]


def pool_last(hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The last position (SigLIP: the tokenizer pads every text to the context length, no attention mask)."""
    return np.asarray(hidden)[:, -1]


def pool_first(hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The first position (a CLS token, BERT-like towers)."""
    return np.asarray(hidden)[:, 0]


POOLINGS = {"eot_argmax": pool_eot_argmax, "last": pool_last, "first": pool_first}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float64 inside: probabilities of thousands of labels sum to 1)."""
    x = np.asarray(logits, np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x) without overflow warnings for large |x|


SCORE_RULES = {"softmax": softmax, "sigmoid": sigmoid}


def logits(cosine: np.ndarray, logit_scale: float, logit_bias: float = 0.0) -> np.ndarray:
    """``exp(logit_scale)·cos + logit_bias``: the logits of CLIP (bias 0) and SigLIP alike."""
    return np.exp(logit_scale) * np.asarray(cosine, np.float64) + logit_bias


def linear(x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray] = None) -> np.ndarray:
    """``x @ weight.T (+ bias)`` in fp32 (HF Linear layout); no weight = identity."""
    x = np.asarray(x, np.float32)
    if weight is not None:
        x = x @ np.asarray(weight, np.float32).T
    if bias is not None:
        x = x + np.asarray(bias, np.float32)
    return x


@dataclasses.dataclass
class Tokenizer:
    """Texts → int32 ids [N, context_length] (what the text graph takes; axengine asserts the dtype).

    ``files``: name under the export's ``tokenizer/`` folder → the path of the file to copy there."""

    encode: Callable[[Sequence[str]], np.ndarray]
    context_length: int
    files: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)  # the manifest's family.tokenizer entry

    def __call__(self, texts) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("tokenize: no texts given")
        return np.asarray(self.encode(texts), np.int32)


def source_tokenizer_file(source, name: str, what: str, hint: str = "") -> str:
    """The tokenizer file ``name`` of an export source: ``source.tokenizer_path`` itself when it is a file, else
    ``name`` in that folder; a missing one is an error naming the file and where to put it."""
    where = source.tokenizer_path
    path = (where if os.path.isfile(where) else os.path.join(where, name)) if where else None
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"{source.description}: {what} '{name}' was not found{f' in {where!r}' if where else ''}: put the "
            f"model's {name} beside the checkpoint (the HF folder has it) or give it as tokenizer=...{hint}")
    return path


def check_tokenizer_fits(tokenizer: "Tokenizer", path: str, vocab_size: int, hint: str = "") -> "Tokenizer":
    """A tokenizer with more ids than the text tower has rows belongs to another model."""
    size = tokenizer.info["vocab_size"]
    if size > vocab_size:
        raise ValueError(f"the tokenizer '{path}' has {size} tokens but the text tower only {vocab_size}: it belongs "
                         f"to another model{hint}")
    return tokenizer


def exported_tokenizer_files(folder: str, paths) -> None:
    """The serving side: every tokenizer file an export's manifest names is there."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"the export '{folder}' lacks its tokenizer file '{path}': copy the whole "
                                    f"export folder to the board, or re-export")


class Family:
    """CLIP's rules; subclasses override what differs (see the package docstring for the contract)."""

    name = "clip"
    title = "CLIP"
    layouts: tuple = ()
    score_rule = "softmax"
    text_pooling = "eot_argmax"
    default_crop = "center"  # pixels.CROP_MODES: centre crop (CLIP, ComfyUI) or squash (SigLIP)
    cpu_split: dict = {}  # part → {"npu": ..., "cpu": [...]} for the report; {} = pipeline.CPU_SPLIT (CLIP's)

    # --- export side -----------------------------------------------------------------------------------
    def detect(self, keys) -> Optional[str]:
        raise NotImplementedError

    def load(self, path: str, parts):
        raise NotImplementedError

    def default_source(self, seed: int = 0, **sizes):
        raise NotImplementedError

    def vision_heads(self, vision) -> dict:
        return {}

    def text_heads(self, text) -> dict:
        return {"text_projection": text.projection.numpy()}

    def export_tokenizer(self, source) -> Tokenizer:
        raise NotImplementedError

    def manifest_block(self, source, tokenizer: Optional[Tokenizer]) -> dict:
        """The manifest's ``family`` entry; ``tokenizer`` None for a vision-only export."""
        text = source.text if tokenizer is not None else None
        block = {"name": self.name, "score_rule": self.score_rule, "text_pooling": self.text_pooling,
                 "logit_scale": text.logit_scale if text is not None else DEFAULT_LOGIT_SCALE,
                 "logit_bias": float(getattr(text, "logit_bias", 0.0) or 0.0) if text is not None else 0.0}
        if tokenizer is not None:
            block["tokenizer"] = dict(tokenizer.info, files=[f"tokenizer/{name}" for name in sorted(tokenizer.files)],
                                      context_length=tokenizer.context_length)
        return block

    # --- serving side (numpy only) ---------------------------------------------------------------------
    def tokenizer(self, block: dict, folder: str) -> Tokenizer:
        raise NotImplementedError

    def vision_head(self, pooled: np.ndarray, heads: dict) -> np.ndarray:
        return linear(pooled, heads.get("visual_projection"), heads.get("visual_projection_bias"))

    def text_head(self, hidden: np.ndarray, ids: np.ndarray, heads: dict) -> np.ndarray:
        pooled = POOLINGS[self.text_pooling](hidden, ids)
        return linear(pooled, heads.get("text_projection"), heads.get("text_projection_bias"))

    def probabilities(self, cosine: np.ndarray, block: dict, rule: Optional[str] = None) -> np.ndarray:
        """The score rule (``rule`` or the family's) over the last axis of a cosine table."""
        rule = rule or block.get("score_rule", self.score_rule)
        bias = block.get("logit_bias", 0.0) if rule == "sigmoid" else 0.0
        return SCORE_RULES[rule](logits(cosine, block.get("logit_scale", DEFAULT_LOGIT_SCALE), bias))
