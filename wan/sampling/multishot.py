"""LongLive 2.0's multi-shot mode: what a scene cut in a prompt timeline (``Segment(transition="cut")``, the text
line ``12 cut: ...``) does to the block loop. Three settings (``CausalSettings``; the LongLive 2.0 preset turns them
on with its authors' values): ``multi_shot_sink``, ``multi_shot_rope_offset`` (φ) and ``scene_cut_prefix``.

What the authors' pipeline does (NVlabs/LongLive main: ``pipeline/causal_diffusion_inference.py``
``_inference_inner``, ``_is_shot_boundary``, ``_is_scene_cut``, ``_pin_current_chunk``;
``wan_5b/modules/causal_model.py`` ``CausalWanSelfAttention.forward`` (``effective_sink``, ``pinned_shift``) and
``_apply_cache_updates``; ``utils/position_embedding_utils.py``; ``configs/inference*.yaml``: ``multi_shot_sink: true``,
``multi_shot_rope_offset: 8``, ``sink_size 8``, ``local_attn_size 32``, blocks of 8), restated in frames (every
length there is a whole number of frames):

* **Where the cuts are.** A block after the first whose prompt starts with ``scene_cut_prefix`` ("The scene
  transitions. ", ``utils/dataset.py``). Its prompt files put the prefix before the first block of every shot after
  the first and give the shot's later blocks the caption alone; the prefixed text is what the text encoder sees.
  Here a cut is explicit (a timeline segment) and the prefix is added before encoding, the same way
  (``wan/timeline/model.py``). Nothing is re-cached at a cut: the pipeline changes the cross-attention text per
  block and never re-encodes cached frames.
* **The KV cache** is one buffer of ``local_attn_size`` frames (the window), in which every forward attends to all
  that is stored, in buffer order. With ``multi_shot_sink`` the video's first ``sink_size`` frames are a *global*
  sink that never moves. After the clean pass of a cut block, the block's first ``min(sink_size, block)`` frames
  are *pinned* (a buffer position and a length; one pin at a time: a new cut moves it, the old shot's sink then
  rolls out like any frame). When a block does not fit, ``over = stored + block - window`` frames are dropped from
  the front of the rolling part: the *protected* prefix is the global sink, plus the pin when the pin sits right
  after it; while the pin sits further on ("floating") it moves left with the frames around it, until it reaches
  the global sink and joins the protected prefix. (A pin that the new block would overwrite — a window of exactly
  sink + block — stays nominally pinned and protects nothing, as there.)
* **RoPE.** From the k-th cut on (its denoising steps and clean pass included) every frame position is
  ``frame + k·φ``, for the queries and for the keys written from then on; keys already cached keep theirs (they are
  stored after RoPE). With relative RoPE (``use_relative_rope``; ``positions="slots"`` here) their attention does not
  apply the offset: neither does this loop.
* Not run: ``shot_clean_recache`` (zeroing the cache at a cut; off in every shipped config) and the legacy
  ``_update_sink_for_scene_cut`` copy (training only).

The rules live in ``ShotCache`` (the buffer above, a ``KVCache``) and ``MultiShotRules`` (the loop's part: count the
cuts, move the RoPE positions, pin after a cut block's clean pass), mixed into the plain block loop and the endless
loop by ``multi_shot_loop``. ``check_multi_shot`` refuses a cut where no multi-shot mode is on, naming the family.
"""

from __future__ import annotations

from typing import Optional

from .cache import KVCache
from .endless import EndlessLoop
from .loop import CausalLoop, CausalSettings


def multi_shot_on(settings: CausalSettings) -> bool:
    """Does a scene cut do anything beyond changing the text (the multi-shot sink or a RoPE offset)?"""
    return bool(settings.multi_shot_sink) or float(settings.multi_shot_rope_offset) != 0.0


def _source_timeline(timeline):
    """The ``Timeline`` of a timeline or of a compiled ``TextSchedule`` (None for none)."""
    return getattr(timeline, "timeline", timeline)


def check_multi_shot(settings: CausalSettings, timeline=None) -> None:
    """Before a loop is built: a timeline with a scene cut needs a multi-shot mode (refused naming the family and the
    fix), and the multi-shot rules need the loop they are defined for."""
    tl = _source_timeline(timeline)
    cuts = [s for s in (tl.segments if tl is not None else []) if s.transition == "cut"]
    family = settings.family or "custom"
    if cuts and not multi_shot_on(settings):
        raise ValueError(
            f"the timeline has a scene cut ({cuts[0].source or 'a cut segment'}), but family '{family}' has no "
            f"multi-shot mode (LongLive 2.0's multi-shot sink and RoPE offset at each cut): use transition 'switch' or "
            f"'blend' there, or run family 'LongLive 2.0' (custom: turn multi_shot_sink on).")
    if not multi_shot_on(settings):
        return
    if settings.loop != "block":
        raise ValueError(f"multi_shot_sink / multi_shot_rope_offset (LongLive 2.0's scene cuts) run the block loop; "
                         f"family '{family}' runs loop '{settings.loop}', which has no multi-shot rule: turn them off "
                         f"(multi_shot_sink off, multi_shot_rope_offset 0).")
    if settings.multi_shot_sink and settings.sink_ema is not None:
        raise ValueError("multi_shot_sink pins a shot's frames in the sink; sink_ema (Reward Forcing) mixes evicted "
                         "frames into the sink: the two cannot run together. Turn one of them off.")


class ShotCache(KVCache):
    """LongLive 2.0's cache with a multi-shot sink (module docstring): the global sink (the first ``sink_frames`` of
    the buffer) and one pinned shot sink, eviction from the front of the rolling part. ``pin`` is ``(buffer slot,
    frames)`` or None."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pin: Optional[tuple] = None

    def protected(self) -> int:
        """Frames at the front of the buffer that an eviction keeps (their ``effective_sink``)."""
        if self.pin is None:
            return self.sink_frames
        slot, length = self.pin
        return self.sink_frames + length if slot == self.sink_frames else self.sink_frames

    def begin_block(self, start_frame: int, num_frames: int) -> None:
        if not self.window_frames:  # no window: nothing is ever evicted, a pin changes nothing
            return super().begin_block(start_frame, num_frames)
        if self.frames and start_frame <= self.frames[-1]:
            raise RuntimeError(f"KV cache holds frames up to {self.frames[-1]} but the next block starts at "
                               f"frame {start_frame}; blocks must be committed in order.")
        self._window_pass = False
        over = len(self.frames) + num_frames - self.capacity_frames
        if over > 0:
            protected = self.protected()
            # the new block goes to the last `num_frames` slots: a protected prefix longer than what is left before
            # them is cut short (a window of exactly sink + block)
            front = min(protected, self.capacity_frames - num_frames)
            self._evict(self.frames[:front] + self.frames[protected + over:])
            if self.pin is not None and self.pin[0] >= protected:  # a floating pin follows its frames
                self.pin = (self.pin[0] - over, self.pin[1])
        self._pending = num_frames
        self._pending_start = start_frame

    def pin_last(self, num_frames: int) -> None:
        """After the clean pass of a cut block of ``num_frames``: its first ``min(sink, block)`` frames are the new
        shot's sink (their ``_pin_current_chunk``)."""
        if self.sink_frames:
            self.pin = (len(self.frames) - num_frames, min(self.sink_frames, num_frames))

    def reset(self) -> None:
        super().reset()
        self.pin = None

    def keep_first(self, num_frames: int) -> None:
        super().keep_first(num_frames)
        if self.pin is not None and sum(self.pin) > num_frames:
            self.pin = None


class MultiShotRules:
    """The loop's part of the multi-shot mode, mixed in before a block loop class (``multi_shot_loop``): the cuts
    are counted as the timeline applies them (``TextSchedule.applied``, live cuts included), the RoPE positions move
    by ``cuts·φ`` (absolute positions), the cut block is pinned after its clean pass (``ShotCache``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shot = 0  # cuts so far (their shot index; counted only with a RoPE offset, as theirs)
        self._cut_block: Optional[int] = None
        if self.schedule is not None and self.schedule.live is not None:
            self.schedule.live.cut_prefix = self.settings.scene_cut_prefix  # live cuts allowed, with this prefix

    @property
    def cache_class(self):
        return ShotCache if self.settings.multi_shot_sink else KVCache

    def _prompt_at(self, bi: int) -> None:
        super()._prompt_at(bi)
        applied = self.schedule.applied if self.schedule is not None else []
        self._cut_block = bi if bi > 0 and applied and applied[-1][0] == bi and applied[-1][2] == "cut" else None
        if self._cut_block is not None and float(self.settings.multi_shot_rope_offset) != 0.0:
            self.shot += 1

    def _rope_start(self, kind: str, start: int):
        start = super()._rope_start(kind, start)
        if self.shot and self.settings.positions == "absolute":
            return start + self.shot * float(self.settings.multi_shot_rope_offset)
        return start

    def _cache_pass(self, bi: int, start: int, x0) -> None:
        super()._cache_pass(bi, start, x0)
        if self._cut_block == bi and self.settings.multi_shot_sink:
            for br in self.branches:
                br.cache.pin_last(x0.shape[2])


class MultiShotLoop(MultiShotRules, CausalLoop):
    """The plain block loop with LongLive 2.0's multi-shot rules."""


class EndlessMultiShotLoop(MultiShotRules, EndlessLoop):
    """An endless stream with LongLive 2.0's multi-shot rules (scene cuts typed live, or from its timeline)."""


def multi_shot_loop(loop_cls):
    """The multi-shot variant of a block loop class (``check_multi_shot`` has refused the other loop shapes)."""
    return {CausalLoop: MultiShotLoop, EndlessLoop: EndlessMultiShotLoop}[loop_cls]
