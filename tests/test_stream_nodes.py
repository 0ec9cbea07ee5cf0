"""Causal Wan Stream Video node outside ComfyUI (our model and VAE on the sockets): the saved file, the
frames (equal to sample-then-decode), interrupt -> valid shorter file, tiny decoder lookup, errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.wan import CausalSettings, denormalize, sample_causal
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig
from comfyui_clipwan.wan.video.writer import read_video_frames

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)


@pytest.fixture(scope="module")
def parts():
    model = CausalWanModel.random(CFG, seed=1)
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    return model, vae, [[text, {}]], {"samples": torch.zeros(1, 16, 6, 2, 4)}


def _run(node, parts, **kw):
    model, vae, positive, latent = parts
    args = dict(model=model, positive=positive, latent=latent, seed=5, vae=vae, steps="1000,500",
                frames_per_block=3)
    args.update(kw)
    return node.stream(**args)


def test_registered_with_suffix():
    assert NODE_DISPLAY_NAME_MAPPINGS["CausalWanStreamVideo"] == "Causal Wan Stream Video (ClipWan)"
    assert NODE_CLASS_MAPPINGS["CausalWanStreamVideo"] is CausalWanStreamVideo
    inputs = CausalWanStreamVideo.INPUT_TYPES()
    assert {"vae", "seed"} <= set(inputs["required"])  # the settings' widgets are optional (old defaults)
    assert {"filename_prefix", "format", "fps", "decoder", "return_frames", "steps"} <= set(inputs["optional"])


def test_writes_file_and_returns_frames(parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, vae, positive, latent = parts
    out = _run(CausalWanStreamVideo(), parts, return_frames=True, filename_prefix="runs/clip")
    video, frames, path = out["result"]
    assert video is None  # no VIDEO type outside ComfyUI
    assert path == str(tmp_path / "output" / "runs" / "clip_00001_.mp4")
    # one player: the saved file under the pack's key (the node's frame player plays it), none of the keys that
    # make ComfyUI draw its own video player under the node
    assert out["ui"] == {"clipwan_video": [{"filename": "clip_00001_.mp4", "subfolder": "runs", "type": "output"}]}
    z = sample_causal(model, latent["samples"], positive[0][0], seed=5,
                      settings=CausalSettings(steps="1000,500", frames_per_block=3))
    ref = ((vae.decode_whole(denormalize(z)).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 3, 0)
    assert frames.shape == ref.shape == (21, 16, 32, 3)
    assert (frames - ref).abs().max() <= 1e-4
    back = read_video_frames(path)
    assert back.shape == (21, 16, 32, 3)
    assert np.abs(back / 255.0 - ref.numpy()).mean() < 0.1  # lossy H.264 of noise-like frames
    # without return_frames: only the last frame; a second run gets the next number
    out2 = _run(CausalWanStreamVideo(), parts, filename_prefix="runs/clip", format="webm (VP9)")
    assert out2["result"][1].shape == (1, 16, 32, 3)
    assert out2["result"][2].endswith("clip_00002_.webm")
    assert (out2["result"][1][0] - ref[-1]).abs().max() <= 1e-4


def test_interrupt_leaves_valid_shorter_file(parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    def interrupt():
        calls["n"] += 1
        if calls["n"] > 3:  # block 0: 2 steps + the check after it; stop in block 1
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    texts = []
    monkeypatch.setattr(bridge, "progress_text", lambda text, node: texts.append(text) or False)
    with pytest.raises(Interrupted):
        _run(CausalWanStreamVideo(), parts, unique_id="7")
    path = tmp_path / "output" / "ClipWan" / "causal_00001_.mp4"
    assert read_video_frames(str(path)).shape[0] == 9  # block 0 only: 1 + 4 + 4 frames
    assert texts == ["Stopped after 9 frames: the shorter video was saved to causal_00001_.mp4 (valid, playable)."]
    assert not list((tmp_path / "output" / "ClipWan").glob("*.partial*"))


def test_tiny_decoder_missing_and_bad_inputs(parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="needs taew2_1.safetensors .* in models/vae_approx"):
        _run(CausalWanStreamVideo(), parts, decoder="tiny (taew2_1)")
    with pytest.raises(ValueError, match=r"vae \(str\) is not a VAE"):
        _run(CausalWanStreamVideo(), parts, vae="wan_2.1_vae.safetensors")
    with pytest.raises(ValueError, match="points outside the output folder"):
        _run(CausalWanStreamVideo(), parts, filename_prefix="../../etc/x")
    assert not (tmp_path / "output" / "ClipWan").exists() or not list((tmp_path / "output").rglob("*.mp4"))


def test_krea_family_reencodes_through_the_stream_node(parts, tmp_path, monkeypatch):
    """Krea's loop in the stream node re-encodes its first context frame with the connected VAE (the run equals
    stream_video with that VAE); the plain sampler node, which decodes nothing, keeps the first latent frame and
    says so on the node."""
    import warnings

    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
    from comfyui_clipwan.wan.sampling.presets import get_preset
    from comfyui_clipwan.wan.video.stream import stream_video

    monkeypatch.chdir(tmp_path)
    model, vae, positive, _ = parts
    latent = {"samples": torch.zeros(1, 16, 12, 2, 4)}  # 4 blocks: the 3rd and 4th re-encode
    values = get_preset("Krea Realtime 14B").sampler_values()
    values.pop("independent_first_frame")  # t2v here (no start image)
    texts = []
    monkeypatch.setattr(bridge, "progress_text", lambda text, node: texts.append(text) or False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback in the stream node
        frames = _run(CausalWanStreamVideo(), parts, latent=latent, return_frames=True, **{**values, "seed": 5})
    settings = CausalSettings(steps=values["steps"], shift=values["shift"], warp=values["warp_steps"],
                              frames_per_block=3, sink_size=1, local_window=6, loop="recompute")
    run = stream_video(model, latent["samples"], positive[0][0], vae=vae, seed=5, settings=settings)
    ref = torch.cat([b.frames for b in run], 1)[0]
    assert (frames["result"][1] - ref).abs().max() <= 1e-5
    assert not any("keep_first_frame" in t for t in texts)
    with pytest.warns(UserWarning, match="keep_first_frame"):
        CausalWanSampler().sample(model, positive, latent, 5, **{k: v for k, v in values.items() if k != "seed"})
    assert any("keep_first_frame" in t for t in texts)


@pytest.mark.skipif(shutil.which("node") is None, reason="node (JavaScript) is not installed")
def test_one_player_the_web_logic_plays_the_saved_file_and_sees_no_native_preview():
    """The node's ui (above) against web/clipwan_logic.js: the key it reads is the node's, the file becomes a
    /view URL for the frame player, and the keys that would stack ComfyUI's player under it are recognised."""
    from test_workflows import _run_js

    from comfyui_clipwan.nodes.stream_nodes import VIDEO_UI_KEY

    ui = {VIDEO_UI_KEY: [{"filename": "clip_00001_.mp4", "subfolder": "runs/a b", "type": "output"}]}
    out = _run_js(f"""
      const ui = {json.dumps(ui)};
      return {{key: L.VIDEO_OUTPUT, video: L.savedVideo(ui), webm: L.savedVideo({{clipwan_video: [{{filename: "x.webm"}}]}}),
               none: [L.savedVideo({{}}), L.savedVideo(null), L.savedVideo({{clipwan_video: [{{}}]}})],
               native: L.nativePreviewKeys(ui),
               core: L.nativePreviewKeys({{images: [], animated: [true], text: "t"}})}};""")
    assert out["key"] == VIDEO_UI_KEY
    assert out["video"] == {"filename": "clip_00001_.mp4", "mime": "video/mp4",
                            "path": "/view?filename=clip_00001_.mp4&subfolder=runs%2Fa+b&type=output"}
    assert out["webm"]["mime"] == "video/webm" and out["webm"]["path"].endswith("subfolder=&type=output")
    assert out["none"] == [None, None, None]
    # what the node sends makes no native preview; what it sent before (images + animated) does
    assert out["native"] == [] and out["core"] == ["images", "animated"]
