"""Rolling Forcing's own ``inference_rolling_forcing`` vs our rolling loop (``CausalSettings(loop="rolling")``) on
shared tiny random weights and replayed noise: its shipped config (5 warped steps at shift 5, blocks of 3, the
anchor block + 21 attended frames, a 24-frame cache) over videos long enough to ramp up, roll, evict, move the
anchor and drain, and a 3-step list (a narrower window, more cached frames read). Runs when
``UPSTREAM_ROLLINGFORCING_DIR`` points at TencentARC/RollingForcing.

Their model hard-codes Wan 1.3B at 480x832 (1560 tokens per frame, blocks of 3, ``max_attention_size`` 21
frames, a cache of 1560·24 tokens): the tiny run sets those sizes on their instances (the same numbers in
frames) and hands their pipeline a cache of 24 frames; none of their code is changed.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, regex, scipy, torch, torchvision, tqdm, transformers; the test: omegaconf."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, sample_causal
from .conftest import fp32_attention
from .harness import (H, LAYERS, TOKENS, W, IdentityVAE, ReplayTorchGlobalNoise, Texts, fit_pipeline,
                      random_state_dict, their_wrapper)

SHIPPED = [1000, 800, 600, 400, 200]
# steps, generated latent frames: 10 blocks of 3 evict from the 24-frame cache (window start block >= 8)
CASES = {"shipped_5_steps_10_blocks": (SHIPPED, 30), "shipped_5_steps_5_blocks": (SHIPPED, 15),
         "3_steps_12_blocks": ([1000, 667, 333], 36)}


class ReplayRollingNoise(ReplayTorchGlobalNoise):
    """Rolling Forcing's re-noise: ``randn_like`` of the whole window's ``[B·frames, C, H, W]`` x0, once per
    block that goes on, of which the block's slice is used (global CPU generator, window and block order)."""

    def window_step(self, block, step, shape, window_shape, offset, device):
        b, c, q, h, w = window_shape
        draw = torch.randn((b * q, c, h, w), generator=self.gen).view(b, q, c, h, w)
        return draw[:, offset:offset + shape[2]].permute(0, 2, 1, 3, 4).to(device)


def their_sizes(model, pipe):
    """Their per-instance sizes, in tiny tokens: 1560 -> TOKENS per frame, the same frame counts."""
    for block in model.blocks:
        attn = block.self_attn
        attn.frame_length = TOKENS
        attn.block_length = 3 * TOKENS
        attn.max_attention_size = 21 * TOKENS
    pipe._initialize_crossattn_cache(batch_size=1, dtype=torch.float32, device=torch.device("cpu"))
    shape = [1, 24 * TOKENS, 12, 128]  # their _initialize_kv_cache: 1560 * 24 tokens
    pipe.kv_cache_clean = [{"k": torch.zeros(shape), "v": torch.zeros(shape),
                            "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
                           for _ in range(LAYERS)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rolling_forcing_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("ROLLINGFORCING")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    from omegaconf import OmegaConf
    from pipeline.rolling_forcing_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    steps, frames = CASES[case]
    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=LAYERS).eval()
    sd = random_state_dict()
    model.load_state_dict(sd, strict=True)
    # their config: configs/rolling_forcing_dmd.yaml over configs/default_config.yaml (the inference keys)
    args = OmegaConf.create({"denoising_step_list": steps, "warp_denoising_step": True, "num_frame_per_block": 3,
                             "independent_first_frame": False, "context_noise": 0,
                             "model_kwargs": {"timestep_shift": 5.0}})
    pipe = fit_pipeline(CausalInferencePipeline(args, torch.device("cpu"), generator=their_wrapper(model),
                                                text_encoder=Texts(), vae=IdentityVAE()))
    their_sizes(model, pipe)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference_rolling_forcing(noise, text_prompts=["a prompt"], return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    text = Texts()(["a prompt"])["prompt_embeds"]
    settings = CausalSettings(loop="rolling", steps=steps, shift=5.0, frames_per_block=3, sink_size=3,
                              local_window=21)
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), text,
                         settings=settings, noise=ReplayRollingNoise(noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{case}: max |ours - Rolling Forcing| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    # sharp: the plain block loop with the same schedule (what the preset ran before) is far off
    plain = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), text,
                          settings=CausalSettings(steps=steps, shift=5.0, frames_per_block=3, sink_size=3,
                                                  local_window=21), noise=ReplayTorchGlobalNoise(noise, 42))
    far = (plain - theirs).abs().max().item()
    print(f"{case}: plain block loop vs Rolling Forcing: {far:.2e}")
    assert far > 1e-2
