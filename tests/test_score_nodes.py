"""CLIP scores in the nodes: Causal Wan Stream Video's optional live scores (off by default; on: each decoded
piece's scores in its live-player event, CSV/JSON/PNG beside the video, equal to scoring the same frames
offline, which tests/test_clip_scores.py checks against open_clip), Score Video with CLIP, and the web chart's
pure helpers under Node."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from comfyui_clipwan.clip_vision import default_clip_vision
from comfyui_clipwan.clip_vision.scores import read_csv, score_frames
from comfyui_clipwan.clip_vision.text_tower import default_text_tower
from comfyui_clipwan.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes.score_nodes import ClipScorerModels, ScoreVideoCLIP
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)
TIMELINE = "0: a red fox\n8: a blue whale"


@pytest.fixture(scope="module")
def scorer_models():
    return ClipScorerModels(default_clip_vision("ViT-B/32", seed=0, layers=2), default_text_tower(0), "test pair")


@pytest.fixture(scope="module")
def parts():
    model = CausalWanModel.random(CFG, seed=1)
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    return model, vae, [[text, {}]], {"samples": torch.zeros(1, 16, 6, 2, 4)}


def _stream(parts, **kw):
    model, vae, positive, latent = parts
    return CausalWanStreamVideo().stream(model=model, positive=positive, latent=latent, seed=5, vae=vae,
                                         steps="1000,500", frames_per_block=3, return_frames=True, **kw)


def test_registered():
    assert NODE_DISPLAY_NAME_MAPPINGS["ScoreVideoCLIP"] == "Score Video with CLIP (ClipWan)"
    assert NODE_DISPLAY_NAME_MAPPINGS["LoadCLIPScorer"] == "Load CLIP for Scores (ClipWan)"
    optional = CausalWanStreamVideo.INPUT_TYPES()["optional"]
    assert optional["score_every_n_frames"][1]["default"] == 0 and "score_clip" in optional
    assert NODE_CLASS_MAPPINGS["ScoreVideoCLIP"] is ScoreVideoCLIP


def test_stream_scores_live_and_beside_the_video(parts, scorer_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = []
    monkeypatch.setattr(bridge, "prompt_server", lambda: object())
    monkeypatch.setattr(bridge, "send_ui_event", lambda ev, data, client_id=None: events.append(data) or True)
    out = _stream(parts, score_clip=scorer_models, score_every_n_frames=2, score_prompts=TIMELINE, unique_id="3")
    frames, path = out["result"][1], out["result"][2]
    live = [row for e in events for row in e.get("scores", [])]
    assert [r["frame"] for r in live] == list(range(0, 21, 2))  # every 2nd of 21 frames, as they were decoded
    assert events[0]["score_segments"] == [[0, "a red fox"], [8, "a blue whale"]]
    # one vision forward per block: a block's scores arrive with its last piece (9 frames, then 12)
    assert [len(e["scores"]) for e in events] == [0, 0, 5, 0, 0, 6]
    # the same numbers as scoring the returned frames in one go, and the CSV beside the video holds them
    offline = score_frames(scorer_models.vision, frames, scorer_models.text, TIMELINE, every_n=2)
    saved = read_csv(str(Path(path).with_suffix("")) + ".clip_scores.csv")
    for a, b, c in zip(live, offline.rows, saved):
        for name in ("clip_t", "clip_i", "consistency"):
            x, y, z = a[name], getattr(b, name), getattr(c, name)
            assert (x is None and y is None and z is None) or (abs(x - y) <= 1e-4 and abs(x - z) <= 1e-5)
    assert [c.segment for c in saved] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert Path(path[:-4] + ".clip_scores.png").stat().st_size > 10_000


def test_stream_scores_off_by_default_and_clear_errors(parts, scorer_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = []
    monkeypatch.setattr(bridge, "prompt_server", lambda: object())
    monkeypatch.setattr(bridge, "send_ui_event", lambda ev, data, client_id=None: events.append(data) or True)
    path = _stream(parts)["result"][2]
    assert events and not any("scores" in e for e in events)
    assert not list(Path(path).parent.glob("*.clip_scores.*"))
    _stream(parts, score_clip=scorer_models)  # connected but every 0 frames: off
    assert not list(Path(path).parent.glob("*.clip_scores.*"))
    with pytest.raises(ValueError, match="score_clip is not connected"):
        _stream(parts, score_every_n_frames=4)
    with pytest.raises(ValueError, match="no start frame"):
        _stream(parts, score_clip=scorer_models, score_every_n_frames=4, score_prompts="0: a\nb")


def test_score_video_node_on_images(scorer_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frames = torch.rand(7, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    out = ScoreVideoCLIP().score(scorer_models, prompts=TIMELINE, every_n_frames=3, images=frames,
                                 filename_prefix="runs/s", theme="light")
    chart, table, path = out["result"]
    assert chart.shape == (1, 360, 800, 3)
    rows = list(csv.DictReader(table.splitlines()))
    assert [int(r["frame"]) for r in rows] == [0, 3, 6] and rows[0]["consistency"] == ""
    offline = score_frames(scorer_models.vision, frames, scorer_models.text, TIMELINE, every_n=3)
    assert abs(float(rows[2]["clip_t"]) - offline.rows[2].clip_t) < 1e-5
    assert path == str(tmp_path / "output" / "runs" / "s_00001_.csv")
    assert json.loads(Path(path[:-4] + ".json").read_text())["summary"]["video"]["frames"] == 3
    assert out["ui"]["images"] == [{"filename": "s_00001_.png", "subfolder": "runs", "type": "output"}]
    with pytest.raises(ValueError, match="either images .* or video"):
        ScoreVideoCLIP().score(scorer_models, images=None)
    with pytest.raises(ValueError, match="Load CLIP for Scores"):
        ScoreVideoCLIP().score(object(), images=frames)


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node (JavaScript) is not installed")
def test_web_chart_geometry():
    logic = (Path(__file__).resolve().parent.parent / "web" / "clipwan_logic.js").as_uri()
    body = """
      let s = L.mergeScores(null, {frame_start: 0, score_segments: [[0, "a"], [8, "b"]],
        scores: [{frame: 0, clip_t: 20, clip_i: 100, consistency: null}, {frame: 4, clip_t: 30, clip_i: 90, consistency: 95}]});
      s = L.mergeScores(s, {frame_start: 5, scores: [{frame: 8, clip_t: 25, clip_i: 80, consistency: 94}]});
      const chart = L.scoreChart(s, 204, 104, 2);
      const fresh = L.mergeScores(s, {frame_start: 0, scores: []});
      return {chart, caption: L.scoreCaption(s), rows: s.rows.length, fresh: fresh.rows.length};"""
    script = f"import * as L from {json.dumps(logic)};\nconst out = (() => {{ {body} }})();\n" \
             "process.stdout.write(JSON.stringify(out));"
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # x: frames 0..8 over 2..202; y: scores 20..100 over 102..2
    assert out["chart"]["paths"]["clip_t"] == "M2.0,102.0 L102.0,89.5 L202.0,95.8"
    assert out["chart"]["paths"]["consistency"] == "M102.0,8.3 L202.0,9.5"  # starts where it exists (y(95) = 8.25)
    assert out["chart"]["switches"] == [{"x": 202, "frame": 8, "prompt": "b"}]
    assert out["chart"]["range"] == [20, 100]
    assert out["caption"] == "CLIP-T 25.0 · CLIP-I 80.0 · consistency 94.0"
    assert (out["rows"], out["fresh"]) == (3, 0)


def test_score_video_node_on_a_video_file_and_stream(scorer_models, tmp_path, monkeypatch):
    """A VIDEO socket (anything with get_stream_source: a path or an in-memory stream) is read a chunk at a time;
    the scores equal scoring the decoded frames."""
    import io

    from comfyui_clipwan.wan.video.writer import VideoWriter, read_video_frames

    monkeypatch.chdir(tmp_path)
    with VideoWriter(str(tmp_path / "v.mp4")) as w:
        w.write(torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(1)))
    decoded = torch.from_numpy(read_video_frames(str(tmp_path / "v.mp4"))).float() / 255
    offline = score_frames(scorer_models.vision, decoded, scorer_models.text, "a cat", every_n=2)

    class FileVideo:
        def __init__(self, source):
            self.source = source

        def get_stream_source(self):
            return self.source

    for source in (str(tmp_path / "v.mp4"), io.BytesIO((tmp_path / "v.mp4").read_bytes())):
        table = ScoreVideoCLIP().score(scorer_models, prompts="a cat", every_n_frames=2, video=FileVideo(source))
        rows = list(csv.DictReader(table["result"][1].splitlines()))
        assert [int(r["frame"]) for r in rows] == [0, 2, 4]
        assert all(abs(float(r["clip_t"]) - o.clip_t) < 1e-5 for r, o in zip(rows, offline.rows))


def test_stream_scores_follow_a_connected_prompt_timeline(parts, scorer_models, tmp_path, monkeypatch):
    """With a prompt timeline and no score_prompts, CLIP-T scores each frame against the timeline's prompt that
    conditions it (the text timeline's switch at block 1 = latent frame 3 = pixel frame 9)."""
    from comfyui_clipwan.nodes import timeline_nodes as tn

    class TextClip:  # ComfyUI's CLIP interface, states of the model's text width
        def tokenize(self, text):
            return text

        def encode_from_tokens_scheduled(self, tokens):
            g = torch.Generator().manual_seed(sum(map(ord, tokens)))
            return [[torch.randn(1, 5, 32, generator=g), {"pooled_output": None}]]

    monkeypatch.chdir(tmp_path)
    events = []
    monkeypatch.setattr(bridge, "prompt_server", lambda: object())
    monkeypatch.setattr(bridge, "send_ui_event", lambda ev, data, client_id=None: events.append(data) or True)
    (timeline,) = tn.CausalWanTimelineFromText().build(TextClip(), "0: a red fox\n1: a blue whale")
    out = _stream(parts, score_clip=scorer_models, score_every_n_frames=4, timeline=timeline, unique_id="4")
    assert events[0]["score_segments"] == [[0, "a red fox"], [9, "a blue whale"]]
    frames = out["result"][1]
    offline = score_frames(scorer_models.vision, frames, scorer_models.text, "0: a red fox\n9: a blue whale",
                           every_n=4)
    live = [row for e in events for row in e.get("scores", [])]
    assert [r["frame"] for r in live] == [r.frame for r in offline.rows]
    assert all(abs(a["clip_t"] - b.clip_t) <= 1e-4 for a, b in zip(live, offline.rows))
