"""Reading checkpoint files tensor by tensor, safely and without materialising what we don't need.

* ``.safetensors``/``.sft``: our own reader of the (simple, documented) format over a private memory map — the
  JSON header is checked first, so a truncated file is refused before anything is allocated; tensors are
  zero-copy views of the map and text towers are never touched.
* anything else (``.pth``/``.pt``/``.bin``/``.ckpt``): ``torch.load(weights_only=True, mmap=True)``; pickled code
  is refused by torch's weights-only unpickler, and tensors stay on disk until read.

Both readers hand out views of mapped file pages; ``release`` gives the pages of a consumed tensor back to the
kernel (MADV_DONTNEED), so loading costs about one model of RSS (the destination), not two, and no heap churn.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import pickle
import struct
import sys
import warnings
from typing import Mapping, Optional

import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
# Common wrappers around a state dict in training checkpoints.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "state_dict_ema")


class SafetensorsReader:
    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"'{path}' is not a safetensors file: it is only {size} bytes long")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8 or header_len > 100_000_000:
                raise ValueError(f"'{path}' is truncated or not a safetensors file: its header claims "
                                 f"{header_len} bytes but the file has {size}. Download it again.")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"'{path}' is not a safetensors file (its header is not JSON: {exc})") from None
            if not isinstance(header, dict):
                raise ValueError(f"'{path}' is not a safetensors file (its header is not a JSON object)")
            self.metadata = header.pop("__metadata__", None) or {}
            self._base = 8 + header_len
            self._entries = header
            end = max((e["data_offsets"][1] for e in header.values()), default=0)
            if self._base + end > size:
                raise ValueError(f"'{path}' is truncated: its tensors need {self._base + end} bytes but the file "
                                 f"has {size}. Download it again.")
            # ACCESS_COPY: a private, writable (copy-on-write) map, so torch.frombuffer accepts it; never written.
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        self.keys = list(header.keys())

    def shape(self, key: str) -> tuple:
        return tuple(self._entries[key]["shape"])

    def _span(self, key: str):
        start, stop = self._entries[key]["data_offsets"]
        return self._base + start, stop - start

    def get(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"'{self.path}': tensor {key!r} has unsupported dtype {entry['dtype']}")
        offset, nbytes = self._span(key)
        count = math.prod(entry["shape"])
        if count * torch.empty((), dtype=dtype).element_size() != nbytes:
            raise ValueError(f"'{self.path}': tensor {key!r} has {nbytes} bytes for shape {entry['shape']}")
        if count == 0:
            return torch.empty(entry["shape"], dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset)
        return flat.view(entry["shape"])

    def release(self, key: str) -> None:
        offset, nbytes = self._span(key)
        page = mmap.PAGESIZE
        first, last = -(-offset // page) * page, (offset + nbytes) // page * page
        if last > first and hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)


def _unwrap(obj, path: str) -> Mapping:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


class TorchReader:
    def __init__(self, path: str):
        self.path = path
        self.metadata = {}
        self._mapped = True
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):  # legacy (non-zip) files cannot be mapped; still weights-only
                    raise
                self._mapped = False
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()
            detail = next((line for line in first if "Unsupported" in line or "global" in line.lower()),
                          first[0] if first else "")
            raise ValueError(
                f"refused to load '{path}': it contains pickled Python objects other than tensors, which could run "
                f"code ({detail.strip()}). Only weights-only checkpoints are loaded; use a .safetensors file."
            ) from None
        except (RuntimeError, EOFError, OSError, struct.error, KeyError) as exc:
            raise ValueError(f"'{path}' cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
                             f"the file is truncated or not a checkpoint. Download it again.") from None
        self._sd = _unwrap(obj, path)
        self.keys = [k for k, v in self._sd.items() if isinstance(v, torch.Tensor)]

    def shape(self, key: str) -> tuple:
        return tuple(self._sd[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key]

    def release(self, key: str) -> None:
        if self._mapped:  # on anonymous memory MADV_DONTNEED would zero the pages: only for file maps
            _drop_pages(self._sd.get(key))


_libc = None


def _drop_pages(tensor: Optional[torch.Tensor]) -> None:
    """Tell the kernel we are done with the mmap pages of a consumed tensor (Linux; best effort).

    The pages are clean (file-backed), so MADV_DONTNEED only frees memory; reading again re-reads the file.
    """
    global _libc
    if tensor is None or not sys.platform.startswith("linux") or tensor.device.type != "cpu":
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        page = os.sysconf("SC_PAGE_SIZE")
        start = tensor.data_ptr()
        stop = start + tensor.numel() * tensor.element_size()
        first = -(-start // page) * page  # only whole pages inside this tensor
        last = stop // page * page
        if last > first:
            _libc.madvise(first, last - first, 4)  # MADV_DONTNEED
    except Exception:
        pass


def open_checkpoint(path: str):
    """A reader with ``keys``, ``shape(key)``, ``get(key)``, ``release(key)``, ``metadata``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP vision file not found: '{path}'")
    if path.lower().endswith(SAFETENSORS_EXTENSIONS):
        return SafetensorsReader(path)
    return TorchReader(path)


def config_overrides(path: str, reader, width: int) -> dict:
    """Hyper-parameters that shapes cannot tell (activation, heads), from metadata shipped with the weights.

    Sources, later wins: an HF ``config.json`` beside the file whose hidden size matches the weights, then the
    safetensors metadata (a ``config`` JSON string, or plain ``hidden_act``/``act``… entries).
    """
    overrides: dict = {}
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(beside):
        try:
            with open(beside) as f:
                cfg = json.load(f)
            vision = cfg.get("vision_config", cfg) if isinstance(cfg, dict) else {}
            if isinstance(vision, dict) and vision.get("hidden_size") == width:
                overrides.update(vision)
        except (OSError, ValueError):
            pass
    meta = dict(reader.metadata or {})
    if "config" in meta:
        try:
            cfg = json.loads(meta["config"])
            if isinstance(cfg, dict):
                overrides.update(cfg.get("vision_config", cfg))
        except ValueError:
            pass
    for key in ("hidden_act", "act", "num_attention_heads", "heads", "layer_norm_eps", "eps"):
        if key in meta:
            value = meta[key]
            if key in ("num_attention_heads", "heads"):
                value = int(value)
            elif key in ("layer_norm_eps", "eps"):
                value = float(value)
            overrides[key] = value
    return overrides
