"""Step lists and σ exactly as the causal Wan authors compute them (their FlowMatchScheduler rule, written
again here independently), step counts, and the sampler feeding the model the upstream timestep."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.sampling.loop import initial_noise, step_noise
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule, denoising_sigmas, parse_steps, shift_sigma


class UpstreamGrid:
    """FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True).set_timesteps(1000), re-derived from the
    Self-Forcing / CausVid description: float32 linspace(1, 0, 1001) without its last point, shifted,
    timesteps = 1000·σ; σ of a timestep = σ at argmin |timesteps - t| (in float64)."""

    def __init__(self, shift):
        s = torch.linspace(1.0, 0.0, 1001)[:-1]
        self.sigmas = shift * s / (1 + (shift - 1) * s)
        self.timesteps = self.sigmas * 1000

    def warp(self, steps):
        table = torch.cat([self.timesteps, torch.tensor([0.0])])
        return table[1000 - torch.tensor(steps, dtype=torch.long)].tolist()

    def sigma(self, t):
        return self.sigmas[torch.argmin((self.timesteps.double() - float(t)).abs())].item()


@pytest.mark.parametrize("steps,shift,warp", [
    ("1000,750,500,250", 5.0, True),  # Self-Forcing / LongLive / Causal Forcing chunk-wise
    ("1000,800,600,400,200", 5.0, True),  # Rolling Forcing
    ("1000,757,522", 8.0, False),  # CausVid wan_causal_dmd.yaml (its pipeline drops the list's trailing 0)
    ("1000,937,833,625,0", 5.0, False),  # Krea self_forcing_server_14b.yaml in Self-Forcing's pipeline (0 is run)
    ("1000,750,500,250,0", 5.0, True),  # Krea's realtime server: linspace(1000, 0, 5) warped, the 0 run
    ("1000,750,500,250", 8.0, True),  # CausVid warp_4step
])
def test_schedule_equals_upstream_rule(steps, shift, warp):
    ref = UpstreamGrid(shift)
    ints = [int(v) for v in steps.split(",")]
    want_t = ref.warp(ints) if warp else [float(v) for v in ints]
    got = denoising_schedule(steps, shift, warp)
    assert list(got.timesteps) == want_t
    assert list(got.sigmas) == [ref.sigma(t) for t in want_t]


def test_unwarped_lists_are_not_t_over_1000():
    causvid = denoising_schedule("1000,757,522", 8.0, warp=False)
    assert causvid.timesteps == (1000.0, 757.0, 522.0)
    # nearest grid points: s = 0.28 and 0.12 -> 8s/(1+7s) = 28/37 and 12/23
    assert causvid.sigmas == pytest.approx((1.0, 28 / 37, 12 / 23), abs=1e-7)
    # the old "unwarped = shift 1" approximation (σ = t/1000) is off by up to 2.6e-4
    off = max(abs(s - t / 1000) for s, t in zip(causvid.sigmas, causvid.timesteps))
    assert off == pytest.approx(2.6087e-4, abs=1e-7)
    krea = denoising_schedule("1000,937,833,625", 5.0, warp=False)
    assert krea.timesteps == (1000.0, 937.0, 833.0, 625.0)
    assert krea.sigmas[1] == pytest.approx(0.9368737, abs=1e-7)


def test_warped_list_matches_comfyui_shift_formula():
    got = denoising_sigmas("1000,750,500,250", 5.0).tolist()
    comfy = [shift_sigma(t / 1000, 5.0) for t in (1000, 750, 500, 250)]
    assert got == pytest.approx(comfy, abs=1e-7)  # same formula, upstream's float32 grid
    assert [round(t, 2) for t in denoising_schedule("1000,750,500,250", 5.0).timesteps] == [1000, 937.5, 833.33,
                                                                                             625]


def test_step_counts_expand_or_are_refused():
    assert parse_steps("4") == [1000, 750, 500, 250]
    assert parse_steps(" 2 ") == [1000, 500]
    assert parse_steps("1") == [1000]
    assert parse_steps("5") == [1000, 800, 600, 400, 200]
    assert parse_steps("20")[:3] == [1000, 950, 900] and len(parse_steps("20")) == 20
    assert parse_steps("1000") == [1000]  # a lone timestep above 50 is a one-step list
    # a trailing 0 is a last step at t = 0 (Self-Forcing's pipeline, Krea's server); twice is not decreasing
    assert parse_steps("1000,750,500,250,0") == [1000, 750, 500, 250, 0]
    with pytest.raises(ValueError, match="only the last may be 0"):
        parse_steps("1000,500,0,0")
    with pytest.raises(ValueError, match="steps '0'"):
        parse_steps([0])  # a lone t = 0 step would return the noise
    with pytest.raises(ValueError) as e:
        parse_steps("3", warp=False)
    assert str(e.value) == ("steps '3' is a step count; with warp off type the timesteps themselves, e.g. "
                            "'1000,757,522' (CausVid).")
    with pytest.raises(ValueError) as e:
        parse_steps("0")
    assert str(e.value) == ("steps '0': give a step count from 1 to 50 such as '4', or timesteps such as "
                            "'1000,750,500,250'.")
    with pytest.raises(ValueError) as e:
        parse_steps("1000,1000,500")
    assert str(e.value) == ("step list [1000, 1000, 500] must be strictly decreasing timesteps in (0, 1000], "
                            "only the last may be 0, e.g. '1000,750,500,250' or '1000,750,500,250,0'.")
    with pytest.raises(ValueError) as e:
        parse_steps("1000,937.5")
    assert str(e.value) == ("step list [1000.0, 937.5] must hold whole timesteps (the authors' lists are "
                            "integers), e.g. '1000,750,500,250'.")
    with pytest.raises(ValueError) as e:
        parse_steps("fast")
    assert str(e.value) == ("steps 'fast' must be a step count such as '4' or comma-separated timesteps between "
                            "1 and 1000 such as '1000,750,500,250'.")


def test_sampler_feeds_integer_t_and_nearest_sigma():
    """One block of CausVid (unwarped, shift 8): our loop vs a plain loop written here with the upstream
    numbers (t = 757 into the model, σ = 28/37 for x0 and re-noising)."""
    cfg = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2)
    model = CausalWanModel.random(cfg, seed=5)
    latent = torch.zeros(1, 16, 3, 4, 4)
    text = torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(1))
    s = CausalSettings(steps="1000,757,522", shift=8.0, warp=False, frames_per_block=3)
    ours = sample_causal(model, latent, text, seed=7, settings=s)
    ctx = dit.encode_context(model.tree, cfg, text, None, torch.float32, 1)
    ts, sig = [1000.0, 757.0, 522.0], [1.0, 28 / 37, 12 / 23]
    x = initial_noise(7, latent.shape)
    for j, (t, sigma) in enumerate(zip(ts, sig)):
        flow = dit.transformer(model.tree, cfg, x, torch.tensor([t], dtype=torch.float64), ctx)
        x0 = x - sigma * flow
        if j + 1 < len(ts):
            x = (1 - sig[j + 1]) * x0 + sig[j + 1] * step_noise(7, 0, j + 1, x0.shape, None)
    assert (ours - x0).abs().max().item() < 1e-5
    # shift 1 with warp (the old docs' "exact" stand-in) differs measurably
    approx = sample_causal(model, latent, text, seed=7,
                           settings=CausalSettings(steps="1000,757,522", shift=1.0, frames_per_block=3))
    assert (approx - ours).abs().max().item() > 1e-4
