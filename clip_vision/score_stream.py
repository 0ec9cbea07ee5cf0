"""Live CLIP scores on a stream of decoded blocks, within a time budget.

``LiveScorer`` sits between a causal stream (pieces of decoded frames, ``block_done`` on the last piece of a
block) and a ``StreamingScorer``. Two things make scoring cheap enough to run while the video is made:

* **one vision forward per block**: the frames to score are picked from each piece as it arrives and held
  (only those, at most ``max_batch``) until the block is complete, then embedded in one batch. The vision
  tower is nearly all of a scored frame's cost, and on a CPU a batch of 3-12 frames costs about half as much
  per frame as frames one at a time (docs/clip_vision.md, "Speed");
* **the stride**: frames ``0, n, 2n, ...`` are scored (``every_n``), either fixed, or chosen block by block by
  ``StrideBudget`` as the smallest stride (>= ``every_n``) whose measured scoring time stays within
  ``budget_percent`` of the stream's own time per block (the same ratio ``bench stream`` reports).

The scores of a frame do not depend on the batch it was embedded in or on the stride (beyond which frames are
scored; consistency is always against the previous *scored* frame), so a fixed stride gives the rows
``StreamingScorer.update`` gives piece by piece.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from .scores import StreamingScorer

MAX_STRIDE = 1000  # the widest stride the budget may choose (the score_every_n_frames widget's max)


class StrideBudget:
    """The smallest stride keeping measured scoring time within ``budget`` (a fraction, 0.10 = 10 %) of the
    stream's own time per block.

    Cost model: scoring a block costs ``c · k`` (``c`` seconds per scored frame, ``k`` frames scored in it,
    ``k ≈ F / stride`` for ``F`` frames per block); the stream spends ``T`` seconds per block. Both are measured
    (moving averages over the last blocks), so the stride follows the machine: ``stride = ceil(c·F / (budget·T))``,
    clamped to ``[min_stride, max_stride]``. Before the first measurement it returns ``None``: score one frame
    (the block's first candidate) to measure ``c``."""

    def __init__(self, budget: float, min_stride: int = 1, max_stride: int = MAX_STRIDE, smoothing: float = 0.5):
        if not budget > 0:
            raise ValueError(f"the scoring budget must be > 0 % of the stream's time, got {100 * budget:g} %")
        self.budget, self.min_stride, self.max_stride = float(budget), int(min_stride), int(max_stride)
        self.smoothing = float(smoothing)
        self.seconds_per_frame: Optional[float] = None
        self.stream_per_block: Optional[float] = None

    def _average(self, old: Optional[float], new: float) -> float:
        return new if old is None else self.smoothing * old + (1 - self.smoothing) * new

    def record(self, stream_s: Optional[float], scoring_s: float, scored_frames: int) -> None:
        """One block: the stream's own seconds (None: not known, e.g. the first block) and the scoring seconds of
        ``scored_frames`` frames."""
        if scored_frames > 0:
            self.seconds_per_frame = self._average(self.seconds_per_frame, scoring_s / scored_frames)
        if stream_s is not None and stream_s > 0:
            self.stream_per_block = self._average(self.stream_per_block, stream_s)

    def stride(self, frames_per_block: int) -> Optional[int]:
        if self.seconds_per_frame is None or self.stream_per_block is None:
            return None
        allowed = self.budget * self.stream_per_block / self.seconds_per_frame  # frames per block within budget
        wanted = math.ceil(max(1, frames_per_block) / allowed - 1e-9) if allowed > 0 else self.max_stride
        return max(self.min_stride, min(self.max_stride, wanted))


class LiveScorer:
    """Feed it decoded pieces with ``add(frames, frame_start, block, block_done)``; it returns the new
    ``FrameScore`` rows when a block is complete (or ``max_batch`` frames wait). ``every_n``: the stride (with a
    budget, the smallest one allowed); ``budget_percent`` > 0: the stride follows ``StrideBudget``. ``finish()``
    scores what is still held (a stopped run). ``clock`` is injectable for tests."""

    def __init__(self, scorer: StreamingScorer, every_n: Optional[int] = None, budget_percent: float = 0.0,
                 max_batch: int = 16, clock: Callable[[], float] = time.perf_counter):
        self.scorer = scorer
        self.every_n = int(every_n if every_n is not None else scorer.every_n)
        if self.every_n < 1:
            raise ValueError(f"every_n must be 1 or more (score every n-th frame), got {self.every_n}")
        if not 0 <= float(budget_percent) <= 100:
            raise ValueError(f"score budget must be 0 (off: a fixed stride) to 100 % of the stream's time, got "
                             f"{budget_percent}")
        self.budget = StrideBudget(float(budget_percent) / 100, self.every_n) if budget_percent else None
        self.max_batch, self.clock = int(max_batch), clock
        self.next_frame = 0  # the next frame to score
        self.stride = self.every_n
        self._held, self._numbers, self._block = [], [], 0
        self._block_frames = 0  # frames of the block being received
        self._frames_per_block = 0  # frames of the last complete block
        self._since: Optional[float] = None  # end of the last block's scoring (the stream's time runs from there)
        self._scoring_in_block = 0.0
        self._scored_in_block = 0
        self.scoring_s = 0.0  # all scoring time (embedding + scores)
        self.stream_s = 0.0  # the stream's own time between the first piece and the last block (scoring excluded)
        self.blocks = 0
        self.strides: list = []  # (first frame, stride) whenever the stride changes

    @property
    def rows(self) -> list:
        return self.scorer.rows

    def _current_stride(self) -> Optional[int]:
        if self.budget is None:
            return self.every_n
        return self.budget.stride(self._frames_per_block or self._block_frames)

    def add(self, frames: torch.Tensor, frame_start: int, block: int = 0, block_done: bool = True) -> list:
        now = self.clock()
        if self._since is None:
            self._since = now
        if frames.ndim == 5:
            frames = frames[0]
        new = []
        if self._held and int(block) != self._block:  # a block ended without block_done (a caller's choice)
            new += self._flush()
        self._block = int(block)
        start, count = int(frame_start), frames.shape[0]
        self._block_frames += count
        stride = self._current_stride()
        picked = []
        if stride is None:  # a budget without a measurement yet: one frame of the block, to measure the cost
            if not self._numbers and self._scored_in_block == 0 and self.next_frame < start + count:
                picked.append(max(self.next_frame, start))
                self.next_frame = picked[0] + self.every_n
        else:
            while self.next_frame < start + count:
                if self.next_frame >= start:
                    picked.append(self.next_frame)
                self.next_frame += stride
        if stride is not None and (not self.strides or self.strides[-1][1] != stride) and picked:
            self.strides.append((picked[0], stride))
        self.stride = stride or self.stride
        if picked:
            self._held.append(frames[[f - start for f in picked]])
            self._numbers += picked
        if block_done or len(self._numbers) >= self.max_batch:
            new += self._flush()
        if block_done:
            self._end_block()
        return new

    def _flush(self) -> list:
        if not self._numbers:
            return []
        t0 = self.clock()
        rows = self.scorer.update_frames(torch.cat(self._held), self._numbers, self._block)
        spent = self.clock() - t0
        self._scoring_in_block += spent
        self._scored_in_block += len(self._numbers)
        self.scoring_s += spent
        self._held, self._numbers = [], []
        return rows

    def _end_block(self) -> None:
        now = self.clock()
        stream = now - self._since - self._scoring_in_block
        self.stream_s += stream
        self.blocks += 1
        if self.budget is not None:
            # the first block's time runs from its first decoded piece (its sampling is not seen): an
            # underestimate, so the stride after it errs on the wide side
            self.budget.record(stream, self._scoring_in_block, self._scored_in_block)
        self._frames_per_block = self._block_frames
        self._block_frames, self._scoring_in_block, self._scored_in_block = 0, 0.0, 0
        self._since = now

    def finish(self) -> list:
        """Score the frames still held (a run that stopped inside a block)."""
        return self._flush()

    def stats(self) -> dict:
        blocks = max(1, self.blocks)
        return {"blocks": self.blocks, "scored_frames": len(self.scorer.rows), "scoring_s": self.scoring_s,
                "stream_s": self.stream_s, "scoring_per_block_s": self.scoring_s / blocks,
                "stream_per_block_s": self.stream_s / blocks,
                "ratio": self.scoring_s / self.stream_s if self.stream_s > 0 else None,
                "strides": [list(s) for s in self.strides]}
