"""CLIP scores of a video, frame by frame, as it is made: CLIP-T, CLIP-I and frame-to-frame consistency.

Definitions (every score is 100 × a cosine similarity, not clamped, so 0 = unrelated, 100 = same direction):

* **image embedding** of a frame: the CLIP vision tower's ``image_embeds`` — ``visual_projection`` of the
  post-LayerNorm CLS token of the last block — of the frame preprocessed as ComfyUI's CLIP Vision Encode does
  (``crop="center"``: short side scaled to the tower's size, bicubic with antialias, centre crop, 8-bit
  levels, OpenAI mean/std), then L2-normalised;
* **text embedding** of a prompt: the text tower's projected embedding (``text_tower``), L2-normalised;
* **CLIP-T** (frame *f*) = 100 · cos(image(*f*), text(prompt active at *f*)); the prompt active at *f* is the
  last timeline segment starting at or before *f* (segments ``[(start_frame, prompt), ...]``);
* **CLIP-I** (frame *f*) = 100 · cos(image(*f*), image(reference)); the reference is the given start/reference
  image, else the video's first scored frame;
* **consistency** (frame *f*) = 100 · cos(image(*f*), image(previous scored frame)); empty for the first one.

Only scored frames count (``every_n``: frames 0, n, 2n, ... of the video). ``StreamingScorer`` takes decoded
frames block by block and keeps the scores (a few floats per scored frame), the text embeddings, the reference
embedding and the previous frame's embedding: no frame and no other feature is held, so memory does not grow
with the video beyond the score table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

SCALE = 100.0  # the ×100 convention of the papers' CLIP scores
SCORE_NAMES = ("clip_t", "clip_i", "consistency")
CSV_FIELDS = ("frame", "block", "segment", "prompt") + SCORE_NAMES


def parse_segments(prompts) -> list:
    """Prompts as a timeline: ``[(start_frame, prompt), ...]`` sorted by start, first at frame 0.

    Accepts a list of ``(start, prompt)`` pairs, a single prompt string, or the text form of one segment per
    line ``"0: a cat"`` / ``"48: a dog"`` (a line without ``N:`` continues from frame 0 when it is the only
    one). Empty → ``[]`` (no CLIP-T)."""
    if prompts is None:
        return []
    if isinstance(prompts, str):
        lines = [ln.strip() for ln in prompts.strip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not lines:
            return []
        pairs = []
        for number, line in enumerate(lines, 1):
            head, sep, rest = line.partition(":")
            if sep and head.strip().isdigit():
                pairs.append((int(head), rest.strip()))
            elif len(lines) == 1:
                pairs.append((0, line))
            else:
                raise ValueError(f"prompt timeline line {number} {line!r} has no start frame: write one segment "
                                 f"per line as 'FRAME: prompt' (e.g. '0: a cat', '48: a dog')")
        prompts = pairs
    segments = []
    for item in prompts:
        try:
            start, text = item
            start = int(start)
        except (TypeError, ValueError):
            raise ValueError(f"a prompt segment must be (start_frame, prompt), got {item!r}") from None
        if start < 0:
            raise ValueError(f"prompt segment {text!r} starts at frame {start}; frames count from 0")
        if not str(text).strip():
            raise ValueError(f"the prompt segment starting at frame {start} is empty")
        segments.append((start, str(text)))
    segments.sort(key=lambda s: s[0])
    starts = [s for s, _ in segments]
    if len(set(starts)) != len(starts):
        raise ValueError(f"two prompt segments start at the same frame: {starts}")
    if segments and segments[0][0] != 0:
        raise ValueError(f"the first prompt segment starts at frame {segments[0][0]}; the timeline must start at "
                         f"frame 0 (which prompt do frames before it follow?)")
    return segments


def segment_at(segments: Sequence, frame: int) -> int:
    """Index of the segment active at ``frame``: the last one starting at or before it (-1 if none)."""
    index = -1
    for i, (start, _) in enumerate(segments):
        if start <= frame:
            index = i
    return index


def image_embeddings(vision, frames: torch.Tensor, crop="center") -> torch.Tensor:
    """IMAGE frames [F,H,W,3] → L2-normalised image embeddings [F, D] (float32, CPU)."""
    from .embeds_only import image_embeds  # the last block for the CLS token only (what image_embeds reads)

    embeds = image_embeds(vision, frames, crop)
    if embeds is None:
        raise ValueError(f"CLIP scores need the vision tower's projection (visual_projection / head), which "
                         f"{getattr(vision, 'source', 'this CLIP vision model')} lacks: use a file that has it "
                         f"(clip_vision_h.safetensors, Wan's .pth, a full OpenCLIP / HF CLIP checkpoint)")
    return F.normalize(embeds.float(), dim=-1)


def text_embeddings(text, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts → L2-normalised text embeddings [N, D]."""
    return F.normalize(text.encode(list(prompts)).float(), dim=-1)


def cosine_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """100 · cos row by row of two L2-normalised [N, D] tensors (the one score formula)."""
    return SCALE * (a * b).sum(dim=-1)


@dataclasses.dataclass
class FrameScore:
    frame: int
    block: int
    segment: int  # index into the timeline (-1: no prompts)
    clip_t: Optional[float]
    clip_i: Optional[float]
    consistency: Optional[float]


class StreamingScorer:
    """Scores decoded frames as they arrive; ``update(frames, frame_start, block)`` per decoded piece.

    ``vision``: a CLIP_VISION with a projection (``ClipVisionModel`` or ComfyUI's); ``text``: a ``TextTower``
    (None: no CLIP-T); ``prompts``: the timeline (see ``parse_segments``); ``reference``: IMAGE [1,H,W,3]
    for CLIP-I (None: the first scored frame); ``every_n``: score frames 0, n, 2n, ..."""

    def __init__(self, vision, text=None, prompts=None, reference: Optional[torch.Tensor] = None, every_n: int = 1,
                 crop="center"):
        if int(every_n) < 1:
            raise ValueError(f"every_n must be 1 or more (score every n-th frame), got {every_n}")
        self.vision, self.every_n, self.crop = vision, int(every_n), crop
        self.segments = parse_segments(prompts)
        if self.segments and text is None:
            raise ValueError("prompts were given but no text tower: CLIP-T needs a CLIP checkpoint with a text "
                             "tower (Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth, OpenCLIP or HF "
                             "CLIP); without one only CLIP-I and consistency are scored")
        self.text_embeds = text_embeddings(text, [p for _, p in self.segments]) if self.segments else None
        self.reference = None if reference is None else image_embeddings(vision, reference[:1], crop)
        if self.text_embeds is not None and self.reference is not None and \
                self.text_embeds.shape[-1] != self.reference.shape[-1]:
            raise ValueError(f"the text tower gives {self.text_embeds.shape[-1]}-d embeddings but the vision tower "
                             f"{self.reference.shape[-1]}-d: use the two towers of one CLIP model")
        self.previous: Optional[torch.Tensor] = None
        self.rows: list = []
        self.frames_seen = 0

    @property
    def prompts(self) -> list:
        return [p for _, p in self.segments]

    def update(self, frames: torch.Tensor, frame_start: Optional[int] = None, block: int = 0) -> list:
        """Frames ``[F,H,W,3]`` (or ``[1,F,H,W,3]``) that are video frames ``frame_start ...`` (default: right
        after the last ones given); returns the new ``FrameScore`` rows."""
        if frames.ndim == 5:
            frames = frames[0]
        start = self.frames_seen if frame_start is None else int(frame_start)
        count = frames.shape[0]
        self.frames_seen = max(self.frames_seen, start + count)
        first = -(-start // self.every_n) * self.every_n  # first multiple of every_n at or after start
        picked = list(range(first, start + count, self.every_n))
        if not picked:
            return []
        return self.update_frames(frames[[f - start for f in picked]], picked, block)

    def update_frames(self, frames: torch.Tensor, numbers: Sequence[int], block: int = 0) -> list:
        """Score exactly these frames ``[K,H,W,3]``, video frames ``numbers`` (increasing, after every frame
        scored so far), in one vision forward; returns the new ``FrameScore`` rows. ``update`` picks the frames of
        a decoded piece and calls this; ``score_stream.LiveScorer`` calls it once per block."""
        picked = [int(f) for f in numbers]
        if not picked:
            return []
        embeds = image_embeddings(self.vision, frames, self.crop)
        if self.text_embeds is not None and embeds.shape[-1] != self.text_embeds.shape[-1]:
            raise ValueError(f"the vision tower gives {embeds.shape[-1]}-d embeddings but the text tower "
                             f"{self.text_embeds.shape[-1]}-d: use the two towers of one CLIP model")
        if self.reference is None:
            self.reference = embeds[:1].clone()
        previous = embeds[:-1] if self.previous is None else torch.cat([self.previous, embeds[:-1]])
        consistency = cosine_scores(embeds[-previous.shape[0]:] if previous.shape[0] else embeds[:0], previous)
        clip_i = cosine_scores(embeds, self.reference.expand_as(embeds))
        segments = [segment_at(self.segments, f) for f in picked]
        clip_t = None
        if self.text_embeds is not None:
            clip_t = cosine_scores(embeds, self.text_embeds[segments])
        new = []
        offset = len(picked) - consistency.shape[0]  # 1 for the video's first scored frame, else 0
        for i, f in enumerate(picked):
            new.append(FrameScore(frame=f, block=int(block), segment=segments[i],
                                  clip_t=None if clip_t is None else float(clip_t[i]),
                                  clip_i=float(clip_i[i]),
                                  consistency=None if i < offset else float(consistency[i - offset])))
        self.previous = embeds[-1:].clone()
        self.rows.extend(new)
        return new

    # ----- results ---------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Mean of each score over the whole video, per timeline segment and per block."""
        return summarize(self.rows, self.segments)

    def to_dict(self) -> dict:
        return {"definition": DEFINITION, "every_n": self.every_n,
                "segments": [{"start_frame": s, "prompt": p} for s, p in self.segments],
                "frames": [dataclasses.asdict(r) for r in self.rows], "summary": self.summary()}

    def write(self, stem: str) -> dict:
        """``STEM.csv`` and ``STEM.json`` (written under ``.partial`` names, then moved into place)."""
        return write_scores(stem, self.rows, self.segments, self.to_dict())


DEFINITION = ("100 x cosine of L2-normalised CLIP embeddings (not clamped); image = image_embeds of the frame "
              "centre-cropped as ComfyUI's CLIP Vision Encode; CLIP-T vs the prompt active at the frame, CLIP-I vs "
              "the reference image (else the first scored frame), consistency vs the previous scored frame")


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def summarize(rows: Sequence[FrameScore], segments: Sequence = ()) -> dict:
    def means(selected):
        return {name: _mean(getattr(r, name) for r in selected) for name in SCORE_NAMES} | {"frames": len(selected)}

    out = {"video": means(rows), "segments": [], "blocks": []}
    for i, (start, prompt) in enumerate(segments):
        out["segments"].append({"start_frame": start, "prompt": prompt, **means([r for r in rows if r.segment == i])})
    for block in sorted({r.block for r in rows}):
        out["blocks"].append({"block": block, **means([r for r in rows if r.block == block])})
    return out


def csv_text(rows: Iterable[FrameScore], segments: Sequence = ()) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        prompt = segments[r.segment][1] if 0 <= r.segment < len(segments) else ""
        writer.writerow([r.frame, r.block, r.segment, prompt] +
                        ["" if v is None else f"{v:.6f}" for v in (r.clip_t, r.clip_i, r.consistency)])
    return buffer.getvalue()


def read_csv(path: str) -> list:
    """Rows written by ``write_scores`` back as ``FrameScore`` (for plots and tests)."""
    with open(path, newline="") as f:
        return [FrameScore(int(r["frame"]), int(r["block"]), int(r["segment"]),
                           *(float(r[n]) if r[n] else None for n in SCORE_NAMES)) for r in csv.DictReader(f)]


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_scores(stem: str, rows, segments, payload: dict) -> dict:
    folder = os.path.dirname(os.path.abspath(stem))
    os.makedirs(folder, exist_ok=True)
    paths = {"csv": stem + ".csv", "json": stem + ".json"}
    _atomic_write(paths["csv"], csv_text(rows, segments))
    _atomic_write(paths["json"], json.dumps(payload, indent=1, ensure_ascii=False))
    return paths


def block_of(frame: int, frames_per_block: int) -> int:
    """Causal block of a video frame for blocks of ``frames_per_block`` video frames (``frames_per_block`` / 4
    latent frames), by the Wan VAE's time rule: the first block's first latent frame decodes to one frame, so block 0
    holds ``frames_per_block - 3`` frames and every later block ``frames_per_block`` (Wan 2.1, blocks of 3 latent
    frames: 9, then 12); 0 = one block."""
    from ..wan.vae.latent import TIME_RATIO, pixel_frame_to_latent_frame

    if frames_per_block <= 0:
        return 0
    if frames_per_block % TIME_RATIO:
        raise ValueError(f"frames_per_block {frames_per_block} is not a whole number of latent frames: give a "
                         f"multiple of {TIME_RATIO} video frames (blocks of 3 latent frames: 12).")
    return pixel_frame_to_latent_frame(frame) // (frames_per_block // TIME_RATIO)


def block_pieces(start: int, count: int, frames_per_block) -> list:
    """``(offset, length, block)`` runs of frames ``start .. start + count - 1`` that fall in one block
    (``frames_per_block``: an int for ``block_of``, or a function frame -> block)."""
    label = frames_per_block if callable(frames_per_block) else lambda f: block_of(f, frames_per_block)
    pieces, i = [], 0
    while i < count:
        block, j = label(start + i), i
        while j < count and label(start + j) == block:
            j += 1
        pieces.append((i, j - i, block))
        i = j
    return pieces


def score_chunks(scorer: StreamingScorer, chunks, frames_per_block: int = 0, check=None) -> StreamingScorer:
    """Feed consecutive IMAGE chunks [F,H,W,3] of one video to ``scorer``, rows labelled by ``block_of``;
    ``check()`` runs before each chunk (ComfyUI's interrupt)."""
    start = 0
    for chunk in chunks:
        if check is not None:
            check()
        for offset, count, block in block_pieces(start, chunk.shape[0], frames_per_block):
            scorer.update(chunk[offset:offset + count], start + offset, block)
        start += chunk.shape[0]
    return scorer


def score_frames(vision, frames: torch.Tensor, text=None, prompts=None, reference=None, every_n: int = 1,
                 frames_per_block: int = 0, crop="center", batch: int = 16) -> StreamingScorer:
    """Score a whole IMAGE batch [F,H,W,3], fed ``batch`` frames at a time (the same numbers as streaming)."""
    scorer = StreamingScorer(vision, text, prompts, reference, every_n, crop)
    return score_chunks(scorer, (frames[s:s + batch] for s in range(0, frames.shape[0], batch)), frames_per_block)


def load_score_models(path: Optional[str] = None, tokenizer=None, seed: int = 0, text: bool = True):
    """``(vision, text tower or None)`` of one CLIP checkpoint (both towers read from the same file: Wan's .pth,
    a full OpenCLIP / HF CLIP file), or without ``path`` the embedded default pair (seeded random-init ViT-B/32
    CLIP, not pretrained). A vision-only file gives ``text=None`` (CLIP-I and consistency only). SigLIP / SigLIP2
    files (HF or open_clip) load their own towers; ``tokenizer``: their spiece.model / tokenizer.json."""
    from .loader import default_clip_vision, load_clip_vision
    from .siglip import is_siglip_file, siglip_score_models
    from .text_tower import default_text_tower, load_text_tower

    if path is None:
        return default_clip_vision("ViT-B/32", seed=seed), (default_text_tower(seed) if text else None)
    if is_siglip_file(path):
        return siglip_score_models(path, tokenizer, text)
    vision = load_clip_vision(path)
    if not text:
        return vision, None
    try:
        return vision, load_text_tower(path, tokenizer=tokenizer)
    except ValueError as exc:
        if "no CLIP text tower found" in str(exc):
            return vision, None
        raise
