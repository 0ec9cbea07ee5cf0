"""Rolling Forcing's loop shape (``CausalSettings(loop="rolling")``) against a frame-by-frame simulation of its
attention written here from the authors' inference code: no KV buffer, every committed frame's key kept
without RoPE and roped at read time; a window of ``len(steps)`` blocks at staggered steps in one forward; the
anchor (sink) placed right before the recent frames a window reads; the clean pass of a leaving block reading
the last ``local_window`` frames at their own positions."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, PromptSwitch, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.sampling.presets import get_preset
from comfyui_clipwan.wan.model.rope import apply_rope, rope_cos_sin
from comfyui_clipwan.wan.sampling.loop import NoiseSource, SamplerHooks, SeededNoise, block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule

from tiny_models import sharpened

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
H = W = 8
TOK = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def t2v():
    return sharpened(T2V, seed=3)


def _text(seed=0):
    return torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(seed))


def _rope(position, frames):
    return rope_cos_sin(T2V.head_dim, position, frames, H // 2, W // 2)


@torch.no_grad()
def rolling_reference(model, frames, text, s, seed, first=None, renoise=None, anchor="adjacent", batch=1,
                      negative=None):
    """Rolling Forcing, spelled out: windows ``w = 0 .. G+S-2`` of blocks ``max(0, w-S+1) .. min(G-1, w)``, block
    ``b`` at step ``w - b``; ``anchor="absolute"`` keeps the sink at its own frames (to show that it matters)."""
    cfg = model.config
    sched = denoising_schedule(s.steps, s.shift, s.warp)
    steps = len(sched.sigmas)
    layout = block_layout(frames, s.frames_per_block, s.independent_first_frame, s.shorter_last_block)
    noise = initial_noise(seed, (batch, 16, frames, H, W))
    renoise = renoise or (lambda b, j, shape, window, offset: step_noise(seed, b, j, shape, None))
    branches = [dit.encode_context(model.tree, cfg, text, None, torch.float32, batch)]
    if negative is not None:
        branches.append(dit.encode_context(model.tree, cfg, negative, None, torch.float32, batch))
    plain = [[{} for _ in range(cfg.num_layers)] for _ in branches]  # per branch, layer: frame -> (K no RoPE, V)
    sink, window = s.sink_size, s.local_window

    def forward(x, t, start, mode, br):
        nf = x.shape[2]
        end = start + nf

        def hook(i, k, v):
            cos, sin = _rope(start, nf)
            k_plain = apply_rope(k, cos, -sin)
            held = sorted(plain[br][i])
            if not window:
                pos = {f: f for f in held}
            elif mode == "window":
                anchor_f = held[:sink]
                recent = [f for f in held[sink:] if f >= end - (window - sink)]
                first_pos = (recent[0] if recent else start) - len(anchor_f)
                pos = {f: (first_pos + a if anchor == "adjacent" else f) for a, f in enumerate(anchor_f)}
                pos.update({f: f for f in recent})
            else:  # clean pass: the last `window` frames, itself included
                pos = {f: f for f in held if f >= end - window}
            ks = [apply_rope(plain[br][i][f][0], *_rope(p, 1)) for f, p in pos.items()] + [k]
            vs = [plain[br][i][f][1] for f in pos] + [v]
            if mode == "commit":
                for f in range(nf):
                    plain[br][i][start + f] = (k_plain[:, f * TOK:(f + 1) * TOK], v[:, f * TOK:(f + 1) * TOK])
            return torch.cat(ks, 1), torch.cat(vs, 1)

        return dit.transformer(model.tree, cfg, x, t, branches[br], start_frame=start, kv_hook=hook,
                               run_head=mode == "window")

    def commit(x0, start):
        for br in range(len(branches)):
            forward(x0, torch.zeros(batch), start, "commit", br)

    out = torch.zeros(batch, 16, frames, H, W)
    known = 0 if first is None else first.shape[2]
    gen = [b for b, (st, n) in enumerate(layout) if st + n > known]
    for st, n in layout[:len(layout) - len(gen)]:
        out[:, :, st:st + n] = first[:, :, st:st + n]
        commit(out[:, :, st:st + n], st)
    x = {}
    for w in range(len(gen) + steps - 1):
        idx = list(range(max(0, w - steps + 1), min(len(gen) - 1, w) + 1))
        if idx[-1] == w:
            st, n = layout[gen[w]]
            x[w] = noise[:, :, st:st + n]
        start = layout[gen[idx[0]]][0]
        inp = torch.cat([x[g] for g in idx], 2)
        t = torch.cat([torch.full((batch, layout[gen[g]][1]), sched.timesteps[w - g], dtype=torch.float64)
                       for g in idx], 1)
        flows = [forward(inp, t, start, "window", br) for br in range(len(branches))]
        flow = flows[0] if len(flows) == 1 else flows[1] + s.guidance_scale * (flows[0] - flows[1])
        offset = 0
        for g in idx:
            st, n = layout[gen[g]]
            j = w - g
            x0 = x[g] - sched.sigmas[j] * flow[:, :, offset:offset + n]
            if j + 1 < steps:
                fresh = renoise(gen[g], j + 1, tuple(x0.shape), tuple(inp.shape), offset)
                x[g] = (1 - sched.sigmas[j + 1]) * x0 + sched.sigmas[j + 1] * fresh
            else:
                out[:, :, st:st + n] = x0
                commit(x0, st)
            offset += n
    return out


CASES = {
    # the authors' shape scaled down: anchor = first block, cache evicts, anchor moves, window drains
    "blocks2_steps3_sink2_window10": (20, CausalSettings(loop="rolling", steps=[1000, 750, 500], frames_per_block=2,
                                                         sink_size=2, local_window=10), False),
    "shipped_steps_blocks3_sink3_window21": (33, CausalSettings(loop="rolling", steps="1000,800,600,400,200",
                                                                frames_per_block=3, sink_size=3, local_window=21),
                                             False),
    "no_window_start_image": (10, CausalSettings(loop="rolling", steps=[1000, 750, 500, 250], frames_per_block=3,
                                                 independent_first_frame=True), True),
    "window_no_sink_start_image": (13, CausalSettings(loop="rolling", steps=[1000, 600], frames_per_block=3,
                                                      independent_first_frame=True, local_window=7), True),
    "shorter_last_block_start_image": (12, CausalSettings(loop="rolling", steps=[1000, 750, 500], frames_per_block=3,
                                                          independent_first_frame=True, sink_size=3, local_window=13,
                                                          shorter_last_block=True), True),
    "fewer_blocks_than_steps": (4, CausalSettings(loop="rolling", steps=[1000, 800, 600, 400, 200],
                                                  frames_per_block=2, sink_size=2, local_window=14), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rolling_loop_equals_the_simulation(case, t2v):
    frames, s, image = CASES[case]
    text = _text()
    first = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(8)) if image else None
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=5, settings=s, first_frames=first)
    ref = rolling_reference(t2v, frames, text, s, 5, first=first)
    assert ref.abs().mean() > 0.3
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    if image:
        assert torch.equal(ours[:, :, :1], first)


def test_the_anchor_position_and_the_rolling_window_matter(t2v):
    """Sharp: the sink at its own frames, or the plain block loop with the same settings, are far off."""
    frames, s, _ = CASES["blocks2_steps3_sink2_window10"]
    text = _text()
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=5, settings=s)
    absolute = rolling_reference(t2v, frames, text, s, 5, anchor="absolute")
    assert (ours - absolute).abs().max() > 1e-2
    # the anchor first moves in window 5 (its end 12 > sink 2 + window 10 - sink 2): blocks 0..2 agree
    torch.testing.assert_close(ours[:, :, :6], absolute[:, :, :6], atol=2e-5, rtol=0)
    block = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=5,
                          settings=CausalSettings(**{**s.__dict__, "loop": "block"}))
    assert (ours - block).abs().max() > 1e-2


def test_cfg_and_batch(t2v):
    s = CausalSettings(loop="rolling", steps=[1000, 500], frames_per_block=2, sink_size=2, local_window=6,
                       guidance_scale=3.0)
    text, negative = _text(0), _text(1)
    ours = sample_causal(t2v, torch.zeros(2, 16, 8, H, W), text, seed=2, settings=s, negative_text=negative)
    ref = rolling_reference(t2v, 8, text, s, 2, batch=2, negative=negative)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_noise_source_replays_window_draws(t2v):
    """``window_step`` gets the block, its step, its shape, the window's shape and its offset in the window, in
    the order of the windows; a source decides every draw (the result follows its tensors)."""
    frames = 8
    s = CausalSettings(loop="rolling", steps=[1000, 700, 300], frames_per_block=2, sink_size=2, local_window=8)
    asked = []

    class Replay(SeededNoise):
        def window_step(self, block, step, shape, window_shape, offset, device):
            asked.append((block, step, shape[2], window_shape[2], offset))
            return torch.full(shape, 0.5 * step - block)

    text = _text()
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=1, settings=s, noise=Replay(1))
    # windows: [0] [0 1] [0 1 2] [1 2 3] [2 3] [3]; a block at its last step draws nothing
    assert asked == [(0, 1, 2, 2, 0),
                     (0, 2, 2, 4, 0), (1, 1, 2, 4, 2),
                     (1, 2, 2, 6, 2), (2, 1, 2, 6, 4),
                     (2, 2, 2, 6, 2), (3, 1, 2, 6, 4),
                     (3, 2, 2, 4, 2)]
    ref = rolling_reference(t2v, frames, text, s, 1, renoise=lambda b, j, shape, window, offset:
                            torch.full(shape, 0.5 * j - b))
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    # a source without window_step falls back to step(): the default seeding is the simulation's default
    default = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=1, settings=s)
    torch.testing.assert_close(default, rolling_reference(t2v, frames, text, s, 1), atol=2e-5, rtol=0)
    assert (default - ours).abs().max() > 1e-2


def test_blocks_stream_in_order_as_soon_as_final_and_progress_ends_at_total(t2v):
    s = CausalSettings(loop="rolling", steps=[1000, 700, 300], frames_per_block=2, sink_size=2, local_window=8)
    events = []

    class Record(SamplerHooks):
        def on_forward_start(self, kind, block):
            events.append((kind, block))

        def on_step(self, block, step, total):
            events.append(("step", block, step, total))

        def on_block(self, r):
            events.append(("block", r.index))

    first = torch.randn(1, 16, 1, H, W)
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 9, H, W), _text(), settings=CausalSettings(
        **{**s.__dict__, "independent_first_frame": True}), first_frames=first, hooks=Record())
    assert type(loop).__name__ == "RollingLoop" and loop.total_steps == 4 * 3
    seen = []
    for r in loop:
        seen.append(r.index)
        events.append(("yield", r.index))
    assert seen == list(range(5))
    steps = [e for e in events if e[0] == "step"]
    assert len(steps) == loop.total_steps and all(e[3] == 3 for e in steps)
    assert sorted((e[1], e[2]) for e in steps) == [(b, j) for b in range(1, 5) for j in range(3)]
    # block 0 (the image) is committed; block b is final after window b+1 (its 3rd step) and streamed before
    # its clean pass and before the next window; the last block's clean pass is skipped (nothing reads it)
    kinds = [e for e in events if e[0] in ("denoise", "cache", "yield")]
    assert kinds == [("yield", 0), ("cache", 0), ("denoise", 1), ("denoise", 1), ("denoise", 1), ("yield", 1),
                     ("cache", 1), ("denoise", 2), ("yield", 2), ("cache", 2), ("denoise", 3), ("yield", 3),
                     ("cache", 3), ("denoise", 4), ("yield", 4)]


@pytest.mark.parametrize("bad, message", [
    (dict(local_window=7), "local_window 7 is too small for the rolling loop: the sink (2 frames) and a window of "
                           "3 blocks (6 frames) must fit; set local_window >= 8 (Rolling Forcing: 21 with sink 3), "
                           "or 0 for no window."),
    (dict(solver="unipc", steps="4"), "loop 'rolling' does not support solver 'unipc' (Rolling Forcing re-noises: "
                                      "use solver='renoise')."),
    (dict(first_block_steps=[1000, 500]), "loop 'rolling' does not support first_block_steps (every block takes "
                                          "the same steps in the window: leave it None)."),
    (dict(first_frame="clamp"), "loop 'rolling' does not support first_frame='clamp' (the start image is written "
                                "into the cache: use first_frame='cache')."),
    (dict(positions="slots", sink_ema=0.999), "loop 'rolling' does not support positions='slots' / sink_ema "
                                              "(Reward Forcing's cache; the rolling anchor uses absolute positions)."),
    (dict(loop="sliding"), "loop shape 'sliding' is not one of ['block', 'memory', 'rolling', 'recompute']."),
])
def test_bad_settings_are_clear_errors(bad, message, t2v):
    base = CausalSettings(loop="rolling", steps=[1000, 700, 300], frames_per_block=2, sink_size=2, local_window=10)
    with pytest.raises(ValueError) as e:
        iter_causal_blocks(t2v, torch.zeros(1, 16, 8, H, W), _text(), settings=CausalSettings(**{**base.__dict__,
                                                                                                 **bad}))
    assert str(e.value) == message


def test_prompt_switch_is_refused(t2v):
    s = CausalSettings(loop="rolling", steps=[1000, 500], frames_per_block=2)
    with pytest.raises(ValueError) as e:
        iter_causal_blocks(t2v, torch.zeros(1, 16, 8, H, W), _text(), settings=s,
                           prompt_switches=[PromptSwitch(2, _text(1))])
    assert str(e.value) == ("loop 'rolling' does not support prompt switches (Rolling Forcing has none: a window "
                            "denoises several blocks at once, so no block boundary separates the prompts); remove "
                            "the switch or use loop='block'.")


def test_rolling_forcing_preset_runs_the_rolling_loop(t2v):
    """The preset's numbers are the authors' (configs/rolling_forcing_dmd.yaml + README) and its rules select
    this loop; its settings run at tiny size with a start image."""
    p = get_preset("Rolling Forcing")
    assert p.loop_rules() == {"loop": "rolling"}
    assert (p.steps, p.shift, p.warp_steps, p.frames_per_block, p.sink_size, p.local_window, p.checkpoint_entry) == \
        ("1000,800,600,400,200", 5.0, True, 3, 3, 21, "generator_ema")
    values = {k: v for k, v in p.sampler_values().items() if k not in ("warp_steps", "family")}
    s = CausalSettings(warp=p.warp_steps, **values, **p.loop_rules())
    first = torch.randn(1, 16, 1, H, W)
    frames = 1 + 3 * 6
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), _text(), seed=4, settings=s, first_frames=first)
    torch.testing.assert_close(ours, rolling_reference(t2v, frames, _text(), s, 4, first=first), atol=2e-5, rtol=0)


def test_stream_consumers_get_the_rolling_blocks(t2v):
    """``stream_video`` (the stream node's path) runs the rolling loop through ``iter_causal_blocks`` and hands
    out each block's frames in order; the latent equals ``sample_causal``'s."""
    from comfyui_clipwan.wan.video.stream import stream_video

    class PixelsAreLatent:  # decode: the first 3 latent channels as pixels (the decoder is not under test)
        def decode(self, raw):
            return raw[:, :3].clamp(-1, 1)

    s = CausalSettings(loop="rolling", steps=[1000, 700, 300], frames_per_block=2, sink_size=2, local_window=8)
    latent = torch.zeros(1, 16, 10, H, W)
    stream = stream_video(t2v, latent, _text(), decoder=PixelsAreLatent(), seed=3, settings=s, keep_latent=True,
                          to_raw=lambda z: z)
    pieces = list(stream)
    assert [p.latent_start for p in pieces] == list(range(10)) and stream.blocks_done == 5
    torch.testing.assert_close(stream.latent, sample_causal(t2v, latent, _text(), seed=3, settings=s), atol=0, rtol=0)
