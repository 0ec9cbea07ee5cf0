"""Reward Forcing's cache (positions by buffer slot, EMA-updated sink) against a slot-by-slot simulation of
its ``CausalWanSelfAttention`` written here: keys kept without RoPE, the block's queries at their slot, an
eviction mixing the evicted frames into the sink (α = 0.999) or replacing it when the sizes differ."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.model.rope import apply_rope, rope_cos_sin
from comfyui_clipwan.wan.sampling.loop import block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule

from tiny_models import sharpened

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
H = W = 8
TOK = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def t2v():
    return sharpened(T2V, seed=3)


def _rope(position, frames):
    return rope_cos_sin(T2V.head_dim, position, frames, H // 2, W // 2)


@torch.no_grad()
def reward_forcing_reference(model, frames, text, s, seed):
    cfg = model.config
    latent = torch.zeros(1, 16, frames, H, W)
    sched = denoising_schedule(s.steps, s.shift, s.warp)
    noise = initial_noise(seed, latent.shape)
    ctx = dit.encode_context(model.tree, cfg, text, None, torch.float32, 1)
    out = torch.zeros(latent.shape)
    sink, cap = s.sink_size, s.local_window or 10 ** 9
    keys = [[] for _ in range(cfg.num_layers)]  # per layer: per slot (K without RoPE, V) of one frame
    for bi, (st, n) in enumerate(block_layout(frames, s.frames_per_block)):
        held = len(keys[0])
        if held + n > cap:  # roll; the evicted frames go into the sink
            evict = held + n - cap
            for layer in keys:
                gone = layer[sink:sink + evict]
                if evict == sink and s.sink_ema is not None:
                    a = s.sink_ema
                    layer[:sink] = [(a * ks + (1 - a) * ke, a * vs + (1 - a) * ve)
                                    for (ks, vs), (ke, ve) in zip(layer[:sink], gone)]
                elif s.sink_ema is not None:
                    m = min(evict, sink)
                    layer[:m] = gone[:m]
                del layer[sink:sink + evict]
        slot = len(keys[0])  # the block's position: right after what the buffer holds

        def hook(write):
            def kv_hook(i, k, v):
                cos, sin = _rope(slot, n)
                k_plain = apply_rope(k, cos, -sin)
                frames_k = [k_plain[:, f * TOK:(f + 1) * TOK] for f in range(n)]
                frames_v = [v[:, f * TOK:(f + 1) * TOK] for f in range(n)]
                held_k = [kk for kk, _ in keys[i]] + frames_k
                held_v = [vv for _, vv in keys[i]] + frames_v
                if write:
                    keys[i].extend(zip(frames_k, frames_v))
                cos_all, sin_all = _rope(0, len(held_k))
                return apply_rope(torch.cat(held_k, 1), cos_all, sin_all), torch.cat(held_v, 1)
            return kv_hook

        x = noise[:, :, st:st + n]
        for j, sigma in enumerate(sched.sigmas):
            t = torch.tensor([sched.timesteps[j]], dtype=torch.float64)
            flow = dit.transformer(model.tree, cfg, x, t, ctx, start_frame=slot, kv_hook=hook(False))
            x0 = x - sigma * flow
            if j + 1 < len(sched.sigmas):
                x = (1 - sched.sigmas[j + 1]) * x0 + sched.sigmas[j + 1] * step_noise(seed, bi, j + 1, x0.shape, None)
        out[:, :, st:st + n] = x0
        dit.transformer(model.tree, cfg, x0, torch.zeros(1), ctx, start_frame=slot, kv_hook=hook(True), run_head=False)
    return out


CASES = {
    "ema_sink": dict(frames_per_block=2, sink_size=2, local_window=6, sink_ema=0.999),  # evicts 2 = sink 2
    "sink_replaced": dict(frames_per_block=2, sink_size=1, local_window=5, sink_ema=0.999),  # evicts 2 != 1
    "fixed_sink_slot_positions": dict(frames_per_block=2, sink_size=2, local_window=6),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reward_forcing_cache_equals_slot_simulation(case, t2v):
    s = CausalSettings(steps=[1000, 500], positions="slots", **CASES[case])
    text = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(2))
    ours = sample_causal(t2v, torch.zeros(1, 16, 12, H, W), text, seed=4, settings=s)
    ref = reward_forcing_reference(t2v, 12, text, s, 4)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    # sharp: absolute positions (Self-Forcing / LongLive) agree until the first eviction, then differ
    absolute = sample_causal(t2v, torch.zeros(1, 16, 12, H, W), text, seed=4,
                             settings=CausalSettings(steps=[1000, 500], **{**CASES[case], "sink_ema": None}))
    agree = s.local_window // s.frames_per_block * s.frames_per_block  # start of the first block that evicts
    torch.testing.assert_close(absolute[:, :, :agree], ref[:, :, :agree], atol=2e-5, rtol=0)
    assert (absolute[:, :, agree:] - ref[:, :, agree:]).abs().max() > 2e-4


def test_sink_ema_needs_slot_positions(t2v):
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, torch.zeros(1, 16, 6, H, W), torch.zeros(1, 4, 4096),
                      settings=CausalSettings(frames_per_block=2, sink_size=2, local_window=6, sink_ema=0.999))
    assert str(e.value) == ("sink_ema 0.999 needs positions='slots' (Reward Forcing stores keys without RoPE) and a "
                            "value in [0, 1] (Reward Forcing uses 0.999).")
