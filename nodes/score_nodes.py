"""CLIP scores in ComfyUI: load a CLIP pair for scoring, score an IMAGE batch / VIDEO with a chart, and the
live scores of Causal Wan Stream Video (``StreamScores``, used by nodes/stream_nodes.py).

Thin wrappers over ``clip_vision.scores`` (definitions in docs/clip_vision.md, "CLIP scores").
"""

from __future__ import annotations

import logging
import os

from . import comfy_bridge as bridge
from ..clip_vision.scores import StreamingScorer, score_chunks
from .clip_nodes import LoadCLIPVisionH14

log = logging.getLogger("comfyui_clipwan")

SCORER_TYPE = "CLIPWAN_SCORER"
SCORE_SUFFIX = ".clip_scores"
THEMES = ("dark", "light")
PROMPTS_TOOLTIP = ("Prompts for CLIP-T: one prompt, or a timeline of 'FRAME: prompt' lines ('0: a cat', '48: a dog'; "
                   "a frame is scored against the last line starting at or before it). Empty: no CLIP-T.")


class ClipScorerModels:
    """What the CLIPWAN_SCORER socket carries: a vision tower (with projection) and a text tower or None."""

    def __init__(self, vision, text, source: str):
        self.vision, self.text, self.source = vision, text, source

    def __repr__(self):
        return f"ClipScorerModels({self.source}, text tower: {'yes' if self.text is not None else 'no'})"

    def scorer(self, prompts="", reference=None, every_n: int = 1) -> StreamingScorer:
        return StreamingScorer(self.vision, self.text, prompts, reference, every_n)


class LoadCLIPScorer:
    DESCRIPTION = ("Loads both towers of a CLIP checkpoint for scoring videos: Wan's "
                   "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (multilingual XLM-RoBERTa text tower; "
                   "needs xlm-roberta-large's tokenizer), or a full OpenCLIP / Hugging Face CLIP file. A vision-only "
                   "file (clip_vision_h.safetensors) scores CLIP-I and frame consistency only.")
    RETURN_TYPES = (SCORER_TYPE,)
    RETURN_NAMES = ("clip_scorer",)
    OUTPUT_TOOLTIPS = ("Vision + text towers for Score Video with CLIP and Causal Wan Stream Video's live scores.",)
    SEARCH_ALIASES = ["clip score", "clip-t", "clip-i", "video drift", "xlm-roberta", "clipwan"]
    FUNCTION = "load"
    CATEGORY = "ClipWan/loaders"

    @classmethod
    def INPUT_TYPES(cls):
        base = LoadCLIPVisionH14.INPUT_TYPES()["required"]
        return {"required": {"clip_name": base["clip_name"], "dtype": base["dtype"], "device": base["device"]},
                "optional": {"tokenizer": ("STRING", {
                    "default": "", "advanced": True,
                    "tooltip": "Wan's XLM-R text tower only: xlm-roberta-large's tokenizer (a folder, tokenizer.json "
                               "or sentencepiece.bpe.model). Empty: 'xlm-roberta-large/' or a tokenizer file beside "
                               "the checkpoint."})}}

    def load(self, clip_name, dtype="default", device="default", tokenizer=""):
        from ..clip_vision.text_tower import load_text_tower

        path = bridge.resolve_model_path(clip_name, "clip_vision")
        vision = LoadCLIPVisionH14().load(clip_name, dtype, device)[0]
        try:
            text = load_text_tower(path, tokenizer=tokenizer.strip() or None)
        except ValueError as exc:
            if "no CLIP text tower found" not in str(exc):
                raise
            log.warning("Load CLIP for Scores: %s has no text tower: CLIP-I and consistency only", clip_name)
            text = None
        return (ClipScorerModels(vision, text, os.path.basename(path)),)


def _check_scorer(clip_scorer):
    if not isinstance(clip_scorer, ClipScorerModels):
        raise ValueError(f"clip_scorer ({type(clip_scorer).__name__}) is not a CLIP scorer: connect Load CLIP for "
                         f"Scores (ClipWan).")


def _video_chunks(video, chunk: int = 16):
    """A ComfyUI VIDEO a chunk at a time (its stream source read with PyAV): never the whole video in memory."""
    from ..wan.video.source import iter_video_frames

    if hasattr(video, "get_stream_source") or isinstance(video, (str, os.PathLike)):  # a VIDEO (file or BytesIO)
        yield from iter_video_frames(video if hasattr(video, "get_stream_source") else os.fspath(video), chunk)
        return
    raise ValueError(f"video ({type(video).__name__}) is not a ComfyUI VIDEO: connect Load Video or a node that "
                     f"outputs VIDEO, or connect an IMAGE batch to images")


def save_scores(scorer: StreamingScorer, stem: str, theme: str, title: str) -> dict:
    """STEM.csv / STEM.json / STEM.png; returns the paths."""
    from ..clip_vision.score_plot import plot_png

    paths = scorer.write(stem)
    paths["png"] = plot_png(stem + ".png", scorer.rows, scorer.segments, theme=theme, title=title)
    return paths


class ScoreVideoCLIP:
    DESCRIPTION = ("CLIP scores of an IMAGE batch or a VIDEO: CLIP-T (each frame vs the prompt active at it), "
                   "CLIP-I (vs the reference image, else the first frame) and frame-to-frame consistency, as a "
                   "chart (IMAGE) and a table saved as CSV + JSON in the output folder. 100 × cosine of the CLIP "
                   "embeddings; see docs/clip_vision.md.")
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("chart", "table", "path")
    OUTPUT_TOOLTIPS = ("The chart: a line per score over the frames, prompt switches marked.",
                       "The scores as CSV text (frame, block, segment, prompt, clip_t, clip_i, consistency).",
                       "Full path of the saved CSV (the JSON and PNG sit beside it).")
    SEARCH_ALIASES = ["clip score", "clip-t", "clip-i", "video drift", "prompt following", "clipwan"]
    OUTPUT_NODE = True
    FUNCTION = "score"
    CATEGORY = "ClipWan/analysis"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_scorer": (SCORER_TYPE, {"tooltip": "Load CLIP for Scores (ClipWan)."}),
                "prompts": ("STRING", {"default": "", "multiline": True, "tooltip": PROMPTS_TOOLTIP}),
                "every_n_frames": ("INT", {"default": 1, "min": 1, "max": 1000,
                                           "tooltip": "Score frames 0, n, 2n, ... (1 = every frame)."}),
                "filename_prefix": ("STRING", {"default": "ClipWan/scores",
                                               "tooltip": "Output file name prefix of the CSV/JSON/PNG."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Frames to score (an IMAGE batch); or connect video."}),
                "video": ("VIDEO", {"tooltip": "A video to score, read a chunk at a time; or connect images."}),
                "reference": ("IMAGE", {"tooltip": "Start / reference image for CLIP-I (default: the first frame)."}),
                "frames_per_block": ("INT", {"default": 12, "min": 0, "max": 1000, "advanced": True,
                                             "tooltip": "Video frames per causal block, a multiple of 4, for "
                                                        "the per-block means (Wan 2.1, blocks of 3 latent frames: "
                                                        "12; the first block holds 3 fewer). 0 = one block."}),
                "theme": (list(THEMES), {"default": "dark", "advanced": True,
                                         "tooltip": "Chart colours: dark (ComfyUI's default) or light."}),
            },
        }

    def score(self, clip_scorer, prompts="", every_n_frames=1, filename_prefix="ClipWan/scores", images=None,
              video=None, reference=None, frames_per_block=12, theme="dark"):
        from ..clip_vision.score_plot import plot_image
        from ..clip_vision.scores import csv_text

        _check_scorer(clip_scorer)
        if (images is None) == (video is None):
            raise ValueError("Score Video with CLIP: connect either images (an IMAGE batch) or video (a VIDEO), "
                             "not both and not neither.")
        scorer = clip_scorer.scorer(prompts, reference, every_n_frames)
        chunks = _video_chunks(video) if video is not None else \
            (images[s:s + 16] for s in range(0, images.shape[0], 16))
        score_chunks(scorer, chunks, frames_per_block, check=bridge.check_interrupt)
        path, _, _ = bridge.video_save_path(filename_prefix, "csv", 0, 0)
        stem = path[: -len(".csv")]
        paths = save_scores(scorer, stem, theme, f"CLIP scores — {os.path.basename(stem)}")
        chart = plot_image(scorer.rows, scorer.segments, theme)
        folder, name = os.path.split(paths["png"])
        subfolder = os.path.relpath(folder, bridge.output_directory())
        chart_file = {"filename": name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
        return {"ui": {"text": [_summary_text(scorer, paths)], "images": [chart_file]},
                "result": (chart, csv_text(scorer.rows, scorer.segments), paths["csv"])}


def _summary_text(scorer: StreamingScorer, paths: dict) -> str:
    video = scorer.summary()["video"]
    parts = [f"{name} {video[name]:.2f}" for name in ("clip_t", "clip_i", "consistency") if video[name] is not None]
    return f"{video['frames']} frames scored: " + ", ".join(parts) + f" — {paths['csv']}"


class StreamScores:
    """The stream node's optional live scores: a ``LiveScorer`` fed with each decoded piece (the frames to score
    embedded in one forward per block; with ``budget_percent`` the stride follows the measured time), the new rows
    sent with the block's last piece (``payload``), the CSV/JSON/PNG written beside the video at the end (also
    when the run is stopped)."""

    def __init__(self, clip_scorer, every_n: int, prompts: str = "", reference=None, budget_percent: float = 0.0):
        from ..clip_vision.score_stream import LiveScorer

        _check_scorer(clip_scorer)
        self.live = LiveScorer(clip_scorer.scorer(prompts, reference, every_n), budget_percent=budget_percent)
        self.scorer = self.live.scorer

    @classmethod
    def from_inputs(cls, score_clip=None, score_every_n_frames=0, score_prompts="", score_reference=None,
                    score_budget_percent=0.0):
        """None when scoring is off (the default: no scorer connected, or every 0 frames); errors before any
        block is sampled."""
        if score_clip is None and int(score_every_n_frames) > 0:
            raise ValueError("score_every_n_frames is set but score_clip is not connected: connect Load CLIP for "
                             "Scores (ClipWan), or set score_every_n_frames to 0 (off).")
        if score_clip is None or int(score_every_n_frames) <= 0:
            if score_clip is not None:
                log.info("Causal Wan Stream Video: score_clip is connected but score_every_n_frames is 0: no scores")
            return None
        return cls(score_clip, int(score_every_n_frames), score_prompts, score_reference, score_budget_percent)

    def update(self, piece) -> dict:
        """Take the piece's frames (batch item 0); returns the fields to add to its live-player payload (the
        scores of its block once the block is complete)."""
        rows = self.live.add(piece.frames[0], piece.frame_start, piece.index, piece.block_done)
        payload = {"scores": [{"frame": r.frame, "clip_t": r.clip_t, "clip_i": r.clip_i,
                               "consistency": r.consistency} for r in rows]}
        if piece.frame_start == 0:
            payload["score_segments"] = [[s, p] for s, p in self.scorer.segments]
        return payload

    def save(self, video_path: str) -> dict:
        self.live.finish()  # a run stopped inside a block: its held frames too
        stem = os.path.splitext(video_path)[0] + SCORE_SUFFIX
        return save_scores(self.scorer, stem, "dark", f"CLIP scores — {os.path.basename(video_path)}")


NODE_CLASS_MAPPINGS = {"LoadCLIPScorer": LoadCLIPScorer, "ScoreVideoCLIP": ScoreVideoCLIP}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadCLIPScorer": "Load CLIP for Scores (ClipWan)",
                              "ScoreVideoCLIP": "Score Video with CLIP (ClipWan)"}
