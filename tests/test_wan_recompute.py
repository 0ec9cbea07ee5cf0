"""Krea Realtime's loop shape (``CausalSettings(loop="recompute")``) against a reference written here from the
authors' realtime server (krea-ai/realtime-video ``release_server.py``): no cache at all. Each denoising step of a
block is ONE forward over ``[context | block]`` with per-frame timesteps (0 on the context) and a mask — the
context frames see each other block-causally (blocks of ``frames_per_block`` from the context's first frame) and
never the block, the block sees everything — at RoPE positions 0, 1, ... The context is the first latent frame
(or, from the third generated block on, the VAE re-encoding of the oldest of the last ``1 + 4·(C-1)`` frames of
a whole-video decode) plus the last ``C - 1`` clean frames."""

import dataclasses
import math

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.vae.latent import denormalize, normalize
from comfyui_clipwan.wan.sampling.presets import get_preset
from comfyui_clipwan.wan.sampling.loop import block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule
from comfyui_clipwan.wan.video.stream import stream_video
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

from tiny_models import sharpened

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
H = W = 8
TOK = (H // 2) * (W // 2)
KREA = dict(loop="recompute", steps="1000,750,500,250,0", shift=5.0, frames_per_block=3, sink_size=1,
            local_window=6)


@pytest.fixture(scope="module")
def t2v():
    return sharpened(T2V, seed=3)


@pytest.fixture(scope="module")
def vae():
    return WanVAE.random(WanVAEConfig(dim=8), seed=2)


def _text(seed=0):
    return torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(seed))


def _joint_mask(context, block, n, bias):
    """[context | block] frames: additive mask (0 / -inf, plus log(bias) on the block's view of context frames
    1.. context-1), expanded to tokens."""
    f = context + block
    m = torch.full((f, f), float("-inf"))
    for q in range(f):
        for k in range(f):
            if q < context:
                if k < context and k < (q // n + 1) * n:
                    m[q, k] = 0.0
            else:
                m[q, k] = math.log(bias) if 1 <= k < context else 0.0
    return m.repeat_interleave(TOK, 0).repeat_interleave(TOK, 1)


@torch.no_grad()
def krea_reference(model, frames, text, s, seed, first=None, vae=None, negative=None, batch=1, switch=None):
    """``switch``: ``(block, text)``, the prompt from that block on (its context recomputed with it too)."""
    cfg = model.config
    sched = denoising_schedule(s.steps, s.shift, s.warp)
    n, C = s.frames_per_block, s.local_window - s.frames_per_block
    layout = block_layout(frames, n, s.independent_first_frame, s.shorter_last_block)
    noise = initial_noise(seed, (batch, 16, frames, H, W))
    ctxs = [dit.encode_context(model.tree, cfg, text, None, torch.float32, batch)]
    if negative is not None:
        ctxs.append(dit.encode_context(model.tree, cfg, negative, None, torch.float32, batch))
    out = torch.zeros(batch, 16, frames, H, W)
    known = 0 if first is None else first.shape[2]
    g = 0
    for bi, (st, m) in enumerate(layout):
        if st + m <= known:
            out[:, :, st:st + m] = first[:, :, st:st + m]
            continue
        if switch is not None and bi == switch[0]:
            ctxs[0] = dit.encode_context(model.tree, cfg, switch[1], None, torch.float32, batch)
        if st == 0:
            context = out[:, :, :0]
        else:
            head = out[:, :, :1]
            if not s.keep_first_frame and (g - 1) * n >= C:
                pixels = vae.decode_whole(denormalize(out[:, :, :st]))  # every frame decoded so far
                head = normalize(vae.encode(pixels[:, :, -(1 + 4 * (C - 1))][:, :, None]))
            context = torch.cat([head, out[:, :, 1:st][:, :, -(C - 1):] if C > 1 else out[:, :, :0]], 2)
        c = context.shape[2]
        mask = _joint_mask(c, m, n, s.context_bias)
        x = noise[:, :, st:st + m]
        for j, t in enumerate(sched.timesteps):
            tt = torch.cat([torch.zeros(batch, c, dtype=torch.float64),
                            torch.full((batch, m), t, dtype=torch.float64)], 1)
            flows = [dit.transformer(model.tree, cfg, torch.cat([context, x], 2), tt, ctx, start_frame=0,
                                     attn_mask=mask)[:, :, c:] for ctx in ctxs]
            flow = flows[0] if len(flows) == 1 else flows[1] + s.guidance_scale * (flows[0] - flows[1])
            x0 = x - sched.sigmas[j] * flow
            if j + 1 < len(sched.sigmas):
                x = (1 - sched.sigmas[j + 1]) * x0 + sched.sigmas[j + 1] * step_noise(seed, bi, j + 1, x0.shape, None)
        out[:, :, st:st + m] = x0
        g += 1
    return out


CASES = {  # frames, settings, start image
    "krea_t2v_keep_first": (12, dict(keep_first_frame=True), False),
    "krea_t2v_bias_0.3": (12, dict(keep_first_frame=True, context_bias=0.3), False),
    "start_image_shorter_last_block": (12, dict(keep_first_frame=True, independent_first_frame=True,
                                                shorter_last_block=True), True),
    "context_of_two_blocks": (14, dict(keep_first_frame=True, frames_per_block=2, local_window=7,
                                       steps="1000,500"), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recompute_loop_equals_the_reference(case, t2v):
    frames, extra, image = CASES[case]
    s = CausalSettings(**{**KREA, **extra})
    text = _text()
    first = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(8)) if image else None
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=5, settings=s, first_frames=first)
    ref = krea_reference(t2v, frames, text, s, 5, first=first)
    assert ref.abs().mean() > 0.3
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_reencoded_first_frame_through_the_stream(t2v, vae):
    """Krea's default (keep_first_frame off): stream_video decodes each block, the loop re-encodes the first
    context frame from those pixels; equal to the reference that decodes the whole video so far."""
    s = CausalSettings(**KREA)
    text = _text()
    blocks = list(stream_video(t2v, torch.zeros(1, 16, 12, H, W), text, vae=vae, seed=5, settings=s,
                               keep_latent=True, per_latent_frame=False))
    assert len(blocks) == 4
    run = stream_video(t2v, torch.zeros(1, 16, 12, H, W), text, vae=vae, seed=5, settings=s, keep_latent=True)
    for _ in run:
        pass
    ref = krea_reference(t2v, 12, text, s, 5, vae=vae)
    torch.testing.assert_close(run.latent, ref, atol=2e-5, rtol=0)
    # sharp: keeping the first frame differs from the third block on (the first two are the same run)
    kept = krea_reference(t2v, 12, text, dataclasses.replace(s, keep_first_frame=True), 5)
    torch.testing.assert_close(ref[:, :, :6], kept[:, :, :6], atol=2e-5, rtol=0)
    assert (ref[:, :, 6:] - kept[:, :, 6:]).abs().max() > 1e-2


def test_without_pixels_the_first_frame_is_kept_and_said(t2v):
    s = CausalSettings(**KREA)
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, 12, H, W), _text(), seed=5, settings=s)
    assert loop.needs_pixels and "keep_first_frame" in loop.fallback_note
    with pytest.warns(UserWarning, match="re-encodes the first context frame"):
        ours = torch.cat([b.x0 for b in loop], 2)
    ref = krea_reference(t2v, 12, _text(), dataclasses.replace(s, keep_first_frame=True), 5)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    short = iter_causal_blocks(t2v, torch.zeros(1, 16, 6, H, W), _text(), seed=5, settings=s)
    assert not short.needs_pixels and short.fallback_note is None  # two blocks never re-encode


def test_the_recompute_rules_matter(t2v):
    """Sharp: the plain block loop with the same frames attended (sink 1, window 6), or the recompute at
    absolute positions, is far from Krea's loop."""
    s = CausalSettings(**KREA, keep_first_frame=True)
    text = _text()
    ours = sample_causal(t2v, torch.zeros(1, 16, 12, H, W), text, seed=5, settings=s)
    block = sample_causal(t2v, torch.zeros(1, 16, 12, H, W), text, seed=5,
                          settings=dataclasses.replace(s, loop="block"))
    torch.testing.assert_close(ours[:, :, :3], block[:, :, :3], atol=2e-5, rtol=0)  # block 0: no context either way
    assert (ours[:, :, 3:] - block[:, :, 3:]).abs().max() > 1e-2
    biased = sample_causal(t2v, torch.zeros(1, 16, 12, H, W), text, seed=5,
                           settings=dataclasses.replace(s, context_bias=0.3))
    torch.testing.assert_close(ours[:, :, :3], biased[:, :, :3], atol=2e-5, rtol=0)  # block 0 has no context
    assert (ours[:, :, 3:] - biased[:, :, 3:]).abs().max() > 1e-3


def test_cfg_batch_and_prompt_switch(t2v):
    from comfyui_clipwan.wan import PromptSwitch

    s = CausalSettings(**{**KREA, "steps": "1000,500"}, keep_first_frame=True, guidance_scale=3.0)
    text, negative = _text(0), _text(1)
    ours = sample_causal(t2v, torch.zeros(2, 16, 9, H, W), text, seed=2, settings=s, negative_text=negative)
    ref = krea_reference(t2v, 9, text, s, 2, batch=2, negative=negative)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    s1 = CausalSettings(**KREA, keep_first_frame=True)
    switched = sample_causal(t2v, torch.zeros(1, 16, 9, H, W), text, seed=2, settings=s1,
                             prompt_switches=[PromptSwitch(2, negative)])
    ref = krea_reference(t2v, 9, text, s1, 2, switch=(2, negative))
    torch.testing.assert_close(switched, ref, atol=2e-5, rtol=0)
    head = krea_reference(t2v, 9, text, s1, 2)
    torch.testing.assert_close(switched[:, :, :6], head[:, :, :6], atol=2e-5, rtol=0)
    assert (switched[:, :, 6:] - head[:, :, 6:]).abs().max() > 1e-4


def test_last_step_at_t0_is_a_real_step(t2v):
    """Krea's 5th step at t = 0: σ the grid's smallest (≈0.005 at shift 5), not a no-op and not dropped."""
    sched = denoising_schedule("1000,750,500,250,0", 5.0, True)
    assert sched.timesteps[-1] == 0.0 and 0.004 < sched.sigmas[-1] < 0.006
    assert [round(t, 1) for t in sched.timesteps[:4]] == [1000.0, 937.5, 833.3, 625.0]
    s = CausalSettings(**KREA, keep_first_frame=True)
    five = sample_causal(t2v, torch.zeros(1, 16, 6, H, W), _text(), seed=5, settings=s)
    four = sample_causal(t2v, torch.zeros(1, 16, 6, H, W), _text(), seed=5,
                         settings=dataclasses.replace(s, steps="1000,750,500,250"))
    assert 1e-4 < (five - four).abs().max() < 0.5


def test_refusals(t2v):
    z = torch.zeros(1, 16, 6, H, W)
    for extra, words in [(dict(sink_size=0), "sink_size 0"), (dict(local_window=0), "local_window 0"),
                         (dict(solver="unipc", steps="4"), "solver 'unipc'"),
                         (dict(context_bias=0.0), "context_bias 0.0")]:
        with pytest.raises(ValueError, match="loop 'recompute' does not support " + words):
            iter_causal_blocks(t2v, z, _text(), settings=CausalSettings(**{**KREA, **extra}))


def test_krea_preset_runs_the_recompute_loop():
    p = get_preset("Krea Realtime 14B")
    assert p.loop_rules() == {"loop": "recompute"}
    assert (p.steps, p.warp_steps, p.sink_size, p.local_window, p.frames_per_block) == \
        ("1000,750,500,250,0", True, 1, 6, 3)
