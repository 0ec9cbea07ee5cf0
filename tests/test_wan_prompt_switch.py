"""Prompt switching as LongLive does it (``recache="joint"``), checked against a slot-by-slot simulation of
LongLive v1.0's KV buffer written here (its index arithmetic: sink slots, rolling window, the re-cache pass
that protects the sink slots with ``global_sink``), plus the other named re-cache modes."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.sampling.loop import block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
H = W = 8
TOK = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def t2v():
    """Random weights with sharpened self-attention (q/k RMS-norm gains x4): with the init's near-uniform
    attention, which keys a frame sees barely moves the output, so the rules below could not be told apart."""
    sd = CausalWanModel.random(T2V, seed=3).state_dict()
    for k in sd:
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return CausalWanModel.from_state_dict(sd)


def _texts(n):
    g = torch.Generator().manual_seed(11)
    return [torch.randn(1, 12, 4096, generator=g) for _ in range(n)]


class SlotBuffer:
    """LongLive's per-layer KV buffer, one entry per latent frame: ``slots`` lists the frame held in each
    slot (capacity ``window`` frames, or unbounded), ``kv[layer][frame]`` its K/V."""

    def __init__(self, layers, window, sink):
        self.cap = window or 10 ** 9
        self.sink = sink
        self.slots = []
        self.kv = [dict() for _ in range(layers)]

    def hook(self, query_frames, key_slots, write):
        """Attention of ``query_frames`` over the frames in ``key_slots`` (new K/V for the query frames, stored
        K/V for the others); the frames in ``write`` are stored from this pass."""

        def kv_hook(layer, k, v):
            new = {f: (k[:, i * TOK:(i + 1) * TOK], v[:, i * TOK:(i + 1) * TOK]) for i, f in enumerate(query_frames)}
            pick = [new[f] if f in new else self.kv[layer][f] for f in key_slots]
            for f in write:
                self.kv[layer][f] = new[f]
            return torch.cat([p[0] for p in pick], 1), torch.cat([p[1] for p in pick], 1)

        return kv_hook

    def slots_for_block(self, frames):
        n = len(frames)
        if len(self.slots) + n > self.cap:  # roll: drop the oldest frames after the sink slots
            evict = len(self.slots) + n - self.cap
            return self.slots[:self.sink] + self.slots[self.sink + evict:] + frames
        return self.slots + frames

    def slots_after_switch(self, recached, global_sink):
        """LongLive ``_recache_after_switch``: the re-cached frames fill the slots from 0; the sink slots are
        written only when the pass starts at frame 0 or the global sink is off."""
        protect = global_sink and recached[0] > 0
        written = recached[self.sink:] if protect else recached
        slots = (self.slots[:self.sink] if protect else recached[:self.sink]) + recached[self.sink:]
        return slots, written


@torch.no_grad()
def longlive_reference(model, frames, texts, switch_blocks, s, seed):
    cfg = model.config
    latent = torch.zeros(1, 16, frames, H, W)
    layout = block_layout(frames, s.frames_per_block)
    sched = denoising_schedule(s.steps, s.shift, s.warp)
    noise = initial_noise(seed, latent.shape)
    out = torch.zeros(latent.shape)
    buf = SlotBuffer(cfg.num_layers, s.local_window, s.sink_size)
    ctx = dit.encode_context(model.tree, cfg, texts[0], None, torch.float32, 1)
    segment = 0
    for bi, (st, n) in enumerate(layout):
        if bi in switch_blocks:
            segment += 1
            ctx = dit.encode_context(model.tree, cfg, texts[segment], None, torch.float32, 1)
            count = min(s.local_window, st) if s.local_window else st
            recached = list(range(st - count, st))
            slots, written = buf.slots_after_switch(recached, s.global_sink)
            dit.transformer(model.tree, cfg, out[:, :, recached[0]:st], torch.zeros(1), ctx,
                            start_frame=recached[0], kv_hook=buf.hook(recached, slots, written), run_head=False)
            buf.slots = slots
        blk = list(range(st, st + n))
        keys = buf.slots_for_block(blk)
        x = noise[:, :, st:st + n]
        for j, sigma in enumerate(sched.sigmas):
            flow = dit.transformer(model.tree, cfg, x, torch.tensor([sched.timesteps[j]], dtype=torch.float64), ctx,
                                   start_frame=st, kv_hook=buf.hook(blk, keys, []))
            x0 = x - sigma * flow
            if j + 1 < len(sched.sigmas):
                x = (1 - sched.sigmas[j + 1]) * x0 + sched.sigmas[j + 1] * step_noise(seed, bi, j + 1, x0.shape, None)
        out[:, :, st:st + n] = x0
        dit.transformer(model.tree, cfg, x0, torch.zeros(1), ctx, start_frame=st,
                        kv_hook=buf.hook(blk, keys, blk), run_head=False)
        buf.slots = keys
    return out


CASES = {
    # switch after the window slid: the sink slots keep the old prompt (LongLive's shipped global_sink)
    "after_eviction_global_sink": (12, [4], dict(sink_size=1, local_window=5, global_sink=True)),
    # same without the global sink: the oldest re-encoded frame becomes the sink
    "after_eviction_no_global_sink": (12, [4], dict(sink_size=1, local_window=5, global_sink=False)),
    # two switches, the second after the sink moved
    "two_switches_no_global_sink": (14, [3, 5], dict(sink_size=1, local_window=5, global_sink=False)),
    # before the window slid: the pass starts at frame 0 and rewrites the sink even with global_sink
    "before_eviction": (10, [2], dict(sink_size=1, local_window=5, global_sink=True)),
    # no window: every frame so far re-encoded in one pass
    "no_window": (8, [2], dict(global_sink=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_joint_recache_equals_longlive_buffer(case, t2v):
    frames, switch_blocks, extra = CASES[case]
    texts = _texts(len(switch_blocks) + 1)
    s = CausalSettings(frames_per_block=2, steps=[1000, 500], recache="joint", **extra)
    switches = [PromptSwitch(b, texts[i + 1]) for i, b in enumerate(switch_blocks)]
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), texts[0], seed=5, settings=s,
                         prompt_switches=switches)
    ref = longlive_reference(t2v, frames, texts, switch_blocks, s, 5)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    # the comparison is sharp: the earlier block-by-block rule differs after the switch, not before
    first = switch_blocks[0] * 2
    blockwise = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), texts[0], seed=5,
                              settings=CausalSettings(frames_per_block=2, steps=[1000, 500], recache="blockwise",
                                                      **extra), prompt_switches=switches)
    torch.testing.assert_close(blockwise[:, :, :first], ref[:, :, :first], atol=2e-5, rtol=0)
    assert (blockwise[:, :, first:] - ref[:, :, first:]).abs().max() > 10 * 2e-5


def test_global_sink_matters_after_eviction(t2v):
    texts = _texts(2)
    base = dict(frames_per_block=2, steps=[1000, 500], sink_size=1, local_window=5)
    runs = {g: sample_causal(t2v, torch.zeros(1, 16, 12, H, W), texts[0], seed=5,
                             settings=CausalSettings(global_sink=g, **base), prompt_switches=[PromptSwitch(4, texts[1])])
            for g in (True, False)}
    torch.testing.assert_close(runs[True][:, :, :8], runs[False][:, :, :8], atol=0, rtol=0)
    assert (runs[True][:, :, 8:] - runs[False][:, :, 8:]).abs().max() > 2e-4


def test_recache_none_keeps_old_keys_and_modes_are_checked(t2v):
    texts = _texts(2)
    latent = torch.zeros(1, 16, 6, H, W)
    s = dict(frames_per_block=2, steps=[1000, 500])
    sw = [PromptSwitch(2, texts[1])]
    none = sample_causal(t2v, latent, texts[0], seed=1, settings=CausalSettings(recache="none", **s), prompt_switches=sw)
    joint = sample_causal(t2v, latent, texts[0], seed=1, settings=CausalSettings(**s), prompt_switches=sw)
    torch.testing.assert_close(none[:, :, :4], joint[:, :, :4], atol=0, rtol=0)
    assert (none[:, :, 4:] - joint[:, :, 4:]).abs().max() > 2e-4
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, latent, texts[0], settings=CausalSettings(recache="causal", **s))
    assert str(e.value) == "recache 'causal' is not a re-cache mode; use one of ['blockwise', 'joint', 'none']."
