"""The interrogation service: ONE request handler behind ``comfyui-clipwan serve`` and ComfyUI's routes.

``InterrogationService.respond(kind, body_bytes) -> Reply(status, payload, headers)`` does everything after the
body has been read: JSON parsing, validation (4xx JSON), image decoding, the device queue (503 JSON when full),
inference, scoring. Front ends only move bytes: ``serve.py`` (stdlib ``http.server``, on the board) and
``nodes/axera_nodes.py`` (aiohttp, inside ComfyUI).

One NPU, one request at a time: the device part of a request (image embedding, labels encoded on the fly) runs
under one lock; at most ``max_queue`` requests wait for it, the next gets 503 at once with ``Retry-After``.
Decoding and preprocessing run before the lock (CPU work, in parallel with the NPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from .interrogate import (MAX_BODY_BYTES, Defaults, RequestError, RuntimeCache, classify, decode_image,
                          parse_request, rank, size_text)
from .vocabulary import DEFAULT_LABELS, DEFAULT_TEMPLATE, Vocabulary, load_or_build

INTERROGATE_PATH = "/sdapi/v1/interrogate"
STRUCTURED_PATH = "/sdapi/v1/interrogate/structured"
ROUTES = {INTERROGATE_PATH: "interrogate", STRUCTURED_PATH: "structured"}
DEFAULT_MAX_QUEUE = 4

log = logging.getLogger("comfyui_clipwan.serve")


@dataclasses.dataclass
class ServiceConfig:
    labels: Optional[Sequence[str]] = None  # the served vocabulary; None = the 36 built-in labels
    labels_name: str = "default"  # names the cache file (<export>/label_cache/<name>.<engine>.npz)
    template: str = DEFAULT_TEMPLATE
    defaults: Defaults = dataclasses.field(default_factory=Defaults)
    max_queue: int = DEFAULT_MAX_QUEUE
    backend: str = "auto"
    max_body_bytes: int = MAX_BODY_BYTES
    cache: bool = True  # write/read the label cache file (False: encode in memory only)

    def __post_init__(self):
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")


@dataclasses.dataclass
class Reply:
    status: int
    payload: dict
    headers: dict = dataclasses.field(default_factory=dict)


class DeviceQueue:
    """A lock for the accelerator plus a bound on how many requests may wait for it."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._device = threading.Lock()
        self._count = threading.Lock()
        self.pending = 0  # running + waiting
        self.peak = 0

    @contextlib.contextmanager
    def turn(self):
        with self._count:
            if self.pending > self.max_waiting:
                raise RequestError(503, f"the accelerator is busy: {self.pending} request(s) in line and at most "
                                        f"{self.max_waiting} may wait; retry shortly", {"Retry-After": "1"})
            self.pending += 1
            self.peak = max(self.peak, self.pending)
        try:
            with self._device:
                yield
        finally:
            with self._count:
                self.pending -= 1


class InterrogationService:
    """``folder_resolver()`` names the export folder (raises FileNotFoundError/ValueError when there is none)."""

    def __init__(self, folder_resolver: Callable[[], str], config: Optional[ServiceConfig] = None):
        self.folder_resolver = folder_resolver
        self.config = config or ServiceConfig()
        self.runtimes = RuntimeCache(backend=self.config.backend)
        self.queue = DeviceQueue(self.config.max_queue)
        self._vocab: dict = {}  # folder → (runtime, Vocabulary, info)
        self._vocab_lock = threading.Lock()

    # --- model + vocabulary --------------------------------------------------------------------------
    def context(self, progress=None) -> tuple:
        """(runtime, vocabulary, info) of the current export; the vocabulary is loaded from its cache file or
        encoded (then cached) on first use. Call inside the device turn (encoding uses the text tower)."""
        try:
            folder = self.folder_resolver()
        except (FileNotFoundError, ValueError) as exc:
            raise RequestError(503, f"no exported CLIP model to interrogate with: {exc}") from None
        runtime = self.runtimes.get(folder)
        with self._vocab_lock:
            entry = self._vocab.get(runtime.folder)
            if entry is None or entry[0] is not runtime:
                labels = list(self.config.labels or DEFAULT_LABELS)
                if self.config.cache:
                    vocab, info = load_or_build(runtime, labels, self.config.template,
                                                name=self.config.labels_name, progress=progress)
                else:
                    t0 = time.perf_counter()
                    vocab = Vocabulary.encode(runtime, labels, self.config.template, progress)
                    info = {"status": "encoded (no cache file)", "count": len(vocab),
                            "seconds": time.perf_counter() - t0}
                log.info("vocabulary: %d labels %s in %.3f s (%s)", len(vocab), info["status"], info["seconds"],
                         info.get("path", "memory"))
                entry = (runtime, vocab, info)
                self._vocab[runtime.folder] = entry
            return entry

    def prepare(self, progress=None) -> dict:
        """Load the model and vocabulary now (the service's start-up), under the device lock."""
        with self.queue.turn():
            runtime, vocab, info = self.context(progress)
        return {"folder": runtime.folder, "backend": runtime.describe(), "vocabulary": info,
                "random_init": runtime.random_init}

    def health(self) -> dict:
        entries = list(self._vocab.values())
        ready = bool(entries)
        out = {"status": "ready" if ready else "starting", "queue": {"pending": self.queue.pending,
                                                                    "max_waiting": self.queue.max_waiting},
               "torch_loaded": "torch" in sys.modules}  # a board user can check the light path held
        if ready:
            runtime, vocab, info = entries[-1]
            out.update(folder=runtime.folder, backend=runtime.describe(), labels=len(vocab),
                       template=vocab.template, random_init=runtime.random_init)
        return out

    # --- requests ------------------------------------------------------------------------------------
    def respond(self, kind: str, body: bytes) -> Reply:
        """Any request body → a reply (never raises): 200, 4xx/503 with ``{"error"}``, or 500."""
        t0 = time.perf_counter()
        try:
            if kind not in ROUTES.values():
                raise RequestError(404, f"no such endpoint; POST {INTERROGATE_PATH} or {STRUCTURED_PATH}")
            if len(body) > self.config.max_body_bytes:
                raise RequestError(413, f"request body is larger than {size_text(self.config.max_body_bytes)}")
            try:
                payload = json.loads(body.decode("utf-8")) if body else None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(400, f"request body is not JSON: {exc}") from None
            parsed = parse_request(payload, self.config.defaults, structured=kind == "structured")
            reply = Reply(200, self._run(kind, parsed))
        except RequestError as exc:
            reply = Reply(exc.status, {"error": exc.message, "detail": exc.message}, dict(exc.headers))
        except Exception as exc:  # never crash the server: report and keep serving
            log.exception("interrogation failed")
            message = f"interrogation failed: {type(exc).__name__}: {exc}"
            reply = Reply(500, {"error": message, "detail": message})
        log.info("%s → %d in %.1f ms", kind, reply.status, (time.perf_counter() - t0) * 1000)
        return reply

    def _run(self, kind: str, parsed: dict) -> dict:
        image = decode_image(parsed["image"])  # CPU, before the device turn
        with self.queue.turn():
            runtime, vocab, _ = self.context()
            pixels = runtime.pixels(image)
            embedding = runtime.image_embeddings(None, pixels=pixels)[0]
            labels = parsed["labels"] or vocab.labels
            table = vocab.embeddings if parsed["labels"] is None else vocab.embeddings_for(runtime, labels)
            categories = {name: vocab.embeddings_for(runtime, values)
                          for name, values in parsed.get("categories", {}).items()}
        caption, tags = rank(embedding, table, labels, parsed["score"] or runtime.score_rule, runtime.logit_scale,
                             parsed["threshold"], parsed["top_k"], runtime.logit_bias)
        backend = runtime.describe()
        if kind == "interrogate":
            return {"caption": caption, "interrogations": [{"tag": t, "score": round(s, 6)} for t, s in tags],
                    "backend": backend}
        results = {name: classify(embedding, categories[name], values, runtime.logit_scale)
                   for name, values in parsed["categories"].items()}
        return {"results": results, "general_tags": [t for t, _ in tags], "backend": backend}
