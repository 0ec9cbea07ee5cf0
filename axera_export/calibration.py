"""Pulsar2 calibration sets: a ``.tar`` of ``.npy`` tensors, one per sample, exactly as the graph takes them.

Images go through ``clip_vision.preprocess_images`` — the same function the runtime uses — so quantisation
ranges are measured on the very tensors the NPU will see. Prompts are tokenized to int32 [1,77] (the text
graph's input dtype; Pulsar2 ``src_dtype S32``). Pulsar2 reads these with ``calibration_format: Numpy``.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..clip_vision import preprocess_images
from .tokenizer import tokenize



def load_image_folder(folder: str, limit: Optional[int] = None, note=None) -> list:
    """Images of a folder (sorted by name) as ComfyUI IMAGE tensors [1,H,W,3] in [0,1] (the pack's one image
    reader: 16-bit, palette, CMYK, EXIF orientation; a damaged file is an error naming it)."""
    from ..images import read_image_folder

    return read_image_folder(folder, limit, note=note, what="calibration image")


def synthetic_images(count: int = 8, size: int = 256, seed: int = 0) -> list:
    """Smooth random colour fields — a stand-in ONLY when the user gave no images (quantisation suffers)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 4, 4, generator=g)
        field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        out.append(field.permute(0, 2, 3, 1).contiguous())
    return out


def _write_tar(path: str, arrays: Iterable[np.ndarray]) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    count = 0
    tmp = path + ".part"
    with tarfile.open(tmp, "w") as tar:
        for array in arrays:
            buf = io.BytesIO()
            np.save(buf, array)
            info = tarfile.TarInfo(f"{count:05d}.npy")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
            count += 1
    os.replace(tmp, path)  # never leave a half-written tar under the final name
    return count


def image_calibration_tar(images: Sequence[torch.Tensor], config, path: str, crop="center") -> dict:
    """``images``: IMAGE tensors [B,H,W,C] (any sizes); each sample is written as float32 [1,3,S,S]."""
    def samples():
        for batch in images:
            pixels = preprocess_images(batch, config, crop)
            for i in range(pixels.shape[0]):
                yield pixels[i:i + 1].numpy().astype(np.float32)

    count = _write_tar(path, samples())
    if count == 0:
        raise ValueError("no calibration images: give at least one image")
    return {"path": path, "count": count, "shape": [1, 3, config.image_size, config.image_size],
            "dtype": "float32", "crop": crop}


def text_calibration_tar(prompts: Sequence[str], path: str, context_length: int = 77, tokenizer=None) -> dict:
    """``tokenizer``: texts → int32 ids [N, context_length] (the family's; default CLIP's BPE)."""
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise ValueError("no calibration prompts: give at least one non-empty prompt")
    ids = tokenizer(prompts) if tokenizer is not None else tokenize(prompts, context_length)
    count = _write_tar(path, (ids[i:i + 1] for i in range(len(ids))))
    return {"path": path, "count": count, "shape": [1, context_length], "dtype": "int32"}


def read_calibration_tar(path: str) -> list:
    """The arrays of a calibration tar, in order (for checks and tests)."""
    out = []
    with tarfile.open(path) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            out.append(np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False))
    return out
