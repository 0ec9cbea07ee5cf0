"""Axera nodes (export, zero-shot) and the A1111 interrogate route, without ComfyUI."""

import asyncio
import base64
import io
import json
import os

import numpy as np
import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

import comfyui_clipwan.axera_export as axera_export
from comfyui_clipwan.axera_export import ClipRuntime, default_source
from comfyui_clipwan.axera_export.text_model import TextConfig
from comfyui_clipwan.nodes import axera_nodes
from comfyui_clipwan.nodes.axera_nodes import (CLIPZeroShotAxera, ExportCLIPToAxmodel, InterrogateService,
                                               safe_output_folder)


@pytest.fixture(scope="module")
def tiny_source():
    text = TextConfig(layers=1, width=64, heads=1, mlp_dim=256)
    return default_source(seed=4, vision_layers=1, text_config=text)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_source):
    """A tiny export made through the node, in a fake ComfyUI output directory."""
    root = tmp_path_factory.mktemp("comfy_output")
    mp = pytest.MonkeyPatch()
    mp.setattr(axera_nodes, "output_directory", lambda: str(root))
    mp.setattr(axera_export, "default_source", lambda: tiny_source)
    mp.setenv("PATH", "/usr/bin:/bin")
    g = torch.Generator().manual_seed(0)
    out = ExportCLIPToAxmodel().export(
        axera_nodes.DEFAULT_SOURCE, "both", "NPU3", 14, "u16", "exports/tiny", run_pulsar2=True,
        calibration_images=torch.rand(3, 200, 300, 3, generator=g), calibration_prompts="a cat\n\na dog\n")
    yield root, out
    mp.undo()


def test_export_node_returns_paths_and_ui_report(exported):
    root, out = exported
    folder, report = out["result"]
    assert folder == os.path.join(str(root), "exports", "tiny")
    assert out["ui"]["text"] == [report]
    assert "random-init" in report and "No .axmodel was built" in report
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["parts"]["vision"]["calibration"]["count"] == 3
    assert manifest["parts"]["text"]["calibration"]["count"] == 2


def test_export_node_refuses_paths_outside_output(tmp_path):
    root = str(tmp_path)
    with pytest.raises(ValueError, match=r"output_subfolder '\.\./x' contains '\.\.'; exports must stay inside"):
        safe_output_folder("../x", root)
    with pytest.raises(ValueError, match=r"output_subfolder 'a/\.\./\.\./b' contains '\.\.'"):
        safe_output_folder("a/../../b", root)
    with pytest.raises(ValueError, match=r"output_subfolder '/etc' is an absolute path"):
        safe_output_folder("/etc", root)
    with pytest.raises(ValueError, match="output_subfolder is empty"):
        safe_output_folder("  ", root)
    os.symlink("/tmp", os.path.join(root, "link"))
    with pytest.raises(ValueError, match="resolves outside ComfyUI's output directory"):
        safe_output_folder("link/x", root)
    assert safe_output_folder("a/b", root) == os.path.join(root, "a", "b")


def test_node_contracts():
    for cls in (ExportCLIPToAxmodel, CLIPZeroShotAxera):
        spec = cls.INPUT_TYPES()
        for group in (spec["required"], spec.get("optional", {})):
            for name, (_, opts) in group.items():
                assert opts.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
        assert cls.CATEGORY == "ClipWan/axera" and cls.OUTPUT_NODE and cls.DESCRIPTION
    assert set(axera_nodes.NODE_CLASS_MAPPINGS) == set(axera_nodes.NODE_DISPLAY_NAME_MAPPINGS)


def test_zero_shot_node_uses_latest_export(exported, monkeypatch):
    root, out = exported
    monkeypatch.setattr(axera_nodes, "output_directory", lambda: str(root))
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    res = CLIPZeroShotAxera().classify(image, "cat\ndog, car", "a photo of {}.", "", "onnxruntime")
    scores = json.loads(res["result"][0])
    assert list(scores[0]) == [res["result"][1]] + [k for k in list(scores[0])[1:]]
    assert set(scores[0]) == {"cat", "dog", "car"} and abs(sum(scores[0].values()) - 1) < 1e-5
    ref = ClipRuntime(out["result"][0]).zero_shot(image, ["cat", "dog", "car"])[0]
    assert res["result"][1] == ref[0][0]
    assert "random-init" in res["ui"]["text"][0]
    with pytest.raises(ValueError, match="labels is empty"):
        CLIPZeroShotAxera().classify(image, " \n ", "a photo of {}.", "", "auto")


def _b64_png(seed=0, size=(80, 60)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _with_client(service, fn):
    async def main():
        app = web.Application(client_max_size=1024 ** 2)  # aiohttp's default; the handler bounds bodies itself
        app.router.add_post("/sdapi/v1/interrogate", service.handle)
        async with TestClient(TestServer(app)) as client:
            return await fn(client)

    return asyncio.run(main())


def test_interrogate_good_request_and_data_url(exported):
    _, out = exported
    folder = out["result"][0]
    service = InterrogateService(lambda: folder, threshold=0.0)
    b64 = _b64_png()

    async def calls(client):
        r1 = await client.post("/sdapi/v1/interrogate", json={"image": b64, "model": "clip"})
        r2 = await client.post("/sdapi/v1/interrogate", json={"image": "data:image/png;base64," + b64})
        r3 = await client.post("/sdapi/v1/interrogate",
                               json={"image": b64, "labels": ["cat", "dog"], "threshold": 0.0})
        return [(r.status, await r.json()) for r in (r1, r2, r3)]

    (s1, j1), (s2, j2), (s3, j3) = _with_client(service, calls)
    assert s1 == s2 == s3 == 200 and list(j1) == ["caption", "interrogations", "backend"] and j1 == j2
    assert j1["backend"] == {"vision": "onnxruntime/CPUExecutionProvider", "text": "onnxruntime/CPUExecutionProvider"}
    # threshold 0 → every label, best first, exactly the runtime's zero-shot ranking on the decoded image
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"),
                                        dtype=np.float32) / 255.0)[None]
    ranked = ClipRuntime(folder).zero_shot(image, ["cat", "dog"], template="a photo of a {}")[0]
    assert j3["caption"] == ", ".join(label for label, _ in ranked)
    assert [(t["tag"], pytest.approx(t["score"], abs=1e-5)) for t in j3["interrogations"]] == ranked
    assert len(j1["caption"].split(", ")) == 10 == len(j1["interrogations"])  # top_k 10 of the 36 built-in


def test_interrogate_default_threshold_keeps_only_confident_tags(exported):
    _, out = exported
    folder = out["result"][0]
    service = InterrogateService(lambda: folder)
    assert service.threshold == 0.25
    b64 = _b64_png(3)

    async def call(client):
        r = await client.post("/sdapi/v1/interrogate", json={"image": b64, "labels": ["cat", "dog", "car"]})
        return r.status, await r.json()

    status, body = _with_client(service, call)
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), np.float32) / 255.0)[None]
    ranked = ClipRuntime(folder).zero_shot(image, ["cat", "dog", "car"], template="a photo of a {}")[0]
    confident = [label for label, p in ranked if p >= 0.25] or [ranked[0][0]]  # none passing → the best one
    assert status == 200 and body["caption"] == ", ".join(confident)


def test_interrogate_client_errors_are_json_4xx(exported):
    _, out = exported
    folder = out["result"][0]
    service = InterrogateService(lambda: folder)

    async def calls(client):
        results = []
        for payload in ({"image": "not base64 at all!!", "model": "clip"},
                        {"image": base64.b64encode(b"hello, not a picture").decode()},
                        {"image": _b64_png(), "model": "deepdanbooru"},
                        {"model": "clip"},
                        {"image": _b64_png(), "threshold": 2}):
            r = await client.post("/sdapi/v1/interrogate", json=payload)
            results.append((r.status, (await r.json())["error"]))
        r = await client.post("/sdapi/v1/interrogate", data=b"{not json")
        results.append((r.status, (await r.json())["error"][:28]))
        big = b'{"image": "' + b"A" * (20 * 1024 * 1024) + b'"}'
        r = await client.post("/sdapi/v1/interrogate", data=big, headers={"Content-Type": "application/json"})
        results.append((r.status, (await r.json())["error"]))
        return results

    assert _with_client(service, calls) == [
        (400, "'image' is not valid base64"),
        (400, "'image' is valid base64 but not an image PIL can read (PNG, JPEG, WebP…)"),
        (404, "unknown model 'deepdanbooru': this server interrogates with ['clip'] only"),
        (400, "missing 'image' (base64-encoded picture)"),
        (400, "'threshold' must be a number in [0, 1] for the model's score (softmax or sigmoid), got 2"),
        (400, "request body is not JSON: Ex"),
        (413, "request body is larger than 16 MiB"),
    ]


def test_interrogate_without_export_is_503(tmp_path):
    service = InterrogateService(lambda: axera_nodes.resolve_export_folder("", root=str(tmp_path)))

    async def call(client):
        r = await client.post("/sdapi/v1/interrogate", json={"image": _b64_png()})
        return r.status, await r.json()

    status, body = _with_client(service, call)
    assert status == 503 and body["error"].startswith("no exported CLIP model to interrogate with: no CLIP export "
                                                      "with vision and text towers in")


def test_interrogate_concurrent_requests_are_serialised(exported):
    from comfyui_clipwan.axera_export import runtime as rt_module

    _, out = exported
    folder = out["result"][0]
    service = InterrogateService(lambda: folder, threshold=0.0, max_queue=8)  # 8 in line: none refused
    images = [_b64_png(i) for i in range(3)]

    async def calls(client):
        first = await client.post("/sdapi/v1/interrogate", json={"image": images[0]})  # warm the runtime cache
        solo = (await first.json())["caption"]
        rt_module.max_concurrent_runs = 0
        reqs = [client.post("/sdapi/v1/interrogate", json={"image": images[i % 3]}) for i in range(8)]
        responses = await asyncio.gather(*reqs)
        return solo, [(r.status, (await r.json())["caption"]) for r in responses]

    solo, results = _with_client(service, calls)
    assert all(status == 200 for status, _ in results)
    assert results[0][1] == results[3][1] == results[6][1] == solo  # same image → same caption
    assert rt_module.max_concurrent_runs == 1  # the lock never let two session runs overlap


def test_structured_route_in_comfyui_is_the_shared_service(exported):
    """The aiohttp route answers exactly what the board's `serve` answers: both call InterrogationService."""
    from comfyui_clipwan.axera_export.service import InterrogationService, ServiceConfig

    _, out = exported
    folder = out["result"][0]
    service = InterrogateService(lambda: folder)
    payload = {"image": _b64_png(5), "categories": {"pet": ["cat", "dog"], "vehicle": ["car", "boat", "train"]}}

    async def structured(client):
        r = await client.post("/structured", json=payload)
        return r.status, await r.json()

    async def main():
        app = web.Application()
        app.router.add_post("/structured", service.handle_structured)
        async with TestClient(TestServer(app)) as client:
            return await structured(client)

    status, body = asyncio.run(main())
    direct = InterrogationService(lambda: folder, ServiceConfig()).respond("structured", json.dumps(payload).encode())
    assert status == 200 == direct.status and body == direct.payload
    assert set(body["results"]) == {"pet", "vehicle"} and body["results"]["pet"]["winner"] in ("cat", "dog")
    assert 0.5 <= body["results"]["pet"]["confidence"] <= 1.0


def test_register_routes_adds_post_route():
    class FakeServer:
        routes = web.RouteTableDef()

    axera_nodes.register_routes(FakeServer)
    routes = [(r.method, r.path) for r in FakeServer.routes]
    assert routes == [("POST", "/sdapi/v1/interrogate"), ("POST", "/sdapi/v1/interrogate/structured")]


def test_interrogate_labels_and_threshold_from_environment(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red\n\nblue\n")
    service = axera_nodes.service_from_env({"CLIPWAN_INTERROGATE_LABELS": str(labels),
                                            "CLIPWAN_INTERROGATE_THRESHOLD": "0.4"})
    assert service.labels == ["red", "blue"] and service.threshold == 0.4
    default = axera_nodes.service_from_env({})
    assert default.labels == list(axera_export.DEFAULT_LABELS) and default.threshold == 0.25
    with pytest.raises(ValueError, match=r"CLIPWAN_INTERROGATE_THRESHOLD must be in \[0, 1\], got 3.0"):
        axera_nodes.service_from_env({"CLIPWAN_INTERROGATE_THRESHOLD": "3"})
