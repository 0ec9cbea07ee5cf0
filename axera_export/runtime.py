"""One runtime over an export folder: ``.axmodel`` on the Axera NPU (axengine) or ``.onnx`` (ONNX Runtime).

Same API either way: image/text embeddings, cosine similarity, zero-shot labels. The CPU side of the split
(visual/text projection, EOT pooling, normalisation) runs here in fp32 numpy, exactly as the manifest says.
No torch: preprocessing is ``pixels.preprocess`` and tokenizing ``tokenizer`` (numpy), so a board serves with
numpy + onnxruntime/axengine alone.

* ``axengine`` is imported lazily: it raises ImportError at import time off-device (no libax_engine.so).
* Which engine runs is chosen once per tower by ``providers.choose`` (explicit or auto) and said in
  ``ClipRuntime.backends``.
* One process-wide lock serialises every session call: the NPU must never run two requests at once, and
  ComfyUI's server may call us from several executor threads (concurrent interrogate requests).
* Inputs are cast to the exact shape and dtype the session declares (axengine asserts both).
"""

from __future__ import annotations

import collections
import json
import os
import threading
from typing import Optional, Sequence

import numpy as np

from . import families, providers
from .families.base import softmax  # noqa: F401  (re-exported: interrogate and older callers import it here)
from .pixels import preprocess

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "comfyui-clipwan/axera-export"
BACKENDS = providers.BACKENDS
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

    def __init__(self, path: str, choice: "providers.Choice", expected_shape, expected_dtype: str):
        self.path, self.backend, self.provider = path, choice.engine, choice.provider
        if choice.engine == "axengine":
            import axengine as axe  # importable: providers.choose checked it

            self._sess = axe.InferenceSession(path, providers=[choice.provider])
        else:
            import onnxruntime as ort

            self._sess = ort.InferenceSession(path, providers=[choice.provider])
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
    """Zero-shot CLIP on an exported folder. ``backend``: auto (axmodel on the NPU provider pyaxengine offers,
    else ONNX Runtime) | axengine (board NPU) | axcl (PCIe/M.2 card) | onnxruntime; see ``providers``."""

    def __init__(self, folder: str, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.folder = os.path.abspath(folder)
        self.manifest = read_manifest(self.folder)
        heads = np.load(os.path.join(self.folder, self.manifest["cpu_heads"]), allow_pickle=False)
        self._heads = {k: heads[k] for k in heads.files}
        self.family = families.of_manifest(self.manifest)
        # the family's rules: score, logit scale/bias, tokenizer (manifests before families: CLIP's)
        self.family_block = dict(self.manifest.get("family") or {"name": self.family.name})
        self.family_block.setdefault("logit_scale", float(self.manifest.get("logit_scale", np.log(100.0))))
        self.logit_scale = float(self.family_block["logit_scale"])
        self.logit_bias = float(self.family_block.get("logit_bias", 0.0))
        self.score_rule = self.family_block.get("score_rule", self.family.score_rule)
        self.random_init = bool(self.manifest.get("random_init"))
        self.parts = {}
        self.backends = {}  # part → engine ("axengine" | "onnxruntime")
        self.choices = {}  # part → providers.Choice (engine, provider, why)
        for part, info in self.manifest["parts"].items():
            self.parts[part] = self._open(part, info, backend)
        vision = self.manifest["parts"].get("vision")
        self.vision_config = dict(vision["config"]) if vision else None
        self.crop = vision.get("crop", "center") if vision else "center"
        text = self.manifest["parts"].get("text")
        if text:
            self.family_block.setdefault("tokenizer", {"context_length": text["input"]["shape"][1]})
        self.tokenizer = self.family.tokenizer(self.family_block, self.folder) if text else None
        self._text_cache = EmbeddingCache()

    def _open(self, part: str, info: dict, backend: str) -> _Session:
        shape, dtype = info["input"]["shape"], info["input"]["dtype"]
        choice = providers.choose(backend, bool(info.get("axmodel")), part)
        path = os.path.join(self.folder, info["axmodel"] if choice.engine == "axengine" else info["onnx"])
        session = _Session(path, choice, shape, dtype)
        self.backends[part], self.choices[part] = choice.engine, choice
        return session

    def describe(self) -> dict:
        """Per tower, what runs it: ``{"vision": "axengine/AXCLRTExecutionProvider", ...}`` (responses, logs)."""
        return {part: choice.label for part, choice in self.choices.items()}

    def _need(self, part: str) -> _Session:
        if part not in self.parts:
            raise ValueError(f"this export has no {part} tower (parts: {sorted(self.parts)}); re-export with "
                             f"parts including {part}")
        return self.parts[part]

    # --- embeddings -----------------------------------------------------------------------------------
    def pixels(self, images) -> np.ndarray:
        """IMAGE [B,H,W,C] in [0,1] (torch or numpy) → the vision graph's input [B,3,S,S] (``pixels.preprocess``,
        the numpy twin of ``clip_vision.preprocess_images``). CPU only: callers may run it outside the device lock."""
        self._need("vision")
        c = self.vision_config
        return preprocess(images, c["image_size"], c["mean"], c["std"], self.crop)

    @property
    def vision_output(self) -> str:
        """``embeddings`` (zero-shot export) or ``wan`` (Wan 2.1 i2v features export)."""
        return self.manifest["parts"].get("vision", {}).get("output_kind", "embeddings")

    def wan_features(self, images, pixels: Optional[np.ndarray] = None) -> np.ndarray:
        """IMAGE [B,H,W,C] → Wan 2.1's i2v CLIP features [B, 257, 1280] (a ``vision_output="wan"`` export)."""
        session = self._need("vision")
        if self.vision_output != "wan":
            raise ValueError(f"'{self.folder}' exports image embeddings, not Wan features; re-export with "
                             f"vision_output='wan' (CLI --vision-output wan)")
        pixels = self.pixels(images) if pixels is None else pixels
        return np.concatenate([session.run(pixels[i:i + 1]) for i in range(len(pixels))]).astype(np.float32)

    def image_embeddings(self, images, normalize: bool = True, pixels: Optional[np.ndarray] = None) -> np.ndarray:
        """IMAGE [B,H,W,C] in [0,1] (torch or numpy) → [B, D] (or from ``pixels`` already preprocessed)."""
        session = self._need("vision")
        if self.vision_output == "wan":
            raise ValueError(f"'{self.folder}' is a Wan-features export (no CLS pooling, no projection): use "
                             f"wan_features(), or re-export with vision_output='embeddings' for zero-shot")
        pixels = self.pixels(images) if pixels is None else pixels
        pooled = np.concatenate([session.run(pixels[i:i + 1]) for i in range(len(pixels))])
        return _normalize(self.family.vision_head(pooled, self._heads), normalize)

    def text_embeddings(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        session = self._need("text")
        ids = self.tokenizer(list(texts))
        hidden = np.concatenate([session.run(ids[i:i + 1]) for i in range(len(ids))])
        return _normalize(self.family.text_head(hidden, ids, self._heads), normalize)

    def prompt_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """Normalised text embeddings [N, D], each prompt encoded once per runtime (bounded LRU cache)."""
        known = {p: self._text_cache.get(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, emb in known.items() if emb is None]
        if missing:
            for prompt, emb in zip(missing, self.text_embeddings(missing)):
                known[prompt] = emb
                self._text_cache.put(prompt, emb)
        return np.stack([known[p] for p in prompts])

    def probabilities(self, cosine: np.ndarray, rule: Optional[str] = None) -> np.ndarray:
        """The export's score rule over the last axis of a cosine table: CLIP's softmax of
        ``exp(logit_scale)·cos``, SigLIP's ``sigmoid(exp(logit_scale)·cos + logit_bias)``; ``rule`` overrides."""
        return self.family.probabilities(cosine, self.family_block, rule)

    def similarity(self, images, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity [B images, N texts]."""
        return self.image_embeddings(images) @ self.text_embeddings(texts).T

    def zero_shot(self, images, labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list:
        """Per image: ``[(label, probability), ...]`` sorted best first (the export's score rule)."""
        labels = [str(label).strip() for label in labels if str(label).strip()]
        if not labels:
            raise ValueError("zero-shot needs at least one label")
        text = self.prompt_embeddings(fill_template(template, labels))
        probs = self.probabilities(self.image_embeddings(images) @ text.T)
        return [sorted(zip(labels, map(float, row)), key=lambda t: -t[1]) for row in probs]


def fill_template(template: str, labels: Sequence[str]) -> list:
    """Prompts from a template holding ``{}`` or ``{label}`` where the label goes."""
    if "{}" not in template and "{label}" not in template:
        raise ValueError(f"template must contain '{{}}' or '{{label}}' where the label goes, got {template!r}")
    return [template.replace("{label}", "{}").format(label) for label in labels]


def _normalize(x: np.ndarray, normalize: bool) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12) if normalize else x
