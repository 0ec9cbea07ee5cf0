"""Causal Forcing's own ``CausalInferencePipeline`` vs ``sample_causal`` on shared tiny random weights and
replayed noise: frame-wise and chunk-wise, the 2-step config's 4-step first chunk, native i2v (the image
latent as frame 0). Runs when ``UPSTREAM_CAUSALFORCING_DIR`` points at thu-ml/Causal-Forcing."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, sample_causal
from .conftest import fp32_attention
from .harness import H, W, IdentityVAE, ReplayTorchGlobalNoise, Texts, fit_pipeline, random_state_dict, their_wrapper

CASES = {  # frames generated, frames per block, steps, first-chunk steps, image
    "chunkwise_4step_t2v": (9, 3, [1000, 750, 500, 250], None, False),
    "framewise_2step_t2v": (4, 1, [1000, 500], [1000, 750, 500, 250], False),
    "framewise_2step_i2v": (4, 1, [1000, 500], [1000, 750, 500, 250], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_causal_forcing_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("CAUSALFORCING")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    from omegaconf import OmegaConf
    from pipeline.causal_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    generated, per_block, steps, first_steps, image = CASES[case]
    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2).eval()
    sd = random_state_dict()
    model.load_state_dict(sd, strict=True)
    cfg = {"denoising_step_list": steps, "warp_denoising_step": True, "num_frame_per_block": per_block,
           "independent_first_frame": False, "context_noise": 0, "model_kwargs": {"timestep_shift": 5.0}}
    if first_steps:
        cfg["denoising_step_list_first_chunk"] = first_steps
    pipe = fit_pipeline(CausalInferencePipeline(OmegaConf.create(cfg), torch.device("cpu"),
                                                generator=their_wrapper(model), text_encoder=Texts(),
                                                vae=IdentityVAE()))
    noise = torch.randn(1, generated, 16, H, W, generator=torch.Generator().manual_seed(7))
    start = torch.randn(1, 1, 16, H, W, generator=torch.Generator().manual_seed(8)) if image else None
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts=["a prompt"], initial_latent=start, return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    frames = generated + (1 if image else 0)
    full_noise = torch.cat([torch.zeros(1, 1, 16, H, W), noise], 1) if image else noise  # frame 0 is the image
    settings = CausalSettings(steps=steps, shift=5.0, frames_per_block=per_block, first_block_steps=first_steps)
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W),
                         Texts()(["a prompt"])["prompt_embeds"], settings=settings,
                         first_frames=None if start is None else start.permute(0, 2, 1, 3, 4),
                         noise=ReplayTorchGlobalNoise(full_noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{case}: max |ours - Causal Forcing| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
