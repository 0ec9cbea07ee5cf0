"""The real ComfyUI page in headless Chromium: the extension loads cleanly, every example workflow opens
with all nodes resolved, the page's own UI→API conversion equals the committed API twins, and the
sampler's frame stream shows up on the node. Skipped when no Chromium is installed."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib

import pytest

from . import prompts as P
from .browser import Browser, find_chromium

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")]

EXAMPLES = sorted((P.REPO_ROOT / "example_workflows").glob("*.json"))
# Where the screenshot goes: a temp dir by default; CLIPWAN_SCREENSHOT=docs/comfyui_i2v_causal.jpg refreshes
# the one in the docs.
SCREENSHOT_ENV = "CLIPWAN_SCREENSHOT"

APP = "(window.comfyAPI?.app?.app ?? window.app)"
API = "(window.comfyAPI?.api?.api)"


def _our_errors(console: list[dict]) -> list[dict]:
    return [c for c in console if c["level"] in ("error", "exception")
            and ("clipwan" in c["text"].lower() or c["level"] == "exception" and "extensions/comfyui-clipwan" in c["text"])]


async def _session(server, tmp_path: pathlib.Path) -> dict:
    browser = Browser(find_chromium())
    result = {"workflows": {}}
    try:
        await browser.start()
        await browser.navigate(server.url + "/")
        await browser.wait_for(f"!!({APP}?.graph && {APP}.extensions?.length)", timeout=120)
        result["extensions"] = await browser.wait_for(
            f"{APP}.extensions.map(e => e.name).filter(n => n.startsWith('clipwan'))", timeout=30)
        for path in EXAMPLES:
            name = path.stem
            expr = f"""(async () => {{
              const app = {APP};
              const wf = await (await fetch('/api/workflow_templates/comfyui-clipwan/{name}.json')).json();
              await app.loadGraphData(wf, true, true, '{name}');
              const nodes = app.graph.nodes ?? app.graph._nodes;
              const unresolved = nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
              const prompt = (await app.graphToPrompt()).output;
              return {{count: nodes.length, unresolved, prompt}};
            }})()"""
            result["workflows"][name] = await browser.evaluate(expr)
        # Queue the causal example (rewritten for the test models) from the page's client id so the
        # frame stream goes to this page, then photograph the graph.
        causal = "clipwan_i2v_causal"
        await browser.evaluate(f"""(async () => {{
            const wf = await (await fetch('/api/workflow_templates/comfyui-clipwan/{causal}.json')).json();
            await {APP}.loadGraphData(wf, true, true, '{causal}'); return true; }})()""")
        client_id = await browser.evaluate(f"{API}.clientId")
        prompt = P.for_test_server(P.load_examples()[causal])
        status, payload = server.request("POST", "/prompt", {"prompt": prompt, "client_id": client_id})
        assert status == 200, payload
        server.wait_history(payload["prompt_id"], timeout=600)
        sampler = P.node_ids(prompt, "CausalWanSampler")[0]
        result["frames_label"] = await browser.wait_for(
            f"{APP}.graph.getNodeById({sampler})?.__clipwanFrames?.label?.textContent", timeout=30)
        await browser.evaluate(f"(() => {{ const c = {APP}.canvas; c.ds.scale = 0.75; c.ds.offset = [10, 10];"
                               " c.setDirty(true, true); return true; }})()")
        await asyncio.sleep(1.0)
        shot = pathlib.Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "comfyui_i2v_causal.jpg")
        result["screenshot"] = await browser.screenshot(shot, quality=60)
    finally:
        result["console"] = list(browser.console)
        await browser.close()
    return result


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    return asyncio.run(_session(server, tmp_path_factory.mktemp("browser")))


def test_page_loads_extension_without_errors(page):
    assert page["extensions"] == ["clipwan.ui"]
    assert _our_errors(page["console"]) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_opens_with_all_nodes_resolved_and_converts_to_the_api_twin(page, path):
    got = page["workflows"][path.stem]
    ui = json.loads(path.read_text())
    assert got["unresolved"] == [] and got["count"] == len(ui["nodes"])
    twin = json.loads((P.API_DIR / path.name).read_text())
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    assert strip(got["prompt"]) == strip(twin)


def test_sampler_node_shows_streamed_frames(page):
    assert page["frames_label"].startswith("block ")
    shot = page["screenshot"]
    assert shot.stat().st_size > 10_000
