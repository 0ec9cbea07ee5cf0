"""LongLive v1.0's own ``InteractiveCausalInferencePipeline`` vs ``sample_causal`` on shared tiny random weights,
same noise (replayed through our noise hook), prompt switches included. Runs when ``UPSTREAM_LONGLIVE_DIR``
points at NVlabs/LongLive (branch ``v1.0``).

The tiny model keeps the real head layout (12 heads x 128) because the pipeline allocates its caches with
those sizes; it has 2 layers and a small FFN. The pipeline's hard-coded 30 blocks / 1560 tokens per frame
are set to the tiny model's values (attributes, not code)."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, sample_causal
from .conftest import fp32_attention
from .harness import H, W, IdentityVAE, ReplayTorchGlobalNoise, Texts, fit_pipeline, random_state_dict, their_wrapper

STEPS = [1000, 750, 500, 250]


def _their_pipeline(window, sink, global_sink):
    from omegaconf import OmegaConf
    from pipeline.interactive_causal_inference import InteractiveCausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2,
                       local_attn_size=window or -1, sink_size=sink).eval()
    state_dict = random_state_dict()
    model.load_state_dict(state_dict, strict=True)
    args = OmegaConf.create({
        "denoising_step_list": STEPS, "warp_denoising_step": True, "num_frame_per_block": 3,
        "model_kwargs": {"local_attn_size": window or -1, "sink_size": sink, "timestep_shift": 5.0},
        "context_noise": 0, "global_sink": global_sink})
    pipe = InteractiveCausalInferencePipeline(args, torch.device("cpu"), generator=their_wrapper(model),
                                              text_encoder=Texts(), vae=IdentityVAE())
    return fit_pipeline(pipe), state_dict


CASES = {  # frames, switch frame, window, sink, global_sink
    "no_switch_window": (15, None, 6, 3, True),
    "switch_after_eviction_global_sink": (15, 9, 6, 3, True),
    "switch_after_eviction_no_global_sink": (15, 9, 6, 3, False),
    "switch_before_eviction": (12, 6, 9, 3, True),
    "switch_no_window": (12, 6, 0, 0, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_longlive_interactive_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("LONGLIVE")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames, switch, window, sink, global_sink = CASES[case]
    pipe, sd = _their_pipeline(window, sink, global_sink)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    prompts = [["first prompt"]] + ([["second prompt"]] if switch else [])
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts_list=prompts, switch_frame_indices=[switch] if switch else [],
                                   return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    ours_model = CausalWanModel.from_state_dict(sd)
    texts = [Texts()(p)["prompt_embeds"] for p in prompts]
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=sink, local_window=window,
                              global_sink=global_sink, recache="joint")
    switches = [PromptSwitch(switch // 3, texts[1])] if switch else []
    ours = sample_causal(ours_model, torch.zeros(1, 16, frames, H, W), texts[0], settings=settings,
                         prompt_switches=switches, noise=ReplayTorchGlobalNoise(noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{case}: max |ours - LongLive| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    if switch:  # sharp: the pack's earlier block-by-block re-cache is far off after the switch, equal before
        settings.recache = "blockwise"
        old = sample_causal(ours_model, torch.zeros(1, 16, frames, H, W), texts[0], settings=settings,
                            prompt_switches=switches, noise=ReplayTorchGlobalNoise(noise, 42))
        before = (old[:, :, :switch] - theirs[:, :, :switch]).abs().max().item()
        after = (old[:, :, switch:] - theirs[:, :, switch:]).abs().max().item()
        print(f"{case}: blockwise re-cache vs LongLive: {before:.2e} before the switch, {after:.2e} after")
        assert before <= 1e-4 < after
