"""Wan2.1-VACE with ComfyUI core, in one process: core detects a VACE state dict (its WAN21_Vace / VaceWanModel), the
pack adopts core's loaded model and computes core's VACE forward (``vace_context`` / ``vace_strength``); core's own
``WanVaceToVideo`` (control video, masks, reference image) feeds Causal Wan Sampler unchanged: the reference frame
stays in the conditioning, the video frames are sampled causally, and the output keeps core's layout (reference
frame in front) so the graph's ``TrimVideoLatent(trim_latent)`` works as after KSampler."""

from __future__ import annotations

import pytest
import torch

from .inprocess import import_comfy

pytestmark = pytest.mark.integration

BASE = dict(dim=128, ffn_dim=160, num_heads=1, num_layers=4, in_dim=16)


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    return import_comfy(comfy_dir)


def _model():
    from comfyui_clipwan.wan import CausalWanModel, WanConfig

    return CausalWanModel.random(WanConfig(**BASE, vace_layers=(0, 2), vace_in_dim=96), seed=4)


def test_core_vace_model_adopted_and_equal(comfy):
    import comfy.sd

    from comfyui_clipwan.wan import CausalWanModel
    from comfyui_clipwan.wan.model import dit
    from comfyui_clipwan.wan.model.vace import VaceStep

    ours = _model()
    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in ours.state_dict().items()})
    assert type(patcher.model).__name__ == "WAN21_Vace"
    core = patcher.model.diffusion_model.eval()
    adopted = CausalWanModel.adopt(core, compute_dtype=torch.float32)
    assert adopted.config == ours.config and adopted.config.vace_layers == (0, 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 3, 4, 6, generator=g)
    c1, c2 = torch.randn(1, 96, 3, 4, 6, generator=g), torch.randn(1, 96, 3, 4, 6, generator=g)
    text = torch.randn(1, 512, 4096, generator=g) * 0.1
    t = torch.tensor([600.0])
    with torch.no_grad():  # two chained VACE conditionings, as core stacks them: [B, entries, 96, T, h, w]
        want = core(x, t, text, vace_context=torch.stack([c1, c2], 1), vace_strength=[0.8, 0.3]).float()
        plain = core(x, t, text, vace_context=torch.stack([c1, c2], 1), vace_strength=[0.0, 0.0]).float()
        ctx = dit.encode_context(core, adopted.config, text, None, torch.float32, 1)
        got = dit.transformer(core, adopted.config, x, t, ctx, vace=VaceStep([(c1, 0.8), (c2, 0.3)]))
    assert (want - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_core_wan_vace_to_video_feeds_the_causal_sampler(comfy):
    from comfy_extras.nodes_wan import WanVaceToVideo

    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
    from comfyui_clipwan.wan import CausalSettings, normalize, sample_causal
    from comfyui_clipwan.wan.conditioning.control import VaceControl
    from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig, images_to_pixels

    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)

    class CoreLikeVAE:  # core's VAE.encode surface: IMAGE [F, H, W, 3] in 0..1 -> raw latent
        def encode(self, images):
            return vae.encode(images_to_pixels(images))

    g = torch.Generator().manual_seed(5)
    control = torch.rand(21, 32, 48, 3, generator=g)
    masks = torch.ones(21, 32, 48)
    masks[:, :, :16] = 0  # keep the left third (inpainting-style mask)
    reference = torch.rand(1, 32, 48, 3, generator=g)
    text = torch.randn(1, 9, 4096, generator=g)
    out = WanVaceToVideo.execute([[text, {}]], [[text * 0, {}]], CoreLikeVAE(), 48, 32, 21, 1, 0.9,
                                 control_video=control, control_masks=masks, reference_image=reference)
    positive, _, latent, trim = out.result if hasattr(out, "result") else out
    assert trim == 1 and latent["samples"].shape == (1, 16, 7, 4, 6)  # 1 reference + 6 video latent frames

    model = _model()
    (res,) = CausalWanSampler().sample(model, positive, latent, seed=3, steps="1000,750,500", frames_per_block=3)
    z = res["samples"]
    assert z.shape == latent["samples"].shape  # core's layout: TrimVideoLatent(trim_latent=1) drops the reference
    extra = positive[0][1]
    torch.testing.assert_close(z[:, :, :1], extra["vace_frames"][0][:, :16, :1])

    # the same run written out: the conditioning's tensors in model space, the reference in the conditioning only
    frames, mask = extra["vace_frames"][0], extra["vace_mask"][0]
    ctx = torch.cat([normalize(frames[:, :16]), normalize(frames[:, 16:]), mask], 1)
    want = sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, seed=3,
                         settings=CausalSettings(steps="1000,750,500", frames_per_block=3),
                         vace=VaceControl(control=ctx[:, :, 1:], reference=ctx[:, :, :1], strength=0.9))
    torch.testing.assert_close(normalize(z[:, :, 1:]), want, atol=1e-4, rtol=1e-4)
    plain = sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, seed=3,
                          settings=CausalSettings(steps="1000,750,500", frames_per_block=3))
    assert (want - plain).abs().max() > 1e-2
