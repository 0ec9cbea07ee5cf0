"""stream_video: decoded blocks while sampling equal sample-then-decode (Wan VAE's whole-video reference
path and the tiny decoder); nothing kept unless asked; the benchmark's quick run."""

import argparse

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, denormalize, sample_causal
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.video.stream import stream_video
from comfyui_clipwan.wan.vae.taehv import TAEHV
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True, text_dim=32,
                text_len=8)


@pytest.fixture(scope="module")
def setup():
    model = CausalWanModel.random(CFG, seed=1)
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)
    g = torch.Generator().manual_seed(3)
    inputs = dict(latent=torch.zeros(1, 16, 7, 2, 4), text=torch.randn(1, 5, 32, generator=g),
                  clip_fea=torch.randn(1, 257, 1280, generator=g))
    settings = CausalSettings(frames_per_block=3, independent_first_frame=True, sink_size=1, local_window=4)
    return model, vae, inputs, settings


def test_streamed_frames_equal_sample_then_whole_decode(setup):
    model, vae, inputs, settings = setup
    z = sample_causal(model, inputs["latent"], inputs["text"], seed=7, settings=settings,
                      clip_fea=inputs["clip_fea"])
    reference = ((vae.decode_whole(denormalize(z)).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)
    stream = stream_video(model, inputs["latent"], inputs["text"], vae=vae, seed=7, settings=settings,
                          clip_fea=inputs["clip_fea"])
    blocks = list(stream)
    # each latent frame handed out when decoded: blocks of 1 + 3 + 3 latent frames
    assert [b.num_frames for b in blocks] == [1, 4, 4, 4, 4, 4, 4]
    assert [b.frame_start for b in blocks] == [0, 1, 5, 9, 13, 17, 21]
    assert [b.latent_start for b in blocks] == list(range(7))
    assert [b.index for b in blocks] == [0, 1, 1, 1, 2, 2, 2]
    assert [b.block_done for b in blocks] == [True, False, False, True, False, False, True]
    frames = torch.cat([b.frames for b in blocks], dim=1)
    assert frames.shape == reference.shape == (1, 25, 16, 32, 3)
    assert (frames - reference).abs().max() <= 1e-4
    assert stream.latent is None  # the whole-video latent is not kept unless asked for
    assert stream.frames_done == 25 and stream.blocks_done == 3
    whole_blocks = list(stream_video(model, inputs["latent"], inputs["text"], vae=vae, seed=7, settings=settings,
                                     clip_fea=inputs["clip_fea"], per_latent_frame=False))
    assert [b.num_frames for b in whole_blocks] == [1, 12, 12]
    assert (torch.cat([b.frames for b in whole_blocks], dim=1) - reference).abs().max() <= 1e-4


def test_keep_latent_and_on_frames(setup):
    model, vae, inputs, settings = setup
    z = sample_causal(model, inputs["latent"], inputs["text"], seed=7, settings=settings,
                      clip_fea=inputs["clip_fea"])
    seen = []
    stream = stream_video(model, inputs["latent"], inputs["text"], vae=vae, seed=7, settings=settings,
                          clip_fea=inputs["clip_fea"], keep_latent=True, on_frames=lambda b: seen.append(b.index))
    for _ in stream:
        pass
    assert seen == [0, 1, 1, 1, 2, 2, 2]
    assert (stream.latent - z).abs().max() == 0


def test_tiny_decoder_streams_too(setup):
    model, _, inputs, settings = setup
    tae = TAEHV.random(seed=4)
    blocks = list(stream_video(model, inputs["latent"], inputs["text"], vae=tae, seed=7, settings=settings,
                               clip_fea=inputs["clip_fea"]))
    frames = torch.cat([b.frames for b in blocks], dim=1)
    z = sample_causal(model, inputs["latent"], inputs["text"], seed=7, settings=settings, clip_fea=inputs["clip_fea"])
    ref = (tae.decode(denormalize(z)) + 1) / 2
    assert frames.shape == (1, 25, 16, 32, 3)
    assert (frames - ref.permute(0, 2, 3, 4, 1)).abs().max() <= 1e-5


def test_errors_raise_before_any_work(setup):
    model, vae, inputs, settings = setup
    with pytest.raises(ValueError, match="stream_video needs a decoder"):
        stream_video(model, inputs["latent"], inputs["text"])
    with pytest.raises(ValueError, match="does not fit blocks of 3"):
        stream_video(model, torch.zeros(1, 16, 5, 2, 4), inputs["text"], vae=vae,
                     settings=CausalSettings(frames_per_block=3))


def test_bench_stream_quick(tmp_path):
    from comfyui_clipwan.benchmarks import bench_stream

    parser = argparse.ArgumentParser()
    bench_stream.add_arguments(parser)
    # (the CLIP-score part: tests/test_score_speed.py)
    args = parser.parse_args(["--quick", "--score-every", "", "--json", str(tmp_path / "b.json")])
    assert bench_stream.run(args) == 0
    import json

    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["max_frame_difference"] <= 1e-4
    assert figures["streaming"]["first_frame_s"] < figures["two_stage"]["first_frame_s"]
    mem = figures["memory"]
    assert mem["short"]["video_frames"] == 4 * 8 - 3 and mem["long"]["video_frames"] == 4 * 32 - 3
    assert mem["peak_rss_ratio"] < 1.5

