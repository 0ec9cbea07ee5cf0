"""The pack in a real ComfyUI server: node listing, templates, every API example, interrupt, memory."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random

import pytest
from PIL import Image

from . import prompts as P

pytestmark = pytest.mark.integration


FILE_INPUTS = {("LoadCLIPVisionH14", "clip_name"): P.ck.CLIP_SMALL,
               ("LoadCausalWanModel", "model_name"): P.ck.WAN_I2V,
               ("ExportCLIPToAxmodel", "source"): P.ck.CLIP_FULL}


def _pack_definitions():
    import sys

    sys.path.insert(0, str(P.REPO_ROOT / "tests"))
    import workflow_format as wf

    return wf, wf.pack_definitions()


def test_server_lists_pack_nodes_as_declared(server):
    wf, ours = _pack_definitions()
    info = server.get("/object_info")
    log = server.log()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-3000:]
    assert f"custom_nodes/{'comfyui-clipwan'}" in log
    for node_id, declared in ours.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        served = info[node_id]
        assert served["python_module"] == "custom_nodes.comfyui-clipwan"
        assert served["category"] == declared["category"] and served["category"].startswith("ClipWan/")
        assert served["output"] == declared["output"]
        assert served["output_name"] == declared["output_name"]
        assert served["description"], f"{node_id} has no DESCRIPTION"
        for section in ("required", "optional"):
            want = declared["input"].get(section, {})
            got = served["input"].get(section, {})
            assert list(got) == list(want), (node_id, section)
            for name, spec in want.items():
                if (node_id, name) in FILE_INPUTS:
                    # a file list inside ComfyUI (a free path outside it): it lists the generated test file
                    assert wf.input_type(got[name]) == "COMBO", (node_id, name)
                    assert FILE_INPUTS[node_id, name] in wf.combo_choices(got[name]), (node_id, name)
                else:
                    assert wf.input_type(got[name]) == wf.input_type(spec), (node_id, name)
                tooltip = wf.input_options(got[name]).get("tooltip")
                assert tooltip and tooltip == wf.input_options(spec).get("tooltip"), (node_id, name)


def test_interrogation_routes_are_served_by_the_shared_service(server):
    """Both routes (and their /api twins) answer in a real ComfyUI with the service's own 4xx JSON."""
    for path in ("/sdapi/v1/interrogate", "/sdapi/v1/interrogate/structured", "/api/sdapi/v1/interrogate/structured"):
        status, body = server.request("POST", path, {"model": "clip"})
        assert (status, body["error"]) == (400, "missing 'image' (base64-encoded picture)"), (path, status, body)
    status, body = server.request("POST", "/sdapi/v1/interrogate/structured", {"image": "x", "categories": []})
    assert status == 400 and body["error"].startswith("'categories' must be a non-empty object"), body


def test_examples_are_listed_as_templates_and_served(server):
    ui_names = sorted(p.stem for p in (P.REPO_ROOT / "example_workflows").glob("*.json"))
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get("comfyui-clipwan", [])) == ui_names  # api/ twins are not templates
    for name in ui_names:
        served = server.get(f"/api/workflow_templates/comfyui-clipwan/{name}.json")
        assert "nodes" in served


def _check_outputs(server, prompt: dict, entry: dict, length: int):
    outputs = entry["outputs"]
    for nid in P.node_ids(prompt, "SaveAnimatedWEBP"):
        images = outputs[nid]["images"]
        assert len(images) == 1
        with Image.open(server.output_path(images[0])) as im:
            assert im.size == (64, 64)
            assert getattr(im, "n_frames", 1) == length
    for nid in P.node_ids(prompt, "ExportCLIPToAxmodel"):
        assert outputs.get(nid), f"export node {nid} reported nothing: {outputs}"
    for nid in P.node_ids(prompt, "CausalWanStreamVideo"):
        from comfyui_clipwan.wan.video.writer import read_video_frames

        videos = outputs[nid]["clipwan_video"]  # played by the node's frame player: one player, no "images"
        assert len(videos) == 1 and videos[0]["filename"].endswith(".mp4")
        assert read_video_frames(str(server.output_path(videos[0]))).shape == (length, 64, 64, 3)


# Core builds the Wan 2.2 VAE at its real width only (704.7 M parameters), so that graph is not run at test
# size here; tests/integration/test_wan22_core.py runs core's Wan22ImageToVideoLatent into the sampler instead.
NOT_RUN = {"clipwan_wan22_longlive2_i2v": "needs core's real-size Wan 2.2 VAE",
           # Wan's CLIP .pth with its XLM-R text tower and tokenizer folder: test_stream.py runs the scored stream
           # with the vision-only test file
           "clipwan_stream_clip_scores": "needs Wan's two-tower CLIP file and its tokenizer folder",
           # a control video in input/ and a VACE checkpoint: test_vace_core.py runs core's WanVaceToVideo into the
           # causal sampler on core's own VaceWanModel
           "clipwan_vace_causal_core": "needs a control video and a VACE checkpoint",
           "clipwan_vace_longlive_stream": "needs a control video and a VACE module file",
           "clipwan_video_restyle_stream": "needs an input video"}


@pytest.mark.parametrize("name", sorted(P.load_examples()))
def test_api_example_runs(server, name):
    if name in NOT_RUN:
        pytest.skip(NOT_RUN[name])
    prompt = P.for_test_server(P.load_examples()[name])
    entry = server.run_prompt(prompt, timeout=600)
    _check_outputs(server, prompt, entry, P.test_length(prompt))


def _causal_example(name: str = "clipwan_i2v_causal", sizes: dict | None = None) -> tuple[dict, str]:
    """The flagship example (any example with a CausalWanSampler if it is missing), ready for the test server."""
    examples = P.load_examples()
    if name not in examples:
        name = next(n for n, p in examples.items() if P.node_ids(p, "CausalWanSampler"))
    prompt = P.for_test_server(examples[name], sizes)
    return prompt, P.node_ids(prompt, "CausalWanSampler")[0]


async def _watch(server, prompt: dict, sampler: str, interrupt_after_progress: bool):
    """Queue ``prompt`` with a websocket open; collect the sampler's events; optionally interrupt."""
    import aiohttp

    events = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}", max_msg_size=0) as ws:
            async with session.post(f"{server.url}/prompt",
                                    json={"prompt": prompt, "client_id": server.client_id}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]
            interrupted = False
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind, body = data["type"], data.get("data", {})
                if body.get("prompt_id") not in (None, prompt_id):
                    continue
                events.append((kind, body))
                if (interrupt_after_progress and not interrupted and kind == "progress"
                        and body.get("node") == sampler and body.get("value", 0) >= 1):
                    async with session.post(f"{server.url}/interrupt", json={"prompt_id": prompt_id}) as r:
                        assert r.status == 200
                    interrupted = True
                if kind in ("execution_success", "execution_error", "execution_interrupted"):
                    break
    return prompt_id, events


def test_sampler_streams_block_frames_to_the_page(server):
    prompt, sampler = _causal_example()
    for nid in P.node_ids(prompt, "CausalWanSampler"):
        prompt[nid]["inputs"]["seed"] = 123
    _, events = asyncio.run(_watch(server, prompt, sampler, interrupt_after_progress=False))
    assert events[-1][0] == "execution_success", events[-1]
    frames = [body for kind, body in events if kind == "clipwan.causal_frames"]
    assert frames, "no clipwan.causal_frames event"
    total = frames[0]["total_blocks"]
    assert [f["block"] for f in frames] == list(range(total))
    assert all(f["node"] == sampler and f["total_blocks"] == total for f in frames)
    sent = [base64.b64decode(b.split(",", 1)[-1]) for f in frames for b in f["frames"]]
    assert len(sent) == (P.test_length(prompt) - 1) // 4 + 1  # one preview per latent frame
    for raw in sent:
        Image.open(io.BytesIO(raw)).verify()


def test_interrupt_stops_the_sampler_and_the_next_prompt_runs(server):
    prompt, sampler = _causal_example()
    long, _ = _causal_example(sizes={"length": 45})  # 12 latent frames = 4 blocks
    long[sampler]["inputs"]["seed"] = 98765
    prompt_id, events = asyncio.run(_watch(server, long, sampler, interrupt_after_progress=True))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "execution_interrupted", kinds[-6:]
    assert events[-1][1]["node_id"] == sampler
    progress = [b for k, b in events if k == "progress" and b.get("node") == sampler]
    assert progress[-1]["value"] < progress[-1]["max"], "the sampler finished before the interrupt"
    entry = server.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert not entry["outputs"], "an interrupted prompt must not leave outputs"
    # The server is healthy: the next prompt runs to the end.
    prompt[sampler]["inputs"]["seed"] = 4242
    entry = server.run_prompt(prompt)
    _check_outputs(server, prompt, entry, P.test_length(prompt))


def _frames(server, entry: dict, prompt: dict):
    import numpy as np

    (nid,) = P.node_ids(prompt, "SaveAnimatedWEBP")
    with Image.open(server.output_path(entry["outputs"][nid]["images"][0])) as im:
        frames = []
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)


def test_hundred_prompts_with_random_interrupts_stay_correct_and_flat(server):
    """100 causal i2v prompts queued one after another with varying seeds; about one in four is interrupted
    at a random moment. After each interrupt the next prompt must reproduce a reference video exactly, and
    the server's memory must stay flat.

    The check prompts reuse the reference seed with a different ``sink_size``: without a local window the
    sink changes nothing in the result, but it is a new input, so ComfyUI's cache cannot hand back the old
    output — the sampler really runs again."""
    import os
    import time

    count = int(os.environ.get("CLIPWAN_PROMPTS", "100"))
    prompt, sampler = _causal_example(sizes={"width": 32, "height": 32, "length": 21})  # 2 blocks
    rng = random.Random(1234)
    inputs = prompt[sampler]["inputs"]
    inputs.update(seed=777, sink_size=0, local_window=0)
    t0 = time.perf_counter()
    reference = _frames(server, server.run_prompt(prompt), prompt)
    duration = time.perf_counter() - t0
    rss, interrupted, checked, check_next = [], 0, 0, False
    for i in range(count - 1):
        if check_next:
            inputs.update(seed=777, sink_size=1 + i)
            got = _frames(server, server.run_prompt(prompt), prompt)
            assert np_equal(got, reference), f"prompt {i + 2} after an interrupt differs from the reference"
            checked += 1
            check_next = False
        else:
            inputs.update(seed=rng.randrange(1 << 31), sink_size=0)
            prompt_id = server.queue_prompt(prompt)
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, duration))
                status, _ = server.request("POST", "/interrupt", {"prompt_id": prompt_id})
                assert status == 200
                check_next = True
            entry = server.wait_history(prompt_id)
            if entry["status"]["status_str"] != "success":
                kinds = [m[0] for m in entry["status"]["messages"]]
                assert check_next and "execution_interrupted" in kinds, kinds
                interrupted += 1
        rss.append(server.rss_bytes())
    warm = len(rss) // 10
    growth = max(rss[warm:]) - rss[warm - 1]
    print(f"{count} prompts ({interrupted} interrupted mid-run, {checked} checked against the reference): RSS "
          f"after prompt {warm + 1}: {rss[warm - 1] / 2**20:.0f} MiB, max after: {max(rss[warm:]) / 2**20:.0f} "
          f"MiB, last: {rss[-1] / 2**20:.0f} MiB")
    assert checked >= 1 and interrupted >= 1
    assert growth < 64 * 2**20, [r // 2**20 for r in rss]


def np_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_server_serves_advanced_inputs_search_aliases_and_widget_layouts(server):
    """What the page gets for the causal nodes: advanced inputs (core's V1 option key, which the frontend hides
    behind "show advanced"), the family search aliases, and the widget layouts saved workflows are migrated by."""
    from comfyui_clipwan.nodes.settings_nodes import LAYOUTS_PATH, widget_layouts_payload
    from comfyui_clipwan.wan.sampling.presets import web_payload

    info = server.get("/object_info")
    for node_id in ("CausalWanSampler", "CausalWanStreamVideo"):
        served = info[node_id]
        assert served["input"]["optional"]["shift"][1]["advanced"] is True
        assert "advanced" not in served["input"]["required"]["seed"][1]
        assert {"krea", "memflow", "rolling", "reward", "causal forcing", "vace"} <= set(served["search_aliases"])
    assert server.get(LAYOUTS_PATH) == json.loads(json.dumps(widget_layouts_payload()))
    assert server.get("/clipwan/presets") == json.loads(json.dumps(web_payload()))


def test_api_prompt_of_the_first_version_runs(server):
    """The flagship example's API prompt as the first version committed it (before warp_steps existed): inputs
    added since are optional with their old defaults, so ComfyUI runs it (no required_input_missing)."""
    import subprocess

    rel = "example_workflows/api/clipwan_i2v_causal.json"
    try:
        shas = subprocess.run(["git", "-C", str(P.REPO_ROOT), "log", "--format=%H", "--reverse", "--", rel],
                              capture_output=True, text=True, check=True).stdout.split()
        old = json.loads(subprocess.run(["git", "-C", str(P.REPO_ROOT), "show", f"{shas[0]}:{rel}"],
                                        capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, IndexError):
        pytest.skip("no git history of the example workflows in this checkout")
    sampler = P.node_ids(old, "CausalWanSampler")[0]
    assert "warp_steps" not in old[sampler]["inputs"]  # it is that version
    prompt = P.for_test_server(old)
    entry = server.run_prompt(prompt, timeout=600)
    _check_outputs(server, prompt, entry, P.test_length(prompt))
