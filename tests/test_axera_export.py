"""Axera export core: text tower layouts vs open_clip / transformers, ONNX export, checks, op list."""

import os

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from comfyui_clipwan.axera_export.allowlist import check_ax650_ops
from comfyui_clipwan.axera_export.onnx_export import (VISION_INPUT, VISION_OUTPUT, ExportGraph, check_export,
                                                      export_onnx, ort_session, parity)
from comfyui_clipwan.axera_export.sources import load_source, parse_parts
from comfyui_clipwan.axera_export.text_model import (VIT_B32_TEXT, default_text_state_dict,
                                                     text_weights_from_state_dict)
from comfyui_clipwan.axera_export.tokenizer import tokenize
from comfyui_clipwan.axera_export.heads import vision_head

PROMPTS = ["a photo of a cat", "a diagram", "two dogs playing in the snow at night"]


def _small_open_clip(layers=2):
    import open_clip

    model = open_clip.model.CLIP(
        embed_dim=512, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=224, head_width=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=layers),
    )
    torch.manual_seed(3)
    with torch.no_grad():  # open_clip zero-inits nothing important, but make every tensor non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def test_tokenizer_is_open_clip_int32():
    import open_clip

    ids = tokenize(PROMPTS)
    assert ids.dtype == np.int32 and ids.shape == (3, 77)
    ref = open_clip.get_tokenizer("ViT-B-32")(PROMPTS).numpy()
    np.testing.assert_array_equal(ids, ref)
    assert ids[0, 0] == 49406 and ids[0].max() == 49407


def test_openclip_layout_matches_open_clip_encode_text():
    model = _small_open_clip()
    weights = text_weights_from_state_dict(model.state_dict())
    assert weights.layout == "openclip" and weights.config.layers == 2 and weights.config.heads == 8
    ids = torch.from_numpy(tokenize(PROMPTS))
    ours = weights.encode(ids)
    with torch.no_grad():
        ref = model.encode_text(ids.long())
    assert ours.shape == (3, 512)
    assert (ours - ref).abs().max().item() < 2e-5
    assert weights.logit_scale == pytest.approx(model.logit_scale.item())


def test_hf_layout_matches_transformers_text_features():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=dict(num_hidden_layers=2), vision_config=dict(num_hidden_layers=1))
    torch.manual_seed(1)
    model = CLIPModel(cfg).eval()
    weights = text_weights_from_state_dict(model.state_dict())
    assert weights.layout == "hf" and weights.config.act == "quick_gelu"
    ids = torch.from_numpy(tokenize(PROMPTS))
    with torch.no_grad():
        ref = model.text_projection(model.text_model(input_ids=ids.long()).pooler_output)
    assert (weights.encode(ids) - ref).abs().max().item() < 2e-5


def test_default_text_keys_and_shapes_are_transformers_clip_vit_b32():
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        hf = CLIPModel(CLIPConfig())
    ref = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k.startswith("text") or k == "logit_scale"}
    ours = {k: tuple(v.shape) for k, v in default_text_state_dict(VIT_B32_TEXT).items()}
    assert ours == ref


def test_text_layout_errors_name_the_problem():
    with pytest.raises(ValueError, match="no CLIP text tower found.*parts=vision"):
        text_weights_from_state_dict({"vision_model.embeddings.class_embedding": torch.zeros(8)})
    with pytest.raises(ValueError, match=r"parts must be a comma list"):
        parse_parts("vision,audio")
    assert parse_parts("text, vision") == ("vision", "text") and parse_parts("both") == ("vision", "text")


def _onnx_with(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_allowlist_reports_offending_ops_by_name_and_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 4], np.zeros(40, np.float32))
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"),
        helper.make_node("Cast", ["s"], ["s64"], name="to_int64", to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed_2d"),
        helper.make_node("Range", ["a", "b", "c"], ["r"], name="positions"),
        helper.make_node("Relu", ["x"], ["y"], name="fine"),
    ]
    issues = check_ax650_ops(_onnx_with(nodes, [x, ids], [y], [table]))
    assert [str(i) for i in issues] == [
        "Shape (node 'shape_of_x'): not in the AX650 NPU operator list",
        "Cast (node 'to_int64'): cast to INT64; AX650 casts only to (u)int8/16/32 or float32",
        "Gather (node 'embed_2d'): indices have rank 2; AX650 supports 1-D only",
        "Range (node 'positions'): not in the AX650 NPU operator list",
    ]


def test_reduced_depth_vit_h14_vision_export(tmp_path):
    from comfyui_clipwan.clip_vision import default_clip_vision

    cv = default_clip_vision("ViT-H/14", seed=2, layers=2)
    assert cv.config.act == "gelu" and cv.config.width == 1280
    v = export_onnx(ExportGraph(cv.model, "pooled"), torch.randn(1, 3, 224, 224), str(tmp_path / "h14.onnx"), VISION_INPUT, VISION_OUTPUT)
    assert check_export(v) == [] and v.checker == "ok"
    assert "Erf" in v.ops and "Sigmoid" not in v.ops  # exact GELU, not QuickGELU
    pixels = torch.randn(1, 3, 224, 224)
    out = ort_session(v.path).run(None, {VISION_INPUT: pixels.numpy()})[0]
    assert out.shape == (1, 1280)
    ref = cv.encode(pixels).image_embeds.numpy()
    p = parity(vision_head(out, cv.state_dict_hf()["visual_projection.weight"].numpy()), ref)
    assert p["ok"], p


def test_external_data_goes_to_one_file(tmp_path):
    tower = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(1, 16)
    r = export_onnx(tower, x, str(tmp_path / "m.onnx"), "x", "y", external_data_threshold=0)
    assert r.external_data == "m.onnx.data"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    check_export(r)
    assert r.checker == "ok"
    y = ort_session(r.path).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(y, tower(x).detach().numpy(), atol=1e-6)


def test_load_source_reads_full_openclip_file(tmp_path):
    from safetensors.torch import save_file

    model = _small_open_clip(layers=1)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "tiny_openclip.safetensors"
    save_file(sd, str(path))
    src = load_source(str(path), parts="text")
    assert src.vision is None and src.text.layout == "openclip" and src.text.config.layers == 1
    with pytest.raises(ValueError, match="has no vision tower; export parts=text only"):
        src.require(("vision",))
    ids = torch.from_numpy(tokenize(PROMPTS[:1]))
    with torch.no_grad():
        ref = model.encode_text(ids.long())
    assert (src.text.encode(ids) - ref).abs().max().item() < 2e-5


def test_hf_full_clip_file_export_zero_shot_matches_transformers(tmp_path, monkeypatch):
    """A saved HF CLIPModel (safetensors + config.json, non-default head count) → export → runtime probabilities
    equal transformers' own logits_per_image softmax."""
    from transformers import CLIPConfig, CLIPModel

    from comfyui_clipwan.axera_export import ClipRuntime, export_clip
    from comfyui_clipwan.clip_vision import preprocess_images

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cfg = CLIPConfig(projection_dim=48,
                     text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4),
                     vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, patch_size=32, image_size=224))
    torch.manual_seed(7)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(str(tmp_path / "hf"))
    src = load_source(str(tmp_path / "hf" / "model.safetensors"), parts="vision,text")
    assert src.text.config.heads == 4 and src.vision.config.heads == 4 and src.text.layout == "hf"
    result = export_clip(src, str(tmp_path / "out"), parts="vision,text", parity_samples=1)
    assert result.ok, result.report
    labels = ["a cat", "a dog", "a car", "the sea"]
    images = torch.rand(2, 240, 200, 3, generator=torch.Generator().manual_seed(1))
    ranked = ClipRuntime(str(tmp_path / "out")).zero_shot(images, labels, template="{}")
    pixels = preprocess_images(images, src.vision.config, "center")
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokenize(labels)).long(), pixel_values=pixels)
    ref = out.logits_per_image.softmax(-1).numpy()
    for row, probs in zip(ranked, ref):
        got = dict(row)
        np.testing.assert_allclose([got[label] for label in labels], probs, atol=1e-4)  # see test_axera_pipeline
