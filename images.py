"""The one image-file reader of the pack (CLI ``encode``/``sample``, the interrogate route, calibration folders).

Reads what people actually have, the way ComfyUI's Load Image shows it:

* EXIF orientation applied (a portrait phone photo stays upright);
* 16-bit PNG/TIFF scaled by 65535 (not clipped at 255, which read them almost white), 32-bit float kept;
* palette, CMYK, YCbCr, LAB, 1-bit and grayscale converted to RGB; alpha (LA/RGBA/PA) dropped, as Load Image
  does (its alpha becomes a separate mask there);
* animated GIF/WebP/APNG: the first frame, or every frame with ``frames="all"``; which one is said through
  ``note``.

The pixel count is checked from the header before anything is decoded, so a small file that declares a huge
image (a decompression bomb) costs nothing. Every failure is an ``ImageReadError`` (a ``ValueError``; a
missing file is also a ``FileNotFoundError``) that names the file, the problem and the fix.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from typing import Callable, Optional, Union

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000  # files on disk: 100 megapixels (10000×10000); PIL's own bomb limit is 179 M
FRAME_MODES = ("first", "all")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image that cannot be used. ``kind``: missing | folder | not_image | truncated | too_large | frames."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    pass


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


def _to_float_rgb(frame) -> np.ndarray:
    """One PIL frame (any mode) → float32 [H,W,3] in [0,1]."""
    mode = frame.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(frame, dtype=np.float32)
        # "I" holds 16-bit PNGs (0..65535) and 32-bit TIFFs; both are scaled by their full range
        scale = 65535.0 if mode != "I" or array.max(initial=0) <= 65535 else 4294967295.0
        array = np.clip(array / scale, 0.0, 1.0)
        return np.repeat(array[:, :, None], 3, axis=2)
    if mode == "F":
        array = np.nan_to_num(np.asarray(frame, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.repeat(np.clip(array, 0.0, 1.0)[:, :, None], 3, axis=2)
    if mode != "RGB":
        frame = frame.convert("RGB")  # P/PA/LA/RGBA/CMYK/YCbCr/LAB/1/L: colours kept, alpha dropped
    return np.asarray(frame, dtype=np.float32) / 255.0


def read_image(source: Union[str, os.PathLike, bytes], name: Optional[str] = None, frames: str = "first",
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               note: Optional[Callable[[str], None]] = None):
    """An image file (path) or its bytes → ComfyUI IMAGE ``[F,H,W,3]`` float32 torch tensor in [0,1] (F = 1
    unless ``frames="all"`` on an animated image). ``name`` is how messages call it (default: the quoted path)."""
    import torch  # here, not at module level: read_image_array serves boards without torch

    return torch.from_numpy(read_image_array(source, name, frames, max_pixels, note))


def read_image_array(source: Union[str, os.PathLike, bytes], name: Optional[str] = None, frames: str = "first",
                     max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                     note: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """``read_image`` as a numpy array ``[F,H,W,3]`` float32 (the torch-free serving path)."""
    from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

    if frames not in FRAME_MODES:
        raise ImageReadError(f"frames must be one of {FRAME_MODES}, got {frames!r}", "frames")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "'<in memory>'"
        opener = lambda: io.BytesIO(bytes(source))  # noqa: E731
    else:
        path = os.fspath(source)
        label = name or f"'{path}'"
        if os.path.isdir(path):
            raise ImageReadError(f"image {label} is a folder, not an image file: give the image files inside it",
                                 "folder")
        if not os.path.exists(path):
            raise ImageNotFoundError(f"image not found: {label}", "missing")
        opener = lambda: path  # noqa: E731
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(opener()) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageReadError(
                        f"image {label} is {width}×{height} ({_megapixels(width * height)}), more than the limit of "
                        f"{_megapixels(max_pixels)}; it was not decoded. Downscale it (CLIP sees 224-336 px).",
                        "too_large")
                total = getattr(im, "n_frames", 1)
                arrays = []  # the iterator seeks one image object: convert each frame before the next
                for frame in (ImageSequence.Iterator(im) if frames == "all" else [im]):
                    arrays.append(_to_float_rgb(ImageOps.exif_transpose(frame) or frame))
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # raised by Image.open itself, before we see the size
        counts = [int(n) for n in re.findall(r"\((\d+) pixels\)|of (\d+) pixels", str(exc)) for n in n if n]
        declared = f"{_megapixels(counts[0])}, " if counts else ""
        raise ImageReadError(f"image {label} declares {declared}more than PIL's safety limit"
                             f"{' of ' + _megapixels(counts[1]) if len(counts) > 1 else ''}; it was not decoded. "
                             f"Downscale it (CLIP sees 224-336 px).", "too_large") from None
    except UnidentifiedImageError:
        head = bytes(source[:12]) if isinstance(source, (bytes, bytearray, memoryview)) else _head(path)
        raise ImageReadError(f"{label} is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP, TIFF); it starts "
                             f"with {head!r}. Give an image file.", "not_image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageReadError(f"image {label} is truncated or damaged ({type(exc).__name__}: {exc}); save or "
                             f"download it again.", "truncated") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ImageReadError(f"image {label}: its {len(arrays)} frames have different sizes {sorted(shapes)}; "
                             f"read it with frames='first'", "frames")
    if total > 1 and note is not None:
        used = f"all {len(arrays)} frames" if frames == "all" else "the first frame"
        note(f"image {label} is animated ({total} frames): using {used}")
    return np.stack(arrays)


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(12)


def read_image_folder(folder: str, limit: Optional[int] = None, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                      note: Optional[Callable[[str], None]] = None, what: str = "image") -> list:
    """Every image of a folder (sorted by name, first frames) as IMAGE tensors [1,H,W,3]. Files without an image
    extension are skipped (and said); an image file that cannot be read is an error naming it."""
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise ImageReadError(f"{what} folder '{folder}' is a file, not a folder of images", "folder")
        raise ImageNotFoundError(f"{what} folder not found: '{folder}'", "missing")
    names = sorted(os.listdir(folder))
    chosen = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
              and os.path.isfile(os.path.join(folder, n))]
    skipped = [n for n in names if n not in chosen]
    if not chosen:
        raise ImageReadError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'" +
                             (f" (found only: {', '.join(skipped[:5])})" if skipped else ""), "missing")
    if skipped and note is not None:
        note(f"skipped {len(skipped)} non-image entr{'y' if len(skipped) == 1 else 'ies'} in '{folder}': "
             f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    return [read_image(os.path.join(folder, n), max_pixels=max_pixels) for n in chosen[:limit]]
