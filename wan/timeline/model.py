"""A prompt timeline: which text conditions which block of a causal video, and how each change happens.

A ``Timeline`` is a list of ``Segment``s. Each starts at a block, at a latent frame (LongLive's / MemFlow's
``switch_frame_indices``) or at a time in seconds of the output video, holds one prompt or a weighted mix of
prompts, and says how the video gets there from what came before:

* ``"switch"``: the family's own switch rule, applied by the loop (``CausalLoop._switch_prompt``: LongLive's
  joint re-cache, MemFlow's bank, Krea's recompute, LongLive 2.0's per-block switch, per ``settings.recache``);
* ``"blend"`` over N blocks: the text embedding moves from the one in use to the new one block by block
  (``blend.transition``, Scope's embedding blender); only the cross-attention context changes, the KV cache
  keeps what it holds (Scope resets the cross-attention cache only during a transition);
* ``"cut"``: a scene cut, LongLive 2.0's multi-shot mode (``wan/sampling/multishot.py``): the cut block is
  conditioned on ``scene_cut_prefix + prompt`` (the setting; LongLive 2.0: "The scene transitions. "), the shot's
  later blocks on the prompt alone, exactly as LongLive's prompt files write a shot; nothing is re-cached, and the
  loop pins the cut block as the new shot's sink and moves the RoPE positions. A cut at block 0 is the first
  shot's start (LongLive never prefixes it). Families without a multi-shot mode refuse a cut before sampling.

``Timeline.compile(layout)`` turns it into a ``TextSchedule``: the text of block 0 and, per later block, the
embedding and the rule (``"switch"`` or ``"context"``) the loop applies before that block. Times become blocks
by ONE rule: seconds -> output frame ``round(s·fps)`` -> the latent frame holding it
(``wan.vae.latent.pixel_frame_to_latent_frame``) -> the first block starting at or after that latent frame
(LongLive: "when generation reaches this frame (inclusive)"). Segments resolving to the same block: the last
one listed wins. A ``LiveControl`` attached to the timeline adds segments while the loop runs; each is inserted
at the block boundary where the loop takes it and the schedule is rebuilt from the timeline, so the timeline
saved after the run replays the run exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..vae.latent import latent_frame_to_pixel_frame, pixel_frame_to_latent_frame
from . import blend
from .controls import Controls

TRANSITIONS = ("switch", "blend", "cut")


@dataclasses.dataclass
class Prompt:
    """One prompt of a segment: its text (may be empty when only an embedding is known), its weight in a mix,
    and its umt5 embedding ``[1, L, 4096]`` once encoded."""

    text: str = ""
    weight: float = 1.0
    embedding: Optional[torch.Tensor] = None
    # a scene cut's block: the embedding of ``prefix + text`` per scene-cut prefix it was encoded with
    cut_embeddings: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Segment:
    prompts: List[Prompt]
    block: Optional[int] = None  # exactly one of block / frame / seconds says where it starts
    frame: Optional[int] = None  # latent frame
    seconds: Optional[float] = None  # output time (needs the timeline's fps)
    transition: str = "switch"
    blend_blocks: int = 0  # "blend": blocks the change takes (Scope's transitionSteps)
    interpolation: str = "linear"  # "blend": linear or slerp (Scope's temporalInterpolationMethod)
    mix: str = "linear"  # several prompts at once: linear or slerp (Scope's spatial_interpolation_method)
    source: str = ""  # where it came from (a file line, "live"), for messages and the sidecar

    def check(self, where: str = "") -> "Segment":
        at = f"{where}: " if where else ""
        starts = [v for v in (self.block, self.frame, self.seconds) if v is not None]
        if len(starts) != 1:
            raise ValueError(f"{at}a segment starts at exactly one of a block, a latent frame or a time in seconds "
                             f"(got block={self.block}, frame={self.frame}, seconds={self.seconds}).")
        if starts[0] < 0:
            raise ValueError(f"{at}the start {starts[0]} is negative; blocks, frames and seconds count from 0.")
        if not self.prompts:
            raise ValueError(f"{at}the segment has no prompt; give at least one prompt text.")
        if self.transition not in TRANSITIONS:
            raise ValueError(f"{at}transition '{self.transition}' is not one of {list(TRANSITIONS)}.")
        if self.transition == "blend" and int(self.blend_blocks) < 1:
            raise ValueError(f"{at}a blend needs the number of blocks it takes (>= 1), e.g. 'blend 4'; got "
                             f"{self.blend_blocks}.")
        blend.check_interpolation(self.interpolation, f"{at}blend interpolation")
        blend.check_interpolation(self.mix, f"{at}mix method")
        for p in self.prompts:
            if not (p.text or "").strip() and p.embedding is None:
                raise ValueError(f"{at}a prompt is empty; write its text (or give its embedding).")
            if not float(p.weight) >= 0:
                raise ValueError(f"{at}prompt weight {p.weight} must be >= 0.")
        return self

    @property
    def label(self) -> str:
        """The text shown for the segment: its prompt, or the mix with its weights."""
        if len(self.prompts) == 1:
            return self.prompts[0].text
        return " | ".join(f"{p.text} :: {p.weight:g}" for p in self.prompts)

    @property
    def main_text(self) -> str:
        """The highest-weighted prompt's text (a mix's dominant prompt; what a CLIP score compares against)."""
        return max(self.prompts, key=lambda p: float(p.weight)).text

    def embedding(self) -> torch.Tensor:
        """The segment's target embedding (the mix, when several prompts)."""
        missing = [p.text for p in self.prompts if p.embedding is None]
        if missing:
            raise ValueError(f"the prompt '{missing[0][:60]}' is not encoded; call Timeline.encode(encoder) (CLI: "
                             f"--text-encoder; ComfyUI: a CLIP on the timeline node) first.")
        if len(self.prompts) == 1:
            return self.prompts[0].embedding
        return blend.mix([p.embedding for p in self.prompts], [p.weight for p in self.prompts], self.mix)

    def cut_embedding(self, prefix: str, encoder: Optional[Callable[[str], torch.Tensor]] = None) -> torch.Tensor:
        """A scene cut's embedding for its cut block: each prompt's ``prefix + text`` (encoded now with ``encoder``
        where not encoded yet), mixed like ``embedding()``; the plain embedding when ``prefix`` is empty."""
        if not prefix:
            return self.embedding()
        for p in self.prompts:
            if prefix in p.cut_embeddings:
                continue
            if encoder is None:
                raise ValueError(
                    f"{self.source or 'a scene cut'}: the cut block is conditioned on the scene-cut prefix "
                    f"{prefix!r} + the prompt (as LongLive 2.0's prompt files write a new shot), but the prompt "
                    f"'{p.text[:60]}' has no text encoder to encode that with: build the timeline from text with a "
                    f"CLIP (Prompt Timeline from Text; CLI: --text-encoder; Python: timeline.encode(encoder, "
                    f"cut_prefix=...)), or set scene_cut_prefix to '' to condition the cut block on the prompt as "
                    f"given.")
            p.cut_embeddings[prefix] = encoder(prefix + p.text)
        if len(self.prompts) == 1:
            return self.prompts[0].cut_embeddings[prefix]
        return blend.mix([p.cut_embeddings[prefix] for p in self.prompts], [p.weight for p in self.prompts],
                         self.mix)


@dataclasses.dataclass
class TextChange:
    """What the loop does before a block: ``rule`` "switch" (the family's switch rule), "context" (only the
    cross-attention text changes: a blend step, a cut shot's text after its cut block) or "cut" (a scene cut: the
    text changes, nothing is re-cached, a multi-shot loop runs its cut rules); ``segment`` = index into the
    timeline's segments."""

    text: torch.Tensor
    rule: str
    segment: int
    step: int = 0  # blend step (0-based) of ``steps``
    steps: int = 1


class Timeline:
    """Segments in order of their start; ``fps`` turns seconds into frames (the output video's fps)."""

    def __init__(self, segments: Sequence[Segment] = (), fps: Optional[float] = None, source: str = ""):
        self.segments: List[Segment] = [s.check(s.source or f"segment {i + 1}") for i, s in enumerate(segments)]
        self.fps = fps
        self.source = source
        self.live = None  # a LiveControl (wan/timeline/live.py) adds segments while a loop runs
        self.encoder = None  # text -> embedding, kept for live prompts (ComfyUI: the timeline node's CLIP)
        self.controls = Controls()  # image and LoRA changes (wan/timeline/controls.py), apart from the prompts
        self.block_rule = None  # the run's block sizes when read from a sidecar (video_prompts.BlockRule)

    def __len__(self) -> int:
        return len(self.segments)

    def __repr__(self) -> str:
        return f"Timeline({len(self.segments)} segment(s){', live' if self.live else ''} from {self.source!r})"

    def copy(self) -> "Timeline":
        """A timeline of its own (segments and prompts copied, embeddings shared): a run may add live segments to it
        without touching the one it came from (ComfyUI caches node outputs)."""
        out = Timeline([dataclasses.replace(s, prompts=[dataclasses.replace(p, cut_embeddings=dict(p.cut_embeddings))
                                                        for p in s.prompts])
                        for s in self.segments], fps=self.fps, source=self.source)
        out.encoder, out.block_rule = self.encoder, self.block_rule
        out.controls = self.controls.copy()
        return out

    # --- text -> embeddings ---------------------------------------------------------------------------
    def texts(self) -> list:
        """Every distinct prompt text still without an embedding, in order of first use."""
        seen: Dict[str, None] = {}
        for s in self.segments:
            for p in s.prompts:
                if p.embedding is None:
                    seen.setdefault(p.text, None)
        return list(seen)

    def encode(self, encoder: Callable[[str], torch.Tensor], cut_prefix: str = "") -> "Timeline":
        """Fill in every prompt's embedding with ``encoder(text) -> [1, L, D]``, each distinct text once; with
        ``cut_prefix`` (the ``scene_cut_prefix`` setting) the scene cuts' ``prefix + text`` too."""
        done = {text: encoder(text) for text in self.texts()}
        for s in self.segments:
            for p in s.prompts:
                if p.embedding is None:
                    p.embedding = done[p.text]
            if s.transition == "cut" and cut_prefix:
                s.cut_embedding(cut_prefix, encoder)
        return self

    def cut_texts(self, prefix: str) -> list:
        """The scene cuts' ``prefix + text`` still without an embedding (none without a prefix)."""
        return list(dict.fromkeys(prefix + p.text for s in self.segments if s.transition == "cut" and prefix
                                  for p in s.prompts if prefix not in p.cut_embeddings))

    # --- where segments start ----------------------------------------------------------------------------
    def start_frame(self, segment: Segment) -> int:
        """The latent frame a segment starts at (blocks are resolved against a layout elsewhere)."""
        if segment.frame is not None:
            return int(segment.frame)
        if self.fps is None or float(self.fps) <= 0:
            raise ValueError(f"{segment.source or 'a segment'} starts at {segment.seconds} s but the timeline has no "
                             f"fps; give the output video's fps (node: the fps widget; CLI: --fps).")
        return pixel_frame_to_latent_frame(int(round(float(segment.seconds) * float(self.fps))))

    def start_block(self, segment: Segment, layout: Sequence) -> int:
        """The block index where ``segment`` takes effect in a run of ``layout`` ([(start_frame, n), ...])."""
        if segment.block is not None:
            return int(segment.block)
        frame = self.start_frame(segment)
        for bi, (start, _) in enumerate(layout):  # an endless layout has no length, but always such a block
            if start >= frame:
                return bi
        return len(layout)

    def resolved(self, layout: Sequence) -> list:
        """``[(block, index)]`` of the segments in effect, ordered by block; per block the last listed wins;
        segments starting after the last block are left out."""
        by_block: Dict[int, int] = {}
        for i, s in enumerate(self.segments):
            b = self.start_block(s, layout)
            if b < len(layout):
                by_block[b] = i
        return sorted(by_block.items())

    def insert(self, segment: Segment) -> int:
        """Add a segment (a live change, at a block); one already starting at that block is replaced. Returns
        its index."""
        segment.check(segment.source or "segment")
        self.segments = [s for s in self.segments if s.block is None or s.block != segment.block]
        self.segments.append(segment)
        return len(self.segments) - 1

    # --- the loop's view ------------------------------------------------------------------------------
    def compile(self, layout: Sequence, text: Optional[torch.Tensor] = None, cut_prefix: str = "") -> "TextSchedule":
        """The loop's per-block schedule; ``text`` is the embedding in use before the first segment (the
        sampler's positive), the source of a blend there; ``cut_prefix`` the ``scene_cut_prefix`` of the run."""
        return TextSchedule(self, layout, text, cut_prefix)

    def frame_prompts(self, layout: Sequence, initial_text: str = "") -> list:
        """``[(start_frame, prompt_text), ...]``: from which output (pixel) frame each prompt conditions the video
        (the dominant prompt of a mix; a blend counts from its first block). ``initial_text`` is the prompt before
        the first segment (the sampler's positive), when the timeline does not start at block 0."""
        out = []
        starts = self.resolved(layout)
        if initial_text and (not starts or starts[0][0] > 0):
            out.append((0, initial_text))
        for block, i in starts:
            out.append((latent_frame_to_pixel_frame(layout[block][0]), self.segments[i].main_text))
        return out


class TextSchedule:
    """A timeline compiled against a block layout: ``initial`` (block 0's embedding, or None = the loop's own
    text) and ``changes[block]`` (``TextChange``). With a live control, ``take(block)`` first inserts the newest
    ready live segment at ``block`` and rebuilds; ``applied`` lists ``(block, segment index, rule)`` in order."""

    def __init__(self, timeline: Timeline, layout: Sequence, text: Optional[torch.Tensor] = None,
                 cut_prefix: str = ""):
        self.timeline, self.base = timeline, text
        self.cut_prefix = cut_prefix
        # an endless run's layout has no length (wan/sampling/endless.py EndlessLayout): the schedule is built on
        # the prefix that reaches the last segment, grown when a live change lands past it
        self._source = layout
        self.endless = not hasattr(layout, "__len__")
        self.applied: list = []
        self._build()

    def _reach(self) -> list:
        """The layout the schedule is built on: all of a fixed run's; of an endless run, the blocks up to the end of
        the last segment's transition."""
        if not self.endless:
            return list(self._source)
        last = 0
        for seg in self.timeline.segments:
            last = max(last, self.timeline.start_block(seg, self._source) + max(1, int(seg.blend_blocks)))
        return self._source[:last + 1]

    @property
    def live(self):
        return self.timeline.live

    def _build(self) -> None:
        self.layout = self._reach()
        self.initial: Optional[torch.Tensor] = None
        self.changes: Dict[int, TextChange] = {}
        current = self.base  # the embedding in use before a block (None: not known, a blend there snaps)
        starts = self.timeline.resolved(self.layout)
        for k, (block, i) in enumerate(starts):
            seg = self.timeline.segments[i]
            target = seg.embedding()
            end = starts[k + 1][0] if k + 1 < len(starts) else len(self.layout)
            if block == 0:
                self.initial = current = target
                continue
            if seg.transition == "blend" and current is not None:
                steps = blend.transition(current, target, seg.blend_blocks, seg.interpolation)
                for j, emb in enumerate(steps[:end - block]):  # a later segment cuts the blend short
                    self.changes[block + j] = TextChange(emb, "context", i, j, len(steps))
                current = steps[min(len(steps), end - block) - 1] if steps else current
            elif seg.transition == "cut":  # the cut block: prefix + prompt; the shot's next block: the prompt alone
                self.changes[block] = TextChange(seg.cut_embedding(self.cut_prefix, self.timeline.encoder), "cut", i)
                if self.cut_prefix and block + 1 < end:
                    self.changes[block + 1] = TextChange(target, "context", i, 1, 2)
                current = target
            else:  # a switch, or a blend with no embedding known before it (Scope snaps to the target then)
                self.changes[block] = TextChange(target, "switch" if seg.transition == "switch" else "context", i)
                current = target

    def take(self, block: int) -> Optional[TextChange]:
        """The change before ``block`` (None: the text stays); a ready live segment is placed here first."""
        change = None
        if self.live is not None:
            segment = self.live.take_ready(block)
            if segment is not None:
                segment.block, segment.frame, segment.seconds = block, None, None
                index = self.timeline.insert(segment)
                self._build()
                if block == 0:  # before anything is cached: block 0's text is simply the new one
                    change = TextChange(self.initial, "context", index)
        change = change or self.changes.get(block)
        if change is not None:
            self.applied.append((block, change.segment, change.rule))
        return change

    @property
    def blocks(self) -> list:
        return sorted(self.changes)
