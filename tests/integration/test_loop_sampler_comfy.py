"""Causal Wan Loop Sampler inside a real ComfyUI: core's SamplerCustomAdvanced with core's RandomNoise,
BasicGuider / CFGGuider and BasicScheduler / ManualSigmas runs the pack's causal loop, and the video equals the
one Causal Wan Sampler makes for the same seed (the same loop; the SIGMAS are its warped step list).

Both prompts run in the test server on the committed example (``clipwan_i2v_causal_custom_sampler``, test sizes:
tiny i2v Wan, CLIP vision and VAE, 21 frames = 2 blocks) and save their latents with core's SaveLatent; the
files are compared bit for bit."""

from __future__ import annotations

import pytest
import torch

from . import prompts as P

pytestmark = pytest.mark.integration

EXAMPLE = "clipwan_i2v_causal_custom_sampler"
CUSTOM_SAMPLING = ("ModelSamplingSD3", "RandomNoise", "BasicGuider", "BasicScheduler", "CausalWanLoopSampler",
                   "SamplerCustomAdvanced")


def _example() -> dict:
    prompt = P.for_test_server(P.load_examples()[EXAMPLE])
    for kind in ("VAEDecode", "SaveAnimatedWEBP"):  # the latents are compared; decoding adds nothing here
        for nid in P.node_ids(prompt, kind):
            del prompt[nid]
    return prompt


def _one(prompt, kind) -> str:
    (nid,) = P.node_ids(prompt, kind)
    return nid


def _save_latent(prompt: dict, source: list, prefix: str) -> str:
    prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": source, "filename_prefix": prefix}}
    return "90"


def _causal_wan_sampler(prompt: dict, seed: int, **widgets) -> dict:
    """The same graph with the pack's own sampler node in place of core's custom-sampling nodes."""
    out = {k: v for k, v in prompt.items() if v["class_type"] not in CUSTOM_SAMPLING}
    cond, model = _one(prompt, "WanImageToVideo"), _one(prompt, "UNETLoader")
    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler

    defaults = {name: spec[1]["default"] for name, spec in CausalWanSampler.INPUT_TYPES()["required"].items()
                if len(spec) > 1 and "default" in spec[1]}  # the widgets as a new node has them
    out["20"] = {"class_type": "CausalWanSampler",
                 "inputs": {**defaults, "model": [model, 0], "positive": [cond, 0], "negative": [cond, 1],
                            "latent": [cond, 2], "seed": seed, **widgets}}
    return out


def _run_latent(server, prompt: dict, save: str) -> torch.Tensor:
    from safetensors.torch import load_file

    entry = server.run_prompt(prompt)
    (saved,) = entry["outputs"][save]["latents"]
    return load_file(str(server.output_path(saved)))["latent_tensor"]


def test_sampler_custom_advanced_runs_the_causal_loop_like_causal_wan_sampler(server):
    custom = _example()
    seed = 31
    custom[_one(custom, "RandomNoise")]["inputs"]["noise_seed"] = seed
    ours = _causal_wan_sampler(custom, seed)
    save = _save_latent(custom, [_one(custom, "SamplerCustomAdvanced"), 0], "latents/loop_sampler")
    custom["91"] = {"class_type": "SaveLatent", "inputs": {"samples": [_one(custom, "SamplerCustomAdvanced"), 1],
                                                           "filename_prefix": "latents/loop_sampler_denoised"}}
    entry = server.run_prompt(custom)
    from safetensors.torch import load_file

    via_core, denoised = (load_file(str(server.output_path(entry["outputs"][n]["latents"][0])))["latent_tensor"]
                          for n in (save, "91"))
    # SamplerCustomAdvanced's denoised_output is the last x0 the sampler reported: the whole video
    torch.testing.assert_close(denoised, via_core, atol=0, rtol=0)
    del custom["91"]
    _save_latent(ours, ["20", 0], "latents/causal_wan_sampler")
    direct = _run_latent(server, ours, save)
    assert via_core.shape == direct.shape == (1, 16, 6, 8, 8)
    assert torch.isfinite(via_core).all() and via_core.abs().max() > 0.1
    torch.testing.assert_close(via_core, direct, atol=0, rtol=0)

    # another seed on the NOISE node: another video (the seed reaches the initial noise and the re-noise)
    custom[_one(custom, "RandomNoise")]["inputs"]["noise_seed"] = seed + 1
    assert (_run_latent(server, custom, save) - direct).abs().max() > 1e-2


def test_cfg_guider_and_manual_sigmas_drive_the_same_loop(server):
    custom = _example()
    cond, shifted = _one(custom, "WanImageToVideo"), _one(custom, "ModelSamplingSD3")
    guider, sigmas = _one(custom, "BasicGuider"), _one(custom, "BasicScheduler")
    custom[guider] = {"class_type": "CFGGuider", "inputs": {"model": [shifted, 0], "positive": [cond, 0],
                                                            "negative": [cond, 1], "cfg": 2.5}}
    custom[sigmas] = {"class_type": "ManualSigmas", "inputs": {"sigmas": "1.0, 0.9375, 0.8333333, 0.625, 0"}}
    custom[_one(custom, "RandomNoise")]["inputs"]["noise_seed"] = 5
    save = _save_latent(custom, [_one(custom, "SamplerCustomAdvanced"), 0], "latents/loop_sampler_cfg")
    via_core = _run_latent(server, custom, save)
    ours = _causal_wan_sampler(custom, 5, guidance_scale=2.5)
    ours = {k: v for k, v in ours.items() if v["class_type"] not in ("CFGGuider", "ManualSigmas")}
    _save_latent(ours, ["20", 0], "latents/causal_wan_sampler_cfg")
    torch.testing.assert_close(via_core, _run_latent(server, ours, save), atol=0, rtol=0)

    # a SIGMAS list the loop cannot finish a block with is refused with the fix in the message
    custom[sigmas]["inputs"]["sigmas"] = "1.0, 0.5"
    with pytest.raises(AssertionError, match="end the list with 0"):
        server.run_prompt(custom)
