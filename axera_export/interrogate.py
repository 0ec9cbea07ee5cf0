"""Automatic1111-style interrogation on an exported CLIP: base64 image → comma-separated tags.

Pure logic (no web framework): request validation, image decoding, the caption, and which export folder
serves it. ``nodes/axera_nodes.py`` wraps it in an aiohttp handler for ``POST /sdapi/v1/interrogate``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import os
import threading
from typing import Optional, Sequence

import torch

from .pipeline import DEFAULT_LABELS
from .runtime import MANIFEST, ClipRuntime, read_manifest

DEFAULT_THRESHOLD = 0.25
MAX_BODY_BYTES = 16 * 1024 * 1024  # a 4K PNG in base64 fits; anything larger is refused with 413
MAX_PIXELS = 4096 * 4096  # decoded size cap (16.8 MP, ~200 MB as float32): a 134 KiB PNG can declare 89 MP
MODELS = ("clip",)
EXPORT_ENV = "CLIPWAN_AXERA_EXPORT"  # a fixed export folder for the route (else: newest export in output/)


class RequestError(Exception):
    """A client error: HTTP ``status`` and a message for the JSON body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Base64 (optionally a ``data:image/...;base64,`` URL) → IMAGE [1,H,W,3] float in [0,1].

    The pixel count is checked from the image header before decoding (413 above ``max_pixels``), so a small
    upload that declares a huge image costs nothing; decoding is the pack's one image reader (images.py).
    """
    from ..images import ImageReadError, read_image

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
        return read_image(raw, name="'image'", max_pixels=max_pixels)
    except ImageReadError as exc:
        if exc.kind == "not_image":
            raise RequestError(400, "'image' is valid base64 but not an image PIL can read (PNG, JPEG, WebP…)") \
                from None
        raise RequestError(413 if exc.kind == "too_large" else 400, str(exc)) from None


def caption(runtime: ClipRuntime, image: torch.Tensor, labels: Sequence[str] = DEFAULT_LABELS,
            threshold: float = DEFAULT_THRESHOLD, template: str = "a photo of {}.") -> tuple[str, list]:
    """Tags whose zero-shot probability ≥ threshold, best first, joined with ", " (may be empty)."""
    (ranked,) = runtime.zero_shot(image, labels, template)
    return ", ".join(label for label, p in ranked if p >= threshold), ranked


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

    def __init__(self, max_folders: int = 2):
        self._lock = threading.Lock()
        self._cache: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        self.max_folders = max_folders

    def get(self, folder: str) -> ClipRuntime:
        key = os.path.abspath(folder)
        stamp = os.path.getmtime(os.path.join(key, MANIFEST))
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or entry[0] != stamp:
                entry = (stamp, ClipRuntime(key))
                self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_folders:
                self._cache.popitem(last=False)
            return entry[1]


def parse_request(body: dict, default_labels: Sequence[str], default_threshold: float) -> dict:
    """Validate an A1111 interrogate body (+ our optional ``labels``/``threshold``)."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object {\"image\": base64, \"model\": \"clip\"}")
    model = body.get("model", "clip")
    if model not in MODELS:
        raise RequestError(404, f"unknown model {model!r}: this server interrogates with {list(MODELS)} only")
    if "image" not in body:
        raise RequestError(400, "missing 'image' (base64-encoded picture)")
    labels = body.get("labels", default_labels)
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.replace("\n", ",").split(",")]
    if not isinstance(labels, (list, tuple)) or not [x for x in labels if isinstance(x, str) and x.strip()]:
        raise RequestError(400, "'labels' must be a non-empty list of strings")
    threshold = body.get("threshold", default_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise RequestError(400, f"'threshold' must be a number in [0, 1], got {threshold!r}")
    return {"image": body["image"], "labels": [x.strip() for x in labels if isinstance(x, str) and x.strip()],
            "threshold": float(threshold)}
