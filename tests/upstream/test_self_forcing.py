"""Self-Forcing's own ``CausalInferencePipeline`` vs ``sample_causal`` on shared tiny random weights and replayed
noise: its shipped chunk-wise DMD loop (blocks of 3, steps 1000/750/500/250 warped at shift 5), t2v and the
"i2v" of its inference script (the image latent as the first frames, independent first frame). Runs when
``UPSTREAM_SELFFORCING_DIR`` points at guandeh17/Self-Forcing."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, sample_causal
from .conftest import fp32_attention
from .harness import H, W, IdentityVAE, ReplayTorchGlobalNoise, Texts, fit_pipeline, random_state_dict, their_wrapper

STEPS = [1000, 750, 500, 250]
CASES = {"chunkwise_t2v": (9, False), "chunkwise_first_frame_image": (9, True)}  # generated frames, image


@pytest.mark.parametrize("case", sorted(CASES))
def test_self_forcing_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("SELFFORCING")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    from omegaconf import OmegaConf
    from pipeline.causal_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    generated, image = CASES[case]
    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2).eval()
    sd = random_state_dict()
    model.load_state_dict(sd, strict=True)
    cfg = {"denoising_step_list": STEPS, "warp_denoising_step": True, "num_frame_per_block": 3,
           "independent_first_frame": image, "context_noise": 0, "model_kwargs": {"timestep_shift": 5.0}}
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
    full_noise = torch.cat([torch.zeros(1, 1, 16, H, W), noise], 1) if image else noise
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, independent_first_frame=image)
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W),
                         Texts()(["a prompt"])["prompt_embeds"], settings=settings,
                         first_frames=None if start is None else start.permute(0, 2, 1, 3, 4),
                         noise=ReplayTorchGlobalNoise(full_noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{case}: max |ours - Self-Forcing| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
