"""Explicit sigmas in the causal loop, and the loop as a ComfyUI SAMPLER (Causal Wan Loop Sampler), without ComfyUI.

The SAMPLER's ``sample`` is called the way core's CFGGuider calls a sampler: ``(guider, sigmas, extra_args,
callback, noise, latent_image, denoise_mask, disable_pbar)``. The guider here is the minimal object of that
boundary (its ``model_patcher``, ``original_conds`` in ``comfy.sampler_helpers.convert_cond``'s layout and
``cfg``); the real one runs in tests/integration/test_loop_sampler_comfy.py."""

import types
import uuid

import pytest
import torch

from comfyui_clipwan.nodes.sampler_nodes import CausalWanLoopSampler, guider_conditioning
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler, WanI2VConditioning
from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, denormalize, sample_causal
from comfyui_clipwan.wan.sampling.loop import CoreARNoise, initial_noise
from comfyui_clipwan.wan.sampling.scheduler import denoising_sigmas, explicit_schedule

from test_wan_nodes import ClipOut, FakeVAE, _conditioning

I2V = WanConfig(dim=128, ffn_dim=160, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True)
T2V = WanConfig(dim=128, ffn_dim=160, num_heads=2, num_layers=2, in_dim=16)
# core's BasicScheduler "simple", 4 steps, on a Wan model shifted to 5 (ModelSamplingSD3): float32 like core's
CORE_SIGMAS = torch.tensor([1.0, 0.9375, 0.8333333134651184, 0.625, 0.0], dtype=torch.float32)


def _guider(model, positive, negative=None, cfg=1.0):
    """CFGGuider's surface as a sampler sees it: conds converted by ``convert_cond`` (cross_attn + the entry's
    keys + model_conds + uuid)."""
    def convert(cond):
        return [{**extra, "cross_attn": text, "model_conds": {}, "uuid": uuid.uuid4()} for text, extra in cond]

    conds = {"positive": convert(positive)}
    if negative is not None:
        conds["negative"] = convert(negative)
    return types.SimpleNamespace(model_patcher=model, original_conds=conds, cfg=cfg)


def _i2v(length=13):
    pos, neg = _conditioning(0), _conditioning(1)
    image = torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(2))
    clip = ClipOut(torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(3)))
    return WanI2VConditioning().encode(pos, neg, FakeVAE(), 64, 64, length, 1, clip, image)


def test_core_sigmas_are_the_warped_step_list_exactly():
    warped = torch.cat([denoising_sigmas("1000,750,500,250", 5.0), torch.zeros(1, dtype=torch.float64)]).float()
    assert torch.equal(warped, CORE_SIGMAS)
    assert explicit_schedule(CORE_SIGMAS) == explicit_schedule(CORE_SIGMAS.tolist())
    from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule

    assert explicit_schedule(CORE_SIGMAS) == denoising_schedule("1000,750,500,250", 5.0)


def test_explicit_sigmas_run_exactly_the_step_list_they_equal():
    model = CausalWanModel.random(T2V, seed=1)
    latent = torch.zeros(1, 16, 6, 8, 8)
    text = _conditioning(0)[0][0]
    by_steps = sample_causal(model, latent, text, seed=3, settings=CausalSettings(steps="1000,750,500,250"))
    # shift and steps are not read with explicit sigmas: a wrong shift proves it
    explicit = CausalSettings(sigmas=CORE_SIGMAS.tolist(), shift=1.0, steps="1000")
    by_sigmas = sample_causal(model, latent, text, seed=3, settings=explicit)
    torch.testing.assert_close(by_sigmas, by_steps, atol=0, rtol=0)
    other = sample_causal(model, latent, text, seed=3, settings=CausalSettings(sigmas=[1.0, 0.8, 0.5, 0.0]))
    assert (other - by_steps).abs().max() > 1e-2


@pytest.mark.parametrize("sigmas, message", [
    ([1.0, 0.5], "end the list with 0"),
    ([0.0], "end the list with 0"),
    ([1.0, 0.9, 0.95, 0.0], "strictly decreasing"),
    ([1.5, 0.5, 0.0], "in (0, 1]"),
])
def test_bad_explicit_sigmas_are_refused_before_sampling(sigmas, message):
    model = CausalWanModel.random(T2V, seed=1)
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        iter_causal_blocks(model, torch.zeros(1, 16, 3, 8, 8), torch.zeros(1, 8, 4096),
                           settings=CausalSettings(sigmas=sigmas))


def test_explicit_sigmas_refuse_a_step_count_solver_and_first_block_steps():
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    model = CausalWanModel.random(T2V, seed=1)
    for extra in ({"solver": "unipc"}, {"first_block_steps": "1000,750"}):
        with pytest.raises(ValueError, match="explicit sigmas"):
            iter_causal_blocks(model, torch.zeros(1, 16, 3, 8, 8), torch.zeros(1, 8, 4096),
                               settings=CausalSettings(sigmas=CORE_SIGMAS, **extra))


def test_loop_sampler_equals_causal_wan_sampler_on_i2v():
    pos, neg, latent = _i2v(length=13)  # 4 latent frames: the image + 1 block of 3
    model = CausalWanModel.random(I2V, seed=5)
    (sampler,) = CausalWanLoopSampler().get_sampler(frames_per_block=3, independent_first_frame=True)
    seen = []
    noise = initial_noise(4, latent["samples"].shape)  # what RandomNoise(4) gives SamplerCustomAdvanced
    out = sampler.sample(_guider(model, pos, neg), CORE_SIGMAS, {"seed": 4},
                         lambda step, x0, x, total: seen.append((step, total, x0.clone())), noise,
                         latent["samples"].clone(), None, True)
    (want,) = CausalWanSampler().sample(model, pos, latent, seed=4, independent_first_frame=True)
    torch.testing.assert_close(denormalize(out), want["samples"], atol=0, rtol=0)
    # progress: every denoising step (2 blocks x 4 steps) and each finished block; the last x0 is the video
    assert [s for s, _, _ in seen] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7] and {t for _, t, _ in seen} == {8}
    torch.testing.assert_close(seen[-1][2], out, atol=0, rtol=0)


def test_loop_sampler_cfg_guider_and_core_renoise():
    pos, neg, latent = _i2v(length=13)
    model = CausalWanModel.random(I2V, seed=5)
    noise = initial_noise(9, latent["samples"].shape)
    (sampler,) = CausalWanLoopSampler().get_sampler(3, 0, 0, True)
    cfg = sampler.sample(_guider(model, pos, neg, cfg=3.0), CORE_SIGMAS, {"seed": 9}, None, noise,
                         latent["samples"].clone())
    (want,) = CausalWanSampler().sample(model, pos, latent, seed=9, independent_first_frame=True,
                                        guidance_scale=3.0, negative=neg)
    torch.testing.assert_close(denormalize(cfg), want["samples"], atol=0, rtol=0)
    # core ar_video's re-noise draws: sample_causal with CoreARNoise and the same explicit sigmas
    (core_like,) = CausalWanLoopSampler().get_sampler(3, 0, 0, True, renoise="core ar_video")
    got = core_like.sample(_guider(model, pos), CORE_SIGMAS, {"seed": 9}, None, noise, latent["samples"].clone())
    d = pos[0][1]
    from comfyui_clipwan.wan.conditioning.inputs import WanLatentAdapter

    routes = WanLatentAdapter().image_inputs(pos[0][0], d, latent["samples"])
    ref = sample_causal(model, torch.zeros_like(noise), pos[0][0], noise=CoreARNoise(9),
                        settings=CausalSettings(sigmas=CORE_SIGMAS, independent_first_frame=True),
                        clip_fea=routes["clip_fea"], concat=routes["concat"])
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    assert (got - cfg).abs().max() > 1e-3


def test_loop_sampler_uses_the_noise_it_is_given():
    model = CausalWanModel.random(T2V, seed=1)
    pos = _conditioning(0)
    (sampler,) = CausalWanLoopSampler().get_sampler(3, 0, 0, False)
    shape = (1, 16, 3, 8, 8)
    a = sampler.sample(_guider(model, pos), CORE_SIGMAS, {"seed": 2}, None, initial_noise(2, shape), torch.zeros(shape))
    b = sampler.sample(_guider(model, pos), CORE_SIGMAS, {"seed": 2}, None, initial_noise(5, shape), torch.zeros(shape))
    ref = sample_causal(model, torch.zeros(shape), pos[0][0], seed=2, settings=CausalSettings(sigmas=CORE_SIGMAS))
    torch.testing.assert_close(a, ref, atol=0, rtol=0)
    assert (a - b).abs().max() > 1e-2  # another initial noise, another video
    with pytest.raises(ValueError, match="NOISE node's noise has shape"):
        sampler.sample(_guider(model, pos), CORE_SIGMAS, {"seed": 2}, None, torch.zeros(1, 16, 6, 8, 8),
                       torch.zeros(shape))


def test_guiders_the_loop_cannot_run_are_refused():
    model = CausalWanModel.random(T2V, seed=1)
    guider = _guider(model, _conditioning(0))
    guider.original_conds["middle"] = guider.original_conds["positive"]  # DualCFGGuider's third conditioning
    with pytest.raises(ValueError, match="use BasicGuider or CFGGuider"):
        guider_conditioning(guider)
    with pytest.raises(ValueError, match="renoise"):
        CausalWanLoopSampler().get_sampler(3, 0, 0, False, renoise="ancestral")
    with pytest.raises(ValueError, match="unknown preset"):
        CausalWanLoopSampler().get_sampler(3, 0, 0, False, family="Not A Family")
