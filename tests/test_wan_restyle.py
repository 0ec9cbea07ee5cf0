"""Video-to-video (Krea's ``strength`` / ``input_video`` rule) and input videos read block by block: the streaming
Wan VAE encoder against the whole-video encode, control videos against ComfyUI's WanVaceToVideo formula written here,
and the v2v start against the definition (input latent noised to the first step, then the few-step rule)."""

import dataclasses

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, normalize, sample_causal
from comfyui_clipwan.wan.conditioning.control import VaceControl, VideoControl
from comfyui_clipwan.wan.conditioning.restyle import Restyle, restyle_steps
from comfyui_clipwan.wan.sampling.loop import SeededNoise
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule, renoise, x0_from_flow
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig
from comfyui_clipwan.wan.video.source import LatentFrames, pixel_frames
from comfyui_clipwan.wan.video.writer import VideoWriter

T2V = WanConfig(dim=128, ffn_dim=160, num_heads=1, num_layers=2, in_dim=16)
VACE = dataclasses.replace(T2V, vace_layers=(0,), vace_in_dim=96)


@pytest.fixture(scope="module")
def vae():
    return WanVAE.random(WanVAEConfig(dim=8), seed=2)


def _images(frames=13, h=32, w=48, seed=0):
    return torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _whole(vae, images):  # ComfyUI IMAGE [F, H, W, 3] in 0..1 -> raw latent of the whole video
    return vae.encode(images.permute(3, 0, 1, 2)[None] * 2 - 1)


def test_krea_step_list():
    # v2v.py get_denoising_schedule: linspace(strength * 1000, 0, steps) as integers (then warped)
    assert restyle_steps(0.6) == [600, 450, 300, 150, 0]
    assert restyle_steps(1.0, 5) == [1000, 750, 500, 250, 0]
    assert restyle_steps(0.7, 4) == [700, 466, 233, 0]
    with pytest.raises(ValueError, match=r"strength 0 must be in \(0, 1\]"):
        restyle_steps(0)


def test_streaming_encoder_equals_whole_encode(vae):
    images = _images()
    whole = _whole(vae, images)
    reader = LatentFrames(pixel_frames(images, 48, 32), vae.stream_encoder())
    parts = [reader.read(0, 1), reader.read(1, 2), reader.read(3, 1)]
    assert reader.read(4, 3) is None  # the video ended (13 frames = 4 latent frames)
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-5, rtol=1e-5)
    # frames not asked for (a start image's blocks) are read and encoded all the same: what follows is unchanged
    skipping = LatentFrames(pixel_frames(images, 48, 32), vae.stream_encoder())
    torch.testing.assert_close(skipping.read(1, 3), whole[:, :, 1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="read block by block in order"):
        skipping.read(0, 1)


def test_video_file_read_frame_by_frame(tmp_path):
    path = str(tmp_path / "in.mp4")
    with VideoWriter(path, fps=16) as w:
        w.write(_images(9, 64, 96))
    frames = list(pixel_frames(path, 48, 32))  # decoded as read, scaled to cover 48x32
    assert len(frames) == 9 and frames[0].shape == (3, 32, 48)
    assert 0.0 <= float(min(f.min() for f in frames)) and float(max(f.max() for f in frames)) <= 1.0
    # ComfyUI's centre crop: a 2:1 frame into 1:1 keeps the middle half
    wide = torch.zeros(1, 16, 32, 3)
    wide[:, :, 8:24] = 1.0
    (square,) = list(pixel_frames(wide, 16, 16))
    assert square.min() == 1.0


def test_control_video_streamed_equals_wan_vace_to_video_formula(vae):
    images = _images(13)
    # WanVaceToVideo without masks: inactive = (c - 0.5)·0 + 0.5, reactive = (c - 0.5)·1 + 0.5, mask ones
    inactive = _whole(vae, images * 0 + 0.5)
    reactive = _whole(vae, images)
    want = torch.cat([normalize(inactive), normalize(reactive), torch.ones(1, 64, 4, 4, 6)], 1)
    control = VideoControl(pixel_frames(images, 48, 32), vae, normalize)
    got = torch.cat([control.read(0, 1), control.read(1, 3)], 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_vace_with_streamed_control_equals_whole_tensor(vae):
    model = CausalWanModel.random(VACE, seed=1)
    images = _images(21)
    text = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(2))
    settings = CausalSettings(steps="1000,750,500", frames_per_block=3)
    whole = VideoControl(pixel_frames(images, 48, 32), vae, normalize)
    tensor = whole.read(0, 6)
    a = sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, settings=settings, vace=VaceControl(control=tensor))
    streamed = VaceControl(control=VideoControl(pixel_frames(images, 48, 32), vae, normalize))
    b = sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, settings=settings, vace=streamed)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    short = VaceControl(control=VideoControl(pixel_frames(images[:9], 48, 32), vae, normalize))
    with pytest.raises(ValueError, match="the control video ended: 0 of 3 latent frames read at latent frame 3"):
        sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, settings=settings, vace=short)


def test_restyle_one_block_equals_definition():
    model = CausalWanModel.random(T2V, seed=3)
    g = torch.Generator().manual_seed(4)
    video = torch.randn(1, 16, 3, 4, 6, generator=g)
    text = torch.randn(1, 5, 4096, generator=g)
    steps = restyle_steps(0.6)
    got = sample_causal(model, torch.zeros(1, 16, 3, 4, 6), text, seed=9, settings=CausalSettings(steps=steps),
                        restyle=Restyle(video))
    sched = denoising_schedule(steps, 5.0, True)
    assert abs(sched.sigmas[0] - sched.timesteps[0] / 1000) < 1e-6  # Krea scales the start by t0 / 1000
    noise = SeededNoise(9)
    s0 = sched.timesteps[0] / 1000
    x = video * (1 - s0) + noise.initial((1, 16, 3, 4, 6), "cpu") * s0  # Krea: latents·(1 - s) + randn·s
    for j, (sigma, t) in enumerate(zip(sched.sigmas, sched.timesteps)):
        x0 = x0_from_flow(x, model.forward(x, torch.tensor([float(t)]), text), sigma)
        x = x0 if j + 1 == len(sched.sigmas) else renoise(x0, noise.step(0, j + 1, (1, 16, 3, 4, 6), "cpu"),
                                                           sched.sigmas[j + 1])
    torch.testing.assert_close(got, x, atol=5e-5, rtol=1e-4)
    t2v = sample_causal(model, torch.zeros(1, 16, 3, 4, 6), text, seed=9, settings=CausalSettings(steps=steps))
    assert (got - t2v).abs().max() > 1e-2  # the input video shapes the result
    with pytest.raises(ValueError, match="needs a first step below 1000"):
        sample_causal(model, torch.zeros(1, 16, 3, 4, 6), text, settings=CausalSettings(steps=restyle_steps(1.0)),
                      restyle=Restyle(video))


def test_restyle_streamed_input_equals_whole_latent(vae):
    model = CausalWanModel.random(T2V, seed=5)
    images = _images(21)
    text = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(6))
    settings = CausalSettings(steps=restyle_steps(0.5), frames_per_block=3, loop="recompute", sink_size=1,
                              local_window=6)
    whole = normalize(_whole(vae, images))
    a = sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, settings=settings, restyle=Restyle(whole))
    reader = LatentFrames(pixel_frames(images, 48, 32), vae.stream_encoder(), normalize)
    b = sample_causal(model, torch.zeros(1, 16, 6, 4, 6), text, settings=settings, restyle=Restyle(reader))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bench_control_quick(tmp_path):
    import argparse
    import json

    from comfyui_clipwan.benchmarks import bench_control

    parser = argparse.ArgumentParser()
    bench_control.add_arguments(parser)
    assert bench_control.run(parser.parse_args(["--quick", "--json", str(tmp_path / "b.json")])) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    dense, sparse = figures["vace"]
    assert (dense["vace_blocks"], sparse["vace_blocks"]) == (5, 2)
    assert dense["hint_ratio"] > 1.0 and figures["restyle"]["ratio"] > 0
    mem = figures["memory"]
    assert mem["long"]["control_frames_read"] == 24 and mem["long"]["blocks"] == 6
    assert mem["peak_rss_ratio"] < 1.5


def test_streamed_control_after_a_start_image(vae):
    """A start image's block is not denoised (no hints asked for): the control video is still read past it."""
    model = CausalWanModel.random(VACE, seed=7)
    images = _images(25)
    text = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(8))
    settings = CausalSettings(steps="1000,750,500", frames_per_block=3, independent_first_frame=True)
    start = torch.randn(1, 16, 1, 4, 6, generator=torch.Generator().manual_seed(9))
    tensor = VideoControl(pixel_frames(images, 48, 32), vae, normalize).read(0, 7)
    a = sample_causal(model, torch.zeros(1, 16, 7, 4, 6), text, settings=settings, first_frames=start,
                      vace=VaceControl(control=tensor))
    streamed = VaceControl(control=VideoControl(pixel_frames(images, 48, 32), vae, normalize))
    b = sample_causal(model, torch.zeros(1, 16, 7, 4, 6), text, settings=settings, first_frames=start, vace=streamed)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
