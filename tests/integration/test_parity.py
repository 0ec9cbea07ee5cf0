"""Parity with ComfyUI core, in one process, on the same weights and inputs.

ComfyUI's modules are imported into the test process with CPU-only and fp32-text-encoder flags
(``inprocess.import_comfy``), so core's CLIP vision runs on fp32 weights and a tight tolerance is fair.
"""

from __future__ import annotations

import pytest
import torch

from . import checkpoints as ck
from .inprocess import import_comfy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    return import_comfy(comfy_dir)


@pytest.fixture(scope="module")
def clip_file(base_dir):
    return base_dir / "models" / "clip_vision" / ck.CLIP_FULL


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    # two images, not square and not 224: exercises resize + crop
    return torch.rand(2, 180, 260, 3)


def _core_wan(comfy, sd):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in sd.items()})
    assert type(patcher.model.diffusion_model).__name__ == "WanModel"
    return patcher


def test_causal_single_block_equals_core_wan_forward(comfy):
    """One block covering all frames, one step at t=1000: x0 = noise − flow, flow from core's WanModel."""
    from comfyui_clipwan.wan.causal_model import CausalWanModel
    from comfyui_clipwan.wan.sampler import CausalSettings, initial_noise, sample_causal

    sd = ck.wan_state_dict(i2v=True, seed=3)
    ours = CausalWanModel.from_state_dict(sd)
    core = _core_wan(comfy, sd).model.diffusion_model.eval()
    g = torch.Generator().manual_seed(5)
    frames, h, w = 4, 8, 12
    text = torch.randn(1, 512, 4096, generator=g) * 0.1
    text[:, 20:] = 0
    clip_fea = torch.randn(1, 257, 1280, generator=g)
    y = torch.randn(1, 20, frames, h, w, generator=g)
    latent = torch.zeros(1, 16, frames, h, w)
    settings = CausalSettings(steps="1000", shift=5.0, frames_per_block=frames)
    got = sample_causal(ours, latent, text, seed=11, settings=settings, clip_fea=clip_fea, concat=y)

    noise = initial_noise(11, latent.shape)
    with torch.no_grad():
        flow = core(torch.cat([noise, y], 1), torch.tensor([1000.0]), text, clip_fea=clip_fea).float()
    want = noise - flow
    assert got.shape == want.shape == (1, 16, frames, h, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_causal_blocks_match_core_forward_on_the_first_block(comfy):
    """With 2-frame blocks, block 0 sees only itself: its x0 equals core's forward on those frames alone."""
    from comfyui_clipwan.wan.causal_model import CausalWanModel
    from comfyui_clipwan.wan.sampler import CausalSettings, initial_noise, sample_causal

    sd = ck.wan_state_dict(i2v=True, seed=4)
    ours = CausalWanModel.from_state_dict(sd)
    core = _core_wan(comfy, sd).model.diffusion_model.eval()
    g = torch.Generator().manual_seed(6)
    text = torch.randn(1, 512, 4096, generator=g) * 0.1
    clip_fea = torch.randn(1, 257, 1280, generator=g)
    y = torch.randn(1, 20, 4, 8, 8, generator=g)
    latent = torch.zeros(1, 16, 4, 8, 8)
    got = sample_causal(ours, latent, text, seed=2, settings=CausalSettings(steps="1000", frames_per_block=2),
                        clip_fea=clip_fea, concat=y)
    noise = initial_noise(2, latent.shape)
    with torch.no_grad():
        flow = core(torch.cat([noise, y], 1)[:, :, :2], torch.tensor([1000.0]), text, clip_fea=clip_fea).float()
    torch.testing.assert_close(got[:, :, :2], noise[:, :, :2] - flow, rtol=1e-4, atol=1e-4)
    # and the second block differs from a bidirectional pass over all frames (it is causal, not full)
    with torch.no_grad():
        full = core(torch.cat([noise, y], 1), torch.tensor([1000.0]), text, clip_fea=clip_fea).float()
    assert not torch.allclose(got[:, :, 2:], noise[:, :, 2:] - full[:, :, 2:], atol=1e-4)
