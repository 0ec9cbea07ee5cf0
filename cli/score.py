"""``comfyui-clipwan score VIDEO``: CLIP-T / CLIP-I / frame consistency of a video, as CSV + JSON + a PNG chart.

The video is read a chunk at a time and scored as it is read (``clip_vision.scores.StreamingScorer``), so any
length fits in memory. Definitions: docs/clip_vision.md, "CLIP scores".
"""

from __future__ import annotations

import os

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
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompt", help="the prompt every frame is scored against (CLIP-T)")
    which.add_argument("--timeline", metavar="FILE",
                       help="prompt timeline: a text file with one 'FRAME: prompt' line per segment ('0: a cat', "
                            "'48: a dog'); each frame is scored against the last segment starting at or before it")
    add_score_model_arguments(p)
    p.add_argument("--frames-per-block", type=int, default=12,
                   help="frames per causal block, for the per-block means (Wan 2.1: 3 latent frames = 12 video "
                        "frames after the first); 0 = no blocks")
    p.add_argument("--theme", choices=("light", "dark"), default="light", help="chart colours (default light)")
    p.add_argument("--out", help="output stem (default: VIDEO without extension + '.clip_scores'): writes "
                                 "STEM.csv, STEM.json and STEM.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedded default CLIP (no --clip)")
    p.set_defaults(func=run_score)


def read_timeline(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--timeline '{path}' not found; give a text file with 'FRAME: prompt' lines")
    with open(path, encoding="utf-8") as f:
        return f.read()


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
    from ..wan.video.source import iter_video_frames

    if not os.path.isfile(args.video):
        raise FileNotFoundError(f"video not found: '{args.video}'")
    prompts = read_timeline(args.timeline) if args.timeline else args.prompt
    scorer = build_scorer(args, prompts)
    stem = args.out or os.path.splitext(args.video)[0] + SCORE_SUFFIX
    score_chunks(scorer, iter_video_frames(args.video, chunk=16), args.frames_per_block)
    if not scorer.rows:
        raise ValueError(f"'{args.video}' has no frames to score")
    finish_scores(scorer, stem, f"CLIP scores — {os.path.basename(args.video)}", args.theme)
    return 0
