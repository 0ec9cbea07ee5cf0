"""End-to-end export of the default random-init ViT-B/32 CLIP, calibration, Pulsar2 configs/builds, runtime."""

import json
import math
import os
import shutil
import stat

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from comfyui_clipwan.axera_export import pulsar2
from comfyui_clipwan.axera_export.calibration import read_calibration_tar
from comfyui_clipwan.axera_export.pipeline import export_clip
from comfyui_clipwan.axera_export.runtime import ClipRuntime
from comfyui_clipwan.axera_export.sources import default_source
from comfyui_clipwan.axera_export.text_model import TextConfig
from comfyui_clipwan.axera_export.tokenizer import tokenize
from comfyui_clipwan.clip_vision import preprocess_images

LABELS = ["cat", "dog", "red car", "mountain lake", "city at night"]


def _calib_images():
    g = torch.Generator().manual_seed(5)
    return [torch.rand(2, 240, 320, 3, generator=g), torch.rand(1, 224, 224, 3, generator=g),
            torch.rand(1, 500, 260, 3, generator=g)]


@pytest.fixture(scope="module")
def b32_export(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("PATH", "/usr/bin:/bin")  # no pulsar2 here, whatever the machine has
    folder = tmp_path_factory.mktemp("b32")
    source = default_source(seed=0)
    result = export_clip(source, str(folder), parts="vision,text", calib_images=_calib_images(),
                         prompts=["a photo of a cat", "a diagram", "an empty street"], npu_mode="NPU3", opset=14)
    yield source, result
    shutil.rmtree(folder, ignore_errors=True)  # 0.6 GB of ONNX and calibration data


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_export_writes_checked_models_and_manifest(b32_export):
    source, result = b32_export
    m = result.manifest
    assert result.ok and m["random_init"] and "random-init" in m["source"]
    assert sorted(m["parts"]) == ["text", "vision"]
    for part, dtype, shape in (("vision", TensorProto.FLOAT, [1, 3, 224, 224]), ("text", TensorProto.INT32, [1, 77])):
        p = m["parts"][part]
        checks = p["checks"]
        assert checks["onnx_checker"] == "ok" and checks["ax650_op_issues"] == []
        assert checks["parity"]["max_abs_diff"] <= 1e-4 and checks["parity"]["min_cosine"] > 0.999999
        model = onnx.load(os.path.join(result.folder, p["onnx"]))
        assert model.opset_import[0].version == 14
        inp = model.graph.input[0]
        assert inp.type.tensor_type.elem_type == dtype
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == shape
        ops = {n.op_type for n in model.graph.node}
        # attention as plain MatMul/Softmax; no shape-dependent or fused ops for Pulsar2 to reject
        assert {"MatMul", "Softmax"} <= ops and not ops & {"Shape", "Range", "Trilu", "Attention", "CumSum"}
        assert p["axmodel"] is None and p["build"]["status"] == "not run (pulsar2 not on PATH)"
    assert m["parts"]["vision"]["output"]["shape"] == [1, 768]
    assert m["parts"]["text"]["output"]["shape"] == [1, 77, 512]
    assert "EOT pooling" in m["parts"]["text"]["split"]["cpu"][0]
    heads = np.load(os.path.join(result.folder, "cpu_heads.npz"))
    assert heads["visual_projection"].shape == (512, 768) and heads["text_projection"].shape == (512, 512)


def test_report_says_nothing_was_built_and_prints_commands(b32_export):
    _, result = b32_export
    report = result.report
    assert "No .axmodel was built. The Pulsar2 build inputs are ready" in report
    assert ("pulsar2 build --input vision.onnx --config pulsar2/vision.json --output_dir build/vision "
            "--output_name vision.axmodel --target_hardware AX650 --npu_mode NPU3") in report
    assert 'docker run --rm -v "$PWD":/data -w /data pulsar2:5.1 pulsar2 build --input text.onnx' in report
    assert "\n  BUILT:" not in report and "random-init" in report
    assert not [f for f in os.listdir(result.folder) if f.endswith(".axmodel")]
    script = open(os.path.join(result.folder, "build_axmodel.sh")).read()
    assert "command -v pulsar2" in script and "pulsar2:${PULSAR2_VERSION}" in script
    assert os.stat(os.path.join(result.folder, "build_axmodel.sh")).st_mode & stat.S_IXUSR


def test_calibration_tars_shapes_dtypes_counts(b32_export):
    source, result = b32_export
    vision = read_calibration_tar(os.path.join(result.folder, "calib", "vision_calib.tar"))
    assert len(vision) == 4 and all(a.shape == (1, 3, 224, 224) and a.dtype == np.float32 for a in vision)
    # exactly the runtime's preprocessing (clip_vision.preprocess_images, crop=center)
    expected = torch.cat([preprocess_images(b, source.vision.config, "center") for b in _calib_images()])
    np.testing.assert_array_equal(np.concatenate(vision), expected.numpy())
    text = read_calibration_tar(os.path.join(result.folder, "calib", "text_calib.tar"))
    assert len(text) == 3 and all(a.shape == (1, 77) and a.dtype == np.int32 for a in text)
    np.testing.assert_array_equal(text[1], tokenize(["a diagram"]))
    assert result.manifest["parts"]["text"]["calibration"]["count"] == 3


def test_pulsar2_configs_validate_and_match_inputs(b32_export):
    _, result = b32_export
    v = json.load(open(os.path.join(result.folder, "pulsar2", "vision.json")))
    t = json.load(open(os.path.join(result.folder, "pulsar2", "text.json")))
    assert pulsar2.validate_config(v) == [] and pulsar2.validate_config(t) == []
    assert v["npu_mode"] == "NPU3" and v["target_hardware"] == "AX650"
    assert v["quant"]["input_configs"][0] == {"tensor_name": "pixel_values", "calibration_dataset":
                                              "calib/vision_calib.tar", "calibration_format": "Numpy",
                                              "calibration_size": -1}
    assert v["input_processors"][0]["src_dtype"] == "FP32" and v["input_processors"][0]["std"] == [1, 1, 1]
    assert t["input_processors"] == [{"tensor_name": "input_ids", "src_dtype": "S32"}]
    assert t["quant"]["layer_configs"][0]["data_type"] == "U16"


def test_config_schema_rejects_bad_configs():
    good = pulsar2.vision_config("pixel_values", "c.tar", "NPU3", "mixed")
    assert pulsar2.validate_config(good) == []
    bad = json.loads(json.dumps(good))
    bad["npu_mode"] = "NPU5"
    bad["quant"]["calibration_method"] = "Median"
    bad["quant"]["layer_configs"][0]["data_type"] = "U12"
    bad["compiler"]["speed"] = 1
    bad["quant"]["input_configs"][0]["calibration_size"] = "all"
    assert pulsar2.validate_config(bad) == [
        "config.npu_mode: 'NPU5' is not one of ['NPU1', 'NPU2', 'NPU3', 'NPU4']",
        "config.quant.input_configs[0].calibration_size: must be an integer, got 'all'",
        "config.quant.layer_configs[0].data_type: 'U12' is not one of ['U8', 'S8', 'U16', 'S16', 'FP32']",
        "config.quant.calibration_method: 'Median' is not one of ['MinMax', 'Percentile', 'MSE', 'KL']",
        "config.compiler.speed: unknown key (allowed: check, check_atol, check_cosine_simularity, check_mode, "
        "check_rtol, ddr_bw_limit, enable_slice_mode, enable_tile_mode, max_dynamic_batch_size, npu_perf, "
        "static_batch_sizes)",
    ]
    on_620e = pulsar2.text_config("input_ids", "t.tar", "NPU3", target="AX620E")
    assert pulsar2.validate_config(on_620e) == [
        "config.npu_mode: NPU3 is not available on AX620E (choose ['NPU1', 'NPU2'])"]
    with pytest.raises(ValueError, match="invalid Pulsar2 config:\n  config.npu_mode"):
        pulsar2.write_config(bad, "/tmp/never_written.json")


def test_pulsar2_5_and_7_targets_and_modes(tmp_path):
    """Per toolchain, from each version's config reference: 7.0 added AX615/AX637/AX8860; AX8860 counts cores
    (NPU1/NPU2/NPU4); AX630C is the AX620E target; the same AX650 config is valid for both."""
    ax650 = pulsar2.vision_config("pixel_values", "c.tar", "NPU3", "mixed")
    assert pulsar2.validate_config(ax650, "5") == pulsar2.validate_config(ax650, "7") == []
    assert pulsar2.write_config(ax650, str(tmp_path / "v.json")) == {"5.1": "ok", "7.0": "ok"}
    ax8860 = pulsar2.text_config("input_ids", "t.tar", "NPU4", target="AX8860")
    assert pulsar2.validate_config(ax8860, "7") == []
    assert pulsar2.validate_config(ax8860, "5") == [
        "config.target_hardware: AX8860 is not a target of Pulsar2 5.1 (it has ['AX620E', 'AX650', 'M57', 'M76H'])"]
    assert pulsar2.write_config(ax8860, str(tmp_path / "t.json")) == {"7.0": "ok"}
    assert pulsar2.validate_config(dict(ax8860, npu_mode="NPU3"), "7") == [
        "config.npu_mode: NPU3 is not available on AX8860 (choose ['NPU1', 'NPU2', 'NPU4'])"]
    assert pulsar2.validate_config(dict(ax650, npu_mode="NPU4")) == [
        "config.npu_mode: NPU4 is not available on AX650 (choose ['NPU1', 'NPU2', 'NPU3'])"]
    assert pulsar2.resolve_target("ax630c") == "AX620E" and pulsar2.resolve_target("AX650N") == "AX650"
    assert pulsar2.docker_version("AX650") == "5.1" and pulsar2.docker_version("AX8860") == "7.0"
    with pytest.raises(ValueError, match="target must be one of"):
        pulsar2.resolve_target("AX9999")


def test_export_for_ax8860_uses_pulsar2_7(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = export_clip(_tiny_source(), str(tmp_path / "out"), parts="text", target="AX8860", npu_mode="NPU4",
                         parity_samples=1)
    m = result.manifest
    assert m["target_hardware"] == "AX8860" and m["pulsar2"]["configs_valid_for"] == ["7.0"]
    assert m["pulsar2"]["docker_image"] == "pulsar2:7.0" and m["pulsar2"]["checks"] == {"text": {"7.0": "ok"}}
    assert "@83fa86a" in m["pulsar2"]["checked_against"]["7.0"]
    assert "pulsar2:7.0 pulsar2 build --input text.onnx" in result.report
    assert "--target_hardware AX8860 --npu_mode NPU4" in result.report
    assert 'PULSAR2_VERSION="${PULSAR2_VERSION:-7.0}"' in open(tmp_path / "out" / "build_axmodel.sh").read()


def test_runtime_zero_shot_ranking_matches_torch(b32_export):
    source, result = b32_export
    rt = ClipRuntime(result.folder)
    assert rt.backends == {"vision": "onnxruntime", "text": "onnxruntime"}
    g = torch.Generator().manual_seed(11)
    images = torch.rand(3, 256, 256, 3, generator=g)
    ranked = rt.zero_shot(images, LABELS)
    # torch reference: the clip_vision model + our text tower, same preprocessing, same softmax
    pixels = preprocess_images(images, source.vision.config, "center")
    img = source.vision.encode(pixels).image_embeds
    txt = source.text.encode(torch.from_numpy(tokenize([f"a photo of {x}." for x in LABELS])))
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    probs = torch.softmax(np.exp(source.text.logit_scale) * img @ txt.T, dim=-1).numpy()
    for row, ref in zip(ranked, probs):
        assert [label for label, _ in row] == [LABELS[i] for i in np.argsort(-ref, kind="stable")]
        np.testing.assert_allclose([p for _, p in row], np.sort(ref)[::-1], atol=1e-4)
    sim = rt.similarity(images[:1], LABELS[:2])
    assert sim.shape == (1, 2) and np.all(np.abs(sim) <= 1.0 + 1e-6)
    with pytest.raises(ValueError, match="zero-shot needs at least one label"):
        rt.zero_shot(images[:1], [" ", ""])


_TINY = []


def _tiny_source():
    if not _TINY:  # built once: a 1-block ViT-B/32 + a 1-block 64-wide text tower (real vocab, real key names)
        text = TextConfig(layers=1, width=64, heads=1, mlp_dim=256)
        _TINY.append(default_source(seed=1, vision_layers=1, text_config=text))
    return _TINY[0]


def _fake_pulsar2(folder, exit_code=0, write=True):
    os.makedirs(folder, exist_ok=True)
    script = os.path.join(folder, "pulsar2")
    body = ["#!/bin/sh", 'if [ "$1" = "version" ]; then echo "pulsar2 fake-9.9"; exit 0; fi',
            'while [ $# -gt 0 ]; do case "$1" in --output_dir) OUT="$2";; --output_name) NAME="$2";; esac; shift; done',
            'echo "fake build into $OUT/$NAME"']
    if write:
        body.append('mkdir -p "$OUT" && printf AXMODEL > "$OUT/$NAME"')
    body.append(f"exit {exit_code}")
    with open(script, "w") as f:
        f.write("\n".join(body) + "\n")
    os.chmod(script, 0o755)
    return folder


def test_fake_pulsar2_on_path_is_run_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_pulsar2(str(tmp_path / "bin")) + ":/usr/bin:/bin")
    result = export_clip(_tiny_source(), str(tmp_path / "out"), parts="vision,text")
    for part in ("vision", "text"):
        p = result.manifest["parts"][part]
        assert p["build"]["status"] == "built" and p["axmodel"] == f"{part}.axmodel"
        assert open(tmp_path / "out" / f"{part}.axmodel").read() == "AXMODEL"
    assert "BUILT: vision.axmodel with pulsar2 pulsar2 fake-9.9" in result.report
    assert "No .axmodel was built" not in result.report
    # auto backend: axengine is not importable here, so the runtime falls back to the ONNX files
    rt = ClipRuntime(str(tmp_path / "out"))
    assert rt.backends == {"vision": "onnxruntime", "text": "onnxruntime"}
    with pytest.raises(RuntimeError, match="backend 'axengine' needs the pyaxengine package"):
        ClipRuntime(str(tmp_path / "out"), backend="axengine")


def test_failing_pulsar2_never_claims_an_axmodel(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_pulsar2(str(tmp_path / "bin"), exit_code=3) + ":/usr/bin:/bin")
    result = export_clip(_tiny_source(), str(tmp_path / "out"), parts="vision")
    p = result.manifest["parts"]["vision"]
    assert p["axmodel"] is None and p["build"]["status"] == "failed (exit 3; see pulsar2_vision.log)"
    assert "NOT BUILT: pulsar2 failed (exit 3" in result.report and "No .axmodel was built" in result.report
    assert not (tmp_path / "out" / "vision.axmodel").exists()
    assert "fake build into build/vision/vision.axmodel" in open(tmp_path / "out" / "pulsar2_vision.log").read()
    # exit 0 without the output file is a failure too
    monkeypatch.setenv("PATH", _fake_pulsar2(str(tmp_path / "bin2"), write=False) + ":/usr/bin:/bin")
    steps = [pulsar2.BuildStep("vision", "vision.onnx", "pulsar2/vision.json", "build/vision", "vision.axmodel",
                               "AX650", "NPU3")]
    (res,) = pulsar2.run_builds(steps, str(tmp_path / "out"))
    assert res.status == "failed (pulsar2 exited 0 but build/vision/vision.axmodel is missing)" and not res.axmodel


def test_export_argument_errors(tmp_path):
    src = _tiny_source()
    with pytest.raises(ValueError, match=r"npu_mode 'NPU5' is not available on AX650; choose one of"):
        export_clip(src, str(tmp_path), npu_mode="NPU5")
    with pytest.raises(ValueError, match="opset 9 is too old: Pulsar2 needs opset >= 11"):
        export_clip(src, str(tmp_path), parts="text", opset=9)
    from comfyui_clipwan.axera_export.sources import vision_source

    with pytest.raises(ValueError, match=r"has no text tower \(a CLIP_VISION / vision-only file\)"):
        export_clip(vision_source(src.vision), str(tmp_path), parts="vision,text")


class _FakeNodeArg:
    def __init__(self, name, dtype, shape):
        self.name, self.dtype, self.shape = name, dtype, shape


class _FakeAxSession:
    """Stands in for axengine.InferenceSession: same API, and it asserts exact shape + dtype like the real one."""

    calls = []

    def __init__(self, path, **_):
        import onnxruntime as ort

        self._ort = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        arg = self._ort.get_inputs()[0]
        dtype = {"tensor(float)": "float32", "tensor(int32)": "int32"}[arg.type]
        self._arg = _FakeNodeArg(arg.name, dtype, list(arg.shape))

    def get_inputs(self):
        return [self._arg]

    def run(self, output_names, feed):
        x = feed[self._arg.name]
        assert x.dtype == np.dtype(self._arg.dtype) and list(x.shape) == self._arg.shape
        _FakeAxSession.calls.append(self._arg.name)
        return self._ort.run(output_names, feed)


def test_runtime_uses_axmodels_through_axengine_when_available(tmp_path, monkeypatch):
    import sys
    import types

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a "compiler" whose .axmodel is the ONNX file itself, so the fake axengine can execute it
    (bin_dir / "pulsar2").write_text(
        "#!/bin/sh\n[ \"$1\" = version ] && { echo fake; exit 0; }\n"
        'while [ $# -gt 0 ]; do case "$1" in --input) IN="$2";; --output_dir) OUT="$2";; '
        '--output_name) NAME="$2";; esac; shift; done\nmkdir -p "$OUT" && cp "$IN" "$OUT/$NAME"\n')
    os.chmod(bin_dir / "pulsar2", 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    folder = str(tmp_path / "out")
    result = export_clip(_tiny_source(), folder, parts="vision,text")
    assert {p: i["axmodel"] for p, i in result.manifest["parts"].items()} == \
        {"vision": "vision.axmodel", "text": "text.axmodel"}
    fake = types.ModuleType("axengine")
    fake.InferenceSession = _FakeAxSession
    monkeypatch.setitem(sys.modules, "axengine", fake)
    _FakeAxSession.calls = []
    npu = ClipRuntime(folder)
    assert npu.backends == {"vision": "axengine", "text": "axengine"}
    cpu = ClipRuntime(folder, backend="onnxruntime")
    images = torch.rand(2, 100, 150, 3, generator=torch.Generator().manual_seed(3))
    got = npu.zero_shot(images, LABELS)
    # oracle: the torch towers of the source (checked against open_clip/transformers elsewhere), not the runtime
    src = _tiny_source()
    img = src.vision.encode(preprocess_images(images, src.vision.config, "center")).image_embeds
    txt = src.text.encode(torch.from_numpy(tokenize([f"a photo of {label}." for label in LABELS])))
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    ref = (math.exp(src.text.logit_scale) * img @ txt.T).softmax(-1).numpy()
    for row, probs in zip(got, ref):
        assert [label for label, _ in row] == [LABELS[i] for i in np.argsort(-probs, kind="stable")]
        # 1e-4: the runtime preprocesses in numpy (float64 resize weights); torch's float32 resize differs by
        # ~3e-5 and so lands ~0.1 % of pixels one 8-bit level apart (tests/test_axera_serve.py bounds this)
        np.testing.assert_allclose([dict(row)[label] for label in LABELS], probs, atol=1e-4)
    assert _FakeAxSession.calls.count("pixel_values") == 2 and _FakeAxSession.calls.count("input_ids") == 5
    # int64 / float64 inputs are cast to what the session declares before they reach it
    ids64 = tokenize(["a cat"]).astype(np.int64)
    np.testing.assert_array_equal(npu.parts["text"].run(ids64), cpu.parts["text"].run(ids64.astype(np.int32)))


def test_fp16_clip_vision_and_core_style_object_export_with_fp32_reference(tmp_path, monkeypatch):
    from comfyui_clipwan.axera_export.sources import vision_source
    from comfyui_clipwan.clip_vision import default_clip_vision
    from comfyui_clipwan.nodes.axera_nodes import _adopt_clip_vision

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    half = default_clip_vision("ViT-B/32", seed=3, layers=1, dtype="fp16")
    result = export_clip(vision_source(half), str(tmp_path / "h"), parts="vision", parity_samples=1)
    assert result.ok and result.manifest["parts"]["vision"]["checks"]["parity"]["max_abs_diff"] <= 1e-4

    class CoreLikeClipVision:  # ComfyUI core's ClipVisionModel exposes get_sd() in HF layout
        def get_sd(self):
            return half.state_dict_hf()

    adopted = _adopt_clip_vision(CoreLikeClipVision())
    assert adopted.dtype == torch.float32 and adopted.config == half.config
    with pytest.raises(ValueError, match="clip_vision input of type str is not a CLIP vision model"):
        _adopt_clip_vision("nope")
