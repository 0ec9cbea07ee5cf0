"""The board-side interrogation service: real HTTP over loopback, raw-JSON scripts, an A1111 client library,
the label cache, the device queue, provider selection, and the torch-free serving path.

Oracles: open_clip's tokenizer, ``clip_vision.preprocess_images`` and PyTorch's ``interpolate`` (float64), and
the torch towers of the exported source (checked against open_clip/transformers in test_axera_export.py) with
the softmax written out here — never the runtime under test.
"""

import base64
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_clipwan.axera_export import pixels, providers
from comfyui_clipwan.axera_export.interrogate import Defaults
from comfyui_clipwan.axera_export.pipeline import export_clip
from comfyui_clipwan.axera_export.runtime import ClipRuntime
from comfyui_clipwan.axera_export.serve import Server
from comfyui_clipwan.axera_export.service import InterrogationService, ServiceConfig
from comfyui_clipwan.axera_export.sources import default_source
from comfyui_clipwan.axera_export.text_model import TextConfig
from comfyui_clipwan.axera_export.tokenizer import tokenize
from comfyui_clipwan.axera_export.vocabulary import Vocabulary, load_or_build, read_label_file
from comfyui_clipwan.clip_vision import CONFIGS, preprocess_images

LABELS = ["cat", "dog", "red car", "mountain lake", "city at night", "bowl of soup", "robot", "violin"]
TEMPLATE = "a photo of a {label}"


@pytest.fixture(scope="module")
def tiny():
    """A 1-block ViT-B/32 + 64-wide 1-block text tower (real vocab and key names), exported once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", "/usr/bin:/bin")
    source = default_source(seed=6, vision_layers=1, text_config=TextConfig(layers=1, width=64, heads=1, mlp_dim=256))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "export")
        export_clip(source, folder, parts="vision,text", parity_samples=1, run_build=False)
        yield source, folder
    mp.undo()


def _png(seed=0, size=(90, 70)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _oracle(source, png: bytes, labels, template=TEMPLATE):
    """cosine [N] of the torch towers on the PNG (torch preprocessing, open_clip tokenizer) + logit scale."""
    import open_clip

    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0)[None]
    img = source.vision.encode(preprocess_images(image, source.vision.config, "center")).image_embeds[0]
    ids = open_clip.get_tokenizer("ViT-B-32")([template.replace("{label}", label) for label in labels])
    txt = source.text.encode(ids.int())
    img, txt = img / img.norm(), txt / txt.norm(dim=-1, keepdim=True)
    return (txt @ img).double().numpy(), math.exp(source.text.logit_scale)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _post(url, payload, raw=None):
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _service(folder, labels=LABELS, **config):
    return InterrogationService(lambda: folder, ServiceConfig(labels=labels, labels_name="test", **config))


# --- torch-free building blocks vs their torch definitions -------------------------------------------------
def test_tokenizer_matches_open_clip_on_hard_text():
    import open_clip

    texts = ["a photo of a cat", "Ünïcödé café &amp; naïve — 123 ½", "don't STOP!!! it's 2024...", "x" * 300,
             "a " * 100, "<start_of_text>hi", "日本語のテキスト", "emoji 🐶🐱", " spaces\t\nand tabs ", "Ã©tÃ©"]
    np.testing.assert_array_equal(tokenize(texts), open_clip.get_tokenizer("ViT-B-32")(texts).numpy())


@pytest.mark.parametrize("size", [(240, 320, 224, 299), (37, 1000, 224, 224), (100, 150, 224, 336), (224, 225, 5, 9)])
def test_resize_weights_equal_torch_interpolate_in_float64(size):
    h, w, oh, ow = size
    x = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(h), dtype=torch.float64)
    for antialias, weights in ((True, pixels.antialias_weights), (False, pixels.bicubic_weights)):
        ref = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bicubic", antialias=antialias)[0, 0].numpy()
        got = weights(h, oh) @ x[0, 0].numpy() @ weights(w, ow).T
        np.testing.assert_allclose(got, ref, atol=1e-12)


def test_numpy_preprocess_matches_clip_vision():
    cfg = CONFIGS["ViT-B/32"]
    g = torch.Generator().manual_seed(0)
    level = 1 / 255 / min(cfg.std)  # one 8-bit level after normalisation
    for shape in [(2, 240, 320, 3), (1, 224, 224, 3), (1, 60, 90, 4), (1, 37, 400, 1)]:
        image = torch.rand(*shape, generator=g)
        for crop in ("center", "none"):
            ref = preprocess_images(image, cfg, crop).numpy()
            got = pixels.preprocess(image, cfg.image_size, cfg.mean, cfg.std, crop)
            assert got.shape == ref.shape and got.dtype == np.float32
            diff = np.abs(got - ref)
            if crop == "center":  # torch's float32 resize is ~3e-5 off; a few values round to the next level
                assert diff.max() <= level + 1e-5 and (diff > 1e-5).mean() < 0.005
            else:
                assert diff.max() < 1e-3
    uint8 = (np.random.default_rng(0).random((1, 50, 50, 3)) * 255).astype(np.uint8)
    np.testing.assert_allclose(pixels.preprocess(uint8, 224, cfg.mean, cfg.std, "none"),
                               preprocess_images(torch.from_numpy(uint8), cfg, "none").numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="image has 2 channels"):
        pixels.preprocess(np.zeros((1, 8, 8, 2)), 224, cfg.mean, cfg.std)


# --- the label cache ------------------------------------------------------------------------------------------
def test_label_cache_roundtrip_check_and_on_the_fly(tiny, tmp_path):
    source, folder = tiny
    runtime = ClipRuntime(folder, backend="onnxruntime")
    path = str(tmp_path / "cache.npz")
    vocab, info = load_or_build(runtime, LABELS, TEMPLATE, path=path)
    assert info["status"] == "encoded (no cache file)" and os.path.isfile(path)
    # rows = the torch text tower on open_clip's tokens (independent of the runtime)
    import open_clip

    ids = open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {label}" for label in LABELS]).int()
    ref = source.text.encode(ids)
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(vocab.embeddings, ref, atol=1e-5)
    again, info = load_or_build(ClipRuntime(folder, backend="onnxruntime"), LABELS, TEMPLATE, path=path)
    assert info["status"] == "loaded" and again.labels == LABELS
    np.testing.assert_array_equal(again.embeddings, vocab.embeddings)
    _, info = load_or_build(runtime, LABELS, "{} in a painting", path=path)
    assert info["status"] == "encoded (made with template 'a photo of a {label}')"
    _, info = load_or_build(runtime, LABELS[:3], "{} in a painting", path=path)
    assert info["status"] == "encoded (label list changed)"
    # a cache made with another model is refused: a real second export (other weights), same labels/template
    other_folder = str(tmp_path / "other")
    export_clip(default_source(seed=9, vision_layers=1, text_config=TextConfig(layers=1, width=64, heads=1,
                                                                               mlp_dim=256)),
                other_folder, parts="vision,text", parity_samples=1, run_build=False)
    _, info = load_or_build(ClipRuntime(other_folder, backend="onnxruntime"), LABELS[:3], "{} in a painting",
                            path=path)
    assert info["status"] == "encoded (made with another model)"
    # a cache whose recorded hash does not match the contents (files not recorded: hashed again) is refused
    forged = Vocabulary.load(path)
    forged.fingerprint, forged.files = "0" * 64, None
    forged.save(path)
    _, info = load_or_build(runtime, LABELS[:3], "{} in a painting", path=path)
    assert info["status"] == "encoded (made with another model)"
    # the same model copied (new mtime): contents hashed again, equal → the cache is used
    text_onnx = os.path.join(folder, "text.onnx")
    os.utime(text_onnx, ns=(os.stat(text_onnx).st_atime_ns, os.stat(text_onnx).st_mtime_ns + 10 ** 9))
    _, info = load_or_build(ClipRuntime(folder, backend="onnxruntime"), LABELS[:3], "{} in a painting", path=path)
    assert info["status"] == "loaded"
    # labels outside the cache: encoded on the fly, same numbers as cached ones
    mixed = vocab.embeddings_for(runtime, ["dog", "a brand new label", "cat"])
    np.testing.assert_allclose(mixed[0], vocab.embeddings[1], atol=0)
    fresh = source.text.encode(open_clip.get_tokenizer("ViT-B-32")(["a photo of a a brand new label"]).int())
    np.testing.assert_allclose(mixed[1], (fresh / fresh.norm()).numpy()[0], atol=1e-5)


def test_label_file_reading(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# my labels\ncat\n\n dog \ncat\n", encoding="utf-8")
    assert read_label_file(str(f)) == ["cat", "dog"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no labels"):
        read_label_file(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="label file not found"):
        read_label_file(str(tmp_path / "missing.txt"))


def test_imagenet21k_vocabulary_from_timm_data():
    pytest.importorskip("timm")
    from comfyui_clipwan.axera_export.vocabulary import resolve_labels

    labels, name = resolve_labels("imagenet-21k")
    assert name == "imagenet21k" and len(labels) == 20101 and labels[:5] == \
        ["organism", "benthos", "heterotroph", "cell", "person"]


# --- HTTP ------------------------------------------------------------------------------------------------------
def test_interrogate_and_structured_over_loopback_raw_json(tiny):
    source, folder = tiny
    png = _png(1)
    b64 = base64.b64encode(png).decode()
    with Server(_service(folder, defaults=Defaults(threshold=0.0, top_k=3)), port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        status, body, _ = _post(server.url + "/sdapi/v1/interrogate", {"image": b64})
        cos, scale = _oracle(source, png, LABELS)
        probs = _softmax(scale * cos)
        best = np.argsort(-probs)[:3]
        assert status == 200 and body["caption"] == ", ".join(LABELS[i] for i in best)
        assert [t["tag"] for t in body["interrogations"]] == [LABELS[i] for i in best]
        np.testing.assert_allclose([t["score"] for t in body["interrogations"]], probs[best], atol=1e-3)
        # cosine scores and a threshold
        status, body, _ = _post(server.url + "/sdapi/v1/interrogate",
                                {"image": b64, "score": "cosine", "threshold": -1, "top_k": 8})
        np.testing.assert_allclose([t["score"] for t in body["interrogations"]], np.sort(cos)[::-1], atol=1e-3)
        # structured: softmax within each category
        categories = {"animal": ["cat", "dog", "robot"], "place": ["mountain lake", "city at night"]}
        status, body, _ = _post(server.url + "/sdapi/v1/interrogate/structured",
                                {"image": b64, "categories": categories})
        assert status == 200 and list(body) == ["results", "general_tags", "backend"]
        for name, labels in categories.items():
            c, _ = _oracle(source, png, labels)
            p = _softmax(scale * c)
            assert body["results"][name]["winner"] == labels[int(np.argmax(p))]
            assert body["results"][name]["confidence"] == pytest.approx(p.max(), abs=1e-3)
        assert body["general_tags"] == [LABELS[i] for i in best]
        with urllib.request.urlopen(server.url + "/health") as r:
            health = json.loads(r.read())
        assert health["status"] == "ready" and health["labels"] == len(LABELS)
        assert health["backend"] == {"vision": "onnxruntime/CPUExecutionProvider",
                                     "text": "onnxruntime/CPUExecutionProvider"}


def test_automatic1111_client_library_gets_a_caption(tiny):
    webuiapi = pytest.importorskip("webuiapi")
    source, folder = tiny
    png = _png(2)
    with Server(_service(folder), port=0) as server:
        port = int(server.url.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        result = api.interrogate(Image.open(io.BytesIO(png)))  # webuiapi sends a data: URL, model "clip"
    cos, scale = _oracle(source, png, LABELS)
    probs = _softmax(scale * cos)
    expected = [LABELS[i] for i in np.argsort(-probs) if probs[i] >= 0.25] or [LABELS[int(np.argmax(probs))]]
    assert result.info == ", ".join(expected) == result.json["caption"]


def test_bad_requests_are_4xx_json(tiny):
    _, folder = tiny
    b64 = base64.b64encode(_png()).decode()
    with Server(_service(folder, max_body_bytes=64 * 1024), port=0) as server:
        url = server.url + "/sdapi/v1/interrogate"
        cases = [
            (None, b"{not json", 400, "request body is not JSON"),
            ({"model": "clip"}, None, 400, "missing 'image'"),
            ({"image": "!!", "model": "clip"}, None, 400, "'image' is not valid base64"),
            ({"image": b64, "model": "deepdanbooru"}, None, 404, "unknown model 'deepdanbooru'"),
            ({"image": b64, "top_k": 0}, None, 400, "'top_k' must be a positive integer, got 0"),
            ({"image": b64, "score": "cosine", "threshold": -2}, None, 400, "'threshold' must be a number in [-1, 1]"),
            ({"image": b64, "labels": []}, None, 400, "'labels' must hold at least one non-empty label"),
            (None, b'{"image": "' + b"A" * 70000 + b'"}', 413, "request body is larger than 64 KiB"),
        ]
        for payload, raw, status, message in cases:
            got, body, _ = _post(url, payload, raw)
            assert (got, body["error"][:len(message)]) == (status, message)
        structured = server.url + "/sdapi/v1/interrogate/structured"
        for categories, message in (({}, "'categories' must be a non-empty object"),
                                    ({"a": "x", "b": [1]}, "'categories.b' must be a list of strings")):
            got, body, _ = _post(structured, {"image": b64, "categories": categories})
            assert (got, body["error"][:len(message)]) == (400, message)
        got, body, _ = _post(server.url + "/sdapi/v1/txt2img", {"prompt": "x"})
        assert got == 404 and "POST /sdapi/v1/interrogate" in body["error"]
        try:
            urllib.request.urlopen(url)
        except urllib.error.HTTPError as e:
            assert e.code == 405 and json.loads(e.read())["error"] == "/sdapi/v1/interrogate takes POST with a JSON body"


def test_device_queue_full_is_503_then_recovers(tiny):
    _, folder = tiny
    service = _service(folder, max_queue=1)
    service.prepare()
    b64 = base64.b64encode(_png()).decode()
    url_results = []
    with Server(service, port=0) as server:
        url = server.url + "/sdapi/v1/interrogate"
        hold = service.queue.turn()
        hold.__enter__()  # the accelerator is busy (as with a long request)
        waiter = threading.Thread(target=lambda: url_results.append(_post(url, {"image": b64})))
        waiter.start()
        for _ in range(200):  # until the waiting request is in line
            if service.queue.pending == 2:
                break
            time.sleep(0.02)
        status, body, headers = _post(url, {"image": b64})
        assert status == 503 and headers.get("Retry-After") == "1"
        assert body["error"] == ("the accelerator is busy: 2 request(s) in line and at most 1 may wait; retry "
                                 "shortly")
        hold.__exit__(None, None, None)
        waiter.join(30)
    assert url_results[0][0] == 200 and url_results[0][1]["caption"]
    assert service.queue.pending == 0 and service.queue.peak == 2


def test_serve_cli_answers_without_importing_torch(tiny, tmp_path):
    """`comfyui-clipwan serve` in its own process: raw JSON posted as board users' scripts do, health says torch
    never loaded, the label cache file is written beside the model and loaded by the next start."""
    _, folder = tiny
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    cmd = [sys.executable, "-m", "comfyui_clipwan", "serve", "--export", folder, "--port", "0", "--labels",
           str(labels), "--score", "cosine", "--threshold", "-1", "--top-k", "2"]
    starts = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            assert lines[0].startswith("serving "), lines + [proc.stderr.read() if proc.poll() is not None else ""]
            url = lines[0].split(" on ", 1)[1].split(" ", 1)[0]
            starts.append(lines[1])
            status, body, _ = _post(url + "/sdapi/v1/interrogate", {"image": base64.b64encode(_png()).decode()})
            assert status == 200 and len(body["interrogations"]) == 2
            with urllib.request.urlopen(url + "/health") as r:
                assert json.loads(r.read())["torch_loaded"] is False
        finally:
            proc.terminate()
            proc.wait(10)
    assert "encoded (no cache file)" in starts[0] and "loaded in" in starts[1]
    assert "torch imported: False" in starts[0]
    assert os.path.isfile(os.path.join(folder, "label_cache", "labels.onnxruntime.npz"))


# --- provider selection (a fake axengine: selection logic only, no numbers) ---------------------------------
def test_provider_selection(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "axengine", None)  # import axengine → ImportError, as off-device
    assert providers.choose("auto", True).label == "onnxruntime/CPUExecutionProvider"
    assert "pyaxengine unavailable" in providers.choose("auto", True).reason
    with pytest.raises(RuntimeError, match="backend 'axcl' needs the pyaxengine package"):
        providers.choose("axcl", True)
    assert providers.choose("auto", False, "text").reason == "the text tower has no .axmodel (not compiled)"
    with pytest.raises(RuntimeError, match="the vision tower was not compiled to .axmodel"):
        providers.choose("axengine", False, "vision")
    fake = types.ModuleType("axengine")
    fake.get_available_providers = lambda: ["AXCLRTExecutionProvider", "AxEngineExecutionProvider"]
    monkeypatch.setitem(sys.modules, "axengine", fake)
    assert providers.choose("auto", True).label == "axengine/AXCLRTExecutionProvider"
    assert providers.choose("axengine", True).label == "axengine/AxEngineExecutionProvider"
    assert providers.choose("onnxruntime", True).engine == "onnxruntime"
    fake.get_available_providers = lambda: ["AxEngineExecutionProvider"]
    assert providers.choose("auto", True).provider == "AxEngineExecutionProvider"
    with pytest.raises(RuntimeError, match=r"backend 'axcl' needs AXCLRTExecutionProvider, but pyaxengine offers "
                                           r"\['AxEngineExecutionProvider'\]"):
        providers.choose("axcl", True)
    with pytest.raises(ValueError, match="backend must be one of"):
        providers.choose("npu", True)


# --- Wan 2.1's CLIP ViT-H/14 vision tower for the NPU -----------------------------------------------------
def _wan_keys(hf: dict, layers: int) -> dict:
    """A canonical-named tower under the key names of Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth."""
    e = "vision_model.embeddings."
    sd = {"visual.patch_embedding.weight": hf[e + "patch_embedding.weight"],
          "visual.cls_embedding": hf[e + "class_embedding"].view(1, 1, -1),
          "visual.pos_embedding": hf[e + "position_embedding.weight"].unsqueeze(0),
          "visual.head": hf["visual_projection.weight"].t().contiguous(), "log_scale": torch.tensor(4.6052)}
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for p in ("weight", "bias"):
            sd[f"visual.{theirs}.{p}"] = hf[f"vision_model.{ours}.{p}"]
    for n in range(layers):
        layer = f"vision_model.encoder.layers.{n}."
        for p in ("weight", "bias"):
            sd[f"visual.transformer.{n}.attn.to_qkv.{p}"] = torch.cat([hf[f"{layer}self_attn.{x}_proj.{p}"]
                                                                       for x in "qkv"])
            for ours, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                                 ("self_attn.out_proj", "attn.proj"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
                sd[f"visual.transformer.{n}.{theirs}.{p}"] = hf[f"{layer}{ours}.{p}"]
    return {k: v.contiguous() for k, v in sd.items()}


def _wan_visual_oracle(sd: dict, pixels: torch.Tensor, layers: int, heads: int = 16) -> torch.Tensor:
    """Wan's VisionTransformer forward written from its definition (wan/modules/clip.py: pre_norm, pre-LN blocks,
    fused to_qkv, exact GELU), returning the output of transformer[:-1] as Wan's use_31_block does."""
    F = torch.nn.functional
    w = sd["visual.patch_embedding.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_embedding"].expand(len(x), 1, -1), x], 1) + sd["visual.pos_embedding"]
    x = F.layer_norm(x, x.shape[-1:], sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"], 1e-5)
    for n in range(layers - 1):
        p = f"visual.transformer.{n}."
        b, s, c = x.shape
        h = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        q, k, v = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"]).view(
            b, s, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), -1) @ v
        x = x + F.linear(attn.transpose(1, 2).reshape(b, s, c), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])), sd[p + "mlp.2.weight"],
                         sd[p + "mlp.2.bias"])
    return x


def test_wan_clip_vision_tower_exports_wan_features_for_the_npu(tmp_path, monkeypatch):
    from comfyui_clipwan.cli import main
    from comfyui_clipwan.clip_vision import default_clip_vision

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    layers = 3
    sd = _wan_keys(default_clip_vision("ViT-H/14", seed=5, layers=layers).state_dict_hf(), layers)
    ckpt = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(sd, ckpt)
    images = tmp_path / "imgs"
    images.mkdir()
    for i, size in enumerate([(300, 200), (160, 240)]):
        Image.open(io.BytesIO(_png(i, size))).save(images / f"{i}.png")
    out = tmp_path / "wan_npu"
    assert main(["export-axera", "--source", str(ckpt), "--parts", "vision", "--vision-output", "wan",
                 "--calib-images", str(images), "--out", str(out), "--no-build"]) == 0
    manifest = json.load(open(out / "manifest.json"))
    vision = manifest["parts"]["vision"]
    assert vision["output"] == {"name": "image_penultimate", "shape": [1, 257, 1280], "dtype": "float32"}
    assert vision["input"]["shape"] == [1, 3, 224, 224] and vision["crop"] == "none"
    assert vision["checks"]["ok"] and vision["checks"]["ax650_op_issues"] == []
    assert vision["calibration"]["count"] == 2
    runtime = ClipRuntime(str(out), backend="onnxruntime")
    image = torch.from_numpy(np.asarray(Image.open(images / "0.png").convert("RGB"), np.float32) / 255.0)[None]
    got = runtime.wan_features(image)
    with torch.no_grad():  # oracle: Wan's squash preprocessing (clip_vision, crop none) + Wan's forward above
        ref = _wan_visual_oracle(sd, preprocess_images(image, CONFIGS["ViT-H/14"], "none"), layers).numpy()
    assert got.shape == (1, 257, 1280)
    np.testing.assert_allclose(got, ref, atol=2e-4)
    with pytest.raises(ValueError, match="is a Wan-features export"):
        runtime.image_embeddings(image)
