"""Causal Forcing's own ``CausalInferencePipeline`` vs ``sample_causal`` on shared tiny random weights and
replayed noise: frame-wise and chunk-wise, the 2-step config's 4-step first chunk, native i2v (the image
latent as frame 0). Runs when ``UPSTREAM_CAUSALFORCING_DIR`` points at thu-ml/Causal-Forcing.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, regex, scipy, torch, torchvision, tqdm, transformers; the harness: omegaconf."""

import pytest

from comfyui_clipwan.wan import CausalSettings
from .conftest import fp32_attention
from .harness import causal_inference_parity

CASES = {  # frames generated, frames per block, steps, first-chunk steps, image
    "chunkwise_4step_t2v": (9, 3, [1000, 750, 500, 250], None, False),
    "framewise_2step_t2v": (4, 1, [1000, 500], [1000, 750, 500, 250], False),
    "framewise_2step_i2v": (4, 1, [1000, 500], [1000, 750, 500, 250], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_causal_forcing_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("CAUSALFORCING")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    generated, per_block, steps, first_steps, image = CASES[case]
    cfg = {"denoising_step_list": steps, "warp_denoising_step": True, "num_frame_per_block": per_block,
           "independent_first_frame": False, "context_noise": 0, "model_kwargs": {"timestep_shift": 5.0}}
    if first_steps:
        cfg["denoising_step_list_first_chunk"] = first_steps
    settings = CausalSettings(steps=steps, shift=5.0, frames_per_block=per_block, first_block_steps=first_steps)
    causal_inference_parity(cfg, settings, generated, image, f"{case} (Causal Forcing)")
