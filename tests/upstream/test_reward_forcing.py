"""Reward Forcing's own ``CausalInferencePipeline`` (its cache: keys without RoPE at slot positions, EMA sink)
vs ``sample_causal`` with ``positions="slots", sink_ema=0.999`` on shared tiny random weights and replayed noise.
Runs when ``UPSTREAM_REWARDFORCING_DIR`` points at JaydenLyh/Reward-Forcing.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, regex, scipy, torch, torchvision, tqdm, transformers; the test: omegaconf."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, sample_causal
from .conftest import fp32_attention
from .harness import H, W, IdentityVAE, ReplayTorchGlobalNoise, Texts, fit_pipeline, random_state_dict, their_wrapper

STEPS = [1000, 750, 500, 250]
# frames, local_attn_size, sink_size. (Its sink-free path ropes the queries at a negative frame index and
# fails: every Reward Forcing config has a sink.)
# Without a window nothing is evicted, so slot positions equal absolute ones and the EMA sink never moves: that
# case cannot tell Reward Forcing's rules from Self-Forcing's (its control below says so by passing both ways);
# the windowed cases evict and carry the control that can (absolute positions + a fixed sink are far off).
CASES = {"shipped_sink3_local9": (18, 9, 3), "no_window_sink3": (9, -1, 3), "evicting_sink3_local6": (12, 6, 3)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reward_forcing_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("REWARDFORCING")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    from omegaconf import OmegaConf
    from pipeline.causal_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    frames, window, sink = CASES[case]
    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2,
                       local_attn_size=window, sink_size=sink).eval()
    sd = random_state_dict()
    model.load_state_dict(sd, strict=True)
    args = OmegaConf.create({"denoising_step_list": STEPS, "warp_denoising_step": True, "num_frame_per_block": 3,
                             "independent_first_frame": False, "context_noise": 0, "checkpoint_path": "unused",
                             "model_kwargs": {"local_attn_size": window, "sink_size": sink, "timestep_shift": 5.0}})
    pipe = fit_pipeline(CausalInferencePipeline(args, torch.device("cpu"), generator=their_wrapper(model),
                                                text_encoder=Texts(), vae=IdentityVAE()))
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts=["a prompt"], return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    text = Texts()(["a prompt"])["prompt_embeds"]
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=sink,
                              local_window=max(window, 0), positions="slots", sink_ema=0.999)
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), text,
                         settings=settings, noise=ReplayTorchGlobalNoise(noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{case}: max |ours - Reward Forcing| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    plain = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), text,
                          settings=CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=sink,
                                                  local_window=max(window, 0)),
                          noise=ReplayTorchGlobalNoise(noise, 42))
    far = (plain - theirs).abs().max().item()
    print(f"{case}: absolute positions, fixed sink vs Reward Forcing: {far:.2e}")
    if window > 0:  # sharp: absolute positions and a fixed sink (Self-Forcing / LongLive) are far off
        assert far > 1e-3
    else:  # the control of this case: it cannot tell the rules apart (both match), so it checks the shared path only
        assert far <= 1e-4
