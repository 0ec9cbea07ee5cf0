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
    from comfyui_clipwan.wan.model import dit
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


def test_core_wan22_image_to_video_latent_feeds_the_sampler(comfy, tmp_path):
    """Core's Wan22ImageToVideoLatent (its own resize, fill and noise_mask) into CausalWanSampler on a tiny
    Wan 2.2 TI2V model: the start image's latent comes out as frame 0, the rest is sampled (LongLive 2.0's
    loop); the image is encoded by the pack's Wan 2.2 VAE standing in for core's VAE object."""
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent

    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
    from comfyui_clipwan.wan import CausalWanModel, WanConfig
    from comfyui_clipwan.wan.vae.wan21 import images_to_pixels
    from comfyui_clipwan.wan.vae.wan22 import Wan22VAE, Wan22VAEConfig

    vae = Wan22VAE.random(Wan22VAEConfig(dim=8, dec_dim=8), seed=4)

    class CoreLikeVAE:  # core's VAE.encode surface: IMAGE [F, H, W, 3] in 0..1 -> raw latent
        def encode(self, images):
            return vae.encode(images_to_pixels(images))

    image = torch.rand(1, 40, 72, 3, generator=torch.Generator().manual_seed(2))
    out = Wan22ImageToVideoLatent.execute(CoreLikeVAE(), 64, 32, 29, 1, start_image=image)
    latent = out.result[0] if hasattr(out, "result") else out[0]
    assert latent["samples"].shape == (1, 48, 8, 2, 4) and latent["noise_mask"].shape == (1, 1, 8, 2, 4)
    model = CausalWanModel.random(WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=48,
                                            out_dim=48), seed=5)
    text = torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(3))
    (res,) = CausalWanSampler().sample(model, [[text, {}]], latent, seed=0, steps="4", frames_per_block=4,
                                       sink_size=4, local_window=8)
    z = res["samples"]
    assert z.shape == (1, 48, 8, 2, 4) and torch.isfinite(z).all()
    torch.testing.assert_close(z[:, :, :1], latent["samples"][:, :, :1].float(), atol=1e-5, rtol=0)
    assert (z[:, :, 1:] - latent["samples"][:, :, 1:]).abs().mean() > 0.05
