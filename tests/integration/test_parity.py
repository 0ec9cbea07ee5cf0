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
    from comfyui_clipwan.wan.model.causal import CausalWanModel
    from comfyui_clipwan.wan.sampling.loop import CausalSettings, initial_noise
    from comfyui_clipwan.wan.sampling.run import sample_causal

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
    from comfyui_clipwan.wan.model.causal import CausalWanModel
    from comfyui_clipwan.wan.sampling.loop import CausalSettings, initial_noise
    from comfyui_clipwan.wan.sampling.run import sample_causal

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


def call_node(node_id: str, **given):
    """Run a pack node the way ComfyUI does: widget inputs not given take their declared defaults."""
    import comfyui_clipwan

    cls = comfyui_clipwan.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    kwargs = {}
    for section in ("required", "optional"):
        for name, ispec in spec.get(section, {}).items():
            if name in given:
                kwargs[name] = given[name]
            elif section == "required":
                opts = ispec[1] if len(ispec) > 1 else {}
                kwargs[name] = opts["default"] if "default" in opts else ispec[0][0]
    for name in ("unique_id",):
        if name in spec.get("hidden", {}):
            kwargs[name] = "1"
    return getattr(cls(), cls.FUNCTION)(**kwargs)


def _crop_choices():
    import comfyui_clipwan

    spec = comfyui_clipwan.NODE_CLASS_MAPPINGS["CLIPVisionEncodeWan"].INPUT_TYPES()["required"]["crop"]
    return list(spec[0])


def _release(comfy):
    """Drop models ComfyUI's model management still holds, so the 2.5 GB fp32 ViT-H copies do not outlive
    this module (the server tests run next in the same process)."""
    import gc

    import comfy.model_management

    comfy.model_management.unload_all_models()
    comfy.model_management.cleanup_models()
    gc.collect()


@pytest.fixture(scope="module")
def core_clip(comfy, clip_file):
    import comfy.clip_vision

    model = comfy.clip_vision.load(str(clip_file))
    assert model.dtype == torch.float32  # --fp32-text-enc: core holds the fp16 file's weights in fp32
    yield model
    del model
    _release(comfy)


CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def _core_on_pixels(core_clip, pixels):
    """Core's tower on given pixel values (its encode_image minus its own preprocessing)."""
    last, penultimate, embeds = core_clip.model(pixel_values=pixels, intermediate_output=-2)[:3]
    return {"last_hidden_state": last, "penultimate_hidden_states": penultimate, "image_embeds": embeds}


def _assert_features_equal(ours, want):
    for field in ("penultimate_hidden_states", "last_hidden_state", "image_embeds"):
        assert ours[field].shape == want[field].shape, field
        torch.testing.assert_close(ours[field].float(), want[field].float(), rtol=1e-3, atol=2e-4, msg=field)


@pytest.fixture(scope="module")
def ours_clip(clip_file):
    import gc

    model = call_node("LoadCLIPVisionH14", clip_name=str(clip_file), dtype="fp32")[0]
    yield model
    del model
    gc.collect()


def test_clip_vision_encode_wan_center_matches_core_clip_vision_encode(comfy, core_clip, ours_clip, image):
    from nodes import CLIPVisionEncode

    ours = call_node("CLIPVisionEncodeWan", clip_vision=ours_clip, image=image, crop="center")[0]
    core = CLIPVisionEncode().encode(core_clip, image, "center")[0]
    assert ours.penultimate_hidden_states.shape == (2, 257, 1280)
    _assert_features_equal(ours, core)
    # our CLIP_VISION also works in core's encode node, with the same result
    crossed = CLIPVisionEncode().encode(ours_clip, image, "center")[0]
    _assert_features_equal(crossed, core)


def test_clip_vision_encode_wan_none_is_wans_squash_not_cores(comfy, core_clip, ours_clip, image):
    """crop=none is Wan's own preprocessing (bicubic squash, no antialias, no 8-bit rounding): equal to core's
    tower on pixels prepared that way here, and measurably different from core's crop=none."""
    import torch.nn.functional as F
    from nodes import CLIPVisionEncode

    ours = call_node("CLIPVisionEncodeWan", clip_vision=ours_clip, image=image, crop="none")[0]
    pixels = F.interpolate(image.permute(0, 3, 1, 2), size=(224, 224), mode="bicubic", align_corners=False)
    with torch.no_grad():
        want = _core_on_pixels(core_clip, (pixels - CLIP_MEAN) / CLIP_STD)
    _assert_features_equal(ours, want)
    core_none = CLIPVisionEncode().encode(core_clip, image, "none")[0]
    gap = (ours.penultimate_hidden_states - core_none.penultimate_hidden_states).abs().max().item()
    assert gap > 1e-3, gap


def test_wan_i2v_conditioning_equals_core_wan_image_to_video(comfy, base_dir, core_clip, image):
    import comfy.sd
    import comfy.utils
    from comfy_extras.nodes_wan import WanImageToVideo
    from nodes import CLIPVisionEncode

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(base_dir / "models" / "vae" / ck.VAE)))
    g = torch.Generator().manual_seed(9)
    positive = [[torch.randn(1, 512, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 512, 4096, generator=g), {}]]
    clip_out = CLIPVisionEncode().encode(core_clip, image[:1], "none")[0]
    args = dict(positive=positive, negative=negative, vae=vae, width=64, height=48, length=9, batch_size=2,
                start_image=image[:1], clip_vision_output=clip_out)
    core = WanImageToVideo.execute(**args)
    core = getattr(core, "result", core)
    ours = call_node("WanI2VConditioning", **args)
    assert len(ours) == 3
    torch.testing.assert_close(ours[2]["samples"], core[2]["samples"])
    assert ours[2]["samples"].shape == (2, 16, 3, 6, 8)
    for o, c in zip(ours[:2], core[:2]):
        assert len(o) == len(c) == 1
        torch.testing.assert_close(o[0][0], c[0][0])
        assert set(o[0][1]) == set(c[0][1]) == {"concat_latent_image", "concat_mask", "clip_vision_output"}
        torch.testing.assert_close(o[0][1]["concat_latent_image"], c[0][1]["concat_latent_image"],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(o[0][1]["concat_mask"], c[0][1]["concat_mask"])
        assert o[0][1]["clip_vision_output"].penultimate_hidden_states is clip_out.penultimate_hidden_states
