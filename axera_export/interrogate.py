"""Interrogation requests: validation, image decoding, scoring — the pure logic under both HTTP front ends.

Two request shapes (what existing clients send):

* ``POST /sdapi/v1/interrogate`` — Automatic1111's ``{"image": base64, "model": "clip"}``; answer
  ``{"caption": "tag, tag", "interrogations": [{"tag", "score"}]}`` (the shape of the AX650N Raspberry-Pi
  services board users run).
* ``POST /sdapi/v1/interrogate/structured`` — ``{"image", "categories": {name: [labels]}}``; answer
  ``{"results": {name: {"winner", "confidence"}}, "general_tags": [...]}``, confidence = softmax within the
  category of the model's logits (``exp(logit_scale)·cos``; SigLIP's ``logit_bias`` cancels in it).

Optional extras on both: ``labels`` (list or comma string: this request's candidates instead of the served
vocabulary), ``threshold``, ``top_k``, ``score``: ``softmax`` over the candidates (CLIP's rule), ``sigmoid``
per label (SigLIP's: ``sigmoid(exp(logit_scale)·cos + logit_bias)``), or the raw ``cosine``; not given: the
export's own rule (its family's ``score_rule``).
No web framework and no torch here: ``service.py`` runs requests, ``serve.py`` / ``nodes/axera_nodes.py`` carry
them over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import os
import threading
from typing import Optional, Sequence

import numpy as np

from .families.base import SCORE_RULES, logits
from .runtime import MANIFEST, ClipRuntime, read_manifest, softmax

DEFAULT_THRESHOLD = 0.25
DEFAULT_TOP_K = 10
SCORES = ("softmax", "sigmoid", "cosine")
MAX_BODY_BYTES = 16 * 1024 * 1024  # a 4K PNG in base64 fits; anything larger is refused with 413
MAX_PIXELS = 4096 * 4096  # decoded size cap (16.8 MP, ~200 MB as float32): a 134 KiB PNG can declare 89 MP
MAX_CATEGORIES = 64
MAX_REQUEST_LABELS = 4096  # labels one request may name (categories + labels together)
MODELS = ("clip",)
EXPORT_ENV = "CLIPWAN_AXERA_EXPORT"  # a fixed export folder for the route (else: newest export in output/)


def size_text(n: int) -> str:
    """Bytes as the limits are said in messages: MiB from 1 MiB up, else KiB."""
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


class RequestError(Exception):
    """A client error (or a busy/unready server): HTTP ``status`` and a message for the JSON body."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def decode_image(data, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Base64 (optionally a ``data:image/...;base64,`` URL) → IMAGE [1,H,W,3] float32 numpy in [0,1].

    The pixel count is checked from the image header before decoding (413 above ``max_pixels``), so a small
    upload that declares a huge image costs nothing; decoding is the pack's one image reader (images.py).
    """
    from ..images import ImageReadError, read_image_array

    if not isinstance(data, str) or not data.strip():
        raise RequestError(400, "'image' must be a non-empty base64 string (optionally a data: URL)")
    text = data.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise RequestError(400, "'image' data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "'image' is not valid base64") from None
    try:
        return read_image_array(raw, name="'image'", max_pixels=max_pixels)
    except ImageReadError as exc:
        if exc.kind == "not_image":
            raise RequestError(400, "'image' is valid base64 but not an image PIL can read (PNG, JPEG, WebP…)") \
                from None
        raise RequestError(413 if exc.kind == "too_large" else 400, str(exc)) from None


@dataclasses.dataclass
class Defaults:
    """Server-wide answers to the optional request fields."""

    threshold: float = DEFAULT_THRESHOLD
    top_k: int = DEFAULT_TOP_K
    score: Optional[str] = None  # None: the export's own rule (CLIP softmax, SigLIP sigmoid)

    def __post_init__(self):
        check_scoring(self.score, self.threshold, self.top_k, error=ValueError)


def check_scoring(score, threshold, top_k, error=None) -> None:
    """The one rule for score/threshold/top_k, for requests (400) and server flags (ValueError)."""
    def fail(message):
        raise (error(message) if error else RequestError(400, message))

    if score is not None and score not in SCORES:
        fail(f"'score' must be one of {list(SCORES)}, got {score!r}")
    low = -1.0 if score == "cosine" else 0.0
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not low <= threshold <= 1.0:
        named = f"score '{score}'" if score else "the model's score (softmax or sigmoid)"
        fail(f"'threshold' must be a number in [{low:g}, 1] for {named}, got {threshold!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        fail(f"'top_k' must be a positive integer, got {top_k!r}")


def _labels(value, field: str) -> list:
    if isinstance(value, str):
        value = [x.strip() for x in value.replace("\n", ",").split(",")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise RequestError(400, f"'{field}' must be a list of strings")
    labels = list(dict.fromkeys(x.strip() for x in value if x.strip()))
    if not labels:
        raise RequestError(400, f"'{field}' must hold at least one non-empty label")
    return labels


def parse_request(body, defaults: Defaults, structured: bool = False) -> dict:
    """Validate one request body (a dict from JSON) → the fields the service uses. Raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object {\"image\": base64, \"model\": \"clip\"}")
    model = body.get("model", "clip")
    if model not in MODELS:
        raise RequestError(404, f"unknown model {model!r}: this server interrogates with {list(MODELS)} only")
    if "image" not in body:
        raise RequestError(400, "missing 'image' (base64-encoded picture)")
    score = body.get("score", defaults.score)
    threshold = body.get("threshold", defaults.threshold)
    top_k = body.get("top_k", defaults.top_k)
    check_scoring(score, threshold, top_k)
    labels = _labels(body["labels"], "labels") if body.get("labels") is not None else None
    out = {"image": body["image"], "labels": labels, "threshold": float(threshold), "top_k": top_k, "score": score}
    count = len(labels or ())
    if structured:
        categories = body.get("categories")
        if not isinstance(categories, dict) or not categories:
            raise RequestError(400, "'categories' must be a non-empty object {\"name\": [\"label\", ...], ...}")
        if len(categories) > MAX_CATEGORIES:
            raise RequestError(400, f"'categories' has {len(categories)} entries; at most {MAX_CATEGORIES}")
        out["categories"] = {}
        for name, values in categories.items():
            out["categories"][name] = _labels(values, f"categories.{name}")
            count += len(out["categories"][name])
    if count > MAX_REQUEST_LABELS:
        raise RequestError(400, f"the request names {count} labels; at most {MAX_REQUEST_LABELS} (put a large "
                                f"vocabulary in the server's label file: it is encoded once and cached)")
    return out


def rank(image_embedding: np.ndarray, text_embeddings: np.ndarray, labels: Sequence[str], score: str,
         logit_scale: float, threshold: float, top_k: int, logit_bias: float = 0.0) -> tuple:
    """(caption, [(tag, score), ...]): the ``top_k`` best labels whose score ≥ threshold, best first; when none
    passes, the single best (Automatic1111 always answers a caption). ``softmax``: probability over the
    candidates (logit scale × cosine); ``sigmoid``: per-label probability (+ logit bias); ``cosine``: raw."""
    cosine = _cosine(text_embeddings, image_embedding)
    scores = cosine if score == "cosine" else \
        SCORE_RULES[score](logits(cosine, logit_scale, logit_bias if score == "sigmoid" else 0.0))
    top = np.argpartition(-scores, top_k - 1)[:top_k] if top_k < len(scores) else np.arange(len(scores))
    order = top[np.argsort(-scores[top], kind="stable")]
    tags = [(labels[i], float(scores[i])) for i in order if scores[i] >= threshold]
    if not tags:
        tags = [(labels[order[0]], float(scores[order[0]]))]
    return ", ".join(t for t, _ in tags), tags


def _cosine(text_embeddings: np.ndarray, image_embedding: np.ndarray) -> np.ndarray:
    """[N] cosines: the product in float32 (a 20 k × 512 table is not copied to float64 per request), the N
    results in float64 for the softmax."""
    table = np.asarray(text_embeddings, np.float32)
    return (table @ np.asarray(image_embedding, np.float32)).astype(np.float64)


def classify(image_embedding: np.ndarray, text_embeddings: np.ndarray, labels: Sequence[str],
             logit_scale: float) -> dict:
    """One category: the winner and its softmax probability within the category."""
    probs = softmax(np.exp(logit_scale) * _cosine(text_embeddings, image_embedding))
    best = int(np.argmax(probs))
    return {"winner": labels[best], "confidence": float(probs[best])}


def find_latest_export(root: str, need=("vision", "text")) -> Optional[str]:
    """Newest folder under ``root`` (depth ≤ 3) holding an export manifest with the needed towers."""
    best, best_time = None, -1.0
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        return None
    base_depth = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # an export being built or being replaced
        if folder.count(os.sep) - base_depth >= 3:
            dirs[:] = []
        if MANIFEST not in files:
            continue
        try:
            manifest = read_manifest(folder)
        except (ValueError, OSError):
            continue
        if all(p in manifest.get("parts", {}) for p in need):
            mtime = os.path.getmtime(os.path.join(folder, MANIFEST))
            if mtime > best_time:
                best, best_time = folder, mtime
    return best


class RuntimeCache:
    """ClipRuntimes per export folder, rebuilt when the folder's manifest changes (a re-export); the
    ``max_folders`` most recently used are kept, so a stream of new exports does not pile up sessions."""

    def __init__(self, max_folders: int = 2, backend: str = "auto"):
        self._lock = threading.Lock()
        self._cache: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        self.max_folders = max_folders
        self.backend = backend

    def get(self, folder: str) -> ClipRuntime:
        key = os.path.abspath(folder)
        stamp = os.path.getmtime(os.path.join(key, MANIFEST))
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or entry[0] != stamp:
                entry = (stamp, ClipRuntime(key, backend=self.backend))
                self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_folders:
                self._cache.popitem(last=False)
            return entry[1]
