"""Load Causal Wan Model's MODEL is ComfyUI's own: core MODEL consumers take it, and model management
loads it (and the pack's CLIP vision) and unloads both on ``POST /free``."""

from __future__ import annotations

import time

import pytest

from . import checkpoints as ck

pytestmark = pytest.mark.integration


def _graph(sampler: str) -> dict:
    prompt = {
        "model": {"class_type": "LoadCausalWanModel", "inputs": {"model_name": ck.WAN_I2V, "weight_dtype": "default",
                                                            "checkpoint_entry": "auto"}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["model", 0], "shift": 5.0}},
        "clip": {"class_type": "LoadCLIPVisionH14", "inputs": {"clip_name": ck.CLIP_SMALL, "dtype": "default",
                                                          "device": "default"}},
        "image": {"class_type": "LoadImage", "inputs": {"image": ck.IMAGE}},
        "encode": {"class_type": "CLIPVisionEncodeWan", "inputs": {"clip_vision": ["clip", 0], "image": ["image", 0],
                                                               "crop": "center", "multi_image": "per_image"}},
        "pos": {"class_type": "ClipWanTestText", "inputs": {"text": "a fox"}},
        "neg": {"class_type": "ClipWanTestText", "inputs": {"text": "blurry"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": ck.VAE}},
        "cond": {"class_type": "WanImageToVideo", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["vae", 0], "width": 32, "height": 32,
            "length": 9, "batch_size": 1, "clip_vision_output": ["encode", 0], "start_image": ["image", 0]}},
        "report": {"class_type": "ClipWanTestLoadedModels", "inputs": {"nonce": 0, "after": ["sample", 0]}},
    }
    if sampler == "KSampler":  # core's sampler on the pack's MODEL, through core's ModelSamplingSD3
        prompt["sample"] = {"class_type": "KSampler", "inputs": {
            "model": ["shift", 0], "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2],
            "denoise": 1.0}}
    else:
        prompt["sample"] = {"class_type": "CausalWanSampler", "inputs": {
            "model": ["shift", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent": ["cond", 2],
            "seed": 1, "steps": "1000,500", "shift": 5.0, "warp_steps": True, "frames_per_block": 1, "sink_size": 0,
            "local_window": 0, "cache_dtype": "auto", "independent_first_frame": False, "guidance_scale": 1.0,
            "image_conditioning": True}}
    return prompt


def _loaded(server, nonce: int) -> list:
    entry = server.run_prompt({"report": {"class_type": "ClipWanTestLoadedModels", "inputs": {"nonce": nonce}}})
    return entry["outputs"]["report"]["loaded"]


@pytest.mark.parametrize("sampler", ["KSampler", "CausalWanSampler"])
def test_pack_models_are_managed_by_comfyui_and_freed(server, sampler):
    entry = server.run_prompt(_graph(sampler))
    loaded = entry["outputs"]["report"]["loaded"]
    assert "WAN21" in loaded or "WAN21_I2V" in loaded, loaded  # ComfyUI's own BaseModel, not a pack wrapper
    if sampler == "CausalWanSampler":
        assert "VisionTransformer" in loaded, loaded  # the pack's CLIP vision, loaded through model management
    status, _ = server.request("POST", "/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    deadline = time.time() + 30
    while True:
        left = _loaded(server, nonce=int(time.time() * 1000))
        if not left or time.time() > deadline:
            break
        time.sleep(0.5)
    assert left == [], f"still loaded after /free: {left}"
