"""Append frames to a video file as they are decoded: H.264 in MP4 or VP9 in WebM, through PyAV (the
FFmpeg binding ComfyUI itself ships).

The file is written under a temporary name beside the target and renamed when closed, so the target path
only ever holds a complete, playable file; a run stopped half-way (an exception, a ComfyUI interrupt) still
closes the encoder and leaves a valid, shorter video. Use it as a context manager.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Optional

import numpy as np
import torch

FORMATS = {  # container -> (codec, pixel format, encoder options)
    "mp4": ("libx264", "yuv420p", {"crf": "19", "preset": "medium"}),
    "webm": ("libvpx-vp9", "yuv420p", {"crf": "32", "b": "0", "row-mt": "1"}),
}


def format_for_path(path: str, fmt: Optional[str] = None) -> str:
    """``"mp4"`` or ``"webm"``, from ``fmt`` or the file extension; a clear error otherwise."""
    name = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if name in ("h264", "mp4", "m4v"):
        return "mp4"
    if name in ("vp9", "webm"):
        return "webm"
    raise ValueError(f"cannot write video '{os.path.basename(path)}': format '{name}' is not supported; use a "
                     f".mp4 (H.264) or .webm (VP9) file name, or format='mp4' / 'webm'.")


def to_uint8_frames(frames) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 from uint8 or float (0..1) arrays/tensors (ComfyUI IMAGE layout)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach()
        if frames.is_floating_point():
            frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] < 3:
        raise ValueError(f"frames have shape {list(frames.shape)}; expected [frames, height, width, 3].")
    return np.ascontiguousarray(frames[..., :3])


class VideoWriter:
    """``with VideoWriter("out.mp4", fps=16) as w: w.write(frames)`` — frames ``[F, H, W, 3]``, any number
    of calls; the size is fixed by the first frames. Odd sizes are padded by one edge row/column (4:2:0
    chroma needs even sizes)."""

    def __init__(self, path: str, fps: float = 16, fmt: Optional[str] = None, crf: Optional[int] = None):
        self.path = os.path.abspath(path)
        self.format = format_for_path(path, fmt)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self.size = None  # (width, height)
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"cannot write video '{path}': folder '{folder}' does not exist.")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"cannot write video '{path}': it is a folder; give a file name.")
        base, ext = os.path.splitext(self.path)
        self._partial = f"{base}.partial{ext or '.' + self.format}"
        self._container = None
        self._stream = None
        # container tags (e.g. {"comment": ...}); may be filled in until close (then the file is remuxed with them)
        self.metadata: dict = {}

    def _open(self, width: int, height: int) -> None:
        import av

        codec, pix_fmt, options = FORMATS[self.format]
        options = dict(options)
        if self.crf is not None:
            options["crf"] = str(int(self.crf))
        self._container = av.open(self._partial, mode="w", format=self.format)
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream(codec, rate=rate, options=options)
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = pix_fmt
        self.size = (width, height)

    def write(self, frames) -> int:
        """Encode frames (uint8 or 0..1 float, ``[F, H, W, 3]``); returns the number written so far."""
        import av

        frames = to_uint8_frames(frames)
        height, width = frames.shape[1:3]
        if self._container is None:
            self._open(width, height)
        elif (width, height) != self.size:
            raise ValueError(f"frame size {width}x{height} differs from the video's {self.size[0]}x{self.size[1]}.")
        if width % 2 or height % 2:
            frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in self._stream.encode(picture):
                self._container.mux(packet)
            self.frames_written += 1
        return self.frames_written

    def close(self) -> Optional[str]:
        """Flush the encoder and move the file into place; returns its path (None if no frame was written)."""
        if self._container is None:
            return None
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
        if self.metadata:
            _remux_with_metadata(self._partial, self.path, self.format, self.metadata)
            os.remove(self._partial)
        else:
            os.replace(self._partial, self.path)
        return self.path

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remux_with_metadata(source: str, target: str, fmt: str, metadata: dict) -> None:
    """Copy the encoded stream into a new container that carries ``metadata`` (no re-encode): tags set before
    the first frame would miss what is only known at the end (a live run's timeline)."""
    import av

    with av.open(source) as inp, av.open(target, mode="w", format=fmt) as out:
        out.metadata.update({k: str(v) for k, v in metadata.items()})
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)


def read_video_frames(path: str) -> np.ndarray:
    """All frames of a video file as uint8 ``[F, H, W, 3]`` (tests and the docs' checks)."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
