"""wan.conditioning.inputs: the one CONDITIONING -> sampler-input mapping (node and CLI), checked against Wan's own
definition written out here (normalise with Wan 2.1's published statistics, mask inverted to 1 = known and
repeated to 4 channels, image latent after it), and its reports of what it does not use."""

import pytest
import torch

from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
from comfyui_clipwan.wan import CausalWanModel, WanConfig
from comfyui_clipwan.wan.conditioning.inputs import build_sampler_inputs, conditioning

I2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True)
T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
# Wan2.1 wan/modules/vae.py, the latent statistics
MEAN = torch.tensor([-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]).view(1, 16, 1, 1, 1)
STD = torch.tensor([2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]).view(1, 16, 1, 1, 1)


def _tensors(frames=4):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 512, 4096, generator=g)
    image = torch.randn(1, 16, frames, 8, 8, generator=g)
    mask = torch.ones(1, 1, frames, 8, 8)
    mask[:, :, :1] = 0.0
    clip = torch.randn(1, 257, 1280, generator=g)
    return text, image, mask, clip


def test_i2v_mapping_matches_wan_definition():
    text, image, mask, clip = _tensors()
    pos = conditioning(text, clip_vision_output=clip, concat_latent_image=image, concat_mask=mask)
    got = build_sampler_inputs(I2V, torch.zeros(1, 16, 4, 8, 8), pos)
    known = torch.zeros(1, 4, 4, 8, 8)
    known[:, :, 0] = 1.0
    want = torch.cat([known, (image - MEAN) / STD], 1)
    torch.testing.assert_close(got.concat, want, atol=1e-6, rtol=0)
    assert got.clip_fea is clip and got.text is text and got.first_frames is None and got.ignored == ()
    assert got.image_routes == ["clip", "concat"]
    raw = torch.randn(1, 16, 4, 8, 8)
    torch.testing.assert_close(got.to_raw(raw), raw * STD + MEAN)


def test_t2v_mapping_puts_known_frames_first():
    text, image, mask, clip = _tensors()
    mask[:, :, 1] = 0.0  # two known frames
    got = build_sampler_inputs(T2V, torch.zeros(1, 16, 4, 8, 8),
                               conditioning(text, concat_latent_image=image, concat_mask=mask))
    torch.testing.assert_close(got.first_frames, ((image - MEAN) / STD)[:, :, :2], atol=1e-6, rtol=0)
    assert got.concat is None and got.image_routes == ["first_frames"]


def test_unused_entries_are_reported_not_dropped_silently():
    text, image, mask, clip = _tensors()
    pos = [[text, {"pooled_output": None, "strength": 0.5, "clip_vision_output": clip}], [text, {}]]
    neg = [[text, {"area": (8, 8, 0, 0)}]]
    seen = []
    build_sampler_inputs(I2V, torch.zeros(1, 16, 4, 8, 8), pos, neg, report=seen.append)
    assert seen == ["CausalWanSampler ignores: positive: entries 2..2 of 2 (combined conditionings; the causal "
                    "sampler uses the first entry only); positive: key(s) strength (not read by the causal "
                    "sampler); negative: key(s) area (not read by the causal sampler)"]
    seen.clear()
    got = build_sampler_inputs(I2V, torch.zeros(1, 16, 4, 8, 8), conditioning(text, clip_vision_output=clip),
                               image_conditioning=False, report=seen.append)
    assert got.clip_fea is None
    assert seen == ["CausalWanSampler ignores: positive: image conditioning (image_conditioning is off)"]


def test_switch_prompt_at_block_zero_is_an_error():
    text, *_ = _tensors()
    model = CausalWanModel.random(T2V, seed=0)
    with pytest.raises(ValueError) as e:
        CausalWanSampler().sample(model, conditioning(text), {"samples": torch.zeros(1, 16, 4, 8, 8)}, seed=0,
                                  switch_positive=conditioning(text * 0), switch_at_block=0)
    assert str(e.value) == ("switch_positive is connected but switch_at_block is 0: set the block index (1 or "
                            "more) from which switch_positive replaces positive, or disconnect switch_positive.")


def test_grid_mismatch_names_the_fix():
    text, image, mask, clip = _tensors(frames=3)
    with pytest.raises(ValueError) as e:
        build_sampler_inputs(I2V, torch.zeros(1, 16, 4, 8, 8),
                             conditioning(text, concat_latent_image=image, concat_mask=mask))
    assert str(e.value) == ("concat_latent_image [1, 16, 3, 8, 8] does not match the latent [1, 16, 4, 8, 8]: use "
                            "the latent from the same Wan I2V Conditioning node (same width, height and length).")
