"""An endless stream through the Causal Wan Stream Video node (until_stopped) and the fragmented MP4 writer:
the file being written is playable at every moment, Cancel leaves the whole stream, and the frames are those
of the endless loop decoded block by block."""

import os
import shutil

import numpy as np
import pytest
import torch

from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.wan import CausalSettings, denormalize
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig
from comfyui_clipwan.wan.video.writer import VideoWriter, read_video_frames

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)


def test_fragmented_mp4_is_playable_while_it_is_written(tmp_path):
    rng = np.random.default_rng(0)
    writer = VideoWriter(str(tmp_path / "live.mp4"), fps=8, fragmented=True)
    readable = []
    for second in range(4):
        writer.write(rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
        snapshot = tmp_path / "snapshot.mp4"  # what a player opening the file now would read
        shutil.copy(writer._partial, snapshot)
        readable.append(read_video_frames(str(snapshot)).shape[0])
    # each fragment holds one second (a keyframe per second); only the open one is still missing
    assert all(8 * (s + 1) - 8 <= n <= 8 * (s + 1) for s, n in enumerate(readable)), readable
    assert readable == sorted(readable) and readable[-1] >= 24
    assert read_video_frames(writer.close()).shape[0] == 32


def test_plain_mp4_is_not_playable_before_close(tmp_path):
    """The control: without fragments the moov atom comes at close, so the growing file cannot be read."""
    writer = VideoWriter(str(tmp_path / "plain.mp4"), fps=8)
    writer.write(np.zeros((16, 32, 32, 3), np.uint8))
    if os.path.exists(writer._partial):  # (the encoder may not have handed out a packet yet: no file at all)
        shutil.copy(writer._partial, tmp_path / "snapshot.mp4")
        with pytest.raises(Exception):
            read_video_frames(str(tmp_path / "snapshot.mp4"))
    assert read_video_frames(writer.close()).shape[0] == 16


@pytest.fixture(scope="module")
def parts():
    model = CausalWanModel.random(CFG, seed=1)
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    return model, vae, [[text, {}]], {"samples": torch.zeros(1, 16, 2, 2, 4)}


def test_until_stopped_streams_past_the_latent_until_cancel(parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, vae, positive, latent = parts
    blocks = {"n": 0}

    class Cancelled(Exception):
        pass

    def interrupt():  # ComfyUI's Cancel after 5 blocks of 2 steps (+ the check after each block)
        blocks["n"] += 1
        if blocks["n"] > 5 * 3:
            raise Cancelled()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    texts = []
    monkeypatch.setattr(bridge, "progress_text", lambda text, node: texts.append(text) or False)
    with pytest.raises(Cancelled):
        CausalWanStreamVideo().stream(model=model, positive=positive, latent=latent, seed=5, vae=vae,
                                      steps="1000,500", frames_per_block=2, sink_size=1, local_window=4,
                                      until_stopped=True, unique_id="3")
    path = tmp_path / "output" / "ClipWan" / "causal_00001_.mp4"
    frames = read_video_frames(str(path))
    # 5 blocks of 2 latent frames = 10 latent frames = 1 + 9*4 pixel frames, though the latent held 2 frames
    assert frames.shape[0] == 37 and "Stopped after 37 frames" in texts[-1]
    # the frames are the endless loop's (relative positions), decoded block by block
    settings = CausalSettings(steps="1000,500", frames_per_block=2, sink_size=1, local_window=4, positions="slots")
    loop = iter_causal_blocks(model, latent["samples"], positive[0][0], seed=5, settings=settings, endless=True)
    decoder, ref = vae.stream_decoder(), []
    for r in loop:
        ref.append(decoder.decode(denormalize(r.x0)))
        if r.index == 4:
            break
    ref = ((torch.cat(ref, 2).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 3, 0)
    assert ref.shape == frames.shape
    # the same frames through the same (fragmented) encode: the file holds exactly the endless loop's frames
    with VideoWriter(str(tmp_path / "ref.mp4"), fps=16, fragmented=True) as writer:
        writer.write(ref)
    want = read_video_frames(str(tmp_path / "ref.mp4")).astype(np.float32)
    assert np.abs(want - frames.astype(np.float32)).mean() < 0.5


def test_until_stopped_refusals(parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, vae, positive, latent = parts
    args = dict(model=model, positive=positive, latent=latent, seed=5, vae=vae, steps="1000,500",
                frames_per_block=2, until_stopped=True)
    with pytest.raises(ValueError, match="needs a local_window"):
        CausalWanStreamVideo().stream(**args)
    with pytest.raises(ValueError, match="return_frames holds every decoded frame"):
        CausalWanStreamVideo().stream(**args, local_window=4, return_frames=True)
    assert not os.path.exists(tmp_path / "output" / "ClipWan")  # refused before any file was started


def test_until_stopped_is_an_optional_input_after_the_others():
    from comfyui_clipwan.wan.sampling import settings_spec as spec

    optional = list(CausalWanStreamVideo.INPUT_TYPES()["optional"])
    # saved workflows keep their widget values: it came last in its layout, only later widgets follow it
    assert any(layout[-1] == "until_stopped" for layout in spec.widget_layouts(spec.STREAM))
    assert all(spec.get(name).since > spec.get("until_stopped").since
               for name in optional[optional.index("until_stopped") + 1:])
    assert CausalWanStreamVideo.INPUT_TYPES()["optional"]["until_stopped"][1]["default"] is False
