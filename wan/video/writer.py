"""Append frames to a video file as they are decoded: H.264 in MP4 or VP9 in WebM, through PyAV (the
FFmpeg binding ComfyUI itself ships).

The file is written under a temporary name of its own beside the target (unique per writer) and moved
into place when closed, so the target path only ever holds a complete, playable file; a run stopped half-way
(an exception, a ComfyUI interrupt) still closes the encoder and leaves a valid, shorter video. Use it as a
context manager. Two writers of one path at once are refused (each would hand back the other's file).

The same frames give the same bytes: the muxer and the encoder run bit-exact (no random WebM segment id,
no library version strings) and the encoders use a fixed thread count, since x264's and libvpx's output
depends on it (and the default follows the machine's cores).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from fractions import Fraction
from typing import Optional

import numpy as np
import torch

ENCODER_THREADS = 4  # fixed, not "one per core": the encoded bytes depend on it (reproducible files)
FORMATS = {  # container -> (codec, pixel format, encoder options)
    "mp4": ("libx264", "yuv420p", {"crf": "19", "preset": "medium", "threads": str(ENCODER_THREADS)}),
    "webm": ("libvpx-vp9", "yuv420p", {"crf": "32", "b": "0", "row-mt": "1", "threads": str(ENCODER_THREADS)}),
}
MAX_FPS = 1000


def check_fps(fps) -> Fraction:
    """The frame rate as the exact fraction the container stores; 0, negative, NaN, inf or absurd refused."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0 or value > MAX_FPS:
        raise ValueError(f"fps {fps!r} is not a frame rate: give a number above 0 and at most {MAX_FPS} (Wan: 16).")
    rate = Fraction(value).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps!r} is too small to store (the smallest rate is 1/1001); give e.g. 16.")
    return rate


_writing = weakref.WeakValueDictionary()  # absolute target path -> the open writer (one per path here)
_writing_lock = threading.Lock()


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

    def __init__(self, path: str, fps: float = 16, fmt: Optional[str] = None, crf: Optional[int] = None,
                 reserved: bool = False, fragmented: bool = False):
        """``reserved``: ``path`` is an empty file this run created to hold the name (``outputs.reserve_numbered``);
        it is replaced by the video, or removed if no frame is written. ``fragmented``: fragmented MP4 (an endless
        stream): a self-contained fragment per second of video, so the file being written is playable up to its
        last fragment at every moment (WebM is written progressively anyway)."""
        self.path = os.path.abspath(path)
        self.reserved = reserved
        self.format = format_for_path(path, fmt)
        self.fragmented = fragmented
        self.rate = check_fps(fps)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self.size = None  # (width, height)
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"cannot write video '{path}': folder '{folder}' does not exist.")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"cannot write video '{path}': it is a folder; give a file name.")
        self._container = None
        self._stream = None
        self._partial = None
        # container tags (e.g. {"comment": ...}); may be filled in until close (then the file is remuxed with them)
        self.metadata: dict = {}
        with _writing_lock:
            other = _writing.get(self.path)
            if other is not None:
                raise ValueError(f"cannot write video '{path}': another VideoWriter is writing that file now; give "
                                 f"each writer its own path (close the first one before reusing the name).")
            _writing[self.path] = self

    def _release(self) -> None:
        with _writing_lock:
            if _writing.get(self.path) is self:
                del _writing[self.path]

    def _open(self, width: int, height: int) -> None:
        import av

        from ...outputs import temporary_beside

        codec, pix_fmt, options = FORMATS[self.format]
        options = dict(options)
        if self.crf is not None:
            options["crf"] = str(int(self.crf))
        self._partial = temporary_beside(self.path, "." + self.format)
        fragments = self.fragmented and self.format == "mp4"
        if fragments:  # no lookahead: each frame's packet is muxed (and flushed) as soon as it is encoded
            options["tune"] = "zerolatency"
        container_options = {"movflags": "frag_keyframe+empty_moov+default_base_moof",
                             "flush_packets": "1"} if fragments else {}
        container = av.open(self._partial, mode="w", format=self.format, options=container_options)
        try:
            container.flags |= av.container.Flags.bitexact.value  # no random segment id, no version strings
            stream = container.add_stream(codec, rate=self.rate, options=options)
            stream.codec_context.flags |= av.codec.context.Flags.bitexact.value
            stream.codec_context.thread_count = ENCODER_THREADS
            if fragments:  # a keyframe (so a fragment) every second: the playable part trails by at most that
                stream.codec_context.gop_size = max(1, round(float(self.fps)))
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = pix_fmt
        except BaseException:
            container.close()
            os.remove(self._partial)
            raise
        self._container, self._stream = container, stream
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
        """Flush the encoder and move the file into place; returns its path, the file this writer wrote (None
        if no frame was written: then nothing of this writer is left on disk)."""
        from ...outputs import publish

        if self._container is None:
            self._release()
            if self.reserved and os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
                os.remove(self.path)  # the name this run held, and nothing was written: no empty file left
                self.reserved = False
            return None
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
            self._release()
        if self.metadata:  # a second temporary of this writer's own, then published like the first
            from ...outputs import temporary_beside

            tagged = temporary_beside(self.path, "." + self.format)
            _remux_with_metadata(self._partial, tagged, self.format, self.metadata)
            os.remove(self._partial)
            self._partial = tagged
        publish(self._partial, self.path)
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
        out.flags |= av.container.Flags.bitexact.value  # reproducible, as the encode itself (no random ids)
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
