"""The timeline nodes, the causal nodes' timeline input, and live prompts over the HTTP route (a real aiohttp server
on localhost, the stream node running in another thread): applied at the next block, shown in the frame player,
recorded in the video's metadata and a sidecar that replays the run exactly."""

import asyncio
import json
import threading

import pytest
import torch

from comfyui_clipwan.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes import timeline_nodes as tn
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
from comfyui_clipwan.wan.model.causal import CausalWanModel
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.timeline import load
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)


class FakeClip:
    """ComfyUI's CLIP interface (tokenize / encode_from_tokens_scheduled), each text its own random states."""

    def __init__(self):
        self.encoded = []

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        self.encoded.append(tokens)
        g = torch.Generator().manual_seed(sum(map(ord, tokens)))
        return [[torch.randn(1, 5, 32, generator=g) * 100, {"pooled_output": None}]]


def cond(text):
    return FakeClip().encode_from_tokens_scheduled(text)


@pytest.fixture(scope="module")
def parts():
    sd = CausalWanModel.random(CFG, seed=1).state_dict()
    for k in sd:
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return CausalWanModel.from_state_dict(sd), WanVAE.random(WanVAEConfig(dim=8), seed=2)


SAMPLER = dict(seed=5, steps="1000,500", frames_per_block=2, sink_size=2, local_window=6)


def test_registered():
    for key, name in (("CausalWanTimelineFromConditionings", "Prompt Timeline from Conditionings (ClipWan)"),
                      ("CausalWanTimelineFromText", "Prompt Timeline from Text (ClipWan)")):
        assert NODE_DISPLAY_NAME_MAPPINGS[key] == name and key in NODE_CLASS_MAPPINGS
    for node in (CausalWanSampler, CausalWanStreamVideo):
        assert node.INPUT_TYPES()["optional"]["timeline"][0] == "CLIPWAN_TIMELINE"


def test_text_node_encodes_each_prompt_once():
    clip = FakeClip()
    (timeline,) = tn.CausalWanTimelineFromText().build(clip, "0: a fox\n2: a wolf\n4: a fox\n6 blend 2: a wolf")
    assert clip.encoded == ["a fox", "a wolf"]
    assert [s.block for s in timeline.segments] == [0, 2, 4, 6] and timeline.fps == 16.0
    with pytest.raises(ValueError, match="timeline text, line 2"):
        tn.CausalWanTimelineFromText().build(clip, "0: a fox\noops")


def test_conditioning_timeline_equals_switch_positive(parts):
    model, _ = parts
    latent = {"samples": torch.zeros(1, 16, 8, 2, 4)}
    (timeline,) = tn.CausalWanTimelineFromConditionings().build(cond("a fox"), conditioning_2=cond("a wolf"),
                                                                  start_block_2=2)
    ours = CausalWanSampler().sample(model, cond("a fox"), latent, timeline=timeline, **SAMPLER)[0]["samples"]
    old = CausalWanSampler().sample(model, cond("a fox"), latent, switch_positive=cond("a wolf"), switch_at_block=2,
                                    **SAMPLER)[0]["samples"]
    assert torch.equal(ours, old)
    plain = CausalWanSampler().sample(model, cond("a fox"), latent, **SAMPLER)[0]["samples"]
    assert (plain - ours).abs().max() > 1e-3  # sharp: the switch changes the video
    with pytest.raises(ValueError, match="both a timeline and switch_positive"):
        CausalWanSampler().sample(model, cond("a fox"), latent, timeline=timeline, switch_positive=cond("a wolf"),
                                  switch_at_block=2, **SAMPLER)
    with pytest.raises(ValueError, match="same block"):
        tn.CausalWanTimelineFromConditionings().build(cond("a"), conditioning_2=cond("b"), start_block_2=3,
                                                      conditioning_3=cond("c"), start_block_3=3)


class _Server:
    def __init__(self):
        from aiohttp import web

        self.routes = web.RouteTableDef()


def test_live_prompt_over_http_applies_at_next_block_and_replays(parts, tmp_path, monkeypatch):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    monkeypatch.chdir(tmp_path)
    model, vae = parts
    events, waiting, posted = [], threading.Event(), threading.Event()
    monkeypatch.setattr(bridge, "prompt_server", lambda: object())  # a page is listening: frame-player events
    monkeypatch.setattr(bridge, "send_ui_event", lambda event, data, client_id=None: events.append(data) or True)
    calls = {"n": 0}

    def interrupt():  # the sampling thread, during block 0: wait until the prompt was posted and encoded
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
    tn.register_routes(server)
    app = web.Application()
    app.add_routes(server.routes)

    async def talk():
        async with TestClient(TestServer(app)) as client:
            bad = await client.post("/clipwan/live/99/prompt", json={"text": "x"})
            empty = await client.post("/clipwan/live/7/prompt", json={"txt": "x"})
            ok = await client.post("/clipwan/live/7/prompt", json={"text": "a wolf"})
            status = await (await client.get("/clipwan/live")).json()
            return bad.status, empty.status, ok.status, await ok.json(), status

    bad, empty, ok, answer, status = asyncio.run(talk())
    assert (bad, empty, ok) == (404, 400, 200) and answer == {"id": 1, "node": "7"}
    assert status["runs"][0]["node"] == "7"
    assert tn._RUNS["7"].priority == "normal"  # the widget's default: encode at once beside the sampler
    tn._RUNS["7"].wait_encoded()
    posted.set()
    worker.join(120)
    video, frames, path = out["live"]["result"]
    # applied at the next block boundary (block 1) and shown in the frame player from there on
    labels = [(e["block"], e.get("prompt")) for e in events if "block" in e]
    assert labels[0] == (0, None) and labels[-1] == (3, "prompt 2 from block 1: a wolf")
    assert "7" not in tn._RUNS  # the run unregistered itself
    # the sidecar and the video's comment tag
    sidecar = path.rsplit(".", 1)[0] + ".timeline.json"
    data = json.load(open(sidecar))
    assert [(s["block"], s["prompts"][0]["text"]) for s in data["segments"]] == [(0, "a fox"), (1, "a wolf")]
    import av

    with av.open(path) as container:
        comment = json.loads(container.metadata["comment"])
    assert comment["prompts"] == [[0, "a fox"], [1, "a wolf"]]
    # replaying the sidecar (no text encoder: its embeddings are beside it) gives the same video
    monkeypatch.setattr(bridge, "check_interrupt", lambda: None)
    replay = CausalWanStreamVideo().stream(model, cond("ignored"), latent, vae=vae, unique_id="8",
                                           timeline=load(sidecar), return_frames=True, **SAMPLER)
    assert torch.equal(replay["result"][1], frames)
    (plain,) = tn.CausalWanTimelineFromText().build(FakeClip(), "0: a fox")
    without = CausalWanStreamVideo().stream(model, cond("ignored"), latent, vae=vae, timeline=plain,
                                            return_frames=True, **SAMPLER)
    assert (without["result"][1] - frames).abs().max() > 1e-3  # sharp: the live prompt changed the video


def test_stream_node_live_encode_priority_reaches_the_live_control(parts, tmp_path, monkeypatch):
    """The stream node's ``live_encode_priority`` widget is the priority of its live prompts' encoding thread."""
    monkeypatch.chdir(tmp_path)
    model, vae = parts
    seen = {}

    def interrupt():
        seen.setdefault("priority", tn._RUNS["5"].priority)

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    (timeline,) = tn.CausalWanTimelineFromText().build(FakeClip(), "0: a fox")
    CausalWanStreamVideo().stream(model, cond("ignored"), {"samples": torch.zeros(1, 16, 4, 2, 4)}, vae=vae,
                                  unique_id="5", timeline=timeline, live_encode_priority="background", **SAMPLER)
    assert seen["priority"] == "background" and "5" not in tn._RUNS


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="node (JavaScript) is not installed")
def test_web_live_prompt_request_matches_the_route():
    """web/clipwan_logic.js builds the request the route takes (the same body live_request accepts)."""
    import pathlib
    import subprocess

    logic = (pathlib.Path(tn.__file__).resolve().parents[1] / "web" / "clipwan_logic.js").as_uri()
    script = (f"import * as L from {json.dumps(logic)};\nprocess.stdout.write(JSON.stringify([L.livePromptRequest('7', "
              f"' a wolf ', 0), L.livePromptRequest('3:7', 'x', 2), L.livePromptRequest(7, '  '), "
              f"L.framePrompt({{prompt: 'prompt 2 from block 1: a wolf'}}), L.LIVE_PATH]));")
    done = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    plain, blend, empty, label, path = json.loads(done.stdout)
    assert plain == {"path": "/clipwan/live/7/prompt", "body": json.dumps({"text": "a wolf"}, separators=(",", ":"))}
    assert blend["path"] == "/clipwan/live/3%3A7/prompt"
    assert json.loads(blend["body"]) == {"text": "x", "transition": "blend", "blend_blocks": 2}
    assert empty is None and label == "prompt 2 from block 1: a wolf" and path == tn.LIVE_PATH
