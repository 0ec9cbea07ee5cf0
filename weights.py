"""The one weights-file reader of the pack: CLIP vision, CLIP text and Wan all read their files here.

* The format is told from the file's first bytes, not its name: safetensors (8-byte header length + JSON),
  a zip-format PyTorch checkpoint, or a legacy (pre-1.6) PyTorch pickle. Anything else is "not a weights file".
* ``.safetensors``: our own reader of the (simple, documented) format over a private memory map. The JSON
  header is checked first, so a truncated file is refused before anything is allocated; tensors are zero-copy
  views of the map; ``release`` gives a consumed tensor's pages back to the kernel.
* PyTorch files: ``torch.load(weights_only=True, mmap=True)`` (legacy pickles cannot be mapped and are read
  whole, still weights-only). Pickled code is never run: torch's weights-only unpickler refuses it.
* Every tensor handed out is checked for NaN/Inf with one float32 reduction (no temporary of its size), so a
  corrupt file is refused at load naming the tensor, not discovered as a NaN latent minutes later.

Why a reader of our own and not the ``safetensors`` library (``comfyui-clipwan bench weights``, a 256 MB bf16
file, every reader running the same NaN/Inf check, 2-core CPU): the library reads as fast or faster (as stored
0.5-0.6x our time) and, with ``FilePages`` releasing each source tensor after its cast, holds the same peak RSS
(without it 1.48x ours). What it cannot do is the header check below: it refuses a damaged file with
"incomplete metadata, file not fully covered" and no file name, where this reader names the file, the tensor,
what is wrong and the fix before anything is mapped (the 11 safetensors cases of tests/test_catalogue.py).
That check is the reason this reader exists; the tensors themselves are plain views of the map.

Every problem is a ``WeightsFileError`` (a ``ValueError``) whose message names the file, what is wrong and
what to do; a missing file is a ``FileNotFoundError``.
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
import zipfile
from typing import Iterator, Mapping, Optional

import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
TORCH_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin")
WEIGHTS_EXTENSIONS = SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS

# Entries training checkpoints wrap a state dict in, in order of preference: EMA weights first (Self-Forcing's
# demo and inference use ``generator_ema``), then the plain model.
WRAPPER_KEYS = ("generator_ema", "state_dict_ema", "generator", "model", "state_dict", "model_state_dict",
                "module", "net")

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_MAX_HEADER = 100_000_000  # the safetensors spec's own limit
_CONVERT = "Convert it to .safetensors (in a trusted Python: safetensors.torch.save_file(state_dict, path))."


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message names the file, the problem and the fix."""


def check_file(path, what: str = "weights") -> str:
    """``path`` as a string, or a clear error when it is missing, a folder or empty."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WeightsFileError(f"{what} path '{path}' is a folder, not a file: give the weights file inside it "
                               f"({', '.join(WEIGHTS_EXTENSIONS)}).")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: '{path}'")
    if os.path.getsize(path) == 0:
        raise WeightsFileError(f"'{path}' is empty (0 bytes): the download or copy did not finish. "
                               f"Download the {what} file again.")
    return path


def sniff_format(path: str) -> str:
    """``"safetensors"``, ``"torch-zip"``, ``"torch-legacy"``, or a ``WeightsFileError`` naming what it is not."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"GGUF":
        raise WeightsFileError(f"'{path}' is a GGUF (llama.cpp-style quantised) file, which this loader does not "
                               f"read: use the .safetensors (fp16/bf16/fp8) release of the same model.")
    raise WeightsFileError(f"'{path}' is not a weights file: it is neither safetensors nor a PyTorch checkpoint "
                           f"(it starts with bytes {head[:8].hex(' ')}). Check that you picked the right file "
                           f"and that the download is complete (an HTML error page saved under the model's name "
                           f"looks like this).")


def check_finite(tensor: torch.Tensor, key: str, source: str) -> torch.Tensor:
    """Refuse a float tensor holding NaN or Inf (one reduction pass; counted only when it fails)."""
    if not tensor.is_floating_point() or tensor.numel() == 0 or tensor.device.type == "meta":
        return tensor
    flat = tensor.reshape(-1)
    chunk = 1 << 24
    for start in range(0, flat.numel(), chunk):  # fp8 has no sum kernel: chunks through float32
        part = flat[start:start + chunk]
        total = part.sum(dtype=torch.float32) if part.dtype.itemsize > 1 else part.float().sum()
        if not torch.isfinite(total):
            bad = int((~torch.isfinite(flat.float())).sum()) if flat.numel() < (1 << 26) else None
            count = f"{bad} of {flat.numel()}" if bad is not None else f"some of {flat.numel()}"
            raise WeightsFileError(f"{source}: tensor '{key}' contains NaN or Inf values ({count} entries); the "
                                   f"file is corrupt or was saved from a diverged training run. Use another copy "
                                   f"of the weights.")
    return tensor


class SafetensorsReader:
    """Tensors of a ``.safetensors`` file as views of a private memory map."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsFileError(f"'{path}' is not a safetensors file: it is only {size} bytes long. "
                                       f"Download it again.")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8 or header_len > _MAX_HEADER:
                raise WeightsFileError(f"'{path}' is truncated or not a safetensors file: its header claims "
                                       f"{header_len} bytes but the file has {size}. Download it again.")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise WeightsFileError(f"'{path}' is not a safetensors file (its header is not JSON: {exc}). "
                                       f"Download it again.") from None
            if not isinstance(header, dict):
                raise WeightsFileError(f"'{path}' is not a safetensors file (its header is not a JSON object)")
            metadata = header.pop("__metadata__", None)
            self.metadata = metadata if isinstance(metadata, dict) else {}
            self._base = 8 + header_len
            self._entries = {key: self._check_entry(key, entry, size) for key, entry in header.items()}
            end = max((stop for *_, stop in self._entries.values()), default=self._base)
            if end > size:
                raise WeightsFileError(f"'{path}' is truncated: its tensors need {end} bytes but the file has "
                                       f"{size}. Download it again.")
            # ACCESS_COPY: a private, writable (copy-on-write) map, so torch.frombuffer accepts it; never written.
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.keys = list(self._entries)

    def _check_entry(self, key: str, entry, size: int) -> tuple:
        """(dtype, shape, start, stop) of a header entry, or an error naming the tensor and what is wrong."""
        where = f"'{self.path}': header entry for tensor {key!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise WeightsFileError(f"{where} is malformed (needs dtype, shape and data_offsets, got "
                                   f"{json.dumps(entry)[:120]}); the file is damaged. Download it again.")
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise WeightsFileError(f"{where} has dtype {entry['dtype']!r}, which this loader does not read "
                                   f"(supported: {', '.join(_ST_DTYPES)}). Convert the file to fp16/bf16/fp32.")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
            raise WeightsFileError(f"{where} has an invalid shape {shape!r} or data_offsets {offsets!r}; the file "
                                   f"is damaged. Download it again.")
        start, stop = offsets
        if math.prod(shape) * dtype.itemsize != stop - start:
            raise WeightsFileError(f"{where} declares shape {shape} ({entry['dtype']}) but {stop - start} bytes; "
                                   f"the file is damaged. Download it again.")
        return dtype, tuple(shape), self._base + start, self._base + stop

    def shape(self, key: str) -> tuple:
        return self._entries[key][1]

    def get(self, key: str) -> torch.Tensor:
        dtype, shape, start, stop = self._entries[key]
        if start == stop:
            return torch.empty(shape, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = torch.frombuffer(self._map, dtype=dtype, count=math.prod(shape), offset=start)
        return check_finite(flat.view(shape), key, f"'{self.path}'")

    def release(self, key: str) -> None:
        _, _, start, stop = self._entries[key]
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, stop // page * page
        if last > first and hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def items(self) -> Iterator:
        for key in self.keys:
            yield key, self.get(key)


def _torch_load(path: str, fmt: str):
    """``torch.load`` weights-only (mapped when the format allows), every failure turned into a clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines()
        detail = next((line.strip() for line in lines if "Unsupported" in line or "GLOBAL" in line), "")
        if fmt == "torch-zip" and not detail:
            detail = lines[0].strip() if lines else ""
        if detail:
            raise WeightsFileError(
                f"refused to load '{path}': it contains pickled Python objects besides tensors ({detail}), which "
                f"could run code when loaded, so it is not loaded. {_CONVERT}") from None
        raise WeightsFileError(f"'{path}' is not a weights file: it starts like a Python pickle but is not a "
                               f"PyTorch checkpoint torch can read. Download it again.") from None
    except (RuntimeError, EOFError, OSError, struct.error, KeyError, zipfile.BadZipFile, ValueError,
            IndexError, TypeError, AttributeError, MemoryError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "resize storage" in text or "record size" in text or isinstance(exc, MemoryError):
            why = "a tensor declares more data than the file holds"
        else:
            why = "torch cannot read it"
        raise WeightsFileError(f"'{path}' is corrupt or truncated: {why} ({type(exc).__name__}: {text[:200]}). "
                               f"Download it again.") from None


def _walk_tensors(obj, prefix: str = "", depth: int = 0) -> Iterator:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping) and depth < 4:
        for k, v in obj.items():
            yield from _walk_tensors(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)


def read_weights(path, what: str = "weights"):
    """The whole contents of a weights file: a flat tensor dict (safetensors: zero-copy mapped views), or
    whatever tensor dicts a PyTorch checkpoint nests (``generator_ema``, ``state_dict`` ...). All tensors are
    checked finite."""
    path = check_file(path, what)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        reader = SafetensorsReader(path)
        tensors = {}
        for key in reader.keys:
            tensors[key] = reader.get(key)  # checked finite ...
            reader.release(key)  # ... and its pages handed back: reading ahead must not cost a model of RSS
        return tensors
    obj = _torch_load(path, fmt)
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"'{path}' holds a {type(obj).__name__}, not a dict of tensors: it is not a "
                               f"state dict. Save model.state_dict(), not the model.")
    for key, tensor in _walk_tensors(obj):
        check_finite(tensor, key, f"'{path}'")
        if fmt == "torch-zip":  # mapped from the file (clean pages); legacy files live in anonymous memory
            _drop_pages(tensor)
    return obj


def unwrap(obj, path: str) -> Mapping:
    """The tensor dict inside common training wrappers (see ``WRAPPER_KEYS``), up to three levels deep."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsFileError(f"'{path}' holds no tensors at its top level or under {', '.join(WRAPPER_KEYS)} "
                               f"(found {found}); it is not a model state dict.")
    return obj


class TorchReader:
    """Tensors of a PyTorch checkpoint (wrappers removed); mapped from disk for zip-format files."""

    def __init__(self, path: str, fmt: str):
        self.path = path
        self.metadata: dict = {}
        self._mapped = fmt == "torch-zip"
        self._sd = unwrap(_torch_load(path, fmt), path)
        self.keys = [k for k, v in self._sd.items() if isinstance(v, torch.Tensor)]

    def shape(self, key: str) -> tuple:
        return tuple(self._sd[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return check_finite(self._sd[key], key, f"'{self.path}'")

    def release(self, key: str) -> None:
        if self._mapped:  # on anonymous memory MADV_DONTNEED would zero the pages: only for file maps
            _drop_pages(self._sd.get(key))

    def items(self) -> Iterator:
        for key in self.keys:
            yield key, self.get(key)


def open_weights(path, what: str = "weights"):
    """A flat reader with ``keys``, ``shape(key)``, ``get(key)`` (checked finite), ``release(key)``,
    ``metadata`` and ``items()``; PyTorch wrappers (``state_dict``, ``model`` ...) removed."""
    path = check_file(path, what)
    fmt = sniff_format(path)
    return SafetensorsReader(path) if fmt == "safetensors" else TorchReader(path, fmt)


class FilePages:
    """Gives back the page-cache pages of consumed tensors that are views of a file mapping (a safetensors map
    or a mapped ``torch.load``), e.g. each source tensor right after casting it to another dtype, so a load with
    a dtype change holds about one model, not two.

    Build it while the tensors are alive (it snapshots the file-backed ranges of ``/proc/self/maps``); a live
    tensor keeps its mapping, so a range seen as file-backed stays so. Anonymous memory is never touched
    (MADV_DONTNEED would zero it). Clean file pages are simply re-read if used again.
    """

    def __init__(self):
        self._maps = []
        if not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].startswith("/") and not parts[5].startswith("/dev/"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self._maps.append((lo, hi))
        except OSError:
            self._maps = []

    def release(self, tensor) -> bool:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or tensor.numel() == 0:
            return False
        start = tensor.data_ptr()
        stop = start + tensor.numel() * tensor.element_size()
        if any(lo <= start and stop <= hi for lo, hi in self._maps):
            _drop_pages(tensor)
            return True
        return False


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
