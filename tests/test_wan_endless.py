"""Endless streams (wan/sampling/endless.py): no last block, flat memory, the same maths as a fixed run.

The oracle for the blocks past the first segment is the fixed-length loop itself, fed the noise the endless
run draws (one tensor over the same frames): the endless loop adds no maths of its own, only where its
noise, latent and concat come from."""

import itertools

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, WanConfig, sample_causal
from comfyui_clipwan.wan.sampling.endless import ENDLESS_TOTAL, EndlessLoop, endless_settings
from comfyui_clipwan.wan.sampling.loop import NoiseSource, SeededNoise
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

T2V = WanConfig(dim=128, ffn_dim=160, num_heads=2, num_layers=2, in_dim=16)
I2V = WanConfig(dim=128, ffn_dim=160, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True)
H = W = 4
SETTINGS = CausalSettings(steps="1000,750,500", frames_per_block=2, sink_size=1, local_window=5)


@pytest.fixture(scope="module")
def t2v():
    return CausalWanModel.random(T2V, seed=11)


def _text(seed=0):
    return torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(seed))


class _EndlessDraws(NoiseSource):
    """The noise an endless run draws, as one whole-video tensor for a fixed-length run of ``frames``."""

    def __init__(self, seed, segment_frames, frames_per_block, frames, shape_hw, batch=1):
        self.seeded = SeededNoise(seed)
        first = self.seeded.initial((batch, 16, segment_frames, *shape_hw), "cpu")
        blocks = range(segment_frames // frames_per_block, frames // frames_per_block)
        later = [self.seeded.block_initial(bi, (batch, 16, frames_per_block, *shape_hw), "cpu") for bi in blocks]
        self.whole = torch.cat([first] + later, dim=2)

    def initial(self, shape, device):
        assert tuple(shape) == tuple(self.whole.shape)
        return self.whole.to(device)

    def step(self, block, step, shape, device):
        return self.seeded.step(block, step, shape, device)


def _take(loop, blocks):
    out = [r for r in itertools.islice(loop, blocks)]
    return torch.cat([r.x0 for r in out], dim=2), out


@pytest.mark.parametrize("positions", ["absolute", "slots"])
def test_endless_run_equals_a_fixed_run_fed_the_same_noise(t2v, positions):
    settings = CausalSettings(**{**SETTINGS.__dict__, "positions": positions})
    text = _text()
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 4, H, W), text, seed=7, settings=settings, endless=True)
    got, results = _take(loop, 9)  # 18 frames: the window of 5 slid many times
    assert [r.total for r in results] == [ENDLESS_TOTAL] * 9
    assert [r.start_frame for r in results] == list(range(0, 18, 2))
    want = sample_causal(t2v, torch.zeros(1, 16, 18, H, W), text, settings=settings,
                         noise=_EndlessDraws(7, 4, 2, 18, (H, W)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # its first segment is exactly a fixed run of that latent with the seed
    first = sample_causal(t2v, torch.zeros(1, 16, 4, H, W), text, seed=7, settings=settings)
    torch.testing.assert_close(got[:, :, :4], first, atol=0, rtol=0)


def test_endless_prompt_switch_past_the_first_segment(t2v):
    a, b = _text(1), _text(2)
    settings = CausalSettings(**{**SETTINGS.__dict__, "positions": "slots"})
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 2, H, W), a, seed=3, settings=settings, endless=True,
                              prompt_switches=[PromptSwitch(5, b)])
    got, _ = _take(loop, 7)
    want = sample_causal(t2v, torch.zeros(1, 16, 14, H, W), a, settings=settings,
                         prompt_switches=[PromptSwitch(5, b)], noise=_EndlessDraws(3, 2, 2, 14, (H, W)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("timed", ["blocks", "seconds"])
def test_endless_timeline_and_live_prompts_past_the_first_segment(t2v, timed):
    """A timeline's segments after the first segment (by block or by seconds), a blend, and a live prompt sent
    after block 6 all take effect in an endless run as in a fixed run of the same length given the same timeline (the
    live change written into it at the block it was applied at)."""
    from comfyui_clipwan.wan.timeline import LiveControl, parse_text

    texts = {"a": _text(1), "b": _text(2), "c": _text(3), "d": _text(4)}
    # block k starts at latent frame 2k; pixel frame 4*2k-3 is at 16 fps: seconds (8k-3)/16 (LongLive's rounding)
    lines = "0: a\n4: b\n5 blend 2 linear: c" if timed == "blocks" else \
        "0s: a\n1.8125s: b\n2.3125s blend 2 linear: c"
    settings = CausalSettings(**{**SETTINGS.__dict__, "positions": "slots"})
    timeline = parse_text(lines, fps=16).encode(texts.__getitem__)
    timeline.live = LiveControl(texts.__getitem__, threaded=False)
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 2, H, W), _text(0), seed=3, settings=settings,
                              endless=True, timeline=timeline)
    out = []
    for r in itertools.islice(loop, 10):
        out.append(r.x0)
        if r.index == 6:
            timeline.live.request("d")
    got = torch.cat(out, dim=2)
    assert [(b, seg) for b, seg, _ in loop.schedule.applied] == [(4, 1), (5, 2), (6, 2), (7, 3)]
    fixed = parse_text("0: a\n4: b\n5 blend 2 linear: c\n7: d").encode(texts.__getitem__)
    want = sample_causal(t2v, torch.zeros(1, 16, 20, H, W), _text(0), settings=settings, timeline=fixed,
                         noise=_EndlessDraws(3, 2, 2, 20, (H, W)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_endless_memory_is_flat(t2v):
    settings, _ = endless_settings(SETTINGS)
    loop = EndlessLoop(t2v, torch.zeros(1, 16, 2, H, W), _text(), seed=0, settings=settings,
                       prompt_switches=[PromptSwitch(40, _text(1))])  # keeps clean frames for a re-cache
    sizes = []
    for r in loop:
        if r.index in (10, 60):
            sizes.append((loop.cache_nbytes, len(loop.cache_frames), len(loop.recent)))
        if r.index == 60:
            break
    assert sizes[0] == sizes[1]
    assert sizes[1][1] <= 5 and sizes[1][2] <= 5 + 1


def test_endless_i2v_concat_repeats_the_last_to_generate_frame():
    model = CausalWanModel.random(I2V, seed=2)
    g = torch.Generator().manual_seed(0)
    concat = torch.randn(1, 20, 4, H, W, generator=g)
    clip = torch.randn(1, 257, 1280, generator=g)
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 4, H, W), _text(), seed=1, settings=SETTINGS,
                              concat=concat, clip_fea=clip, endless=True)
    got, _ = _take(loop, 4)
    long_concat = torch.cat([concat, concat[:, :, -1:].expand(-1, -1, 4, -1, -1)], dim=2)
    want = sample_causal(model, torch.zeros(1, 16, 8, H, W), _text(), settings=SETTINGS, concat=long_concat,
                         clip_fea=clip, noise=_EndlessDraws(1, 4, 2, 8, (H, W)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_endless_stops_on_interrupt(t2v):
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def check():
        calls["n"] += 1
        if calls["n"] > 20:
            raise Stop

    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 2, H, W), _text(), settings=SETTINGS, endless=True,
                              check_interrupt=check)
    seen = []
    with pytest.raises(Stop):
        for r in loop:
            seen.append(r.index)
    assert seen and seen == list(range(len(seen)))


@pytest.mark.parametrize("change,message", [
    (dict(local_window=0), "needs a local_window"),
    (dict(loop="rolling"), "runs the plain block loop"),
])
def test_endless_refusals_name_the_fix(t2v, change, message):
    settings = CausalSettings(**{**SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        iter_causal_blocks(t2v, torch.zeros(1, 16, 2, H, W), _text(), settings=settings, endless=True)


def test_endless_needs_a_first_block_and_a_per_block_noise_source(t2v):
    settings = CausalSettings(**{**SETTINGS.__dict__, "frames_per_block": 3})
    with pytest.raises(ValueError, match="at least one block of 3"):
        iter_causal_blocks(t2v, torch.zeros(1, 16, 2, H, W), _text(), settings=settings, endless=True)

    class OnlyWhole(NoiseSource):
        def initial(self, shape, device):
            return torch.zeros(shape)

        def step(self, block, step, shape, device):
            return torch.zeros(shape)

    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 2, H, W), _text(), settings=SETTINGS, endless=True,
                              noise=OnlyWhole())
    with pytest.raises(NotImplementedError, match="cannot drive an endless run"):
        _take(loop, 2)


def test_endless_settings_choose_relative_positions_and_say_so():
    settings, note = endless_settings(SETTINGS)
    assert settings.positions == "slots" and "relative RoPE" in note
    same, none = endless_settings(settings)
    assert same is settings and none is None


def test_bench_endless_memory_stays_flat_along_the_stream():
    from comfyui_clipwan.benchmarks.bench_endless import measure

    figures = measure("slots", near=30, far=150, window=4)
    assert figures["near"]["latent_frame"] == 30 and figures["far"]["latent_frame"] == 150
    assert figures["cache_frames"] <= 12  # sink 3 + window 12 includes the block: never more cached
    assert figures["rss_ratio"] < 1.05
    assert figures["near"]["block_ms"] > 0 and figures["far"]["block_ms"] > 0
