"""Endless streams: the block loop run until it is stopped (``check_interrupt`` raising, or the consumer
breaking out of the iteration).

A run has no length. The latent it is given is its *first segment*: its whole blocks set the batch, the
frame size, the image conditioning of those frames (a start image, concat latents) and the first blocks'
noise, exactly as a fixed-length run of that latent would (the first segment of an endless run equals a
``sample_causal`` of it). Every block after it is ``frames_per_block`` frames of fresh noise drawn per block
(``NoiseSource.block_initial``: for ``SeededNoise`` a CPU generator seeded by (seed, block), so the same seed
gives the same endless video), starting from pure noise. A concat image route (Wan i2v) repeats the first
segment's last concat frame: the frames after a start image are "to generate" frames, all alike.

Memory is flat: a window (``local_window``) is required, the KV cache holds at most that many frames, and
nothing else is kept per block. Positions: with ``positions="absolute"`` the RoPE frame index grows with the
video (computed exactly, in float64, at any length, but past the few hundred frames the models were trained
on); ``positions="slots"`` (LongLive's relative RoPE) keeps every position inside the window, which is what
an endless stream should use — ``endless_settings`` switches it on and says so.

Only the plain block loop runs endlessly: the other loop shapes' rules are written for a known length
(Rolling Forcing's window count, Krea's re-encode schedule, MemFlow's bank) and are refused with a message.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Optional, Sequence

import torch

from .loop import BlockResult, CausalLoop, CausalSettings, PromptSwitch, block_layout

ENDLESS_TOTAL = 0  # ``BlockResult.total`` of an endless run: no last block


def endless_settings(settings: CausalSettings) -> tuple[CausalSettings, Optional[str]]:
    """``settings`` ready for an endless run and a note (or None): relative RoPE positions (``"slots"``)
    unless a family rule already chose its positions; a refusal naming the fix where an endless run cannot
    work (no window, another loop shape)."""
    if settings.loop != "block":
        raise ValueError(f"an endless stream runs the plain block loop; this family's loop '{settings.loop}' "
                         f"needs a known length. Set a length instead of 'until stopped'.")
    if not int(settings.local_window):
        raise ValueError("an endless stream needs a local_window (e.g. sink 3 + window 12): without one every "
                         "frame stays in the KV cache and memory grows without bound.")
    if settings.positions == "slots":
        return settings, None
    return dataclasses.replace(settings, positions="slots"), (
        "endless stream: relative RoPE positions (positions='slots', LongLive's use_relative_rope) so that "
        "positions stay inside the window at any length")


class EndlessLayout:
    """The block layout of an endless run: ``[(start_frame, frames), ...]`` of the first segment, then blocks
    of ``frames_per_block`` without end. Indexable by block (and sliced up to a block) like the list of a
    fixed run, so the prompt-switch rules read it unchanged; it has no length."""

    def __init__(self, first_segment: list, frames_per_block: int):
        self.first = list(first_segment)
        self.n = int(frames_per_block)
        self.segment_frames = sum(size for _, size in self.first)

    def __getitem__(self, index):
        if isinstance(index, slice):
            if index.stop is None or index.stop < 0:
                raise IndexError("an endless layout is sliced up to a block index")
            return [self[i] for i in range(*index.indices(index.stop))]
        if index < 0:
            raise IndexError("an endless layout has no last block")
        if index < len(self.first):
            return self.first[index]
        return self.segment_frames + (index - len(self.first)) * self.n, self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return (self[i] for i in itertools.count())


class EndlessLoop(CausalLoop):
    """``CausalLoop`` without a last block (module docstring). Same arguments; ``prompt_switches`` may name
    any block from 1 on. ``len()`` is the first segment's block count; ``total`` of every result is
    ``ENDLESS_TOTAL``."""

    def __init__(self, model, latent: torch.Tensor, text: torch.Tensor, *,
                 prompt_switches: Sequence[PromptSwitch] = (), **kwargs):
        s = kwargs.get("settings") or CausalSettings()
        endless_settings(s)  # refuses what cannot run endlessly (the caller chose the positions)
        if getattr(model.config, "actions", None) is not None:
            # its action caches and per-frame key tensors are sized for a known length, at absolute positions
            raise ValueError("Matrix-Game 2.0 runs a known length (its authors' loop: absolute positions, action "
                             "tensors per frame); an endless stream is not available for it. Set a length "
                             "instead of 'until stopped' and steer it with live keys.")
        n, first = int(s.frames_per_block), 1 if s.independent_first_frame else 0
        whole = block_layout(latent.shape[2], n, s.independent_first_frame, shorter_last_block=True)
        whole = [(start, size) for start, size in whole if size == n or (start, size) == (0, first)]
        if not whole:
            raise ValueError(f"an endless stream's latent ({latent.shape[2]} frames) must hold at least one "
                             f"block of {n} frame(s) to start from.")
        frames = sum(size for _, size in whole)
        first_segment = latent[:, :, :frames]
        concat = kwargs.get("concat")
        if concat is not None and concat.dim() == 5 and concat.shape[2] > frames:
            kwargs["concat"] = concat[:, :, :frames]
        kwargs["settings"] = dataclasses.replace(s, shorter_last_block=False)
        super().__init__(model, first_segment, text, **kwargs)
        for sw in prompt_switches:
            if sw.start_block < 1:
                raise ValueError(f"prompt switch at block {sw.start_block}: must be 1 or later.")
        if prompt_switches:  # (a timeline's changes, live ones included, are the base loop's: _prompt_at)
            self.switches = {sw.start_block: sw.text for sw in prompt_switches}
        self.segment_frames = frames
        self.segment_blocks = len(self.layout)
        self.layout = EndlessLayout(self.layout, n)

    def _timeline_layout(self):
        # called by the base loop while self.layout is still the first segment's: a timeline's segments (and live
        # changes) after the first segment are the endless run's too
        return EndlessLayout(self.layout, int(self.settings.frames_per_block))

    def __len__(self) -> int:
        """Blocks of the first segment (the run itself has no length)."""
        return self.segment_blocks

    def cache_capacity(self) -> int:
        """The window: the video outgrows any first segment."""
        return int(self.settings.local_window)

    def _block_noise(self, bi: int, start: int, n: int) -> torch.Tensor:
        if start < self.segment_frames:
            return super()._block_noise(bi, start, n)
        shape = (self.batch, self.latent.shape[1], n, *self.latent.shape[3:])
        return self.noise.block_initial(bi, shape, self.device).float()

    def _block_latent(self, start: int, n: int) -> torch.Tensor:
        if start < self.segment_frames:
            return super()._block_latent(start, n)
        return torch.zeros(self.batch, self.latent.shape[1], n, *self.latent.shape[3:])  # pure noise there

    def _block_concat(self, start: int, n: int) -> Optional[torch.Tensor]:
        if self.y is None or start < self.segment_frames:
            return super()._block_concat(start, n)
        return self.y[:, :, -1:].expand(-1, -1, n, -1, -1)

    def __iter__(self) -> Iterator[BlockResult]:
        self._start_run()
        try:
            for bi, (start, n) in enumerate(self.layout):
                self._prompt_at(bi)
                x0 = self._denoise(bi, start, n)
                yield self._finish(bi, ENDLESS_TOTAL, start, x0)
                self.check_interrupt()
                self._cache_pass(bi, start, x0)
        finally:
            self._end_run()
