"""Prompt timelines (wan/timeline): the file formats and their errors, the blend against a reference written here
from Scope's definition, the compiled schedule against the existing PromptSwitch path, and live changes replayed
exactly from the saved sidecar."""

import json
import math
import sys
import threading

import numpy as np
import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, WanConfig, sample_causal
from comfyui_clipwan.wan.sampling.loop import SamplerHooks, block_layout
from comfyui_clipwan.wan.timeline import LiveControl, Prompt, Segment, Timeline, blend, files, load, parse_text
from comfyui_clipwan.wan.timeline.files import parse_interactive, parse_scope

T2V = WanConfig(dim=128, ffn_dim=160, num_heads=2, num_layers=2, in_dim=16)
H = W = 8


@pytest.fixture(scope="module")
def model():
    sd = CausalWanModel.random(T2V, seed=3).state_dict()
    for k in sd:  # sharpened self-attention so cache rules show in the output
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return CausalWanModel.from_state_dict(sd)


def encoder(text):
    """A deterministic stand-in for umt5: each text its own random states (length from the text)."""
    g = torch.Generator().manual_seed(sum(map(ord, text)) % 10000)
    return torch.randn(1, 5 + len(text) % 7, 4096, generator=g)


# --- files ----------------------------------------------------------------------------------------------------
def test_plain_text_form():
    t = parse_text("# a comment\n0: a red fox walks\n\n4: the fox jumps\n"
                   "8 blend 3 slerp: a wolf :: 0.7 | a fox :: 0.3\n"
                   "2.5s: at a time\nf40: at a latent frame", fps=16)
    assert [s.block for s in t.segments] == [0, 4, 8, None, None]
    assert t.segments[2].transition == "blend" and t.segments[2].blend_blocks == 3
    assert t.segments[2].interpolation == "slerp"
    assert [(p.text, p.weight) for p in t.segments[2].prompts] == [("a wolf", 0.7), ("a fox", 0.3)]
    assert t.segments[3].seconds == 2.5 and t.segments[4].frame == 40


@pytest.mark.parametrize("text, line, words", [
    ("0: ok\nfour: the fox", 2, "not a timeline line"),
    ("0: ok\n\n3 blend: x", 3, "without the number of blocks"),
    ("0: a :: heavy", 1, "weight 'heavy' is not a number"),
    ("1.5: half a block", 1, "must be a whole number"),
    ("0: a :: -1", 1, "must be >= 0"),
])
def test_plain_text_errors_name_the_line(text, line, words):
    with pytest.raises(ValueError) as err:
        parse_text(text, "t.txt")
    assert f"t.txt, line {line}" in str(err.value) and words in str(err.value)


SCOPE = {"prompts": [
    {"startTime": 0, "endTime": 1.0, "prompts": [{"text": "a cat", "weight": 100}]},
    {"startTime": 1.0, "endTime": 2.0, "prompts": [{"text": "a dog", "weight": 75}, {"text": "a cat", "weight": 25}],
     "transitionSteps": 2, "temporalInterpolationMethod": "slerp"},
    {"startTime": 2.0, "endTime": 3.0, "prompts": [{"text": "a bird", "weight": 100}], "transitionSteps": 0}],
    "settings": {"pipelineId": "longlive", "seed": 42}}


def test_scope_timeline_json(tmp_path):
    path = tmp_path / "timeline-test.json"
    path.write_text(json.dumps(SCOPE, indent=2))
    t = load(str(path), fps=16)
    assert [s.seconds for s in t.segments] == [0, 1.0, 2.0]
    assert [s.transition for s in t.segments] == ["switch", "blend", "switch"]
    assert t.segments[1].interpolation == "slerp" and t.segments[1].blend_blocks == 2
    # 1 s at 16 fps = output frame 16 -> latent frame 4 (frames 13..16) -> the first block from frame 4 (blocks of 3:
    # starts 0, 3, 6 ...) is block 2 (frame 6); 2 s = frame 32 -> latent 8 -> block 3 (frame 9)
    layout = block_layout(21, 3)
    assert [t.start_block(s, layout) for s in t.segments] == [0, 2, 3]


def test_scope_errors_name_the_line(tmp_path):
    bad = {"prompts": [{"startTime": 2, "endTime": 3, "prompts": [{"text": "b", "weight": 1}]},
                       {"startTime": 1, "endTime": 2, "prompts": [{"text": "a", "weight": 1}]}]}
    raw = json.dumps(bad, indent=2)
    line = next(i for i, text in enumerate(raw.splitlines(), 1) if '"startTime": 1' in text)
    with pytest.raises(ValueError, match=r"prompts\[1\] \(line %d\).*before the previous.*order the entries" % line):
        parse_scope(bad, "x.json", raw)
    path = tmp_path / "broken.json"
    path.write_text('{"prompts": [\n {"startTime": 0,,}\n]}')
    with pytest.raises(ValueError, match=r"broken.json, line 2: not valid JSON"):
        load(str(path))
    with pytest.raises(ValueError, match=r"prompts\[0\].prompts\[0\].*no text"):
        parse_scope({"prompts": [{"startTime": 0, "prompts": [{"weight": 1}]}]}, "y.json")


def test_interactive_jsonl(tmp_path):
    path = tmp_path / "interactive_example.jsonl"
    path.write_text('{"prompts": ["a", "b", "c"]}\n{"prompts": ["d", "e", "f"]}\n')
    t = load(str(path), switch_frames=[6, 12], line=2)
    assert [(s.frame, s.prompts[0].text) for s in t.segments] == [(0, "d"), (6, "e"), (12, "f")]
    assert [t.start_block(s, block_layout(15, 3)) for s in t.segments] == [0, 2, 4]
    with pytest.raises(ValueError, match=r"line 1: 3 prompts need 2 switch frame\(s\), got 1.*--switch-frames"):
        parse_interactive(path.read_text(), [6], 1, "interactive_example.jsonl")
    with pytest.raises(ValueError, match=r"line 3 asked for, the file has 2"):
        parse_interactive(path.read_text(), [6, 12], 3)


# --- blend: Scope's definition, restated independently in float64 numpy -----------------------------------------
def _ref_slerp(a, b, t):
    a, b = a.astype(np.float64), b.astype(np.float64)
    na = a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)
    nb = b / (np.linalg.norm(b, axis=-1, keepdims=True) + 1e-8)
    om = np.arccos(np.clip((na * nb).sum(-1, keepdims=True), -1, 1))
    if np.abs(om).max() < 1e-4:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * om) * a + np.sin(t * om) * b) / (np.sin(om) + 1e-8)


def _pad(e):
    out = np.zeros((1, max(512, e.shape[1]), e.shape[2]))
    out[:, :e.shape[1]] = e
    return out


def test_mix_and_transition_equal_the_definition():
    a, b, c = (encoder(x).numpy() for x in ("a fox", "a wolf in the snow", "x"))
    # linear mix of three: weights normalised, weighted sum rescaled to the weighted mean of the norms
    w = np.array([50.0, 30.0, 20.0]) / 100
    ps = [_pad(a), _pad(b), _pad(c)]
    s = sum(wi * p for wi, p in zip(w, ps))
    ref = s * (sum(wi * np.linalg.norm(p) for wi, p in zip(w, ps)) / np.linalg.norm(s))
    got = blend.mix([torch.from_numpy(x) for x in (a, b, c)], [50, 30, 20], "linear")
    assert np.abs(got.double().numpy() - ref).max() < 1e-5
    # slerp mix of two at t = normalised second weight
    got = blend.mix([torch.from_numpy(a), torch.from_numpy(b)], [1, 3], "slerp")
    assert np.abs(got.double().numpy() - _ref_slerp(_pad(a), _pad(b), 0.75)).max() < 1e-5
    # transitions over 4 blocks: t = 0, 1/3, 2/3, 1
    for method in ("linear", "slerp"):
        steps = blend.transition(torch.from_numpy(a), torch.from_numpy(b), 4, method)
        for k, e in enumerate(steps):
            t = k / 3
            ref = (1 - t) * _pad(a) + t * _pad(b) if method == "linear" else _ref_slerp(_pad(a), _pad(b), t)
            assert np.abs(e.double().numpy() - ref).max() < 1e-5, (method, k)
    assert blend.transition(torch.from_numpy(a), torch.from_numpy(a) + 1e-5, 4) == []  # too close: no transition
    # sharp: slerp differs from linear in the middle of the transition
    mid_l = blend.transition(torch.from_numpy(a), torch.from_numpy(b), 3, "linear")[1]
    mid_s = blend.transition(torch.from_numpy(a), torch.from_numpy(b), 3, "slerp")[1]
    assert (mid_l - mid_s).abs().max() > 1e-2


# --- the schedule and the loop ----------------------------------------------------------------------------------
SETTINGS = CausalSettings(steps=[1000, 500], frames_per_block=2, sink_size=2, local_window=6, recache="joint")


def _run(model, timeline=None, switches=(), text=None, hooks=None, settings=SETTINGS, frames=10):
    return sample_causal(model, torch.zeros(1, 16, frames, H, W), text, seed=5, settings=settings,
                         prompt_switches=list(switches), timeline=timeline, hooks=hooks)


def test_switch_timeline_equals_prompt_switches(model):
    t = parse_text("0: a fox\n2: a wolf\n4: a bird").encode(encoder)
    ours = _run(model, timeline=t)
    old = _run(model, text=encoder("a fox"), switches=[PromptSwitch(2, encoder("a wolf")),
                                                        PromptSwitch(4, encoder("a bird"))])
    assert torch.equal(ours, old)
    # sharp: a timeline whose second prompt starts one block later differs from block 2 on
    later = _run(model, timeline=parse_text("0: a fox\n3: a wolf\n4: a bird").encode(encoder))
    assert torch.equal(later[:, :, :4], ours[:, :, :4]) and (later[:, :, 4:6] - ours[:, :, 4:6]).abs().max() > 1e-3


def test_blend_equals_context_only_switches(model):
    """A blend over 3 blocks = the cross-attention text set per block to the reference blend, the cache untouched
    (recache 'none' PromptSwitches with the numpy reference's tensors)."""
    t = parse_text("0: a fox\n2 blend 3: a wolf").encode(encoder)
    ours = _run(model, timeline=t)
    a, b = _pad(encoder("a fox").numpy()), _pad(encoder("a wolf").numpy())
    ref = [torch.from_numpy((1 - k / 2) * a + (k / 2) * b).float() for k in range(3)]
    settings = CausalSettings(**{**SETTINGS.__dict__, "recache": "none"})
    old = _run(model, text=encoder("a fox"), settings=settings,
               switches=[PromptSwitch(2 + k, e) for k, e in enumerate(ref)])
    assert (ours - old).abs().max() < 1e-5
    switched = _run(model, timeline=parse_text("0: a fox\n2: a wolf").encode(encoder))
    assert (switched[:, :, 4:] - ours[:, :, 4:]).abs().max() > 1e-3  # sharp: a blend is not a switch


def test_frame_prompts_for_scores():
    t = parse_text("0: a fox\n2: a wolf\n4 blend 2: a bird :: 1 | a cat :: 3")
    layout = block_layout(10, 2)
    # block 2 starts at latent frame 4 -> output frame 13; block 4 at latent 8 -> output 29
    assert t.frame_prompts(layout) == [(0, "a fox"), (13, "a wolf"), (29, "a cat")]
    assert parse_text("2: b").frame_prompts(layout, initial_text="a") == [(0, "a"), (13, "b")]


def test_both_switches_and_timeline_refused(model):
    with pytest.raises(ValueError, match="not both"):
        _run(model, timeline=parse_text("0: a").encode(encoder), text=encoder("a"),
             switches=[PromptSwitch(1, encoder("b"))])


# --- live ---------------------------------------------------------------------------------------------------------
class _PostDuring(SamplerHooks):
    """Plays the user: sends a prompt from another thread while block ``at`` is being sampled."""

    def __init__(self, live, at, text):
        self.live, self.at, self.text, self.done = live, at, text, []

    def on_step(self, block, step, total_steps):
        if block == self.at and step == 0:
            th = threading.Thread(target=self.live.request, args=(self.text,))
            th.start()
            th.join()
            self.live.wait_encoded()

    def on_block(self, result):
        self.done.append(result.index)
        self.live.mark_block_done(result.index)


def test_live_prompt_applies_at_next_block_and_replays_exactly(model, tmp_path):
    t = parse_text("0: a fox").encode(encoder)
    t.live = LiveControl(encoder)
    hooks = _PostDuring(t.live, 1, "a wolf")
    live_run = _run(model, timeline=t, hooks=hooks)
    [event] = t.live.status()
    assert event["block"] == 2 and event["state"] == "applied" and event["first_frame"] >= event["applied"]
    assert [(s.block, s.label) for s in t.segments] == [(0, "a fox"), (2, "a wolf")]
    path = files.save(t, str(tmp_path / "run.timeline.json"), block_layout(10, 2))
    replay_t = load(path)  # embeddings from the .safetensors beside it: no encoder needed
    assert replay_t.texts() == []
    replay = _run(model, timeline=replay_t)
    assert torch.equal(replay, live_run)
    plain = _run(model, timeline=parse_text("0: a fox").encode(encoder))
    assert torch.equal(plain[:, :, :4], live_run[:, :, :4])
    assert (plain[:, :, 4:] - live_run[:, :, 4:]).abs().max() > 1e-3
    t.live.close()


def test_live_needs_an_encoder_for_text():
    with pytest.raises(ValueError, match="no text encoder"):
        LiveControl(None).request("a wolf")


def test_bench_live_quick(tmp_path):
    """``bench live --quick`` runs and reports every live request applied, the loop's per-boundary bookkeeping tiny."""
    import argparse

    from comfyui_clipwan.benchmarks import bench_live

    parser = argparse.ArgumentParser()
    bench_live.add_arguments(parser)
    args = parser.parse_args(["--quick", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert bench_live.run(args) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    normal = figures["encoder"]["normal"]
    assert normal["applied"] == normal["requests"] == 2
    for kind in figures["encoder"].values():  # background: a busy machine may hold a change back past the run
        assert all(b >= 1 for b in kind["latency_blocks"])  # never before the boundary after the request
    assert figures["pre_encoded_latency_blocks"] == [1, 1]  # a ready change: the very next block
    assert figures["take_us_with_change"] < 0.05 * 1e6 * figures["block_s_plain_median"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_live_encoder_background_priority_lowers_only_the_worker_thread():
    """``priority="background"``: the encoding thread (and the intra-op threads it starts) run at nice 19, read
    back from /proc; the sampling thread keeps its priority; ``normal`` leaves the worker as it is."""
    import os
    import threading

    from comfyui_clipwan.wan.timeline import LiveControl

    def nice_of(tid) -> int:
        return int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])

    seen = {}

    def encode(text):
        seen[text] = nice_of(threading.get_native_id())
        return torch.zeros(1, 2, 4)

    before = nice_of(threading.get_native_id())
    for priority in ("background", "normal"):
        live = LiveControl(encode, priority=priority)
        live.request(priority)
        live.wait_encoded()
        live.close()
    assert seen["background"] == min(19, before + 19) and seen["normal"] == before
    assert nice_of(threading.get_native_id()) == before == os.getpriority(os.PRIO_PROCESS, 0)
    with pytest.raises(ValueError, match="encoder priority 'idle' is not one of"):
        LiveControl(encode, priority="idle")
