"""Label vocabularies for interrogation: a label list, its text embeddings, and the cache file that keeps them.

A board interrogating against tens of thousands of labels (ImageNet-21k's names, 20 k+) cannot encode them per
request: at a few ms per label on the NPU that is a minute. They are encoded once with a prompt template
("a photo of a {label}") into ``<export>/label_cache/<list>.<engine>.npz`` beside the model, and loaded in
milliseconds after. The cache records what it was made with — a SHA-256 over the text tower file that ran
(``.axmodel`` or ``.onnx`` + its external data), the CPU text projection and the tokenizer vocabulary — plus the
template; a cache made with anything else is not used (it is updated: rows of labels still in the list are
kept only when the model matches, so a changed model re-encodes everything). Hashing a 250 MB text model takes
seconds on a board, so the cache also records each file's size and mtime: while they are unchanged the recorded
hash stands, and any copy or rebuild (new mtime) makes the check hash the contents again. Labels a request names that
are not in the cache are encoded on the fly (and remembered by the runtime's bounded prompt cache).

numpy only (no torch): this is on the serving path.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from .runtime import ClipRuntime, fill_template

CACHE_FORMAT = "comfyui-clipwan/label-cache"
CACHE_FOLDER = "label_cache"
DEFAULT_TEMPLATE = "a photo of a {label}"
ENCODE_CHUNK = 256  # labels per progress report / per write of the growing cache

# The built-in label list (36 everyday subjects and styles): the vocabulary when none is given.
DEFAULT_LABELS = (
    "person", "man", "woman", "child", "dog", "cat", "bird", "horse", "car", "bicycle", "airplane", "boat",
    "train", "building", "city street", "road", "mountain", "beach", "sea", "forest", "flower", "tree", "sky",
    "night", "sunset", "snow", "food", "indoor room", "portrait", "landscape", "drawing", "painting",
    "anime illustration", "3d render", "text", "black and white photo",
)


def read_label_file(path: str) -> list:
    """One label per line; blank lines and ``#`` comments skipped; duplicates dropped (first kept)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: '{path}' (give a text file, one label per line)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"label file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                         f"UTF-8, one label per line") from None
    labels = list(dict.fromkeys(s for s in (line.strip() for line in lines) if s and not s.startswith("#")))
    if not labels:
        raise ValueError(f"label file '{path}' holds no labels (one per line; '#' starts a comment)")
    return labels


IMAGENET21K = "imagenet-21k"  # a named vocabulary: ImageNet-21k's class names from timm's package data


def imagenet21k_labels() -> list:
    """ImageNet-21k's (fall 2011, 21,843 synsets) class names: the first lemma of each synset, de-duplicated
    (~20 k labels, the list board users interrogate with). Read from timm's package data files — located, not
    imported (importing timm imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    folder = next((os.path.join(p, "data", "_info") for p in (spec.submodule_search_locations or [])), None) \
        if spec else None
    synsets = os.path.join(folder or "", "imagenet21k_goog_synsets.txt")
    lemmas = os.path.join(folder or "", "imagenet_synset_to_lemma.txt")
    if not (os.path.isfile(synsets) and os.path.isfile(lemmas)):
        raise FileNotFoundError(f"the {IMAGENET21K} vocabulary reads timm's class-name files: pip install timm "
                                f"(only its data files are read), or give --labels a text file, one label per line")
    with open(lemmas, encoding="utf-8") as f:
        names = dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
    with open(synsets, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    return list(dict.fromkeys(names[i].split(",")[0].strip() for i in ids if i in names))


def resolve_labels(spec: Optional[str]) -> tuple:
    """``--labels`` value → (labels, cache name): None = built-in, ``imagenet-21k``, or a text file."""
    if spec is None or spec == "default":
        return list(DEFAULT_LABELS), "default"
    if spec.lower().replace("_", "-") in (IMAGENET21K, "imagenet21k"):
        return imagenet21k_labels(), "imagenet21k"
    return read_label_file(spec), os.path.splitext(os.path.basename(spec))[0]


_FINGERPRINTS: dict = {}
_fingerprint_lock = threading.Lock()


def _file_digest(path: str, digest) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def model_files(runtime: ClipRuntime) -> list:
    """The files text embeddings depend on: the text model that runs (+ external data), the tokenizer files."""
    session = runtime.parts["text"]
    files = [session.path]
    info = runtime.manifest["parts"]["text"]
    if session.backend == "onnxruntime" and info.get("external_data"):
        files.append(os.path.join(runtime.folder, info["external_data"]))
    files.extend(runtime.tokenizer.files[name] for name in sorted(runtime.tokenizer.files))
    return files


def file_identity(runtime: ClipRuntime) -> list:
    """[name, size, mtime_ns] per model file: when unchanged since a cache was written, the cache's recorded
    hash stands (copying or rebuilding a model changes its mtime, and then the contents are hashed again)."""
    return [[os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in model_files(runtime)]


def model_fingerprint(runtime: ClipRuntime) -> str:
    """SHA-256 over what text embeddings depend on: the text model file that runs (and its external data),
    the tokenizer files, the text head (projection, bias). Memoised per file identity (path, size, mtime)."""
    files = model_files(runtime)
    key = tuple((p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in files)
    with _fingerprint_lock:
        if key in _FINGERPRINTS:
            return _FINGERPRINTS[key]
    digest = hashlib.sha256()
    for path in files:
        _file_digest(path, digest)
    for name in sorted(h for h in runtime._heads if h.startswith("text_")):  # projection (+ SigLIP's bias)
        digest.update(np.ascontiguousarray(runtime._heads[name], np.float32).tobytes())
    value = digest.hexdigest()
    with _fingerprint_lock:
        _FINGERPRINTS[key] = value
    return value


def cache_path(runtime: ClipRuntime, name: str) -> str:
    """``<export>/label_cache/<name>.<engine>.npz``: one cache per label list and engine (an ``.axmodel``'s
    quantised embeddings differ from the ``.onnx``'s)."""
    stem = os.path.splitext(os.path.basename(name))[0] or "labels"
    return os.path.join(runtime.folder, CACHE_FOLDER, f"{stem}.{runtime.backends['text']}.npz")


class Vocabulary:
    """Labels + their normalised prompt embeddings [N, D] (float32), as made by one text model."""

    def __init__(self, labels: Sequence[str], embeddings: np.ndarray, template: str, fingerprint: str,
                 files: Optional[list] = None):
        self.files = files  # file_identity() of the model when the cache was made
        self.labels = list(labels)
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.template = template
        self.fingerprint = fingerprint
        self.index = {label: i for i, label in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def encode(cls, runtime: ClipRuntime, labels: Sequence[str], template: str = DEFAULT_TEMPLATE,
               progress: Optional[Callable[[int, int], None]] = None, reuse: Optional["Vocabulary"] = None
               ) -> "Vocabulary":
        """Encode every label (``reuse``: rows of a vocabulary made by the same model and template are kept)."""
        fingerprint = model_fingerprint(runtime)
        labels = list(dict.fromkeys(labels))
        rows = {}
        if reuse is not None and reuse.fingerprint == fingerprint and reuse.template == template:
            rows = {label: reuse.embeddings[reuse.index[label]] for label in labels if label in reuse.index}
        todo = [label for label in labels if label not in rows]
        for start in range(0, len(todo), ENCODE_CHUNK):
            chunk = todo[start:start + ENCODE_CHUNK]
            for label, emb in zip(chunk, runtime.text_embeddings(fill_template(template, chunk))):
                rows[label] = emb
            if progress:
                progress(min(start + ENCODE_CHUNK, len(todo)), len(todo))
        # the embedding size: the projection's rows, or the text graph's output when the head is an identity
        # (Jina-CLIP without a projection)
        proj = runtime._heads.get("text_projection")
        dim = proj.shape[0] if proj is not None else runtime.manifest["parts"]["text"]["output"]["shape"][-1]
        table = np.stack([rows[label] for label in labels]) if labels else np.zeros((0, dim), np.float32)
        return cls(labels, table, template, fingerprint, file_identity(runtime))

    def save(self, path: str) -> str:
        """One ``.npz`` (no pickles): embeddings, labels, and the meta the check needs. Written atomically."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"format": CACHE_FORMAT, "version": 1, "template": self.template, "fingerprint": self.fingerprint,
                "count": len(self.labels), "dim": int(self.embeddings.shape[1]), "files": self.files}
        tmp = f"{path}.{os.getpid()}.part"
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=self.embeddings, labels=np.array(self.labels, dtype=str),
                     meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        """Read a cache file (no check against a model: see ``load_or_build``)."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"'{path}' is not a comfyui-clipwan label cache")
            return cls(data["labels"].tolist(), data["embeddings"], meta["template"], meta["fingerprint"],
                       meta.get("files"))

    def embeddings_for(self, runtime: ClipRuntime, labels: Sequence[str], template: Optional[str] = None
                       ) -> np.ndarray:
        """[K, D] for ``labels``: cached rows where the label (and template) is cached, the rest encoded now."""
        template = template or self.template
        if template == self.template:
            missing = [label for label in labels if label not in self.index]
        else:
            missing = list(labels)
        fresh = dict(zip(missing, runtime.prompt_embeddings(fill_template(template, missing)))) if missing else {}
        return np.stack([fresh[label] if label in fresh else self.embeddings[self.index[label]] for label in labels])


def load_or_build(runtime: ClipRuntime, labels: Sequence[str], template: str = DEFAULT_TEMPLATE,
                  path: Optional[str] = None, name: str = "labels",
                  progress: Optional[Callable[[int, int], None]] = None) -> tuple:
    """The vocabulary of ``labels`` for this runtime: the cache file when it matches (model fingerprint,
    template, labels), else encoded (reusing what still matches) and written. Returns (vocabulary, info)."""
    path = path or cache_path(runtime, name)
    t0 = time.perf_counter()
    labels = list(dict.fromkeys(labels))
    old, why = None, "no cache file"
    if os.path.isfile(path):
        try:
            old = Vocabulary.load(path)
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
            why = f"unreadable cache ({type(exc).__name__}: {exc})"
        else:
            # same model files as when written (name, size, mtime): the recorded hash stands; else hash them
            fingerprint = old.fingerprint if old.files == file_identity(runtime) else model_fingerprint(runtime)
            if old.fingerprint != fingerprint:
                why = "made with another model"
            elif old.template != template:
                why = f"made with template {old.template!r}"
            elif old.labels != labels:
                why = "label list changed"
            else:
                return old, {"status": "loaded", "path": path, "count": len(old),
                             "seconds": time.perf_counter() - t0}
    vocab = Vocabulary.encode(runtime, labels, template, progress, reuse=old)
    status = f"encoded ({why})"
    try:
        vocab.save(path)
    except OSError as exc:  # a read-only export folder: serve from memory, say so
        status += f"; NOT cached: cannot write '{path}' ({exc.strerror or exc})"
    return vocab, {"status": status, "path": path, "count": len(vocab), "seconds": time.perf_counter() - t0}
