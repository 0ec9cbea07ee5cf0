"""Self-Forcing's own ``CausalInferencePipeline`` vs ``sample_causal`` on shared tiny random weights and replayed
noise: its shipped chunk-wise DMD loop (blocks of 3, steps 1000/750/500/250 warped at shift 5), t2v and the
"i2v" of its inference script (the image latent as the first frames, independent first frame). Runs when
``UPSTREAM_SELFFORCING_DIR`` points at guandeh17/Self-Forcing.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, regex, scipy, torch, torchvision, tqdm, transformers; the harness: omegaconf."""

import pytest

from comfyui_clipwan.wan import CausalSettings
from .conftest import fp32_attention
from .harness import causal_inference_parity

STEPS = [1000, 750, 500, 250]
CASES = {"chunkwise_t2v": (9, False), "chunkwise_first_frame_image": (9, True)}  # generated frames, image


@pytest.mark.parametrize("case", sorted(CASES))
def test_self_forcing_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("SELFFORCING")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    generated, image = CASES[case]
    cfg = {"denoising_step_list": STEPS, "warp_denoising_step": True, "num_frame_per_block": 3,
           "independent_first_frame": image, "context_noise": 0, "model_kwargs": {"timestep_shift": 5.0}}
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, independent_first_frame=image)
    causal_inference_parity(cfg, settings, generated, image, f"{case} (Self-Forcing)")
