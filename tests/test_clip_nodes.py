"""CLIP vision nodes and CLI, outside ComfyUI (plain Python): loading, encoding, Wan checks, cache, files."""

import argparse
import json

import pytest
import safetensors
import safetensors.torch
import torch

from comfyui_clipwan.cli import main as cli_main
from comfyui_clipwan.cli.clip import demo_step, synthetic_image
from comfyui_clipwan.clip_vision import ClipVisionOutput, default_clip_vision, load_clip_vision
from comfyui_clipwan.nodes.clip_nodes import (FEATURE_CACHE, CLIPVisionEncodeWan, FeatureCache, LoadCLIPVisionH14,
                                              NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)


@pytest.fixture(scope="module")
def h14_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip_vision_h.safetensors"
    sd = {k: t.contiguous() for k, t in default_clip_vision(layers=2, seed=11).state_dict_hf().items()}
    safetensors.torch.save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def model(h14_file):
    return load_clip_vision(h14_file)


@pytest.fixture(autouse=True)
def _empty_cache():
    FEATURE_CACHE.clear()
    yield
    FEATURE_CACHE.clear()


def test_node_registration():
    assert set(NODE_CLASS_MAPPINGS) == {"LoadCLIPVisionH14", "CLIPVisionEncodeWan"}
    assert NODE_DISPLAY_NAME_MAPPINGS == {"LoadCLIPVisionH14": "Load CLIP Vision, any size (ClipWan)",
                                          "CLIPVisionEncodeWan": "CLIP Vision Encode for Wan (ClipWan)"}
    enc = CLIPVisionEncodeWan.INPUT_TYPES()["required"]
    assert enc["crop"][0] == ["center", "none"] and "WanImageToVideo" in enc["crop"][1]["tooltip"]
    assert enc["multi_image"][0] == ["per_image", "average", "concat"]
    load = LoadCLIPVisionH14.INPUT_TYPES()["required"]
    assert load["dtype"][0] == ["default", "fp32", "fp16", "bf16"] and load["device"][0] == ["default", "cpu", "gpu"]
    for cls in NODE_CLASS_MAPPINGS.values():
        for name, spec in cls.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), (cls.__name__, name)
        assert cls.DESCRIPTION and cls.CATEGORY in ("ClipWan/loaders", "ClipWan/conditioning")


def test_loader_node_default_is_fp16_like_core_and_matches_fp32(h14_file, model):
    (loaded,) = LoadCLIPVisionH14().load(str(h14_file), "default", "cpu")
    assert loaded.dtype == torch.float16 and loaded.compute_dtype == torch.float32
    assert loaded.source == str(h14_file) and loaded.layout == "hf"
    img = torch.rand(1, 64, 64, 3)
    a = loaded.encode_image(img).penultimate_hidden_states
    b = model.encode_image(img).penultimate_hidden_states
    assert a.dtype == torch.float32
    assert 0 < (a - b).abs().max() / b.abs().max() < 2e-3  # fp16-rounded weights, fp32 compute
    with pytest.raises(FileNotFoundError, match=r"^Model file 'missing_clip\.safetensors' was not found in "
                                                r"models/clip_vision\."):
        LoadCLIPVisionH14().load("missing_clip.safetensors", "fp32", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_loader_node_gpu_without_gpu(h14_file):
    with pytest.raises(ValueError, match=r"^LoadCLIPVisionH14: device 'gpu' was chosen but no GPU is available; "
                                         r"choose 'cpu' or 'default'$"):
        LoadCLIPVisionH14().load(str(h14_file), "fp32", "gpu")


def test_encode_node_modes(model):
    imgs = torch.rand(2, 90, 120, 3)
    node = CLIPVisionEncodeWan()
    (per,) = node.encode(model, imgs, "center", "per_image")
    assert isinstance(per, ClipVisionOutput)  # outside ComfyUI; comfy.clip_vision.Output inside
    assert per.penultimate_hidden_states.shape == (2, 257, 1280) and per.image_embeds.shape == (2, 1024)
    assert per["last_hidden_state"].shape == (2, 257, 1280) and len(per.image_sizes) == 2
    ref = model.encode_image(imgs, crop="center")
    assert torch.equal(per.penultimate_hidden_states, ref.penultimate_hidden_states)
    (avg,) = node.encode(model, imgs, "center", "average")
    assert avg.penultimate_hidden_states.shape == (1, 257, 1280)
    assert torch.allclose(avg.penultimate_hidden_states[0], ref.penultimate_hidden_states.mean(0), atol=1e-6)
    (cat,) = node.encode(model, imgs, "center", "concat")
    assert cat.penultimate_hidden_states.shape == (1, 514, 1280)
    assert torch.equal(cat.penultimate_hidden_states[0, 257:514], ref.penultimate_hidden_states[1])
    assert cat.image_embeds.shape == (1, 1024)
    (squash,) = node.encode(model, imgs, "none", "per_image")
    assert not torch.allclose(squash.penultimate_hidden_states, per.penultimate_hidden_states, atol=1e-3)
    assert torch.equal(squash.penultimate_hidden_states, model.encode_image(imgs, crop="none").penultimate_hidden_states)


def test_encode_node_refuses_vit_l_features(tmp_path):
    path = tmp_path / "clip_vision_vit_l.safetensors"
    sd = {k: t.contiguous() for k, t in default_clip_vision("ViT-L/14", layers=1).state_dict_hf().items()}
    safetensors.torch.save_file(sd, str(path))
    vit_l = load_clip_vision(path)
    with pytest.raises(ValueError) as info:
        CLIPVisionEncodeWan().encode(vit_l, torch.rand(1, 32, 32, 3), "center", "per_image")
    assert str(info.value) == (
        f"{path}: 1024-wide features [1, 257, 1024], but Wan 2.1 i2v needs 1280-wide ViT-H/14 features "
        "[batch, 257, 1280] (a "
        "1024-wide model is e.g. ViT-L/14 = 1024 or ViT-bigG = 1664). Load the ViT-H/14 file instead: "
        "clip_vision_h.safetensors or Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth.")


def test_feature_cache_hits_misses_and_bounds(model):
    calls = []
    original = model.encode_image

    def counting(image, crop=True, **kw):
        calls.append(crop)
        return original(image, crop=crop, **kw)

    model.encode_image = counting
    try:
        node = CLIPVisionEncodeWan()
        img = torch.rand(1, 40, 40, 3)
        a = node.encode(model, img, "center", "per_image")[0]
        b = node.encode(model, img.clone(), "center", "per_image")[0]  # same content, new tensor → hit
        assert calls == ["center"] and torch.equal(a.penultimate_hidden_states, b.penultimate_hidden_states)
        node.encode(model, img, "none", "per_image")  # other crop → miss
        node.encode(model, img, "center", "concat")  # other mode → miss
        img2 = img.clone()
        img2[0, 0, 0, 0] += 0.5
        node.encode(model, img2, "center", "per_image")  # other content → miss
        assert calls == ["center", "none", "center", "center"]
        model.version += 1  # weights changed (load_sd bumps it) → miss
        node.encode(model, img, "center", "per_image")
        assert len(calls) == 5 and FEATURE_CACHE.hits == 1
    finally:
        del model.encode_image
    cache = FeatureCache(max_entries=2)
    for i in range(4):
        cache.get_or_compute(i, lambda: ClipVisionOutput(penultimate_hidden_states=torch.zeros(1)))
    assert len(cache) == 2 and cache.get_or_compute(3, lambda: None) is not None
    small = FeatureCache(max_entries=10, max_bytes=6000)
    for i in range(5):
        small.get_or_compute(i, lambda: ClipVisionOutput(penultimate_hidden_states=torch.zeros(1000)))
    assert len(small) == 1  # two 4000-byte entries exceed 6000 bytes: only the newest stays


def test_encode_node_accepts_core_style_model(model):
    """ComfyUI core's ClipVisionModel has encode_image(image, crop: bool) and an indexable Output."""

    class CoreLike:  # core's interface (a2 of the reference notes), computed by our model
        def encode_image(self, image, crop=True):
            assert isinstance(crop, bool)
            out = model.encode_image(image, crop="center" if crop else "none")
            return {"penultimate_hidden_states": out.penultimate_hidden_states}

    (out,) = CLIPVisionEncodeWan().encode(CoreLike(), torch.rand(2, 50, 50, 3), "center", "average")
    assert out.penultimate_hidden_states.shape == (1, 257, 1280)


def test_cli_encode_with_weights(tmp_path, h14_file, model):
    from PIL import Image
    import numpy as np

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray((np.random.default_rng(0).random((100, 150, 4)) * 255).astype("uint8")).save(a)
    Image.fromarray((np.random.default_rng(1).random((300, 200)) * 255).astype("uint8")).save(b)
    out = tmp_path / "feat.safetensors"
    rc = cli_main(["encode", str(a), str(b), "--weights", str(h14_file), "--crop", "none", "--multi-image",
                   "concat", "--out", str(out)])
    assert rc == 0
    with safetensors.safe_open(str(out), "pt") as f:
        meta = f.metadata()
        pen = f.get_tensor("penultimate_hidden_states")
        assert set(f.keys()) == {"penultimate_hidden_states", "last_hidden_state", "image_embeds"}
    assert meta["source"] == str(h14_file) and meta["crop"] == "none" and json.loads(meta["images"]) == [str(a),
                                                                                                          str(b)]
    assert pen.shape == (1, 514, 1280)
    img_a = torch.from_numpy(np.asarray(Image.open(a), dtype=np.float32) / 255).unsqueeze(0)
    ref = model.encode_image(img_a, crop="none").penultimate_hidden_states
    assert (pen[0, :257] - ref[0]).abs().max() < 1e-5
    assert cli_main(["encode", str(tmp_path / "nope.png"), "--out", str(out)]) == 2


def test_cli_wrong_weights_file_exit_code(tmp_path, capsys):
    bad = tmp_path / "unet.safetensors"
    safetensors.torch.save_file({"blocks.0.ffn.0.weight": torch.zeros(2, 2)}, str(bad))
    img = tmp_path / "i.png"
    from PIL import Image

    Image.new("RGB", (20, 20)).save(img)
    assert cli_main(["encode", str(img), "--weights", str(bad), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: '{bad}': no CLIP vision tower found.") and "'blocks.0.ffn.0.weight'" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_demo_step_full_size_default(tmp_path):
    """The demo's step: the real 32-block ViT-H/14 (seeded random init) on a synthetic image."""
    result = demo_step(argparse.Namespace(seed=0), str(tmp_path))
    assert result["shapes"] == {"penultimate_hidden_states": [1, 257, 1280], "last_hidden_state": [1, 257, 1280],
                                "image_embeds": [1, 1024]}
    assert "seeded random-init" in result["source"]
    with safetensors.safe_open(result["file"], "pt") as f:
        assert "seeded random-init" in f.metadata()["source"]
        pen = f.get_tensor("penultimate_hidden_states")
    assert torch.isfinite(pen).all() and pen.std() > 0.1
    assert torch.equal(synthetic_image(0), synthetic_image(0)) and synthetic_image(0).shape == (1, 480, 832, 3)
