"""Causal VACE Control (ClipWan) and Causal Video Restyle (ClipWan) on the causal nodes outside ComfyUI (our model and
VAE on the sockets): the streamed control / input video gives the same result as the loop with the whole video
encoded, the restyled output is aligned frame for frame with the input, and bad input is refused early."""

import pytest
import torch

from comfyui_clipwan.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_clipwan.nodes.control_nodes import CausalVaceControl, CausalVideoRestyle
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
from comfyui_clipwan.wan import CausalSettings, denormalize, normalize, sample_causal
from comfyui_clipwan.wan.conditioning.control import VaceControl
from comfyui_clipwan.wan.conditioning.restyle import Restyle, restyle_steps
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.sampling import settings_spec as spec
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8,
                vace_layers=(0,), vace_in_dim=96)


@pytest.fixture(scope="module")
def parts():
    model = CausalWanModel.random(CFG, seed=1)
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    images = torch.rand(21, 16, 32, 3, generator=torch.Generator().manual_seed(4))
    return model, vae, text, images


def test_registered():
    for key, name in (("CausalVaceControl", "Causal VACE Control (ClipWan)"),
                      ("CausalVideoRestyle", "Causal Video Restyle (ClipWan)")):
        assert NODE_DISPLAY_NAME_MAPPINGS[key] == name and key in NODE_CLASS_MAPPINGS
    optional = CausalWanStreamVideo.INPUT_TYPES()["optional"]
    assert optional["vace_control"][0] == "CLIPWAN_CONTROL" and optional["restyle"][0] == "CLIPWAN_RESTYLE"
    names = list(CausalWanSampler.INPUT_TYPES()["optional"])  # sockets carry no widget value: before the widgets
    assert names.index("restyle") < names.index("switch_at_block")
    # family closed layout 3; only widgets of later layouts follow it
    assert all(spec.get(n).since > spec.get("family").since for n in names[names.index("family") + 1:])


def test_vace_control_node_equals_whole_video_run(parts):
    model, vae, text, images = parts
    ref = torch.rand(1, 24, 40, 3, generator=torch.Generator().manual_seed(5))
    (control,) = CausalVaceControl().build(vae, 0.8, control_images=images, reference_image=ref)
    (out,) = CausalWanSampler().sample(model, [[text, {}]], {"samples": torch.zeros(1, 16, 6, 2, 4)}, seed=2,
                                       steps="1000,500", frames_per_block=3, vace_control=control)
    # the same run with the whole control video encoded at once (WanVaceToVideo's formula, mask ones)
    whole = lambda imgs: normalize(vae.encode(imgs.permute(3, 0, 1, 2)[None] * 2 - 1))  # noqa: E731
    ctx = torch.cat([whole(images * 0 + 0.5), whole(images), torch.ones(1, 64, 6, 2, 4)], 1)
    ref_img = torch.nn.functional.interpolate(ref[..., :3].permute(0, 3, 1, 2)[:, :, 2:22, :], size=(16, 32),
                                              mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    ref_lat = whole(ref_img)
    reference = torch.cat([ref_lat, torch.zeros_like(ref_lat), torch.zeros(1, 64, 1, 2, 4)], 1)
    want = sample_causal(model, torch.zeros(1, 16, 6, 2, 4), text, seed=2,
                         settings=CausalSettings(steps="1000,500", frames_per_block=3),
                         vace=VaceControl(control=ctx, reference=reference, strength=0.8))
    torch.testing.assert_close(out["samples"], denormalize(want), atol=1e-4, rtol=1e-4)


def test_restyle_on_the_stream_node_aligned_frame_for_frame(parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, vae, text, images = parts
    (restyle,) = CausalVideoRestyle().build(vae, 0.5, input_images=images)
    out = CausalWanStreamVideo().stream(model=model, positive=[[text, {}]],
                                        latent={"samples": torch.zeros(1, 16, 6, 2, 4)}, seed=3, vae=vae,
                                        steps="1000,750,500,250", frames_per_block=3, return_frames=True,
                                        restyle=restyle)
    frames = out["result"][1]
    assert frames.shape == images.shape  # 21 input frames -> 21 output frames
    source = normalize(vae.encode(images.permute(3, 0, 1, 2)[None] * 2 - 1))
    z = sample_causal(model, torch.zeros(1, 16, 6, 2, 4), text, seed=3, restyle=Restyle(source),
                      settings=CausalSettings(steps=restyle_steps(0.5, 4), frames_per_block=3))
    want = ((vae.decode_whole(denormalize(z)).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 3, 0)
    assert (frames - want).abs().max() <= 1e-4
    # the output follows the input more closely than a text-to-video run does
    t2v = CausalWanStreamVideo().stream(model=model, positive=[[text, {}]],
                                        latent={"samples": torch.zeros(1, 16, 6, 2, 4)}, seed=3, vae=vae,
                                        steps="1000,750,500,250", frames_per_block=3, return_frames=True)
    assert (t2v["result"][1] - frames).abs().mean() > 1e-3


def test_errors(parts):
    model, vae, text, images = parts
    with pytest.raises(ValueError, match="connect a control_video"):
        CausalVaceControl().build(vae, 1.0)
    with pytest.raises(ValueError, match="not both"):
        CausalVideoRestyle().build(vae, 0.5, input_video="x.mp4", input_images=images)
    with pytest.raises(ValueError, match=r"strength 1.5 must be in \(0, 1\]"):
        CausalVideoRestyle().build(vae, 1.5, input_images=images)
    plain = CausalWanModel.random(WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32,
                                            text_len=8), seed=0)
    (control,) = CausalVaceControl().build(vae, 1.0, control_images=images)
    with pytest.raises(ValueError, match="no VACE weights"):
        CausalWanSampler().sample(plain, [[text, {}]], {"samples": torch.zeros(1, 16, 6, 2, 4)}, seed=0,
                                  steps="1000,500", vace_control=control)
