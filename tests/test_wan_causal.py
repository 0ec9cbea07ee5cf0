"""Block-causal sampling: KV cache vs the full block-causal mask without cache, bidirectional equivalence,
window/sink/RoPE offsets, image-conditioning routes, prompt switching, fallback and input errors."""

import dataclasses
import warnings

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.sampling.loop import CausalLoop, NoiseSource, SamplerHooks, TimingHooks, block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
I2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True)
H = W = 8  # latent 8x8 -> 16 tokens per frame


@pytest.fixture(scope="module")
def t2v():
    return CausalWanModel.random(T2V, seed=3)


@pytest.fixture(scope="module")
def i2v():
    return CausalWanModel.random(I2V, seed=4)


def _inputs(frames, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.zeros(batch, 16, frames, H, W), torch.randn(1, 12, 4096, generator=g),
            torch.randn(1, 257, 1280, generator=g))


def allowed(q_end, key_frame, sink, window):
    """The attention rule, written independently of wan/sampling/cache.py."""
    if key_frame >= q_end:
        return False
    return window == 0 or key_frame < sink or key_frame >= q_end - (window - sink)


def masked_reference(model, latent, text, seed, s, clip=None, y=None, first=None, initial=None, renoise=None,
                     layout=None):
    """Recompute every block from scratch over all frames so far with the full block-causal mask (no cache):
    earlier frames clean at t=0, the current block at the step's t (Self-Forcing's training-time view)."""
    cfg = model.config
    b, _, frames, h, w = latent.shape
    layout = layout or block_layout(frames, s.frames_per_block, s.independent_first_frame)
    schedule = denoising_schedule(s.steps, s.shift, s.warp)
    first_schedule = schedule if s.first_block_steps is None else denoising_schedule(s.first_block_steps, s.shift, s.warp)
    tok = (h // 2) * (w // 2)
    end_of = {}
    for st, n in layout:
        for f in range(st, st + n):
            end_of[f] = st + n
    noise = initial_noise(seed, latent.shape) if initial is None else initial
    renoise = renoise or (lambda bi, j, shape: step_noise(seed, bi, j, shape, None))
    out = torch.zeros(latent.shape)
    known = 0 if first is None else first.shape[2]
    ctx = dit.encode_context(model.tree, cfg, text, clip, torch.float32, b)
    generated = 0
    for bi, (st, n) in enumerate(layout):
        e = st + n
        if e <= known:
            out[:, :, st:e] = first[:, :, st:e]
            continue
        sched = first_schedule if generated == 0 else schedule  # Causal Forcing++: the first generated block
        sigmas, steps_t = sched.sigmas, sched.timesteps
        generated += 1
        qf = torch.arange(e).repeat_interleave(tok)
        mask = torch.tensor([[allowed(end_of[int(a)], int(k), s.sink_size, s.local_window) for k in qf]
                             for a in qf])
        x = (1 - sigmas[0]) * latent[:, :, st:e] + sigmas[0] * noise[:, :, st:e]
        for j, sigma in enumerate(sigmas):
            inp = torch.cat([out[:, :, :st], x], 2)
            if y is not None:
                inp = torch.cat([inp, y[:, :, :e]], 1)
            tf = torch.tensor([0.0] * st + [steps_t[j]] * n, dtype=torch.float64).expand(b, e)
            flow = dit.transformer(model.tree, cfg, inp, tf, ctx, attn_mask=mask)[:, :, st:e]
            x0 = x - sigma * flow
            if j + 1 < len(sigmas):
                x = (1 - sigmas[j + 1]) * x0 + sigmas[j + 1] * renoise(bi, j + 1, x0.shape)
        out[:, :, st:e] = x0
    return out


@pytest.mark.parametrize("case", ["t2v_window_sink_iff", "i2v_no_window", "t2v_window_no_sink_batch2"])
def test_kv_cache_equals_full_block_causal_mask(case, t2v, i2v):
    if case == "t2v_window_sink_iff":
        model, frames, s, batch = t2v, 10, CausalSettings(frames_per_block=3, sink_size=1, local_window=5,
                                                            independent_first_frame=True), 1
    elif case == "i2v_no_window":
        model, frames, s, batch = i2v, 6, CausalSettings(frames_per_block=2, steps="1000,500"), 1
    else:
        model, frames, s, batch = t2v, 8, CausalSettings(frames_per_block=2, local_window=4, steps=[900, 400]), 2
    latent, text, clip = _inputs(frames, batch)
    clip = clip if model.config.has_img_emb else None
    y = torch.randn(batch, 20, frames, H, W) if model.config.has_img_emb else None
    stats = {}
    ours = sample_causal(model, latent, text, seed=7, settings=s, clip_fea=clip, concat=y, stats=stats)
    ref = masked_reference(model, latent, text, 7, s, clip, y)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    if s.local_window:
        # the window really evicted frames; the sink stayed; frames past the window kept absolute RoPE
        # positions (otherwise the comparison above fails: tested by the RoPE-offset test below)
        kept = stats["cache_frames"]
        assert len(kept) <= s.local_window
        assert kept == [f for f in range(frames) if f < s.sink_size or f >= frames - (s.local_window - s.sink_size)]


def test_rope_offsets_past_the_window_matter(t2v, monkeypatch):
    """If cached frames used window-relative instead of absolute RoPE positions, the cache would no longer
    match the masked reference: prove the test above can fail by breaking exactly that."""
    latent, text, _ = _inputs(8)
    s = CausalSettings(frames_per_block=2, local_window=4, steps=[1000])
    ref = masked_reference(t2v, latent, text, 1, s)
    real = dit.transformer

    def relative_positions(tree, cfg, x, t, ctx, start_frame=0, **kw):
        return real(tree, cfg, x, t, ctx, start_frame=min(start_frame, 2), **kw)

    monkeypatch.setattr(dit, "transformer", relative_positions)
    broken = sample_causal(t2v, latent, text, seed=1, settings=s)
    monkeypatch.setattr(dit, "transformer", real)
    good = sample_causal(t2v, latent, text, seed=1, settings=s)
    torch.testing.assert_close(good, ref, atol=1e-5, rtol=0)
    assert (broken[:, :, 4:] - ref[:, :, 4:]).abs().max() > 1e-3  # frames past the window differ
    torch.testing.assert_close(broken[:, :, :4], ref[:, :, :4], atol=1e-5, rtol=0)


def test_one_block_covering_all_frames_equals_bidirectional_forward(i2v):
    frames = 5
    latent, text, clip = _inputs(frames)
    y = torch.randn(1, 20, frames, H, W)
    s = CausalSettings(frames_per_block=frames, steps=[1000])
    ours = sample_causal(i2v, latent, text, seed=3, settings=s, clip_fea=clip, concat=y)
    noise = initial_noise(3, latent.shape)
    flow = i2v.forward(noise, torch.tensor([1000.0]), text, clip, y)
    torch.testing.assert_close(ours, noise - flow, atol=1e-5, rtol=0)


def test_routes_change_output_where_expected(t2v, i2v):
    frames = 7
    latent, text, clip = _inputs(frames)
    s = CausalSettings(frames_per_block=3, independent_first_frame=True, steps="1000,500")
    base = sample_causal(i2v, latent, text, seed=0, settings=s)
    # (1) CLIP features: every frame changes (cross-attention of every block)
    r1 = sample_causal(i2v, latent, text, seed=0, settings=s, clip_fea=clip)
    assert all((r1[:, :, f] - base[:, :, f]).abs().max() > 1e-3 for f in range(frames))
    # (2) concat image latent (i2v): every frame changes too, and zeros == no concat (ComfyUI's default)
    y = torch.zeros(1, 20, frames, H, W)
    y[:, :4, 0] = 1.0
    y[:, 4:, 0] = torch.randn(16, H, W)
    r2 = sample_causal(i2v, latent, text, seed=0, settings=s, concat=y)
    assert all((r2[:, :, f] - base[:, :, f]).abs().max() > 1e-3 for f in range(frames))
    torch.testing.assert_close(sample_causal(i2v, latent, text, seed=0, settings=s,
                                             concat=torch.zeros(1, 20, frames, H, W)), base, atol=0, rtol=0)
    # (3) t2v: the start latent is frame 0 exactly, and the later frames follow it through the cache
    first = torch.randn(1, 16, 1, H, W)
    t_base = sample_causal(t2v, latent, text, seed=0, settings=s)
    r3 = sample_causal(t2v, latent, text, seed=0, settings=s, first_frames=first)
    assert torch.equal(r3[:, :, :1], first)
    assert all((r3[:, :, f] - t_base[:, :, f]).abs().max() > 1e-3 for f in range(1, frames))


def test_fallback_warns_once_and_skips_features(t2v):
    latent, text, clip = _inputs(3)
    s = CausalSettings(steps=[1000])
    model = CausalWanModel(t2v.tree, t2v.config, "fresh handle")  # same weights, its own warning state
    model.tree = torch.nn.Module()  # new identity for the once-per-model warning
    model.tree.__dict__.update(t2v.tree.__dict__)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        a = sample_causal(model, latent, text, seed=0, settings=s, clip_fea=clip)
        b = sample_causal(model, latent, text, seed=0, settings=s, clip_fea=clip)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1
    assert msgs[0].startswith("CLIP vision features were given but the model has no image embedding")
    torch.testing.assert_close(a, sample_causal(t2v, latent, text, seed=0, settings=s), atol=0, rtol=0)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_prompt_switch_keeps_earlier_blocks_and_changes_later(t2v):
    latent, text, _ = _inputs(6)
    other = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(99))
    s = CausalSettings(frames_per_block=2, steps=[1000, 500])
    base = sample_causal(t2v, latent, text, seed=2, settings=s)
    switched = sample_causal(t2v, latent, text, seed=2, settings=s, prompt_switches=[PromptSwitch(2, other)])
    torch.testing.assert_close(switched[:, :, :4], base[:, :, :4], atol=0, rtol=0)
    assert (switched[:, :, 4:] - base[:, :, 4:]).abs().max() > 1e-3
    # the re-cache matters: without it block 2 would see old-prompt keys
    full_other = sample_causal(t2v, latent, other, seed=2, settings=s)
    assert (switched[:, :, 4:] - full_other[:, :, 4:]).abs().max() < (base[:, :, 4:] - full_other[:, :, 4:]).abs().max()


def test_cfg_uses_negative_branch(t2v):
    latent, text, _ = _inputs(2)
    s1 = CausalSettings(frames_per_block=2, steps=[1000], guidance_scale=1.0)
    s3 = CausalSettings(frames_per_block=2, steps=[1000], guidance_scale=3.0)
    neg = torch.zeros(1, 12, 4096)
    cond = sample_causal(t2v, latent, text, seed=0, settings=s1)
    uncond = sample_causal(t2v, latent, neg, seed=0, settings=s1)
    cfg = sample_causal(t2v, latent, text, seed=0, settings=s3, negative_text=neg)
    # one step from pure noise: x0 = n - flow, so x0_cfg = x0_u + 3 (x0_c - x0_u)
    torch.testing.assert_close(cfg, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=0)


def test_interrupt_propagates(t2v):
    latent, text, _ = _inputs(6)
    calls = []

    class Stop(BaseException):
        pass

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop()

    with pytest.raises(Stop):
        sample_causal(t2v, latent, text, seed=0, settings=CausalSettings(steps=[1000, 500]), check_interrupt=check)


def test_bad_inputs_are_clear_errors(t2v, i2v):
    latent, text, clip = _inputs(7)
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, latent, text, settings=CausalSettings(frames_per_block=3))
    assert str(e.value) == (
        "the latent has 7 frames, which does not fit blocks of 3 frame(s): use [3, 6, 9] latent frames (video "
        "length [9, 21, 33] in WanI2VConditioning), or enable independent_first_frame for 1 + 3·k frames, or "
        "change frames_per_block.")
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, torch.zeros(1, 4, 6, H, W), text)
    assert str(e.value) == (
        "latent has 4 channels; the model takes Wan 2.1 latents with 16 (shape [1, 4, 6, 8, 8]). Use a Wan 2.1 "
        "latent (its VAE), not an SD/Flux image latent or a Wan 2.2 (48-ch) one.")
    bad = torch.zeros(1, 16, 6, H, W)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^latent contains NaN values; the latent is corrupt"):
        sample_causal(t2v, bad, text)
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, torch.zeros(1, 16, 6, H, W), text, concat=torch.zeros(1, 20, 6, H, W))
    assert str(e.value).startswith("the model is text-to-video (in_dim 16) and cannot take channel-concat image "
                                   "conditioning; pass the start image as first-frame latents (route 3)")
    with pytest.raises(ValueError) as e:
        sample_causal(i2v, torch.zeros(1, 16, 6, H, W), text, clip_fea=torch.zeros(1, 257, 1024))
    assert str(e.value).startswith("CLIP vision features: 1024-wide features [1, 257, 1024], but Wan 2.1 i2v "
                                   "needs 1280-wide ViT-H/14 features [batch, 257, 1280]")
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, torch.zeros(1, 16, 6, H, W), text, first_frames=torch.zeros(1, 16, 1, H, W))
    assert str(e.value).startswith("the start image covers 1 latent frame(s) but block boundaries are at "
                                   "[0, 3, 6]: enable independent_first_frame")
    with pytest.raises(ValueError) as e:
        sample_causal(t2v, torch.zeros(1, 16, 6, H, W), text,
                      settings=CausalSettings(sink_size=2, local_window=4))
    assert str(e.value) == ("local_window 4 is too small: it must hold the 2 sink frame(s) plus one block of 3 "
                            "frame(s); set local_window >= 5, or 0 for no window.")
    with pytest.raises(ValueError, match="needs a negative conditioning"):
        sample_causal(t2v, torch.zeros(1, 16, 6, H, W), text, settings=CausalSettings(guidance_scale=2.0))


def test_half_precision_cache_and_weights_stay_close(t2v):
    latent, text, _ = _inputs(4)
    s = CausalSettings(frames_per_block=2, steps=[1000, 500])
    ref = sample_causal(t2v, latent, text, seed=0, settings=s)
    bf16_cache = sample_causal(t2v, latent, text, seed=0,
                               settings=CausalSettings(frames_per_block=2, steps=[1000, 500],
                                                       cache_dtype=torch.bfloat16))
    assert 0 < (bf16_cache - ref).abs().max() < 0.05
    m16 = CausalWanModel.from_state_dict(t2v.state_dict(), dtype="bf16")
    assert m16.compute_dtype == torch.bfloat16 and m16.tree.patch_embedding.weight.dtype == torch.float32
    out = sample_causal(m16, latent, text, seed=0, settings=s)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1


def test_concatenated_reference_images_condition_and_partial_groups_are_refused(i2v):
    """CLIPVisionEncodeWan's "concat" mode gives [1, k*257, 1280]: the sampler takes it (each image's tokens
    are attended in the image softmax), and the result differs from a single image's; a token count that is
    not whole images is a clear error."""
    latent, text, clip_a = _inputs(3)
    clip_b = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(9))
    s = CausalSettings(frames_per_block=3, steps=[1000, 500])
    one = sample_causal(i2v, latent, text, seed=0, settings=s, clip_fea=clip_a)
    two = sample_causal(i2v, latent, text, seed=0, settings=s, clip_fea=torch.cat([clip_a, clip_b], dim=1))
    same_twice = sample_causal(i2v, latent, text, seed=0, settings=s, clip_fea=torch.cat([clip_a, clip_a], dim=1))
    assert two.shape == one.shape
    assert (two - one).abs().max() > 1e-3
    # The same image twice gives the same softmax-weighted average of its values: equal to one copy.
    assert torch.allclose(same_twice, one, atol=1e-5)
    with pytest.raises(ValueError) as e:
        sample_causal(i2v, latent, text, settings=s, clip_fea=torch.zeros(1, 300, 1280))
    assert str(e.value) == (
        "CLIP vision features: 300 tokens [1, 300, 1280], but Wan 2.1 i2v needs 257 per image ([batch, 257, 1280], "
        "or k images side by side: [batch, k*257, 1280]). Use a 224 px ViT-H/14 model (clip_vision_h.safetensors "
        "or Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth).")


def test_block_generator_yields_the_same_blocks_and_keeps_no_video(t2v):
    latent, text, _ = _inputs(8)
    s = CausalSettings(frames_per_block=2, sink_size=1, local_window=5, steps=[1000, 500])
    whole = sample_causal(t2v, latent, text, seed=4, settings=s)
    loop = iter_causal_blocks(t2v, latent, text, seed=4, settings=s)
    assert len(loop) == 4 and loop.total_steps == 8
    got = []
    for r in loop:
        assert (r.index, r.total, r.start_frame, r.num_frames) == (len(got), 4, 2 * len(got), 2)
        assert r.x0.dtype == torch.float32 and r.x0.shape == (1, 16, 2, H, W)
        got.append(r.x0)
        assert loop.recent == {}  # no prompt switch: no clean frames are held
    torch.testing.assert_close(torch.cat(got, 2), whole, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="runs once"):
        next(iter(loop))
    # with a switch, only the frames a re-cache can use are held (sink + the last window)
    other = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(5))
    loop = CausalLoop(t2v, latent, text, seed=4, settings=s, prompt_switches=[PromptSwitch(3, other)])
    for r in loop:
        assert sorted(loop.recent) == [f for f in range(r.start_frame + 2) if f < 1 or f >= r.start_frame + 2 - 5]


def test_shorter_last_block_equals_the_masked_reference(t2v):
    """A length that is not whole blocks (the node's i2v template default): the last block takes the frames
    left, [1 | 3 | 3 | 2] here, and the run equals the full block-causal mask over that layout (written out)."""
    latent, text, _ = _inputs(9)
    s = CausalSettings(frames_per_block=3, sink_size=1, local_window=5, independent_first_frame=True,
                       steps="1000,500", shorter_last_block=True)
    first = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(8))
    ours = sample_causal(t2v, latent, text, seed=2, settings=s, first_frames=first)
    ref = masked_reference(t2v, latent, text, 2, s, first=first, layout=[(0, 1), (1, 3), (4, 3), (7, 2)])
    assert ours[:, :, 7:].abs().mean() > 0.1
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert block_layout(9, 3, True, shorter_last_block=True) == [(0, 1), (1, 3), (4, 3), (7, 2)]
    assert block_layout(5, 4, False, shorter_last_block=True) == [(0, 4), (4, 1)]
    assert block_layout(6, 3, True, shorter_last_block=True) == [(0, 1), (1, 3), (4, 2)]


def test_fit_block_layout_says_what_it_does_and_keeps_the_error_for_whole_block_loops():
    from comfyui_clipwan.wan.sampling.loop import fit_block_layout

    s = CausalSettings(frames_per_block=3, independent_first_frame=True)
    assert fit_block_layout(s, 22) == (s, None)
    fitted, note = fit_block_layout(s, 21)
    assert fitted.shorter_last_block and not s.shorter_last_block
    assert note == ("video length 81 = 21 latent frames is not a whole number of blocks of 3 after the independent "
                    "first frame, so the last block has 2 frame(s) instead of 3 (the authors' loop runs whole blocks "
                    "only); lengths that fit exactly: 73 (19 latent frames) or 85 (22 latent frames).")
    _, note = fit_block_layout(CausalSettings(frames_per_block=8), 13)  # Wan22ImageToVideoLatent's 49 frames
    assert note == ("video length 49 = 13 latent frames is not a whole number of blocks of 8, so the last block "
                    "has 5 frame(s) instead of 8 (the authors' loop runs whole blocks only); lengths that fit "
                    "exactly: 29 (8 latent frames) or 61 (16 latent frames).")
    with pytest.raises(ValueError) as e:  # a loop shape that runs a joint window of whole blocks
        fit_block_layout(dataclasses.replace(s, loop="joint-window"), 21)
    assert str(e.value) == (
        "the latent has 21 frames, which does not fit blocks of 3 frame(s) after an independent first frame: use "
        "[19, 22, 25] latent frames (video length [73, 85, 97] in WanI2VConditioning), with independent_first_frame "
        "off, multiples of 3, or change frames_per_block; the 'joint-window' loop runs whole blocks only.")


def test_validation_errors_raise_when_the_loop_is_built(t2v):
    latent, text, _ = _inputs(7)
    with pytest.raises(ValueError, match="does not fit blocks of 3"):
        iter_causal_blocks(t2v, latent, text, settings=CausalSettings(frames_per_block=3))


def test_hooks_see_every_step_forward_and_block(t2v):
    latent, text, _ = _inputs(6)
    first = torch.randn(1, 16, 1, H, W)
    s = CausalSettings(frames_per_block=1, steps=[1000, 700, 300])
    events = []

    class Record(SamplerHooks):
        def on_forward_start(self, kind, block):
            events.append(("start", kind, block))

        def on_forward_end(self, kind, block):
            events.append(("end", kind, block))

        def on_step(self, block, step, total):
            events.append(("step", block, step, total))

        def on_block(self, r):
            events.append(("block", r.index))

    timing = TimingHooks()
    from comfyui_clipwan.wan.sampling.loop import combine_hooks
    sample_causal(t2v, latent, text, seed=0, settings=s, first_frames=first, hooks=combine_hooks(Record(), timing))
    steps = [e for e in events if e[0] == "step"]
    # block 0 is the known start frame: no denoising steps; blocks 1..5: 3 steps each
    assert steps == [("step", b, j, 3) for b in range(1, 6) for j in range(3)]
    assert [e for e in events if e[0] == "block"] == [("block", b) for b in range(6)]
    kinds = [e[1] for e in events if e[0] == "start"]
    assert kinds.count("context") == 1 and kinds.count("denoise") == 15 and kinds.count("cache") == 6
    assert timing.forward_s > 0 and set(timing.by_kind) == {"context", "denoise", "cache"}
    # every forward's end follows its start with nothing in between
    se = [e for e in events if e[0] in ("start", "end")]
    assert all(a[0] == "start" and b[0] == "end" and a[1:] == b[1:] for a, b in zip(se[::2], se[1::2]))


def test_noise_hook_replaces_every_draw(t2v):
    """A NoiseSource decides the initial and every re-noise draw: the result equals the masked reference fed
    the same tensors, and differs from the default seeding."""
    latent, text, _ = _inputs(4)
    s = CausalSettings(frames_per_block=2, steps=[1000, 600, 200])
    g = torch.Generator().manual_seed(123)
    init = torch.randn(latent.shape, generator=g)
    table = {(b, j): torch.randn(1, 16, 2, H, W, generator=g) for b in range(2) for j in (1, 2)}
    asked = []

    class Replay(NoiseSource):
        def initial(self, shape, device):
            assert tuple(shape) == tuple(latent.shape)
            return init.clone()

        def step(self, block, step, shape, device):
            asked.append((block, step, tuple(shape)))
            return table[block, step].clone()

    ours = sample_causal(t2v, latent, text, settings=s, noise=Replay())
    ref = masked_reference(t2v, latent, text, 0, s, initial=init, renoise=lambda b, j, shape: table[b, j])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert asked == [(0, 1, (1, 16, 2, H, W)), (0, 2, (1, 16, 2, H, W)), (1, 1, (1, 16, 2, H, W)),
                     (1, 2, (1, 16, 2, H, W))]
    assert (ours - sample_causal(t2v, latent, text, settings=s)).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["frame_wise", "chunk_wise"])
def test_causal_forcing_native_i2v_equals_masked_reference(mode, t2v):
    """Causal Forcing: the start image's clean latent is frame 0 (written into the cache at t=0, copied to
    the output); frame-wise = 1 latent frame per block, chunk-wise = 3 after the independent first frame;
    the 1/2-step configs run a longer list on the first generated block."""
    if mode == "frame_wise":
        frames, s = 5, CausalSettings(frames_per_block=1, steps=[1000, 500], first_block_steps=[1000, 750, 500, 250])
    else:
        frames, s = 7, CausalSettings(frames_per_block=3, independent_first_frame=True, steps=[1000],
                                      first_block_steps=[1000, 500])
    latent, text, _ = _inputs(frames)
    first = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(8))
    steps = []

    class Count(SamplerHooks):
        def on_step(self, block, step, total):
            steps.append((block, total))

    loop = CausalLoop(t2v, latent, text, seed=3, settings=s, first_frames=first, hooks=Count())
    ours = torch.cat([r.x0 for r in loop], 2)
    ref = masked_reference(t2v, latent, text, 3, s, first=first)
    assert torch.equal(ours[:, :, :1], first)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    longer = len(s.first_block_steps)
    assert steps[0] == (1, longer) and steps[longer] == (2, len(s.steps))  # block 0 is the image
    assert loop.total_steps == longer + (len(loop) - 2) * len(s.steps)
    # the first block's list matters
    plain = sample_causal(t2v, latent, text, seed=3, first_frames=first,
                          settings=CausalSettings(**{**s.__dict__, "first_block_steps": None}))
    assert (plain[:, :, 1:] - ours[:, :, 1:]).abs().max() > 1e-3
