"""Image and LoRA changes in ComfyUI: the two timeline nodes, and the live routes over a real aiohttp server on
localhost while Causal Wan Stream Video runs in another thread — applied at the next block, shown in the frame
player, recorded in the sidecar and the video's comment tag, replayed exactly; the LoRA's loaded weights back after."""

import asyncio
import base64
import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_clipwan.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes import timeline_control_nodes as tc
from comfyui_clipwan.nodes import timeline_nodes as tn
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.timeline import load
from comfyui_clipwan.wan.vae.latent import normalize
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)
SAMPLER = dict(seed=5, steps="1000,500", frames_per_block=2, sink_size=2, local_window=6)


class FakeClip:
    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        g = torch.Generator().manual_seed(sum(map(ord, tokens)))
        return [[torch.randn(1, 5, 32, generator=g) * 100, {"pooled_output": None}]]


def cond(text):
    return FakeClip().encode_from_tokens_scheduled(text)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("lora")
    sd = CausalWanModel.random(CFG, seed=1).state_dict()
    for k in sd:
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    g = torch.Generator().manual_seed(2)
    lora = {}
    for i in range(CFG.num_layers):
        lora[f"blocks.{i}.self_attn.v.lora_A.weight"] = torch.randn(4, 64, generator=g) * 0.5
        lora[f"blocks.{i}.self_attn.v.lora_B.weight"] = torch.randn(64, 4, generator=g) * 0.5
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "base.safetensors"))
    save_file(lora, str(folder / "style.safetensors"))
    model = CausalWanModel.from_file(str(folder / "base.safetensors"), lora=str(folder / "style.safetensors"))
    return model, WanVAE.random(WanVAEConfig(dim=8), seed=2)


def png_base64(seed, h=16, w=32):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode(), torch.from_numpy(pixels.astype(np.float32) / 255)[None]


def test_registered_and_the_nodes_add_their_changes(parts):
    model, vae = parts
    for key, name in (("CausalWanTimelineImage", "Timeline Image Change (ClipWan)"),
                      ("CausalWanTimelineLoraStrength", "Timeline LoRA Strength (ClipWan)")):
        assert NODE_DISPLAY_NAME_MAPPINGS[key] == name and key in NODE_CLASS_MAPPINGS
    (timeline,) = tn.CausalWanTimelineFromText().build(FakeClip(), "0: a fox")
    _, image = png_base64(1)
    (with_image,) = tc.CausalWanTimelineImage().add(timeline, image, 2, route="start", vae=vae, width=32, height=16)
    [change] = with_image.controls.images
    expected = normalize(vae.encode(image.movedim(-1, 1)[:, :, None] * 2 - 1))  # 32x16 already: no resize
    assert change.block == 2 and change.clip_fea is None and torch.allclose(change.latent, expected, atol=1e-6)
    # the run's LATENT gives the size (16x32 pixels = a 2x4 latent), whatever width/height say
    (sized,) = tc.CausalWanTimelineImage().add(timeline, image, 2, route="start", vae=vae, width=832, height=480,
                                               latent={"samples": torch.zeros(1, 16, 3, 2, 4)})
    assert torch.equal(sized.controls.images[0].latent, change.latent)
    assert not timeline.controls  # the node's input (ComfyUI's cached output) is untouched
    (with_lora,) = tc.CausalWanTimelineLoraStrength().add(with_image, 3, 0.25)
    assert [(c.block, c.strength) for c in with_lora.controls.loras] == [(3, 0.25)]
    with pytest.raises(ValueError, match=r"route 'start' needs .*connect vae"):
        tc.CausalWanTimelineImage().add(timeline, image, 2, route="start")


class _Server:
    def __init__(self):
        from aiohttp import web

        self.routes = web.RouteTableDef()


def test_live_image_and_lora_over_http_apply_at_next_block_and_replay(parts, tmp_path, monkeypatch):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    monkeypatch.chdir(tmp_path)
    model, vae = parts
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    events, waiting, posted = [], threading.Event(), threading.Event()
    monkeypatch.setattr(bridge, "prompt_server", lambda: object())
    monkeypatch.setattr(bridge, "send_ui_event", lambda event, data, client_id=None: events.append(data) or True)
    calls = {"n": 0}

    def interrupt():  # the sampling thread, during block 0: wait until the changes were posted and encoded
        calls["n"] += 1
        if calls["n"] == 1:
            waiting.set()
            assert posted.wait(60)

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    (timeline,) = tn.CausalWanTimelineFromText().build(FakeClip(), "0: a fox")
    latent = {"samples": torch.zeros(1, 16, 8, 2, 4)}
    out = {}

    def run():
        out["live"] = CausalWanStreamVideo().stream(model, cond("ignored"), latent, vae=vae, unique_id="7",
                                                    timeline=timeline, return_frames=True, **SAMPLER)

    worker = threading.Thread(target=run)
    worker.start()
    assert waiting.wait(60)
    server = _Server()
    tc.register_routes(server)
    app = web.Application()
    app.add_routes(server.routes)
    picture, _ = png_base64(3)

    async def talk():
        async with TestClient(TestServer(app)) as client:
            answers = [
                await client.post("/clipwan/live/99/image", json={"image": picture}),
                await client.post("/clipwan/live/7/image", json={"image": "not base64!"}),
                await client.post("/clipwan/live/7/image", json={"image": picture, "route": "clip"}),  # t2v model
                await client.post("/clipwan/live/7/lora", json={"strength": "strong"}),
                await client.post("/clipwan/live/7/image", json={"image": "data:image/png;base64," + picture,
                                                                  "name": "fox.png"}),
                await client.post("/clipwan/live/7/lora", json={"strength": 0.3}),
            ]
            return [a.status for a in answers], [await a.json() for a in answers]

    statuses, bodies = asyncio.run(talk())
    assert statuses == [404, 400, 400, 400, 200, 200], bodies
    assert "not valid base64" in bodies[1]["error"] and "reads no CLIP reference" in bodies[2]["error"]
    tn._RUNS["7"].wait_encoded()
    posted.set()
    worker.join(120)
    video, frames, path = out["live"]["result"]
    labels = [(e["block"], e.get("prompt")) for e in events if "block" in e]
    assert labels[0] == (0, None)
    assert labels[-1] == (3, "image from block 1: fox.png; LoRA style.safetensors x0.3 from block 1")
    assert all(torch.equal(model.state_dict()[k], loaded[k]) for k in loaded)  # the LoRA back at its loaded strength
    sidecar = path.rsplit(".", 1)[0] + ".timeline.json"
    data = json.load(open(sidecar))
    assert [(c["block"], c["label"]) for c in data["controls"]["images"]] == [(1, "fox.png")]
    assert [(c["block"], c["strength"]) for c in data["controls"]["loras"]] == [(1, 0.3)]
    import av

    with av.open(path) as container:
        comment = json.loads(container.metadata["comment"])
    assert comment["images"] == [[1, "fox.png"]] and comment["loras"] == [[1, "style.safetensors", 0.3]]
    monkeypatch.setattr(bridge, "check_interrupt", lambda: None)
    replay = CausalWanStreamVideo().stream(model, cond("ignored"), latent, vae=vae, unique_id="8",
                                           timeline=load(sidecar), return_frames=True, **SAMPLER)
    assert torch.equal(replay["result"][1], frames)
    (plain,) = tn.CausalWanTimelineFromText().build(FakeClip(), "0: a fox")
    without = CausalWanStreamVideo().stream(model, cond("ignored"), latent, vae=vae, timeline=plain,
                                            return_frames=True, **SAMPLER)
    assert torch.equal(without["result"][1][:1], frames[:1])
    assert (without["result"][1] - frames).abs().max() > 1e-3


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="node (JavaScript) is not installed")
def test_web_live_image_and_lora_requests_match_the_routes():
    """web/clipwan_logic.js builds the bodies the routes take (the image field decodes with the route's reader)."""
    import pathlib
    import subprocess

    from comfyui_clipwan.axera_export.interrogate import decode_image

    picture, pixels = png_base64(4)
    logic = (pathlib.Path(tc.__file__).resolve().parents[1] / "web" / "clipwan_logic.js").as_uri()
    url = "data:image/png;base64," + picture
    script = (f"import * as L from {json.dumps(logic)};\nprocess.stdout.write(JSON.stringify(["
              f"L.liveImageRequest('3:7', {json.dumps(url)}, 'fox.png', 2), L.liveImageRequest(7, 'hello'), "
              f"L.liveLoraRequest(7, '0.35'), L.liveLoraRequest(7, ''), L.liveLoraRequest(7, 'x')]));")
    done = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    image, not_image, lora, empty, bad = json.loads(done.stdout)
    assert image["path"] == "/clipwan/live/3%3A7/image"
    body = json.loads(image["body"])
    assert body["name"] == "fox.png" and body["blend_blocks"] == 2
    assert np.array_equal(decode_image(body["image"]), pixels.numpy())
    assert not_image is None and empty is None and bad is None
    assert lora == {"path": "/clipwan/live/7/lora", "body": json.dumps({"strength": 0.35}, separators=(",", ":"))}
