"""Input videos read frame by frame and encoded block by block, so a control video or a video to restyle of any
length stays in bounded memory.

``pixel_frames(video, width, height)`` yields one frame ``[3, H, W]`` in [0, 1] at a time from a ComfyUI IMAGE
batch ``[F, H, W, 3]``, a file path / file-like object (decoded with PyAV as it is read), or ComfyUI's VIDEO (its
``get_stream_source()``), each scaled to cover ``width x height`` and centre-cropped (ComfyUI's
``common_upscale(..., "bilinear", "center")``, which its WanVaceToVideo uses).

``LatentFrames`` turns such frames into latent frames on demand: latent frame 0 from pixel frame 0, latent frame
``k`` from pixel frames ``4k-3 .. 4k`` (the Wan VAE's causal grouping), through a ``StreamingEncoder`` whose
feature cache is carried, so what it hands out equals an encode of the whole video.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Optional

import numpy as np

import torch
import torch.nn.functional as F


def fit_frame(frame: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[3, h, w]`` -> ``[3, height, width]``: scaled to cover, centre-cropped (bilinear, ComfyUI's "center")."""
    _, h, w = frame.shape
    if (h, w) == (height, width):
        return frame
    # ComfyUI's common_upscale(crop="center") crops to the target's aspect first, then resizes
    old, new = w / h, width / height
    x = y = 0
    if old > new:
        x = round((w - w * (new / old)) / 2)
    elif old < new:
        y = round((h - h * (old / new)) / 2)
    cropped = frame[:, y:h - y, x:w - x]
    return F.interpolate(cropped[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]


def pixel_frames(video, width: int, height: int) -> Iterator[torch.Tensor]:
    """Frames ``[3, height, width]`` in [0, 1], one at a time (see the module docstring for ``video``)."""
    if torch.is_tensor(video):
        if video.dim() != 4 or video.shape[-1] < 3:
            raise ValueError(f"IMAGE has shape {list(video.shape)}; expected [frames, height, width, 3].")
        for f in range(video.shape[0]):
            yield fit_frame(video[f, :, :, :3].permute(2, 0, 1).float(), width, height)
        return
    for frames in iter_video_frames(video, chunk=1):
        yield fit_frame(frames[0].permute(2, 0, 1), width, height)


def iter_video_frames(path, chunk: int = 16):
    """The frames of a video file (a path, a file object, or ComfyUI's VIDEO: its ``get_stream_source()``), ``chunk``
    at a time, as IMAGE tensors ``[F, H, W, 3]`` float32 in 0..1 (only one chunk is held at a time). A missing or
    unreadable file is a clear error naming it. The pack's one reader of video files."""
    import av

    if hasattr(path, "get_stream_source"):
        path = path.get_stream_source()
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: '{path}'")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"'{path}' is not a video file PyAV/FFmpeg can read ({exc}); give an .mp4, .webm, .mov "
                         f"or .gif file") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"'{path}' has no video stream")
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == chunk:
                yield torch.from_numpy(np.stack(frames)).float() / 255.0
                frames = []
        if frames:
            yield torch.from_numpy(np.stack(frames)).float() / 255.0


def video_fps(path) -> float:
    """The frame rate of a video file (its stream's average rate; 16, Wan's, when the container gives none)."""
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: '{path}'")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"'{path}' has no video stream")
            rate = container.streams.video[0].average_rate
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"'{path}' is not a video file PyAV/FFmpeg can read ({exc})") from None
    return float(rate) if rate else 16.0


class LatentFrames:
    """Latent frames of a pixel-frame stream, encoded as they are asked for. ``prepare(frames [B, 3, f, H, W] in
    [0, 1]) -> pixels in [-1, 1]`` lets a caller build what is encoded (VACE's inactive / reactive halves);
    ``from_raw`` maps the raw latent to the model's space. ``read(start, n)`` must be called with increasing
    ``start`` (a stream is read once); it returns fewer than ``n`` frames where the video ends."""

    def __init__(self, frames: Iterator[torch.Tensor], encoder, from_raw: Callable = lambda z: z,
                 prepare: Optional[Callable] = None):
        self.frames = iter(frames)
        self.encoder = encoder
        self.from_raw = from_raw
        self.prepare = prepare or (lambda px: px * 2 - 1)
        self.next_latent = 0

    def read(self, start: int, n: int) -> Optional[torch.Tensor]:
        """Latent frames ``start .. start + n - 1`` (fewer where the video ends; None if none is left)."""
        out = []
        for wanted, pixels in latent_frame_pixels(self, start, n):
            latent = self.from_raw(self.encoder.encode(self.prepare(pixels)))
            if wanted:
                out.append(latent)
        return torch.cat(out, dim=2) if out else None


def latent_frame_pixels(reader, start: int, n: int) -> Iterator[torch.Tensor]:
    """``(wanted, pixel frames [1, 3, f, H, W])`` of the latent frames from ``reader.next_latent`` to ``start + n - 1``
    (1 pixel frame for latent frame 0, then 4 each) from ``reader.frames``, advancing ``reader.next_latent``; those
    before ``start`` come with ``wanted`` False (encode them, so the encoder's cache runs on, and drop them); stops
    where the video ends."""
    if start < reader.next_latent:
        raise ValueError(f"the input video is read block by block in order: asked for latent frame {start}, the next "
                         f"one is {reader.next_latent}.")
    # frames the loop does not ask for (a start image's blocks) are still read, so what follows them is the same
    for k in range(reader.next_latent, start + n):
        got = []
        for _ in range(1 if k == 0 else 4):
            frame = next(reader.frames, None)
            if frame is None:
                return
            got.append(frame)
        reader.next_latent += 1
        yield k >= start, torch.stack(got, dim=1)[None]
