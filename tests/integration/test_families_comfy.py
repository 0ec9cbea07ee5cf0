"""Apply Causal Wan LoRA (ClipWan) on a real ComfyUI MODEL: after ComfyUI patches the weights they equal our
own merge (wan.model.lora.merge_lora), which the unit tests check against PEFT."""

from __future__ import annotations

import pytest
import torch

from . import checkpoints as ck
from .inprocess import import_comfy

pytestmark = pytest.mark.integration


def test_apply_lora_node_patches_equal_our_merge(comfy_dir, tmp_path):
    import_comfy(comfy_dir)
    import comfy.sd

    from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA
    from comfyui_clipwan.wan.model.lora import merge_lora

    sd = ck.wan_state_dict(i2v=False, seed=4)
    checkpoint = ck.longlive_lora(sd)
    lora = checkpoint["generator_lora"]
    path = tmp_path / "lora.pt"
    torch.save(checkpoint, str(path))

    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone().float() for k, v in sd.items()})
    (patched,) = ApplyCausalWanLoRA().apply(patcher, str(path), 0.7)
    assert patched is not patcher and len(patched.patches) == len(lora) // 2
    patched.patch_model(device_to=torch.device("cpu"), force_patch_weights=True)
    try:
        got = {k: v.float() for k, v in patched.model.diffusion_model.state_dict().items()}
    finally:
        patched.unpatch_model()
    want = merge_lora({k: v.float() for k, v in sd.items()}, lora, strength=0.7)
    worst = max((got[k] - want[k]).abs().max().item() for k in lora_targets(lora))
    assert worst < 1e-5
    assert torch.equal(patcher.model.diffusion_model.state_dict()["head.modulation"].float(),
                       sd["head.modulation"].float())


def lora_targets(lora):
    return sorted({k.split("base_model.model.", 1)[1].rsplit(".lora_", 1)[0] + ".weight" for k in lora})
