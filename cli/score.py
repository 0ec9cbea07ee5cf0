"""``comfyui-clipwan score VIDEO``: CLIP-T / CLIP-I / frame consistency of a video, as CSV + JSON + a PNG chart.

The video is read a chunk at a time and scored as it is read (``clip_vision.scores.StreamingScorer``), so any
length fits in memory; ``--timeline`` reads any timeline file (``wan.timeline.files``) and maps it to the video's
frames with the run's block rule (``wan.timeline.video_prompts``). Definitions: docs/clip_vision.md, "CLIP scores".
"""

from __future__ import annotations

import os
import re

SCORE_SUFFIX = ".clip_scores"  # VIDEO.mp4 -> VIDEO.clip_scores.{csv,json,png}


def add_score_model_arguments(p, prefix: str = "") -> None:
    """The CLIP-checkpoint flags shared by ``score`` and ``sample --scores``."""
    p.add_argument(f"--{prefix}clip", dest="score_clip", metavar="FILE",
                   help="CLIP checkpoint with both towers: Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14"
                        ".pth, a full OpenCLIP or Hugging Face CLIP file (a vision-only file: CLIP-I and consistency "
                        "only); default: the embedded random-init ViT-B/32 CLIP pair (not pretrained)")
    p.add_argument(f"--{prefix}tokenizer", dest="score_tokenizer", metavar="PATH",
                   help="xlm-roberta-large tokenizer (folder, tokenizer.json or sentencepiece.bpe.model) for Wan's "
                        "XLM-R text tower; default: one beside the checkpoint")
    p.add_argument(f"--{prefix}every", dest="score_every", type=int, default=1, metavar="N",
                   help="score every N-th frame (frames 0, N, 2N, ...; default 1 = every frame)")
    p.add_argument(f"--{prefix}image", dest="score_image", metavar="REF",
                   help="reference image for CLIP-I (default: the video's first scored frame)")


def register(sub) -> None:
    p = sub.add_parser("score", help="CLIP scores of a video (CLIP-T, CLIP-I, consistency) -> CSV + JSON + PNG",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("video", metavar="VIDEO", help="video file (.mp4, .webm, .mov, animated .gif ...)")
    p.add_argument("--prompt", help="the prompt every frame is scored against (CLIP-T); with --timeline: the prompt "
                                    "before the timeline's first segment (the run's positive prompt)")
    p.add_argument("--timeline", metavar="FILE",
                   help="prompt timeline, any file `sample --timeline` reads: plain text ('0: a fox' / '4: the fox "
                        "jumps' / 'f40: ...' / '2.5s: ...' / '8 blend 3: ...'), a Daydream Scope timeline JSON, a "
                        "LongLive/MemFlow interactive JSONL (with --switch-frames), the .timeline.json a stream "
                        "writes beside its video; or 'FRAME: prompt' lines of video frames (read so when no block "
                        "size is known). Each frame is scored against the prompt playing at it (a mix: its "
                        "highest-weighted prompt)")
    p.add_argument("--switch-frames", help="interactive JSONL: latent frames where each later prompt starts "
                                           "(their switch_frame_indices, e.g. 40,80,120)")
    p.add_argument("--timeline-line", type=int, default=1, help="which video (line) of an interactive JSONL (1-based)")
    add_score_model_arguments(p)
    p.add_argument("--frames-per-block", type=int, metavar="N",
                   help="latent frames per causal block, as `sample` takes it (Wan 2.1 families: 3): maps a "
                        "timeline's blocks to video frames and labels the per-block means; default: from the "
                        "timeline's sidecar or --family, else the rows are one block")
    p.add_argument("--independent-first-frame", action="store_true",
                   help="with --frames-per-block: the first block was one latent frame (the start image)")
    p.add_argument("--family", metavar="NAME", help="the block size of a family preset (e.g. 'LongLive 1.0')")
    p.add_argument("--theme", choices=("light", "dark"), default="light", help="chart colours (default light)")
    p.add_argument("--out", help="output stem (default: VIDEO without extension + '.clip_scores'): writes "
                                 "STEM.csv, STEM.json and STEM.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedded default CLIP (no --clip)")
    p.set_defaults(func=run_score)


def read_timeline(path: str) -> str:
    """The text of a 'FRAME: prompt' file (``sample --score-timeline``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--timeline '{path}' not found; give a text file with 'FRAME: prompt' lines")
    with open(path, encoding="utf-8") as f:
        return f.read()


def block_rule(args, timeline=None):
    """The video's block sizes: --frames-per-block (+ --independent-first-frame), else --family, else the
    timeline's sidecar; None when none says."""
    from ..wan.timeline.video_prompts import BlockRule

    if args.frames_per_block is not None:
        if args.frames_per_block < 1:
            raise ValueError(f"--frames-per-block {args.frames_per_block}: give the latent frames per block (1 or "
                             f"more; Wan 2.1 families: 3)")
        return BlockRule.of(args.frames_per_block, args.independent_first_frame)
    if args.independent_first_frame:
        raise ValueError("--independent-first-frame needs --frames-per-block N (the later blocks' latent frames)")
    if args.family:
        from ..wan.sampling.presets import get_preset

        preset = get_preset(args.family)
        return BlockRule.of(preset.frames_per_block, preset.independent_first_frame)
    return getattr(timeline, "block_rule", None)


FRAME_LINE = re.compile(r"^\s*\d+\s*:")


def _lines(raw: str) -> list:
    return [ln for ln in raw.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _frame_form(raw: str) -> bool:
    """Whether a text is only 'N: prompt' lines without a mix (or one bare prompt): the score's 'FRAME: prompt'
    form (video frames), which the timeline text reads as blocks. The plain-text timeline has no way to start a
    segment at a video frame (blocks, latent frames, seconds only), so the old form stays readable as such."""
    lines = _lines(raw)
    one_prompt = len(lines) == 1 and ":" not in lines[0]
    return bool(lines) and not raw.lstrip().startswith("{") and (
        one_prompt or all(FRAME_LINE.match(ln) and "::" not in ln for ln in lines))


def timeline_prompts(args, fps: float, log=print) -> list:
    """``[(video frame, prompt)]`` of ``--timeline`` (any timeline file, mapped with the video's block rule and
    fps) and ``--prompt``."""
    from ..wan.timeline.files import load
    from ..wan.timeline.video_prompts import pixel_length_note, pixel_prompts

    path = args.timeline
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--timeline '{path}' not found; give a timeline file (text, Scope JSON, "
                                f"interactive JSONL, .timeline.json)")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    rule = block_rule(args)
    if rule is None and _frame_form(raw):
        log(f"score: {os.path.basename(path)} read as 'FRAME: prompt' lines of video frames (no block size given; "
            f"with --frames-per-block N or --family its numbers are blocks)")
        from ..clip_vision.scores import parse_segments

        if args.prompt and not re.match(r"^\s*0\s*:", _lines(raw)[0]):  # --prompt plays before the first line
            raw = f"0: {args.prompt}\n{raw}"
        return parse_segments(raw)
    switch = [int(x) for x in str(args.switch_frames or "").replace(" ", "").split(",") if x]
    timeline = load(path, switch_frames=switch or None, line=args.timeline_line, fps=fps)
    rule = rule or block_rule(args, timeline)
    prompts = pixel_prompts(timeline, rule, args.prompt or "")
    if prompts and prompts[0][0] > 0:
        raise ValueError(f"{os.path.basename(path)}: the first prompt starts at video frame {prompts[0][0]}; give "
                         f"--prompt PROMPT for the frames before it (the run's positive prompt)")
    log(f"score: {len(prompts)} prompt(s) from {os.path.basename(path)} ({pixel_length_note(rule)}, {fps:g} fps): "
        + "; ".join(f"frame {f}: {p[:40]}" for f, p in prompts))
    args.block_rule = rule
    return prompts


def build_scorer(args, prompts, log=print, default_reference=None):
    """The scorer from the shared flags (checked before any model is loaded where possible); CLIP-I against
    ``--image`` (``--score-image``), else ``default_reference`` (IMAGE), else the first scored frame."""
    from ..clip_vision.scores import StreamingScorer, load_score_models, parse_segments
    from ..images import read_image

    segments = parse_segments(prompts)
    if int(getattr(args, "score_every", 1)) < 1:
        raise ValueError(f"--every must be 1 or more, got {args.score_every}")
    reference = read_image(args.score_image) if getattr(args, "score_image", None) else default_reference
    vision, text = load_score_models(getattr(args, "score_clip", None), getattr(args, "score_tokenizer", None),
                                     seed=getattr(args, "seed", 0), text=bool(segments))
    log(f"score: vision {getattr(vision, 'source', '')}" + (f"; text {text.source}" if text is not None else ""))
    return StreamingScorer(vision, text, segments, reference, every_n=getattr(args, "score_every", 1))


def finish_scores(scorer, stem: str, title: str, theme: str = "light", log=print) -> dict:
    """Write STEM.csv/.json/.png; returns the paths and the whole-video means."""
    from ..clip_vision.score_plot import plot_png

    paths = scorer.write(stem)
    paths["png"] = plot_png(stem + ".png", scorer.rows, scorer.segments, theme=theme, title=title)
    video = scorer.summary()["video"]
    means = ", ".join(f"{k} {v:.2f}" for k, v in video.items() if k != "frames" and v is not None)
    log(f"score: {video['frames']} frames scored ({means}); wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return {"paths": paths, "means": video}


def run_score(args) -> int:
    from ..clip_vision.scores import score_chunks
    from ..wan.video.source import iter_video_frames, video_fps

    if not os.path.isfile(args.video):
        raise FileNotFoundError(f"video not found: '{args.video}'")
    args.block_rule = block_rule(args)
    prompts = timeline_prompts(args, video_fps(args.video)) if args.timeline else args.prompt
    scorer = build_scorer(args, prompts)
    stem = args.out or os.path.splitext(args.video)[0] + SCORE_SUFFIX
    rule = args.block_rule
    score_chunks(scorer, iter_video_frames(args.video, chunk=16), rule.block_of_pixel if rule else 0)
    if not scorer.rows:
        raise ValueError(f"'{args.video}' has no frames to score")
    finish_scores(scorer, stem, f"CLIP scores — {os.path.basename(args.video)}", args.theme)
    return 0
