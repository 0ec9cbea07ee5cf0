"""Which prompt plays at each frame of a finished video: a timeline (any file ``files.load`` reads) mapped to the
video's pixel frames, for CLIP-T (``comfyui-clipwan score --timeline``).

The mapping is the sampler's own (``Timeline.frame_prompts``): a segment takes effect at a block, its first
latent frame becomes a pixel frame by the Wan VAE's time rule (``wan.vae.latent``: latent frame 0 = pixel frame 0,
latent frame k = pixel frame ``TIME_RATIO·(k-1) + 1``); a segment given by a latent frame or a time in seconds
(at the video's fps) takes effect at the first block starting at or after it. That needs the block layout,
``BlockRule``: the latent frames of the first block and of every later one (from the sidecar the stream node
writes, from a family preset, or given). A file that starts segments at blocks cannot be mapped without it (a
clear error); a file of latent frames / seconds can: each segment then counts from its own frame (the run
switched at the next block boundary, up to one block later).

A mix (``a :: 0.7 | b :: 0.3``) is scored against its highest-weighted prompt, a blend from its first block (the
rule of ``Segment.main_text``, the same as the stream node's live CLIP-T).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from ..vae.latent import TIME_RATIO, latent_frame_to_pixel_frame, pixel_frame_to_latent_frame
from .model import Timeline

BLOCK_HELP = ("give the block size: --frames-per-block N (latent frames per block, as `sample` takes it; "
              "Wan 2.1 families: 3) with --independent-first-frame if the first block was one frame, or "
              "--family NAME")


@dataclasses.dataclass(frozen=True)
class BlockRule:
    """A run's block layout, as few numbers: the first block's latent frames, then ``frames_per_block`` each."""

    frames_per_block: int
    first_block: int

    @classmethod
    def of(cls, frames_per_block: int, independent_first_frame: bool = False) -> "BlockRule":
        n = int(frames_per_block)
        if n < 1:
            raise ValueError(f"frames per block must be 1 or more latent frames, got {n}")
        return cls(n, 1 if independent_first_frame else n)

    @classmethod
    def from_layout(cls, layout: Sequence) -> Optional["BlockRule"]:
        """The rule of a run's ``[(start, frames), ...]`` (None for an empty layout)."""
        if not layout:
            return None
        first = int(layout[0][1])
        return cls(int(layout[1][1]) if len(layout) > 1 else first, first)

    @classmethod
    def from_dict(cls, data) -> Optional["BlockRule"]:
        if not isinstance(data, dict):
            return None
        return cls(int(data["frames_per_block"]), int(data["first_block"]))

    def to_dict(self) -> dict:
        return {"frames_per_block": self.frames_per_block, "first_block": self.first_block}

    def layout(self, latent_frames: int) -> list:
        """``[(start, frames), ...]`` covering ``latent_frames`` latent frames (the last block may be shorter)."""
        out, start, size = [], 0, self.first_block
        while start < max(1, latent_frames):
            out.append((start, min(size, max(1, latent_frames) - start)))
            start, size = start + size, self.frames_per_block
        return out

    def block_of_pixel(self, frame: int) -> int:
        """The block a pixel frame was decoded in."""
        latent = pixel_frame_to_latent_frame(int(frame))
        if latent < self.first_block:
            return 0
        return 1 + (latent - self.first_block) // self.frames_per_block


def _latent_start(timeline: Timeline, segment) -> Optional[int]:
    """A segment's latent start frame; None for one that starts at a block."""
    return None if segment.block is not None else timeline.start_frame(segment)


def pixel_prompts(timeline: Timeline, rule: Optional[BlockRule] = None, initial_text: str = "") -> list:
    """``[(pixel frame, prompt)]`` from which video frame each prompt plays (sorted; a later segment at the same
    frame wins). ``timeline.fps`` must be the video's when segments start at seconds; ``initial_text`` is the
    prompt before a timeline that does not start at frame 0 (the run's positive prompt)."""
    rule = rule or getattr(timeline, "block_rule", None)
    if rule is None:
        blocks = [s for s in timeline.segments if s.block is not None]
        if blocks:
            raise ValueError(f"{blocks[0].source or timeline.source}: the segment starts at block {blocks[0].block} "
                             f"but the block size of the video is not known; {BLOCK_HELP}.")
        starts = {}
        for s in timeline.segments:
            if s.frame is not None:
                starts[latent_frame_to_pixel_frame(s.frame)] = s.main_text
            else:
                timeline.start_frame(s)  # without the fps: the error naming the segment
                starts[int(round(float(s.seconds) * float(timeline.fps)))] = s.main_text
        out = sorted(starts.items())
        if initial_text and (not out or out[0][0] > 0):
            out.insert(0, (0, initial_text))
        return out
    # the run's own rule: a layout long enough to hold every segment's start
    ends = [rule.first_block + rule.frames_per_block * int(s.block) for s in timeline.segments if s.block is not None]
    ends += [_latent_start(timeline, s) for s in timeline.segments if s.block is None]
    layout = rule.layout(max(ends + [0]) + rule.frames_per_block + rule.first_block + 1)
    return timeline.frame_prompts(layout, initial_text)


def pixel_length_note(rule: Optional[BlockRule]) -> str:
    """How the blocks look in video frames (for logs)."""
    if rule is None:
        return "block size unknown"
    first = latent_frame_to_pixel_frame(rule.first_block)
    return (f"blocks of {rule.frames_per_block} latent frames ({TIME_RATIO * rule.frames_per_block} video frames; "
            f"the first block {first} frame(s))")
