"""One runtime over an export folder: ``.axmodel`` on the Axera NPU (axengine) or ``.onnx`` (ONNX Runtime).

Same API either way: image/text embeddings, cosine similarity, zero-shot labels. The CPU side of the split
(visual/text projection, EOT pooling, normalisation) runs here in fp32 numpy, exactly as the manifest says.

* ``axengine`` is imported lazily: it raises ImportError at import time off-device (no libax_engine.so).
* One process-wide lock serialises every session call: the NPU must never run two requests at once, and
  ComfyUI's server may call us from several executor threads (concurrent interrogate requests).
* Inputs are cast to the exact shape and dtype the session declares (axengine asserts both).
"""

from __future__ import annotations

import collections
import json
import os
import threading
from typing import Sequence

import numpy as np
import torch

from ..clip_vision import VisionConfig, preprocess_images
from .heads import text_head, vision_head
from .tokenizer import tokenize

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "comfyui-clipwan/axera-export"
BACKENDS = ("auto", "axengine", "onnxruntime")
DEFAULT_TEMPLATE = "a photo of {}."

_SESSION_LOCK = threading.Lock()  # one accelerator, one request at a time
_counter_lock = threading.Lock()
_active = 0
max_concurrent_runs = 0  # highest number of session calls seen running at once (1 = properly serialised)


def _np_dtype(value, fallback: str) -> np.dtype:
    text = str(value).lower()
    for key, dt in (("int32", np.int32), ("int64", np.int64), ("float16", np.float16), ("uint8", np.uint8),
                    ("float", np.float32)):
        if key in text:
            return np.dtype(dt)
    return np.dtype(fallback)


class _Session:
    """A loaded model file; ``run(x)`` casts x to the declared input and returns the first output."""

    def __init__(self, path: str, backend: str, expected_shape, expected_dtype: str):
        self.path, self.backend = path, backend
        if backend == "axengine":
            import axengine as axe  # ImportError off-device: caught by the caller

            self._sess = axe.InferenceSession(path)
        else:
            import onnxruntime as ort

            self._sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        arg = self._sess.get_inputs()[0]
        self.input_name = arg.name
        shape = [d if isinstance(d, int) and d > 0 else e for d, e in zip(list(arg.shape), expected_shape)]
        self.input_shape = tuple(shape) if len(shape) == len(expected_shape) else tuple(expected_shape)
        self.input_dtype = _np_dtype(getattr(arg, "dtype", None) or getattr(arg, "type", None), expected_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        global _active, max_concurrent_runs
        x = np.ascontiguousarray(np.asarray(x).astype(self.input_dtype, copy=False).reshape(self.input_shape))
        with _SESSION_LOCK:
            with _counter_lock:
                _active += 1
                max_concurrent_runs = max(max_concurrent_runs, _active)
            try:
                return np.asarray(self._sess.run(None, {self.input_name: x})[0])
            finally:
                with _counter_lock:
                    _active -= 1


class EmbeddingCache:
    """Text embeddings by prompt, least recently used first out, bounded by entries AND bytes: a route fed ever
    new labels keeps a fixed footprint. Thread-safe (the route calls from several executor threads)."""

    def __init__(self, max_entries: int = 4096, max_bytes: int = 32 * 1024 * 1024):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = value
            self.nbytes += value.nbytes
            while self._items and (len(self._items) > self.max_entries or self.nbytes > self.max_bytes):
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {MANIFEST} in '{folder}': point at a folder written by ExportCLIPToAxmodel "
                                f"or `comfyui-clipwan export-axera`")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"'{path}' is not a comfyui-clipwan Axera export manifest")
    return manifest


class ClipRuntime:
    """Zero-shot CLIP on an exported folder. ``backend``: auto (axmodel when built and axengine works) |
    axengine | onnxruntime."""

    def __init__(self, folder: str, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.folder = os.path.abspath(folder)
        self.manifest = read_manifest(self.folder)
        heads = np.load(os.path.join(self.folder, self.manifest["cpu_heads"]), allow_pickle=False)
        self._heads = {k: heads[k] for k in heads.files}
        self.logit_scale = float(self.manifest.get("logit_scale", np.log(100.0)))
        self.random_init = bool(self.manifest.get("random_init"))
        self.parts = {}
        self.backends = {}
        for part, info in self.manifest["parts"].items():
            self.parts[part] = self._open(part, info, backend)
        vision = self.manifest["parts"].get("vision")
        self.vision_config = None
        if vision:
            c = dict(vision["config"])
            c["mean"], c["std"] = tuple(c["mean"]), tuple(c["std"])
            self.vision_config = VisionConfig(**c)
            self.crop = vision.get("crop", "center")
        self._text_cache = EmbeddingCache()

    def _open(self, part: str, info: dict, backend: str) -> _Session:
        shape, dtype = info["input"]["shape"], info["input"]["dtype"]
        axmodel = info.get("axmodel")
        if backend in ("auto", "axengine") and axmodel:
            try:
                session = _Session(os.path.join(self.folder, axmodel), "axengine", shape, dtype)
                self.backends[part] = "axengine"
                return session
            except ImportError as exc:
                if backend == "axengine":
                    raise RuntimeError(f"backend 'axengine' needs the pyaxengine package on an Axera device: "
                                       f"{exc}") from None
        elif backend == "axengine":
            raise RuntimeError(f"backend 'axengine': the {part} tower was not compiled to .axmodel in "
                               f"'{self.folder}' (run build_axmodel.sh there first)")
        self.backends[part] = "onnxruntime"
        return _Session(os.path.join(self.folder, info["onnx"]), "onnxruntime", shape, dtype)

    def _need(self, part: str) -> _Session:
        if part not in self.parts:
            raise ValueError(f"this export has no {part} tower (parts: {sorted(self.parts)}); re-export with "
                             f"parts including {part}")
        return self.parts[part]

    # --- embeddings -----------------------------------------------------------------------------------
    def image_embeddings(self, images, normalize: bool = True) -> np.ndarray:
        """IMAGE [B,H,W,C] in [0,1] (torch or numpy) → [B, D]. Preprocessing = clip_vision.preprocess_images."""
        session = self._need("vision")
        images = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not isinstance(images, torch.Tensor) \
            else images
        pixels = preprocess_images(images, self.vision_config, self.crop).numpy()
        pooled = np.concatenate([session.run(pixels[i:i + 1]) for i in range(len(pixels))])
        return _normalize(vision_head(pooled, self._heads["visual_projection"]), normalize)

    def text_embeddings(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        session = self._need("text")
        ids = tokenize(list(texts), self.manifest["parts"]["text"]["input"]["shape"][1])
        hidden = np.concatenate([session.run(ids[i:i + 1]) for i in range(len(ids))])
        return _normalize(text_head(hidden, ids, self._heads["text_projection"]), normalize)

    def similarity(self, images, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity [B images, N texts]."""
        return self.image_embeddings(images) @ self.text_embeddings(texts).T

    def zero_shot(self, images, labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list:
        """Per image: ``[(label, probability), ...]`` sorted best first (softmax of logit_scale · cosine)."""
        labels = [str(label).strip() for label in labels if str(label).strip()]
        if not labels:
            raise ValueError("zero-shot needs at least one label")
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the label goes, got {template!r}")
        prompts = [template.format(label) for label in labels]
        known = {p: self._text_cache.get(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, emb in known.items() if emb is None]
        if missing:
            for prompt, emb in zip(missing, self.text_embeddings(missing)):
                known[prompt] = emb
                self._text_cache.put(prompt, emb)
        text = np.stack([known[p] for p in prompts])
        logits = np.exp(self.logit_scale) * (self.image_embeddings(images) @ text.T)
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        return [sorted(zip(labels, map(float, row)), key=lambda t: -t[1]) for row in probs]


def _normalize(x: np.ndarray, normalize: bool) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12) if normalize else x
