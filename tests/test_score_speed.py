"""Live CLIP scores within the time budget: ``LiveScorer`` (one vision forward per block, the frames to score
picked as pieces arrive) gives the scores of an independent open_clip computation of the same frames; the
``score_budget_percent`` stride is the smallest one whose measured cost fits the budget (a clock the test
drives); the setting is declared once, optional and off by default (old workflows keep a fixed stride);
``bench stream`` reports every setting."""

import math

import pytest
import safetensors.torch
import torch

import open_clip
from test_clip_scores import PROMPTS, SIZE, assert_rows, expected_scores, frames_for, oracle_pixels
from test_clip_scores import openclip_model  # noqa: F401 (the fixture)

from comfyui_clipwan.clip_vision import default_clip_vision, load_clip_vision
from comfyui_clipwan.clip_vision.score_stream import LiveScorer, StrideBudget
from comfyui_clipwan.clip_vision.scores import StreamingScorer
from comfyui_clipwan.clip_vision.text_tower import load_text_tower
from comfyui_clipwan.wan.sampling import settings_spec as spec


def wan_pieces(latent_frames: int, frames_per_block: int = 3):
    """``(frame_start, count, block, block_done)`` of a Wan 2.1 stream: one piece per latent frame (the first
    1 video frame, the others 4), ``frames_per_block`` latent frames per block, written from the VAE's rule."""
    out, start = [], 0
    for k in range(latent_frames):
        count = 1 if k == 0 else 4
        block, last = k // frames_per_block, (k + 1) % frames_per_block == 0 or k == latent_frames - 1
        out.append((start, count, block, last))
        start += count
    return out


@pytest.fixture(scope="module")
def towers(tmp_path_factory, openclip_model):
    path = tmp_path_factory.mktemp("oc") / "open_clip_tiny.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_model.state_dict().items()}, str(path))
    (path.parent / "config.json").write_text('{"text_config": {"hidden_act": "gelu", "num_attention_heads": 1}}')
    return load_clip_vision(path), load_text_tower(path)


@pytest.mark.parametrize("every", [1, 3])
def test_one_forward_per_block_equals_open_clip(towers, openclip_model, every):
    vision, text = towers
    frames = frames_for(21, seed=6)  # 6 latent frames: blocks of 3 -> 9 + 12 video frames
    segments = [(0, PROMPTS[0]), (10, PROMPTS[1])]
    forwards = []
    embed = vision.model.embed  # the tower's first step: counts its forwards and their batch sizes
    vision.model.embed = lambda pixels: forwards.append(pixels.shape[0]) or embed(pixels)
    try:
        live = LiveScorer(StreamingScorer(vision, text, segments, every_n=every))
        got = []
        for start, count, block, done in wan_pieces(6):
            got += live.add(frames[start:start + count], start, block, done)
    finally:
        del vision.model.embed
    picked = list(range(0, 21, every))
    assert [r.frame for r in got] == picked == [r.frame for r in live.rows]
    assert [r.block for r in got] == [0 if f < 9 else 1 for f in picked]
    assert forwards == [len([f for f in picked if f < 9]), len([f for f in picked if f >= 9])]  # one per block
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        img = openclip_model.encode_image(oracle_pixels(frames[picked]))
        txt = openclip_model.encode_text(tokenizer(PROMPTS[:2]))
    assert_rows(got, *expected_scores(img, txt[[int(f >= 10) for f in picked]], img[:1]))


def test_held_frames_of_a_stopped_block_are_scored_by_finish(towers):
    vision, _ = towers
    frames = frames_for(9, seed=2)
    live = LiveScorer(StreamingScorer(vision, every_n=2))
    assert live.add(frames[:1], 0, 0, False) == [] and live.add(frames[1:5], 1, 0, False) == []
    assert [r.frame for r in live.finish()] == [0, 2, 4]  # the run stopped inside block 0
    assert live.finish() == []


def test_stride_budget_is_the_cost_formula():
    budget = StrideBudget(0.10)
    assert budget.stride(12) is None  # nothing measured: score one frame to measure
    budget.record(stream_s=2.0, scoring_s=0.3, scored_frames=3)  # 0.1 s a frame, 2 s a block
    # within 10 %: 0.2 s a block = 2 frames of 12 -> every 6th frame
    assert budget.stride(12) == 6
    assert StrideBudget(0.10, min_stride=8).stride(12) is None
    low = StrideBudget(0.10, min_stride=8)
    low.record(2.0, 0.3, 3)
    assert low.stride(12) == 8  # never below the stride asked for
    budget.record(stream_s=1.0, scoring_s=0.1, scored_frames=1)  # moving average: T 1.5 s, c 0.1 s
    assert budget.stride(12) == math.ceil(12 / (0.10 * 1.5 / 0.1))
    with pytest.raises(ValueError, match="budget must be > 0"):
        StrideBudget(0)


class DrivenClock:
    """Seconds the test decides: the stream's time passes between pieces, the scoring's inside each forward."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_budget_stride_keeps_measured_cost_within_budget(towers):
    vision, _ = towers
    clock, per_frame, per_block = DrivenClock(), 0.05, 1.1  # 50 ms a scored frame, 1.1 s a block of 12 frames
    scorer = StreamingScorer(vision, every_n=1)
    update = scorer.update_frames

    def timed(frames, numbers, block=0):
        clock.now += per_frame * len(numbers)
        return update(frames, numbers, block)

    scorer.update_frames = timed
    live = LiveScorer(scorer, budget_percent=10, clock=clock)
    frames = torch.rand(1, SIZE, SIZE, 3).expand(4, -1, -1, -1)
    for start, count, block, done in wan_pieces(60):  # 20 blocks
        clock.now += per_block / 3  # the stream's own time for this piece
        live.add(frames[:count], start, block, done)
    # 10 % of 1.1 s = 0.11 s = 2.2 frames of 50 ms per 12-frame block: every 6th frame (12 / 2.2 = 5.5, rounded up)
    assert live.strides[-1][1] == 6 and live.stride == 6
    later = [r.frame for r in live.rows if r.frame >= 60]
    assert all(b - a == 6 for a, b in zip(later, later[1:]))
    stats = live.stats()
    assert stats["ratio"] <= 0.10 + 1e-9 and stats["blocks"] == 20
    # the stream's time is counted from the first decoded piece (its sampling before is not seen)
    assert stats["stream_s"] == pytest.approx(20 * per_block - per_block / 3)


def test_score_budget_setting_declared_once_optional_and_off_by_default():
    s = spec.get("score_budget_percent")
    assert s.nodes == (spec.STREAM,) and s.since == spec.LAYOUT_VERSION and s.widget_default == 0.0
    layouts = spec.widget_layouts(spec.STREAM)
    assert "score_budget_percent" in layouts[-1] and "score_budget_percent" not in layouts[-2]
    # appended after the earlier layout: a workflow saved before keeps its values in place
    assert layouts[-1][:len(layouts[-2])] == layouts[-2]
    required, optional = spec.node_inputs(spec.STREAM)
    assert "score_budget_percent" in optional and "score_budget_percent" not in required
    assert spec.get("score_budget_percent").check(150.0) is not None
    with pytest.raises(ValueError, match="score budget must be 0"):
        LiveScorer(StreamingScorer(default_clip_vision("ViT-B/32", layers=1)), budget_percent=-1)


def test_bench_stream_reports_each_setting(tmp_path, capsys):
    import argparse

    from comfyui_clipwan.benchmarks import bench_stream

    parser = argparse.ArgumentParser()
    bench_stream.add_arguments(parser)
    args = parser.parse_args(["--quick", "--skip-memory", "--score-every", "2,auto", "--score-per-piece", "--json",
                              str(tmp_path / "b.json")])
    assert bench_stream.run(args) == 0
    import json

    scores = json.loads((tmp_path / "b.json").read_text())["scores"]
    assert set(scores["runs"]) == {"2", "2:piece", "auto"}
    for run in scores["runs"].values():
        assert run["ratio"] == pytest.approx(run["scoring_s"] / run["stream_s"]) and run["scored_frames"] >= 1
    assert scores["runs"]["2"]["scored_frames"] == scores["runs"]["2:piece"]["scored_frames"] == 17  # 33, every 2nd
    assert scores["profile"]["forward_ms_one"] > 0 and scores["profile"]["png_ms"] > 0
    out = capsys.readouterr().out
    assert "auto (budget 10 %" in out and "scoring profile" in out


@pytest.mark.parametrize("name, layers", [("ViT-B/32", 2), ("ViT-H/14", 1)])
def test_embeds_only_equal_the_full_forward(name, layers):
    """The CLS-only last block gives the full forward's image_embeds (QuickGELU B/32, GELU H/14; a 1-block tower:
    the last block is the first)."""
    from comfyui_clipwan.clip_vision.embeds_only import image_embeds

    vision = default_clip_vision(name, seed=3, layers=layers)
    frames = torch.rand(3, 40, 56, 3, generator=torch.Generator().manual_seed(1))
    full = vision.encode_image(frames, crop="center").image_embeds
    fast = image_embeds(vision, frames)
    assert fast.shape == full.shape and (fast - full).abs().max() <= 1e-5 * full.abs().max()
    assert (image_embeds(vision, frames[:1]) - full[:1]).abs().max() <= 1e-5 * full.abs().max()


def test_stream_node_scores_take_the_budget_and_default_to_a_fixed_stride():
    from comfyui_clipwan.nodes.score_nodes import ClipScorerModels, StreamScores

    models = ClipScorerModels(default_clip_vision("ViT-B/32", layers=1), None, "test")
    fixed = StreamScores.from_inputs(models, 4)  # a workflow saved before the setting: no budget input
    assert fixed.live.budget is None and fixed.live.every_n == 4
    budget = StreamScores.from_inputs(models, 2, "", None, 10.0)
    assert budget.live.budget.budget == pytest.approx(0.10) and budget.live.budget.min_stride == 2
