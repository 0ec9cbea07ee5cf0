"""Wan 2.2 TI2V in ComfyUI core, in one process: core detects a Wan 2.2-shaped DiT (48 channels) as its WAN22
model, the pack adopts core's loaded ``WanModel`` without copying and computes the same flow with per-frame
timesteps (the clean first frame at t=0), and core's Wan22 latent format equals the pack's 48-channel table."""

from __future__ import annotations

import pytest
import torch

from .inprocess import import_comfy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    return import_comfy(comfy_dir)


def test_core_wan22_model_adopted_and_equal_with_per_frame_timesteps(comfy):
    import comfy.sd

    from comfyui_clipwan.wan import CausalWanModel, WanConfig, normalize
    from comfyui_clipwan.wan import model as dit

    cfg = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=48, out_dim=48)
    sd = CausalWanModel.random(cfg, seed=9).state_dict()
    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in sd.items()})
    base = patcher.model
    assert type(base).__name__ == "WAN22"
    core = base.diffusion_model.eval()
    ours = CausalWanModel.adopt(core, compute_dtype=torch.float32)
    assert ours.tree is core and ours.config == cfg
    assert ours.config.describe().startswith("Wan 2.2 custom ti2v")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 48, 3, 4, 6, generator=g)
    text = torch.randn(1, 512, 4096, generator=g) * 0.1
    text[:, 9:] = 0
    t = torch.tensor([[0.0, 937.0, 937.0]])
    with torch.no_grad():
        want = core(x, t, text).float()
        ctx = dit.encode_context(core, ours.config, text, None, torch.float32, 1)
        got = dit.transformer(core, ours.config, x, t, ctx)
    assert want.abs().mean() > 0.05
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    raw = torch.randn(1, 48, 2, 3, 3, generator=g)
    torch.testing.assert_close(normalize(raw), base.process_latent_in(raw), atol=1e-6, rtol=0)
