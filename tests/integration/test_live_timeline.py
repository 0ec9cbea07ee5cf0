"""Live prompts in a real ComfyUI: the flagship example streamed by Causal Wan Stream Video with a Prompt Timeline from
Text on its timeline input; while it plays, a new prompt is POSTed to /clipwan/live/{node}/prompt. It takes over at a
block boundary, the frame player says so, and the video gets its replayable timeline beside it and in its tags."""

from __future__ import annotations

import asyncio
import json

from .test_stream import _stream_prompt


async def _run_and_post(server, prompt: dict, node: str, text: str, route: str = "prompt", payload: dict = None,
                        after_block: int = 0, cancel_after: int = None):
    """Queue ``prompt`` with a websocket open; once the player shows frames of ``after_block`` (or later), POST
    ``payload`` (or ``{"text": text}``) to the live ``route``. ``cancel_after``: once the player shows that many blocks
    after the one the change landed at (the label ends with ``text``), POST /interrupt (ComfyUI's Cancel) — an endless
    stream ends no other way (if the change never lands, Cancel comes 8 blocks after the request)."""
    import aiohttp

    events, answer, applied = [], None, None
    cancelled = cancel_after is None
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}", max_msg_size=0) as ws:
            async with session.post(f"{server.url}/prompt",
                                    json={"prompt": prompt, "client_id": server.client_id}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind, body = data["type"], data.get("data", {})
                if body.get("prompt_id") not in (None, prompt_id):
                    continue
                events.append((kind, body))
                block = body.get("block") if kind == "clipwan.causal_frames" and body.get("frames") else None
                if answer is None and block is not None and block >= after_block:
                    async with session.post(f"{server.url}/api/clipwan/live/{node}/{route}",
                                            json=payload or {"text": text}) as r:
                        answer = (r.status, await r.json(), block)
                if block is not None and applied is None and text and (body.get("prompt") or "").endswith(text):
                    applied = block
                if not cancelled and block is not None:
                    due = applied + cancel_after if applied is not None else after_block + 8
                    if block >= due:
                        async with session.post(f"{server.url}/interrupt", json={"prompt_id": prompt_id}) as r:
                            assert r.status == 200
                        cancelled = True
                if kind in ("execution_success", "execution_error", "execution_interrupted"):
                    break
    return prompt_id, events, answer, applied


def test_live_prompt_during_a_stream(server):
    from comfyui_clipwan.wan.video.writer import read_video_frames

    prompt, node = _stream_prompt(sizes={"length": 45}, prefix="ClipWan/live_timeline")  # 4 blocks of 3
    prompt["901"] = {"class_type": "ClipWanTestClip", "inputs": {}}  # CLIPLoader's test stand-in
    prompt["900"] = {"class_type": "CausalWanTimelineFromText",
                     "inputs": {"clip": ["901", 0], "text": "0: a red fox walks through snow", "fps": 16.0}}
    prompt[node]["inputs"]["timeline"] = ["900", 0]
    prompt_id, events, answer, _ = asyncio.run(_run_and_post(server, prompt, node, "a wolf howls at the moon"))
    assert events[-1][0] == "execution_success", events[-1]
    status, body, block_seen = answer
    assert status == 200 and body["node"] == node, body
    labels = [(b["block"], b.get("prompt")) for k, b in events if k == "clipwan.causal_frames" and "block" in b]
    changed = [(blk, p) for blk, p in labels if p]
    assert changed, labels
    applied = int(changed[0][1].split("from block ")[1].split(":")[0])
    # posted while block `block_seen` was being decoded: taken at the next boundary the encoding was ready for
    assert block_seen < applied <= block_seen + 2 and changed[0][1].endswith("a wolf howls at the moon")
    entry = server.wait_history(prompt_id)
    saved = entry["outputs"][node]["clipwan_video"][0]  # the node's one player's file
    path = server.output_path(saved)
    assert read_video_frames(str(path)).shape[0] == 45
    sidecar = json.loads(path.with_name(path.stem + ".timeline.json").read_text())
    assert [(s["block"], s["prompts"][0]["text"]) for s in sidecar["segments"]] == [
        (0, "a red fox walks through snow"), (applied, "a wolf howls at the moon")]
    import av

    with av.open(str(path)) as container:
        assert json.loads(container.metadata["comment"])["prompts"][1] == [applied, "a wolf howls at the moon"]


def test_live_prompt_in_an_endless_stream_after_its_first_segment(server):
    """until_stopped: the latent (2 blocks) is only the start; a prompt typed at block 3 takes over at a later
    block, the stream runs on until Cancel, and the fragmented MP4 it leaves holds every block made, with the
    timeline as played beside it."""
    from comfyui_clipwan.wan.video.writer import read_video_frames

    prompt, node = _stream_prompt(sizes={"length": 21}, prefix="ClipWan/live_endless")  # 2 blocks of 3
    prompt["901"] = {"class_type": "ClipWanTestClip", "inputs": {}}
    prompt["900"] = {"class_type": "CausalWanTimelineFromText",
                     "inputs": {"clip": ["901", 0], "text": "0: a red fox walks through snow", "fps": 16.0}}
    prompt[node]["inputs"].update(timeline=["900", 0], until_stopped=True, family="custom", sink_size=3,
                                  local_window=6)
    prompt_id, events, answer, applied = asyncio.run(
        _run_and_post(server, prompt, node, "a wolf howls at the moon", after_block=3, cancel_after=2))
    assert events[-1][0] == "execution_interrupted", events[-1]
    status, body, block_seen = answer
    assert status == 200 and body["node"] == node, body
    assert applied is not None and block_seen < applied <= block_seen + 2, (block_seen, applied)
    blocks = sorted({b["block"] for k, b in events if k == "clipwan.causal_frames" and "block" in b})
    assert blocks == list(range(blocks[-1] + 1)) and blocks[-1] >= applied + 2
    path = sorted((server.base_dir / "output" / "ClipWan").glob("live_endless*.mp4"))[-1]
    # a playable file holding at least every frame the player showed (more may follow before the Cancel lands)
    shown = sum(len(b["frames"]) for k, b in events if k == "clipwan.causal_frames" and b.get("frames"))
    assert read_video_frames(str(path)).shape[0] >= shown > 9 + 12 * applied
    sidecar = json.loads(path.with_name(path.stem + ".timeline.json").read_text())
    assert [(s["block"], s["prompts"][0]["text"]) for s in sidecar["segments"]] == [
        (0, "a red fox walks through snow"), (applied, "a wolf howls at the moon")]


def test_live_image_during_a_stream(server):
    """A reference image POSTed to /clipwan/live/{node}/image while the flagship streams: encoded by the stream's VAE
    (ComfyUI's loaded weights) off the sampling thread, taken at a block boundary as the new start frame, named by the
    frame player and recorded in the sidecar's controls."""
    import base64
    import io

    from .checkpoints import test_image

    prompt, node = _stream_prompt(sizes={"length": 45}, prefix="ClipWan/live_image")  # 4 blocks of 3
    prompt["901"] = {"class_type": "ClipWanTestClip", "inputs": {}}
    prompt["900"] = {"class_type": "CausalWanTimelineFromText",
                     "inputs": {"clip": ["901", 0], "text": "0: a red fox walks through snow", "fps": 16.0}}
    prompt[node]["inputs"]["timeline"] = ["900", 0]
    buf = io.BytesIO()
    test_image(48).save(buf, format="PNG")
    body = {"image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), "name": "fox.png"}
    prompt_id, events, answer, _ = asyncio.run(_run_and_post(server, prompt, node, "", "image", body))
    assert events[-1][0] == "execution_success", events[-1]
    status, reply, block_seen = answer
    assert status == 200 and reply["node"] == node, reply
    labels = [b.get("prompt") for k, b in events if k == "clipwan.causal_frames" and "block" in b]
    changed = [p for p in labels if p]
    assert changed and changed[-1].startswith("image from block ") and changed[-1].endswith(": fox.png"), labels
    applied = int(changed[-1].split("from block ")[1].split(":")[0])
    assert block_seen < applied
    path = server.output_path(server.wait_history(prompt_id)["outputs"][node]["clipwan_video"][0])
    sidecar = json.loads(path.with_name(path.stem + ".timeline.json").read_text())
    assert [(c["block"], c["label"]) for c in sidecar["controls"]["images"]] == [(applied, "fox.png")]
