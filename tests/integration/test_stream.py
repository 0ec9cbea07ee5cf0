"""Streaming decode inside a real ComfyUI: our per-block decode on core's loaded VAE equals core's VAE Decode;
the Causal Wan Stream Video node sends decoded frames to the page while it runs, leaves a playable file that
core's VIDEO type reads, and an interrupted run leaves a valid shorter file."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
import torch
from PIL import Image

from . import prompts as P
from .test_server import _causal_example

pytestmark = pytest.mark.integration


def test_per_block_decode_on_core_vae_equals_core_decode(comfy_dir):
    from . import checkpoints as ck
    from .inprocess import import_comfy

    import_comfy(comfy_dir)
    import comfy.sd

    from comfyui_clipwan.nodes.stream_nodes import stream_decoder
    from comfyui_clipwan.wan.vae.wan21 import pixels_to_images

    vae = comfy.sd.VAE(sd=ck.wan_vae_state_dict(comfy_dir), dtype=torch.float32)
    latent = torch.randn(1, 16, 7, 4, 6, generator=torch.Generator().manual_seed(0))
    core = vae.decode(latent)  # IMAGE [1, 25, 32, 48, 3] or [25, 32, 48, 3]
    core = core.reshape(-1, *core.shape[-3:]).float()
    dec = stream_decoder(vae)  # adopts vae.first_stage_model: core's own weights, not a copy
    assert dec.vae.tree is vae.first_stage_model
    blocks = [dec.decode(latent[:, :, s:e]) for s, e in ((0, 1), (1, 4), (4, 7))]
    ours = pixels_to_images(torch.cat(blocks, dim=2))
    assert ours.shape == core.shape == (25, 32, 48, 3)
    assert (ours - core).abs().max() <= 1e-4


def test_krea_reencode_on_core_vae_equals_core_encode(comfy_dir):
    """Krea's loop re-encodes a decoded frame with the VAE on the stream node's socket: our encoder over core's
    loaded VAE (adopted, not copied) equals core's VAE Encode of that frame, and the MODEL-side normalisation
    (``from_raw``) is core's ``process_latent_in`` of Wan 2.1."""
    from . import checkpoints as ck
    from .inprocess import import_comfy

    import_comfy(comfy_dir)
    import comfy.latent_formats
    import comfy.sd

    from comfyui_clipwan.nodes.stream_nodes import wan_vae_of
    from comfyui_clipwan.wan.vae.latent import normalize

    vae = comfy.sd.VAE(sd=ck.wan_vae_state_dict(comfy_dir), dtype=torch.float32)
    ours = wan_vae_of(vae)
    assert ours.tree is vae.first_stage_model
    pixels = torch.rand(1, 3, 1, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    core = vae.encode(((pixels + 1) / 2)[:, :, 0].permute(0, 2, 3, 1))  # IMAGE [1, H, W, 3] in 0..1
    mine = ours.encode(pixels)
    assert mine.shape == core.shape == (1, 16, 1, 4, 6)
    assert (mine - core).abs().max() <= 1e-4
    fmt = comfy.latent_formats.Wan21()
    assert (normalize(mine) - fmt.process_in(mine)).abs().max() <= 1e-5


def _stream_prompt(sizes=None, prefix="ClipWan/stream_test"):
    """The flagship causal example with its sampler replaced by Causal Wan Stream Video (same inputs + VAE)."""
    prompt, sampler = _causal_example(sizes=sizes)
    vae_loader = P.node_ids(prompt, "VAELoader")[0]
    node = prompt[sampler]
    node["class_type"] = "CausalWanStreamVideo"
    node["inputs"].update({"vae": [vae_loader, 0], "filename_prefix": prefix, "format": "mp4 (H.264)", "fps": 16,
                           "decoder": "wan vae", "return_frames": False})
    # drop what consumed the sampler's LATENT (VAE Decode, savers): the node writes the video itself
    consumers = {nid for nid, n in prompt.items() for v in n["inputs"].values()
                 if isinstance(v, list) and len(v) == 2 and v[0] == sampler}
    while consumers:
        for nid in consumers:
            prompt.pop(nid, None)
        consumers = {nid for nid, n in prompt.items() for v in n["inputs"].values()
                     if isinstance(v, list) and len(v) == 2 and v[0] not in prompt}
    return prompt, sampler


def test_stream_node_plays_decoded_frames_and_writes_the_video(server):
    from .test_server import _watch

    from comfyui_clipwan.wan.video.writer import read_video_frames

    prompt, node = _stream_prompt()
    prompt_id, events = asyncio.run(_watch(server, prompt, node, interrupt_after_progress=False))
    assert events[-1][0] == "execution_success", events[-1]
    frames = [body for kind, body in events if kind == "clipwan.causal_frames"]
    latent_frames = (P.test_length(prompt) - 1) // 4 + 1
    assert len(frames) == latent_frames  # one event per decoded latent frame, as soon as it is decoded
    assert sorted({f["block"] for f in frames}) == list(range(frames[0]["total_blocks"]))
    assert [f["frame_start"] for f in frames] == [0] + [1 + 4 * i for i in range(latent_frames - 1)]
    assert all(f["decoded"] and f["node"] == node for f in frames)
    sent = [base64.b64decode(b.split(",", 1)[-1]) for f in frames for b in f["frames"]]
    assert len(sent) == P.test_length(prompt)  # every decoded frame reached the page
    for raw in sent:
        assert Image.open(io.BytesIO(raw)).size == (64, 64)
    entry = server.wait_history(prompt_id)
    saved = entry["outputs"][node]["clipwan_video"][0]  # one player: not ComfyUI's "images"
    assert not {"images", "animated"} & set(entry["outputs"][node])
    assert saved["filename"].endswith(".mp4") and saved["type"] == "output"
    path = server.output_path(saved)
    assert read_video_frames(str(path)).shape == (P.test_length(prompt), 64, 64, 3)


def test_interrupted_stream_leaves_a_valid_shorter_file(server):
    from .test_server import _watch

    from comfyui_clipwan.wan.video.writer import read_video_frames

    prompt, node = _stream_prompt(sizes={"length": 45}, prefix="ClipWan/stream_interrupted")  # 4 blocks
    prompt[node]["inputs"]["seed"] = 777
    prompt_id, events = asyncio.run(_watch(server, prompt, node, interrupt_after_progress=True))
    assert events[-1][0] == "execution_interrupted", [k for k, _ in events][-6:]
    status = [b["status"] for k, b in events if k == "clipwan.causal_frames" and b.get("status")]
    assert status and status[0].startswith("Stopped after ") and "(valid, playable)" in status[0]
    written = sorted((server.base_dir / "output" / "ClipWan").glob("stream_interrupted_*.mp4"))
    assert written, "no file left by the interrupted run"
    frames = read_video_frames(str(written[-1]))
    assert 0 < frames.shape[0] < 45 and frames.shape[0] == int(status[0].split()[2])
    assert not list((server.base_dir / "output" / "ClipWan").glob("*.partial*"))
    assert json.dumps(server.wait_history(prompt_id)["status"]["status_str"]) == '"error"'


def test_stream_node_live_clip_scores(server):
    """Scoring on (Load CLIP for Scores on a vision-only ViT-H file: CLIP-I + consistency): every 4th decoded
    frame's scores reach the page with its frames, and the CSV/JSON/PNG sit beside the video."""
    from .test_server import _watch
    from . import checkpoints as ck

    from comfyui_clipwan.clip_vision.scores import read_csv

    prompt, node = _stream_prompt(prefix="ClipWan/stream_scored")
    prompt["900"] = {"class_type": "LoadCLIPScorer", "inputs": {"clip_name": ck.CLIP_SMALL, "dtype": "fp32",
                                                                "device": "cpu"}}
    prompt[node]["inputs"].update({"score_clip": ["900", 0], "score_every_n_frames": 4})
    prompt_id, events = asyncio.run(_watch(server, prompt, node, interrupt_after_progress=False))
    assert events[-1][0] == "execution_success", events[-1]
    scores = [row for kind, body in events if kind == "clipwan.causal_frames" for row in body.get("scores", [])]
    assert [r["frame"] for r in scores] == list(range(0, P.test_length(prompt), 4))
    assert scores[0]["clip_i"] == pytest.approx(100.0, abs=1e-3) and scores[0]["consistency"] is None
    assert all(r["clip_t"] is None and 0 < r["clip_i"] <= 100.01 for r in scores)  # vision-only: no CLIP-T
    saved = server.wait_history(prompt_id)["outputs"][node]["clipwan_video"][0]  # the node's one player's file
    video = server.output_path(saved)
    rows = read_csv(str(video)[:-4] + ".clip_scores.csv")
    assert [r.frame for r in rows] == [r["frame"] for r in scores]
    assert all(abs(a.clip_i - b["clip_i"]) < 1e-5 for a, b in zip(rows, scores))
    assert (video.parent / (video.name[:-4] + ".clip_scores.png")).exists()
