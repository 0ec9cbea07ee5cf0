"""LongLive 2.0's multi-shot mode (wan/sampling/multishot.py) on tiny models: the pinned-sink cache against the
authors' buffer arithmetic rewritten here in frames, the loop's RoPE positions, prompt texts and cache per block,
scene cuts in timeline files and nodes, and the errors. Parity with the authors' pipeline: tests/upstream."""

import dataclasses
import json

import pytest
import torch

from comfyui_clipwan.nodes import timeline_nodes as tn
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.model.rope import rope_cos_sin
from comfyui_clipwan.wan.sampling.loop import SamplerHooks, block_layout
from comfyui_clipwan.wan.sampling.multishot import MultiShotLoop, ShotCache
from comfyui_clipwan.wan.sampling.presets import LONGLIVE2_SCENE_CUT_PREFIX as PREFIX
from comfyui_clipwan.wan.sampling.presets import get_preset
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks
from comfyui_clipwan.wan.timeline import LiveControl, files, load, parse_text

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)
H = W = 4
SHOTS = CausalSettings(steps=[1000, 500], frames_per_block=2, sink_size=2, local_window=6, recache="none",
                       multi_shot_sink=True, multi_shot_rope_offset=8.0, scene_cut_prefix=PREFIX)
TIMELINE = "0: a red fox\n3 cut: a lighthouse at dusk\n5 cut: a train in the snow"


@pytest.fixture(scope="module")
def model():
    sd = CausalWanModel.random(CFG, seed=1).state_dict()
    for k in sd:  # sharpened self-attention: which frames are cached, and where, shows in the output
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return CausalWanModel.from_state_dict(sd)


def encoder(text):
    g = torch.Generator().manual_seed(sum(map(ord, text)) % 10000)
    return torch.randn(1, 6, 32, generator=g) * 3


# --- the cache rule ----------------------------------------------------------------------------------------------
def longlive_buffers(layout, cuts, sink, window):
    """LongLive 2.0's KV buffer, restated in frames from its code (CausalWanSelfAttention.forward with
    global_sink_size = sink_size, _apply_cache_updates, the pipeline's _pin_current_chunk): for each block, the frame
    ids in the buffer slots its forwards attend (slots [0, local_end) after the block's roll and insert)."""
    buf, local_end, pin_start, pin_len = [None] * window, 0, -1, 0
    seen = []
    for b, (start, n) in enumerate(layout):
        has_pin = pin_start >= 0 and pin_len > 0
        effective_sink = sink + pin_len if has_pin and pin_start == sink else sink
        new = list(range(start, start + n))
        if n + local_end > window:
            evicted = n + local_end - window
            rolled = local_end - evicted - effective_sink
            old = list(buf)
            for i in range(max(rolled, 0)):
                buf[effective_sink + i] = old[effective_sink + evicted + i]
            local_end = local_end + n - evicted
            if has_pin and pin_start >= effective_sink:
                pin_start -= evicted
        else:
            local_end += n
        buf[local_end - n:local_end] = new
        seen.append(list(buf[:local_end]))
        if b in cuts and b > 0 and sink:
            pin_start, pin_len = local_end - n, min(sink, n)
    return seen


@pytest.mark.parametrize("sink,window,n,frames,iff,cuts,pin_shows", [
    (8, 32, 8, 96, False, {3, 6}, True),  # the shipped config: a floating pin joins the sink, a 2nd cut replaces it
    (2, 6, 2, 30, False, {4, 5, 7, 11}, True),  # cuts in a row
    (2, 4, 2, 16, False, {3, 5}, False),  # a window of exactly sink + block: the new block overwrites the pin
    (3, 9, 2, 25, True, {2, 6}, True),  # a sink longer than a block: the pin is the block
    (3, 8, 2, 24, False, {2, 6}, False),  # ... whose pin rolls out before it reaches the sink (theirs too)
    (2, 5, 2, 21, True, {3, 6}, False),  # a window that is not whole blocks
    (1, 7, 3, 31, True, {2, 4, 7}, True),  # a sink shorter than a block, an independent first frame
])
def test_shot_cache_equals_longlives_buffer(sink, window, n, frames, iff, cuts, pin_shows):
    layout = block_layout(frames, n, iff)
    want = longlive_buffers(layout, cuts, sink, window)
    cache = ShotCache(1, 1, 1, 2, 1, window, sink, window)
    got = []
    for b, (start, size) in enumerate(layout):
        cache.begin_block(start, size)
        got.append(cache.frames + list(range(start, start + size)))
        cache.commit()
        if b in cuts:
            cache.pin_last(size)
    assert got == want
    # without cuts it is the plain sink + window cache; with them it keeps other frames where a pin can act
    plain = ShotCache(1, 1, 1, 2, 1, window, sink, window)
    no_pins = []
    for start, size in layout:
        plain.begin_block(start, size)
        no_pins.append(plain.frames + list(range(start, start + size)))
        plain.commit()
    assert no_pins == longlive_buffers(layout, set(), sink, window)
    assert (no_pins != want) == pin_shows


# --- the loop -----------------------------------------------------------------------------------------------------
class _Record(SamplerHooks):
    def __init__(self):
        self.kinds = []

    def on_forward_start(self, kind, block):
        self.kinds.append((kind, block))


def _run(model, timeline, settings=SHOTS, frames=16, **kw):
    return sample_causal(model, torch.zeros(1, 16, frames, H, W), None, seed=3, settings=settings,
                         timeline=timeline, **kw)


@pytest.mark.parametrize("positions", ["absolute", "slots"])
def test_loop_positions_texts_and_cache_per_block(model, monkeypatch, positions):
    """The cut blocks' RoPE positions move by cuts·φ (absolute positions only, as LongLive's relative RoPE), the cut
    block is conditioned on prefix + prompt and the shot's next block on the prompt, the cache holds LongLive's
    frames, and nothing is re-cached at a cut."""
    settings = dataclasses.replace(SHOTS, positions=positions, multi_shot_rope_offset=2.5)
    starts, real = [], dit.transformer

    def record(tree, cfg, x, t, ctx, start_frame=0, **kw):
        starts.append(start_frame)
        return real(tree, cfg, x, t, ctx, start_frame=start_frame, **kw)

    monkeypatch.setattr(dit, "transformer", record)
    hooks = _Record()
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 16, H, W), None, seed=3, settings=settings,
                              timeline=parse_text(TIMELINE).encode(encoder, cut_prefix=PREFIX), hooks=hooks)
    assert isinstance(loop, MultiShotLoop)
    cached = []
    for r in loop:
        cached.append(list(loop.branches[0].cache.frames) + list(range(r.start_frame, r.start_frame + 2)))
    layout = block_layout(16, 2)
    assert cached == longlive_buffers(layout, {3, 5}, 2, 6)
    # two denoising steps + one cache pass per block; positions frame + cuts·φ from each cut block on
    shots = [0, 0, 0, 1, 1, 2, 2, 2]
    want = [layout[b][0] + (2.5 * shots[b] if positions == "absolute" else 0) for b in range(8) for _ in range(3)]
    assert starts == want
    assert {k for k, _ in hooks.kinds} == {"context", "denoise", "cache"}  # no re-cache at a cut
    changes = loop.schedule.changes
    assert [(b, c.rule) for b, c in sorted(changes.items())] == [(3, "cut"), (4, "context"), (5, "cut"),
                                                                 (6, "context")]
    assert torch.equal(changes[3].text, encoder(PREFIX + "a lighthouse at dusk"))
    assert torch.equal(changes[4].text, encoder("a lighthouse at dusk"))


def test_endless_stream_runs_the_cuts(model):
    from comfyui_clipwan.wan.sampling.endless import endless_settings
    from comfyui_clipwan.wan.sampling.multishot import EndlessMultiShotLoop

    settings, _ = endless_settings(SHOTS)
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 16, H, W), None, seed=3, settings=settings, endless=True,
                              timeline=parse_text(TIMELINE).encode(encoder, cut_prefix=PREFIX))
    assert isinstance(loop, EndlessMultiShotLoop)
    cached = []
    for r in loop:
        cached.append(list(loop.branches[0].cache.frames) + list(range(r.start_frame, r.start_frame + 2)))
        if r.index == 10:
            break
    assert cached == longlive_buffers(block_layout(22, 2), {3, 5}, 2, 6)


def test_cut_changes_the_video_from_the_cut_on(model):
    timeline = parse_text(TIMELINE).encode(encoder, cut_prefix=PREFIX)
    shots = _run(model, timeline)
    before = _run(model, parse_text("0: a red fox").encode(encoder))
    assert torch.equal(shots[:, :, :6], before[:, :, :6])  # nothing happens before the first cut
    switches = _run(model, parse_text(TIMELINE.replace(" cut:", ":")).encode(encoder),
                    settings=dataclasses.replace(SHOTS, scene_cut_prefix=""))
    assert torch.equal(shots[:, :, :6], switches[:, :, :6])
    assert (shots[:, :, 6:] - switches[:, :, 6:]).abs().max() > 1e-3
    no_pin = _run(model, timeline, settings=dataclasses.replace(SHOTS, multi_shot_sink=False))
    assert (shots[:, :, 8:] - no_pin[:, :, 8:]).abs().max() > 1e-3  # the pin shows once the window slides past it
    # the prefix is encoded when the timeline is compiled if its encoder is kept (the ComfyUI text node's case)
    kept = parse_text(TIMELINE).encode(encoder)
    kept.encoder = encoder
    assert torch.equal(_run(model, kept), shots)


def test_cut_without_multi_shot_mode_is_refused_before_sampling(model):
    hooks = _Record()
    timeline = parse_text(TIMELINE).encode(encoder, cut_prefix=PREFIX)
    for settings, family in ((CausalSettings(steps=[1000, 500], frames_per_block=2), "custom"),
                             (dataclasses.replace(SHOTS, multi_shot_sink=False, multi_shot_rope_offset=0.0,
                                                  family="LongLive 1.0"), "LongLive 1.0")):
        with pytest.raises(ValueError) as err:
            _run(model, timeline, settings=settings, hooks=hooks)
        assert f"family '{family}' has no multi-shot mode" in str(err.value)
        assert "timeline text, line 2" in str(err.value) and "run family 'LongLive 2.0'" in str(err.value)
    with pytest.raises(ValueError, match="loop 'memory', which has no multi-shot rule"):
        _run(model, timeline, settings=dataclasses.replace(SHOTS, loop="memory"), hooks=hooks)
    # a cut whose prompt came as an embedding (no text, no encoder) cannot get the prefix
    with pytest.raises(ValueError, match="set scene_cut_prefix to ''"):
        _run(model, parse_text(TIMELINE).encode(encoder), hooks=hooks)
    assert hooks.kinds == []  # refused before any forward


def test_live_cut(model):
    timeline = parse_text("0: a red fox").encode(encoder)
    with pytest.raises(ValueError, match="no multi-shot mode"):
        LiveControl(encoder).request("a lighthouse", transition="cut")

    class CutAt(SamplerHooks):
        def on_step(self, block, step, total_steps):
            if block == 2 and step == 0:
                timeline.live.request("a lighthouse at dusk", transition="cut")
                timeline.live.wait_encoded()

    timeline.live = LiveControl(encoder, threaded=False)
    live = _run(model, timeline, hooks=CutAt())
    assert [(s.block, s.transition) for s in timeline.segments] == [(0, "switch"), (3, "cut")]
    planned = _run(model, parse_text("0: a red fox\n3 cut: a lighthouse at dusk").encode(encoder, cut_prefix=PREFIX))
    assert torch.equal(live, planned)
    timeline.live.close()


# --- files, settings, nodes ---------------------------------------------------------------------------------------
def test_cut_text_form_and_errors():
    t = parse_text("0: a fox\n4 cut: a lighthouse\n8 blend 2: a ship")
    assert [(s.block, s.transition) for s in t.segments] == [(0, "switch"), (4, "cut"), (8, "blend")]
    with pytest.raises(ValueError, match="t.txt, line 2: 'cut' takes no number of blocks"):
        parse_text("0: a\n4 cut 2: b", "t.txt")


def test_longlive_prompt_files(tmp_path):
    """Its saved per-block prompts (a block starting with the prefix is a cut) and its multi-shot caption folder
    (shot_durations.txt, else shots spread evenly), read into the same cuts."""
    per_block = (f"[0,1,2] a red fox\n[3] {PREFIX}a lighthouse\n[4] a lighthouse\n[5] {PREFIX}a train\n"
                 f"[6,7] a train\n")
    (tmp_path / "fox_prompts.txt").write_text(per_block)
    t = load(str(tmp_path / "fox_prompts.txt"))
    assert [(s.block, s.transition, s.label) for s in t.segments] == [
        (0, "switch", "a red fox"), (3, "cut", "a lighthouse"), (5, "cut", "a train")]
    shots = tmp_path / "caption" / "video1"
    shots.mkdir(parents=True)
    for i, caption in enumerate(["a red fox", "a lighthouse", "a train"], 1):
        (shots / f"{i:06d}.json").write_text(json.dumps({"caption": caption}))
    (shots / "global.json").write_text(json.dumps({"caption": "ignored"}))
    (shots / "shot_durations.txt").write_text("3, 2, 9")
    folder = load(str(shots), blocks=8)
    assert [(s.block, s.transition, s.label) for s in folder.segments] == [(s.block, s.transition, s.label)
                                                                          for s in t.segments]
    (shots / "shot_durations.txt").unlink()
    assert files.longlive_shot_prompts(["a", "b", "c"], 8) == ["a", "a", "a", PREFIX + "b", "b", "b", PREFIX + "c",
                                                               "c"]
    assert [s.block for s in load(str(shots), blocks=8).segments] == [0, 3, 6]
    with pytest.raises(ValueError, match="give the number of blocks"):
        load(str(shots))
    (tmp_path / "bad.txt").write_text("[0,1] a\n[1,2] b\n")
    with pytest.raises(ValueError, match="bad.txt, line 2: block 1 already has a prompt"):
        load(str(tmp_path / "bad.txt"))


def test_sidecar_replays_a_cut_exactly(model, tmp_path):
    t = parse_text(TIMELINE).encode(encoder, cut_prefix=PREFIX)
    first = _run(model, t)
    path = files.save(t, str(tmp_path / "run.timeline.json"), block_layout(16, 2))
    again = load(path)
    assert again.texts() == [] and again.segments[1].transition == "cut"
    assert torch.equal(_run(model, again), first)  # the prefixed embeddings came back too: no encoder needed


def test_rope_takes_fractional_positions():
    cos, sin = rope_cos_sin(12, 2.5, 2, 1, 1)
    # the frame pairs of a 12-wide head: 2 pairs, frequencies 1/10000^(0/4), 1/10000^(2/4)
    angles = torch.tensor([[2.5, 2.5 / 100], [3.5, 3.5 / 100]], dtype=torch.float64)
    assert torch.allclose(cos[:, 0, :2].double(), angles.cos(), atol=1e-7)
    assert torch.allclose(sin[:, 0, :2].double(), angles.sin(), atol=1e-7)
    assert torch.equal(rope_cos_sin(12, 3.0, 2, 1, 1)[0], rope_cos_sin(12, 3, 2, 1, 1)[0])


def test_longlive2_preset_and_settings():
    preset = get_preset("LongLive 2.0")
    assert (preset.multi_shot_sink, preset.multi_shot_rope_offset, preset.scene_cut_prefix) == (True, 8.0, PREFIX)
    assert not any(get_preset(n).multi_shot_sink for n in ("LongLive 1.0", "Self-Forcing", "MemFlow"))
    assert CausalSettings().multi_shot_sink is False and CausalSettings().scene_cut_prefix == ""


class FakeClip:
    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return [[encoder(tokens), {"pooled_output": None}]]


def test_nodes_mark_a_cut(model):
    (timeline,) = tn.CausalWanTimelineFromText().build(FakeClip(), TIMELINE)
    assert [s.transition for s in timeline.segments] == ["switch", "cut", "cut"]
    latent = {"samples": torch.zeros(1, 16, 16, H, W)}
    widgets = dict(seed=3, steps="1000,500", frames_per_block=2, sink_size=2, local_window=6)
    with pytest.raises(ValueError, match="family 'custom' has no multi-shot mode"):
        CausalWanSampler().sample(model, [[encoder("a red fox"), {}]], latent, timeline=timeline, **widgets)
    shots = dict(multi_shot_sink=True, multi_shot_rope_offset=8.0, scene_cut_prefix=PREFIX)
    got = CausalWanSampler().sample(model, [[encoder("a red fox"), {}]], latent, timeline=timeline, **widgets,
                                    **shots)[0]["samples"]
    from comfyui_clipwan.wan import normalize

    want = _run(model, parse_text(TIMELINE).encode(encoder, cut_prefix=PREFIX),
                settings=dataclasses.replace(SHOTS, recache="joint"))
    assert torch.allclose(normalize(got), want, atol=1e-5)
    assert "cut" in tn.CausalWanTimelineFromConditionings.INPUT_TYPES()["required"]["transition"][0]
