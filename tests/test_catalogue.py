"""The bad-input and fault catalogue: what a hostile (or unlucky) user can hand the pack, and the exact outcome.

Every case asserts either a clear error whose message names the problem and the fix (exact text, or its key
parts where a path or a library's own detail is embedded), or a correct result checked against an independent
oracle (numpy/PIL arithmetic written here, the weights we saved, the runtime on a correctly decoded image).
Cases are grouped by class in the test ids: ``weights-<loader>-<case>``, ``dtype-…``, ``image-…``, ``cli-…``,
``route-…``, ``export-…``, ``node-…``, ``output-…``. Everything is tiny (1-layer width-64 towers, 8 px images).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from safetensors.torch import save_file

from comfyui_clipwan.axera_export import ClipRuntime, export_clip, load_source
from comfyui_clipwan.axera_export import pipeline as export_pipeline
from comfyui_clipwan.axera_export.interrogate import MAX_PIXELS, RuntimeCache, decode_image, find_latest_export
from comfyui_clipwan.axera_export.runtime import EmbeddingCache
from comfyui_clipwan.cli import describe_error, main
from comfyui_clipwan.clip_vision import load_clip_vision
from comfyui_clipwan.clip_vision.loader import resolve_dtype as clip_resolve_dtype
from comfyui_clipwan.images import ImageReadError, read_image, read_image_folder
from comfyui_clipwan.nodes import axera_nodes
from comfyui_clipwan.wan import CausalWanModel, WanConfig
from comfyui_clipwan.wan.model.checkpoint import load_wan_state_dict
from comfyui_clipwan.wan.model.checkpoint import resolve_dtype as wan_resolve_dtype
from comfyui_clipwan.wan.sampling.checks import check_finite_latent
from comfyui_clipwan.weights import WeightsFileError, read_weights

WAN_T2V = WanConfig(dim=128, ffn_dim=160, num_heads=1, num_layers=1, in_dim=16)
EXTS = ".safetensors, .sft, .pt, .pth, .ckpt, .bin"


# --------------------------------------------------------------------------------------------------------------
# fixtures: one tiny full OpenCLIP CLIP (vision + text, real key names) and one tiny Wan DiT, saved once
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_sd():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=64, head_width=64),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
    )
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def wan_sd():
    return {k: v.contiguous().clone() for k, v in CausalWanModel.random(WAN_T2V, seed=3).state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip_sd, wan_sd):
    root = tmp_path_factory.mktemp("weights")
    save_file(clip_sd, str(root / "clip.safetensors"))
    save_file(wan_sd, str(root / "wan.safetensors"))
    return root


# --------------------------------------------------------------------------------------------------------------
# weights: the one reader behind three loaders
# --------------------------------------------------------------------------------------------------------------
def _load_clip_vision(path):
    return load_clip_vision(path)


def _load_clip_text(path):
    return load_source(path, parts="text")


def _load_wan(path):
    return load_wan_state_dict(str(path))


LOADERS = {"clipvision": (_load_clip_vision, "CLIP vision", "visual.conv1.weight"),
           "cliptext": (_load_clip_text, "CLIP", "text_projection"),
           "wan": (_load_wan, "Wan model", "head.head.weight")}


def _zip_with_numel(path, n_real=70000, n_claimed=2_000_000_000):
    """A zip .pth whose tensor claims far more elements than its storage holds (the 1e10-floats case)."""
    torch.save({"w": torch.zeros(n_real)}, path)
    raw = bytearray(open(path, "rb").read())
    needle = b"J" + struct.pack("<i", n_real)
    hits = [i for i in range(len(raw)) if raw[i:i + 5] == needle]
    raw[hits[-1] + 1:hits[-1] + 5] = struct.pack("<i", n_claimed)  # the size tuple (the last one)
    open(path, "wb").write(bytes(raw))


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('CATALOGUE_MARKER', '/nonexistent/marker')}",))


def _make(kind, path, sd, nan_key):
    """Write the bad (or good) file of one catalogue case to ``path``; returns the path."""
    if kind == "missing":
        return path
    if kind == "folder":
        os.makedirs(path)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "random_bytes":
        open(path, "wb").write(bytes(range(16, 256)) * 4)
    elif kind == "html_page":
        open(path, "wb").write(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    elif kind == "gguf":
        open(path, "wb").write(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    elif kind == "pickled_object":
        torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1e-4)}, path)
    elif kind == "pickled_code_zip":
        torch.save({"w": torch.zeros(2), "x": RunsCode()}, path)
    elif kind == "pickled_code_plain":
        with open(path, "wb") as f:
            pickle.dump({"x": RunsCode()}, f, protocol=2)
    elif kind == "truncated_safetensors":
        save_file(sd, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif kind == "truncated_zip":
        torch.save(sd, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif kind == "absurd_header":
        open(path, "wb").write(struct.pack("<Q", 1 << 60) + b"{" + b"\x00" * 100)
    elif kind == "header_not_json":
        open(path, "wb").write(struct.pack("<Q", 12) + b"{not json!!}")
    elif kind == "entry_not_object":
        open(path, "wb").write(_safetensors_bytes({"w": "oops"}))
    elif kind == "entry_no_offsets":
        open(path, "wb").write(_safetensors_bytes({"w": {"dtype": "F32", "shape": [2]}}, b"\x00" * 8))
    elif kind == "entry_wrong_bytes":
        open(path, "wb").write(_safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
                                                  b"\x00" * 16))
    elif kind == "entry_bad_dtype":
        open(path, "wb").write(_safetensors_bytes({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
                                                  b"\x00" * 8))
    elif kind == "entry_negative_shape":
        open(path, "wb").write(_safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
                                                  b"\x00" * 4))
    elif kind == "storage_too_big":
        _zip_with_numel(path)
    elif kind in ("nan_safetensors", "inf_pth"):
        bad = dict(sd)
        bad[nan_key] = sd[nan_key].clone()
        bad[nan_key].view(-1)[1] = float("nan") if kind == "nan_safetensors" else float("inf")
        (save_file if kind == "nan_safetensors" else torch.save)(bad, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "step": 10}, path)
    elif kind == "legacy_pickle":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif kind == "safetensors_named_pth":
        save_file(sd, path)
    elif kind == "wrapped_state_dict":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif kind == "fp16_safetensors":
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, path)
    else:
        raise AssertionError(kind)
    return path


FILE_NAMES = {"missing": "nope.safetensors", "folder": "model_dir", "empty": "empty.pth",
              "random_bytes": "random.pth", "html_page": "model.safetensors", "gguf": "model.gguf",
              "pickled_object": "obj.pth", "pickled_code_zip": "evil.pth", "pickled_code_plain": "evil.pkl",
              "truncated_safetensors": "cut.safetensors", "truncated_zip": "cut.pth",
              "absurd_header": "absurd.safetensors", "header_not_json": "bad.safetensors",
              "entry_not_object": "e1.safetensors", "entry_no_offsets": "e2.safetensors",
              "entry_wrong_bytes": "e3.safetensors", "entry_bad_dtype": "e4.safetensors",
              "entry_negative_shape": "e5.safetensors", "storage_too_big": "huge.pth",
              "nan_safetensors": "nan.safetensors", "inf_pth": "inf.pth", "not_a_dict": "list.pth",
              "no_tensors": "meta.pt", "legacy_pickle": "legacy.pth", "safetensors_named_pth": "st.pth",
              "wrapped_state_dict": "wrapped.ckpt", "fp16_safetensors": "half.safetensors"}


def _expected_error(kind, path, what, nan_key):
    """(exception type, full-match regex) of each bad-file case; the same text whichever loader reads it."""
    p = re.escape(str(path))
    again = r" Download it again\."
    return {
        "missing": (FileNotFoundError, rf"{what} file not found: '{p}'"),
        "folder": (ValueError, rf"{what} path '{p}' is a folder, not a file: give the weights file inside it "
                               rf"\({re.escape(EXTS)}\)\."),
        "empty": (ValueError, rf"'{p}' is empty \(0 bytes\): the download or copy did not finish\. Download the "
                              rf"{what} file again\."),
        "random_bytes": (ValueError, rf"'{p}' is not a weights file: it is neither safetensors nor a PyTorch "
                                     rf"checkpoint \(it starts with bytes 10 11 12 13 14 15 16 17\)\. Check that you "
                                     rf"picked the right file and that the download is complete .*"),
        "html_page": (ValueError, rf"'{p}' is not a weights file: it is neither safetensors nor a PyTorch "
                                  rf"checkpoint \(it starts with bytes 3c 21 44 4f 43 54 59 50\)\..*HTML error page.*"),
        "gguf": (ValueError, rf"'{p}' is a GGUF \(llama\.cpp-style quantised\) file, which this loader does not "
                             rf"read: use the \.safetensors \(fp16/bf16/fp8\) release of the same model\."),
        "pickled_object": (ValueError, rf"refused to load '{p}': it contains pickled Python objects besides tensors "
                                       rf"\(.*argparse\.Namespace.*\), which could run code when loaded, so it is not "
                                       rf"loaded\. Convert it to \.safetensors \(in a trusted Python: "
                                       rf"safetensors\.torch\.save_file\(state_dict, path\)\)\."),
        "pickled_code_zip": (ValueError, rf"refused to load '{p}': it contains pickled Python objects besides "
                                         rf"tensors \(.*(posix\.system|os\.system).*\), which could run code .*"),
        "pickled_code_plain": (ValueError, rf"refused to load '{p}': it contains pickled Python objects besides "
                                           rf"tensors \(.*(posix\.system|os\.system).*\), which could run code .*"),
        "truncated_safetensors": (ValueError, rf"'{p}' is truncated: its tensors need \d+ bytes but the file has "
                                              rf"\d+\.{again}"),
        "truncated_zip": (ValueError, rf"'{p}' is corrupt or truncated: torch cannot read it \(RuntimeError: "
                                      rf"PytorchStreamReader failed reading zip archive.*\)\.{again}"),
        "absurd_header": (ValueError, rf"'{p}' is truncated or not a safetensors file: its header claims "
                                      rf"1152921504606846976 bytes but the file has 109\.{again}"),
        "header_not_json": (ValueError, rf"'{p}' is not a safetensors file \(its header is not JSON: .*\)\.{again}"),
        "entry_not_object": (ValueError, rf"'{p}': header entry for tensor 'w' is malformed \(needs dtype, shape "
                                         rf"and data_offsets, got \"oops\"\); the file is damaged\.{again}"),
        "entry_no_offsets": (ValueError, rf"'{p}': header entry for tensor 'w' is malformed \(needs dtype, shape "
                                         rf"and data_offsets, got .*\); the file is damaged\.{again}"),
        "entry_wrong_bytes": (ValueError, rf"'{p}': header entry for tensor 'w' declares shape \[2, 2\] \(F32\) but "
                                          rf"12 bytes; the file is damaged\.{again}"),
        "entry_bad_dtype": (ValueError, rf"'{p}': header entry for tensor 'w' has dtype 'C64', which this loader "
                                        rf"does not read \(supported: F64, F32, F16, BF16, .*\)\. Convert the file to "
                                        rf"fp16/bf16/fp32\."),
        "entry_negative_shape": (ValueError, rf"'{p}': header entry for tensor 'w' has an invalid shape \[-1\] or "
                                             rf"data_offsets \[0, 4\]; the file is damaged\.{again}"),
        "storage_too_big": (ValueError, rf"'{p}' is corrupt or truncated: a tensor declares more data than the file "
                                        rf"holds \(RuntimeError: Trying to resize storage that is not resizable\)\."
                                        rf"{again}"),
        "nan_safetensors": (ValueError, rf"'{p}': tensor '{re.escape(nan_key)}' contains NaN or Inf values \(1 of "
                                        rf"\d+ entries\); the file is corrupt or was saved from a diverged training "
                                        rf"run\. Use another copy of the weights\."),
        "inf_pth": (ValueError, rf"'{p}': tensor '{re.escape(nan_key)}' contains NaN or Inf values \(1 of \d+ "
                                rf"entries\); the file is corrupt .*"),
    }[kind]


BAD_KINDS = ["missing", "folder", "empty", "random_bytes", "html_page", "gguf", "pickled_object",
             "pickled_code_zip", "pickled_code_plain", "truncated_safetensors", "truncated_zip", "absurd_header",
             "header_not_json", "entry_not_object", "entry_no_offsets", "entry_wrong_bytes", "entry_bad_dtype",
             "entry_negative_shape", "storage_too_big", "nan_safetensors", "inf_pth"]


def _ids_weights():
    return [f"weights-{loader}-{kind}" for kind in BAD_KINDS for loader in LOADERS]


@pytest.mark.parametrize("loader,kind", [(l, k) for k in BAD_KINDS for l in LOADERS], ids=_ids_weights())
def test_weights(kind, loader, tmp_path, clip_sd, wan_sd, monkeypatch):
    load, what, nan_key = LOADERS[loader]
    sd = wan_sd if loader == "wan" else clip_sd
    marker = tmp_path / "code_ran"
    monkeypatch.setenv("CATALOGUE_MARKER", str(marker))
    path = _make(kind, str(tmp_path / FILE_NAMES[kind]), sd, nan_key)
    exc_type, pattern = _expected_error(kind, path, what, nan_key)
    with pytest.raises(exc_type) as info:
        load(path)
    assert re.fullmatch(pattern, str(info.value), re.S), str(info.value)
    assert isinstance(info.value, WeightsFileError) or kind == "missing"  # one error type for every loader
    assert not marker.exists()  # no pickled code ever ran


GOOD_KINDS = ["legacy_pickle", "safetensors_named_pth", "wrapped_state_dict", "fp16_safetensors"]


def _reference_tensors(loader, loaded):
    """The tensors a loader kept, under the names they had in the file (to compare with what we saved)."""
    if loader == "wan":
        return loaded[0]
    if loader == "cliptext":
        return {"text_projection": loaded.text.projection.T}  # stored [embed, width], OpenCLIP saves [width, embed]
    return {"visual.conv1.weight": loaded.state_dict_hf()["vision_model.embeddings.patch_embedding.weight"]}


@pytest.mark.parametrize("loader,kind", [(l, k) for k in GOOD_KINDS for l in LOADERS],
                         ids=[f"weights-{l}-{k}-loads" for k in GOOD_KINDS for l in LOADERS])
def test_weights_good_variants_load_exactly(kind, loader, tmp_path, clip_sd, wan_sd):
    load, _, _ = LOADERS[loader]
    sd = wan_sd if loader == "wan" else clip_sd
    path = _make(kind, str(tmp_path / FILE_NAMES[kind]), sd, None)
    got = _reference_tensors(loader, load(path))
    assert got
    for key, tensor in got.items():
        want = sd[key].half().float() if kind == "fp16_safetensors" else sd[key]
        assert torch.equal(tensor.float(), want.float()), key


@pytest.mark.parametrize("kind,pattern", [
    ("not_a_dict", r"'{p}' holds no tensors at its top level or under generator_ema, state_dict_ema, generator, "
                   r"model, state_dict, model_state_dict, module, net \(found list\); it is not a model state dict\."),
    ("no_tensors", r"'{p}' holds no tensors at its top level or under generator_ema, .* \(found \['epoch', "
                   r"'step'\]\); it is not a model state dict\."),
], ids=["weights-clipvision-list-of-tensors", "weights-clipvision-dict-without-tensors"])
def test_weights_not_a_state_dict_clip(kind, pattern, tmp_path):
    path = _make(kind, str(tmp_path / FILE_NAMES[kind]), None, None)
    with pytest.raises(ValueError) as info:
        load_clip_vision(path)
    assert re.fullmatch(pattern.format(p=re.escape(path)), str(info.value))


@pytest.mark.parametrize("kind,pattern", [
    ("not_a_dict", r"'{p}' holds a list, not a dict of tensors: it is not a state dict\. Save model\.state_dict\(\), "
                   r"not the model\."),
    ("no_tensors", r"unknown checkpoint layout in meta\.pt: no Wan 2\.1 DiT key 'head\.modulation' \(first keys: "
                   r"epoch, step\)\. .*"),
], ids=["weights-wan-list-of-tensors", "weights-wan-dict-without-tensors"])
def test_weights_not_a_state_dict_wan(kind, pattern, tmp_path):
    path = _make(kind, str(tmp_path / FILE_NAMES[kind]), None, None)
    with pytest.raises(ValueError) as info:
        load_wan_state_dict(path)
    assert re.fullmatch(pattern.format(p=re.escape(path)), str(info.value), re.S)


def test_weights_wan_safetensors_are_zero_copy_maps_and_cast_releases_pages(files, wan_sd):
    """No second full copy: the file's tensors are views of one map; a dtype cast keeps values exactly."""
    raw = read_weights(str(files / "wan.safetensors"))
    ptrs = sorted(t.data_ptr() for t in raw.values())
    assert ptrs[-1] - ptrs[0] < os.path.getsize(files / "wan.safetensors")  # all inside one mapping
    model = CausalWanModel.from_file(str(files / "wan.safetensors"), dtype="bf16")
    for k, v in model.state_dict().items():
        want = wan_sd[k] if k.startswith("patch_embedding.") else wan_sd[k].to(torch.bfloat16)
        assert torch.equal(v, want), k


# --------------------------------------------------------------------------------------------------------------
# dtype: one vocabulary for every loader
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,want", [("fp32", torch.float32), ("FP16", torch.float16), ("half", torch.float16),
                                       ("bfloat16", torch.bfloat16), (" bf16 ", torch.bfloat16),
                                       (torch.float16, torch.float16)],
                         ids=lambda v: f"dtype-clip-{v}")
def test_dtype_clip_accepts(name, want):
    assert clip_resolve_dtype(name) is want


@pytest.mark.parametrize("name,want", [("default", None), ("auto", None), (None, None), ("fp16", torch.float16),
                                       (torch.bfloat16, torch.bfloat16)],
                         ids=lambda v: f"dtype-wan-{v}")
def test_dtype_wan_accepts(name, want):
    assert wan_resolve_dtype(name) is want


@pytest.mark.parametrize("resolve,name,listed", [
    (clip_resolve_dtype, "default", "fp32, float32, fp16, float16, half, bf16, bfloat16"),
    (clip_resolve_dtype, "int8", "fp32, float32, fp16, float16, half, bf16, bfloat16"),
    (clip_resolve_dtype, torch.int8, "fp32, float32, fp16, float16, half, bf16, bfloat16"),
    (wan_resolve_dtype, "fp64x", "default, auto, fp32, float32, fp16, float16, half, bf16, bfloat16"),
    (wan_resolve_dtype, 16, "default, auto, fp32, float32, fp16, float16, half, bf16, bfloat16"),
], ids=["dtype-clip-default-refused", "dtype-clip-int8", "dtype-clip-torch-int8", "dtype-wan-typo",
        "dtype-wan-number"])
def test_dtype_refused(resolve, name, listed):
    with pytest.raises(ValueError) as info:
        resolve(name)
    assert str(info.value) == f"unknown dtype {name!r}; use one of {listed} (or a floating torch dtype)."


# --------------------------------------------------------------------------------------------------------------
# images: the one reader (Python API); oracles are numpy arithmetic on the pixels we wrote
# --------------------------------------------------------------------------------------------------------------
RGB = np.array([[[200, 30, 60], [0, 128, 255]], [[10, 20, 30], [255, 255, 0]]], dtype=np.uint8)


def _save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


def _exif_image(path, orientation):
    """A 3×2 image (W×H) with distinct corners and an EXIF orientation tag."""
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, format="PNG")
    return str(path)


IMAGE_CASES = {
    "16bit-gray-png": (lambda p: _save(Image.fromarray(np.full((4, 4), 32768, np.uint16)), p / "a.png"),
                       lambda x: x.shape == (1, 4, 4, 3) and abs(float(x.mean()) - 32768 / 65535) < 1e-6),
    "16bit-gradient-png": (lambda p: _save(Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369),
                                           p / "a.png"),
                           lambda x: torch.allclose(x[0, :, :, 1], torch.arange(16.).view(4, 4) * 4369 / 65535)),
    "8bit-rgb-png": (lambda p: _save(Image.fromarray(RGB), p / "a.png"),
                     lambda x: torch.equal(x[0], torch.from_numpy(RGB.astype(np.float32) / 255))),
    "palette-png": (lambda p: _save(Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=4), p / "a.png"),
                    lambda x: torch.equal(x[0], torch.from_numpy(RGB.astype(np.float32) / 255))),
    "palette-transparent-gif": (lambda p: _save(Image.fromarray(RGB).convert("P"), p / "a.gif", transparency=0),
                                lambda x: x.shape == (1, 2, 2, 3)),
    "cmyk-tiff": (lambda p: _save(Image.fromarray(RGB).convert("CMYK"), p / "a.tiff"),
                  lambda x: torch.allclose(x[0], torch.from_numpy(RGB.astype(np.float32) / 255), atol=1 / 255)),
    "la-png-alpha-dropped": (lambda p: _save(Image.fromarray(np.stack([RGB[..., 0], RGB[..., 1]], -1), "LA"),
                                             p / "a.png"),
                             lambda x: torch.equal(x[0, :, :, 2], torch.from_numpy(RGB[..., 0] / 255.).float())),
    "rgba-png-alpha-dropped": (lambda p: _save(Image.fromarray(np.concatenate([RGB, np.zeros((2, 2, 1), np.uint8)],
                                                                               -1), "RGBA"), p / "a.png"),
                               lambda x: torch.equal(x[0], torch.from_numpy(RGB.astype(np.float32) / 255))),
    "1bit-png": (lambda p: _save(Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1"), p / "a.png"),
                 lambda x: x[0, :, :, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]),
    "gray-jpeg": (lambda p: _save(Image.new("L", (4, 4), 128), p / "a.jpg"),
                  lambda x: x.shape == (1, 4, 4, 3) and abs(float(x.mean()) - 128 / 255) < 2 / 255),
    "exif-orientation-6": (lambda p: _exif_image(p / "a.png", 6),  # rotate 90° CW to display
                           lambda x: x.shape == (1, 3, 2, 3) and x[0, 0, 1, 0] == 1.0),
    "exif-orientation-8": (lambda p: _exif_image(p / "a.png", 8),
                           lambda x: x.shape == (1, 3, 2, 3) and x[0, 2, 0, 0] == 1.0),
    "exif-orientation-3": (lambda p: _exif_image(p / "a.png", 3),
                           lambda x: x.shape == (1, 2, 3, 3) and x[0, 1, 2, 0] == 1.0),
    "webp-lossless": (lambda p: _save(Image.fromarray(RGB), p / "a.webp", lossless=True),
                      lambda x: torch.equal(x[0], torch.from_numpy(RGB.astype(np.float32) / 255))),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES), ids=[f"image-{c}" for c in IMAGE_CASES])
def test_image_reads_correctly(case, tmp_path):
    make, check = IMAGE_CASES[case]
    assert check(read_image(make(tmp_path)))


def _animated(path, sizes=None):
    frames = [Image.new("RGB", (4, 4), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return str(path)


@pytest.mark.parametrize("ext", ["gif", "webp", "png"], ids=lambda e: f"image-animated-{e}-first-frame-said")
def test_image_animated_first_frame(ext, tmp_path):
    path = _animated(tmp_path / f"a.{ext}")
    notes = []
    x = read_image(path, note=notes.append)
    assert x.shape == (1, 4, 4, 3) and float(x[0, 0, 0, 0]) == 0.0
    assert notes == [f"image '{path}' is animated (3 frames): using the first frame"]


def test_image_animated_all_frames(tmp_path):
    path = _animated(tmp_path / "a.gif")
    notes = []
    x = read_image(path, frames="all", note=notes.append)
    assert x.shape == (3, 4, 4, 3)
    assert [round(float(v) * 255) for v in x[:, 0, 0, 0]] == [0, 60, 120]
    assert notes == [f"image '{path}' is animated (3 frames): using all 3 frames"]


def _bomb_png(width=9000, height=9900):
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _truncated_png():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()[:300]


IMAGE_ERRORS = {
    "missing": (lambda p: str(p / "nope.png"), r"image not found: '{p}'"),
    "folder": (lambda p: str(p), r"image '{p}' is a folder, not an image file: give the image files inside it"),
    "text-named-png": (lambda p: _write(p / "a.png", b"hello, I am text"),
                       r"'{p}' is not an image PIL can read \(PNG, JPEG, WebP, GIF, BMP, TIFF\); it starts with "
                       r"b'hello, I am ' \. Give an image file\.".replace(r" \.", r"\.")),
    "empty-png": (lambda p: _write(p / "a.png", b""),
                  r"'{p}' is not an image PIL can read \(PNG, JPEG, WebP, GIF, BMP, TIFF\); it starts with b''\. "
                  r"Give an image file\."),
    "truncated-png": (lambda p: _write(p / "a.png", _truncated_png()),
                      r"image '{p}' is truncated or damaged \(OSError: .*\); save or download it again\."),
    "truncated-jpeg": (lambda p: _write(p / "a.jpg", _save_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200]),
                       r"image '{p}' is truncated or damaged \(OSError: .*\); save or download it again\."),
    "bomb-over-limit": (lambda p: _write(p / "a.png", _bomb_png()),
                        r"image '{p}' is 9000×9900 \(89\.1 megapixels\), more than the limit of 16\.8 megapixels; it "
                        r"was not decoded\. Downscale it \(CLIP sees 224-336 px\)\."),
    "bomb-over-pil-limit": (lambda p: _write(p / "a.png", _bomb_png(20000, 10000)),
                            r"image '{p}' declares 200\.0 megapixels, more than PIL's safety limit of 179\.0 "
                            r"megapixels; it was not decoded\. Downscale it \(CLIP sees 224-336 px\)\."),
}


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _save_bytes(img, fmt) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(IMAGE_ERRORS), ids=[f"image-error-{c}" for c in IMAGE_ERRORS])
def test_image_errors(case, tmp_path):
    make, pattern = IMAGE_ERRORS[case]
    path = make(tmp_path)
    limit = 16_777_216 if case == "bomb-over-limit" else None
    with pytest.raises(ImageReadError) as info:
        read_image(path, max_pixels=limit)
    assert re.fullmatch(pattern.format(p=re.escape(path)), str(info.value)), str(info.value)
    assert isinstance(info.value, FileNotFoundError) == (case == "missing")


def test_image_frames_mode_refused(tmp_path):
    with pytest.raises(ImageReadError) as info:
        read_image(_write(tmp_path / "a.png", _save_bytes(Image.fromarray(RGB), "PNG")), frames="some")
    assert str(info.value) == "frames must be one of ('first', 'all'), got 'some'"


def test_image_folder_skips_non_images_and_says_so(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "b.png")
    Image.fromarray(RGB).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    notes = []
    images = read_image_folder(str(tmp_path), note=notes.append)
    assert [tuple(i.shape) for i in images] == [(1, 2, 2, 3), (1, 2, 2, 3)]
    assert notes == [f"skipped 2 non-image entries in '{tmp_path}': notes.txt, sub"]


def test_image_folder_with_a_damaged_image_names_it(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    _write(tmp_path / "b.png", b"not a png")
    with pytest.raises(ImageReadError) as info:
        read_image_folder(str(tmp_path))
    assert str(info.value).startswith(f"'{tmp_path / 'b.png'}' is not an image PIL can read")


def test_image_folder_without_images(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ImageReadError) as info:
        read_image_folder(str(tmp_path), what="calibration image")
    assert str(info.value) == (f"no images (.png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff) in '{tmp_path}' "
                               f"(found only: readme.md)")


# --------------------------------------------------------------------------------------------------------------
# CLI: every command, bad input → "error: …" on stderr, exit 2, no traceback, nothing half-written
# --------------------------------------------------------------------------------------------------------------
def _cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err.strip()


@pytest.fixture(scope="module")
def h14_file(tmp_path_factory):
    """A ViT-H/14 with one block (Wan needs 1280-wide features), HF/ComfyUI layout."""
    from comfyui_clipwan.clip_vision import default_clip_vision

    path = tmp_path_factory.mktemp("h14") / "clip_vision_h.safetensors"
    save_file({k: v.contiguous() for k, v in default_clip_vision(layers=1).state_dict_hf().items()}, str(path))
    return path


@pytest.fixture
def image_png(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _encode_cases():
    return {
        "image-missing": (lambda t, f: [t / "nope.png"], lambda t: f"error: image not found: '{t / 'nope.png'}'"),
        "image-is-text": (lambda t, f: [_write(t / "x.png", b"plain text")],
                          lambda t: f"error: '{t / 'x.png'}' is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP, "
                                    f"TIFF); it starts with b'plain text'. Give an image file."),
        "image-truncated": (lambda t, f: [_write(t / "x.png", _truncated_png())],
                            lambda t: re.compile(rf"error: image '{re.escape(str(t / 'x.png'))}' is truncated or "
                                                 rf"damaged \(OSError: .*\); save or download it again\.")),
        "image-bomb": (lambda t, f: [_write(t / "x.png", _bomb_png(20000, 10000))],
                       lambda t: f"error: image '{t / 'x.png'}' declares 200.0 megapixels, more than PIL's safety "
                                 f"limit of 179.0 megapixels; it was not decoded. Downscale it (CLIP sees 224-336 px)."),
        "image-folder": (lambda t, f: [t], lambda t: f"error: image '{t}' is a folder, not an image file: give the "
                                                     f"image files inside it"),
        "weights-random-bytes": (lambda t, f: ["--weights", _write(t / "w.pth", bytes(range(16, 256))), f],
                                 lambda t: re.compile(rf"error: '{re.escape(str(t / 'w.pth'))}' is not a weights "
                                                      rf"file: .*")),
        "weights-folder": (lambda t, f: ["--weights", t, f],
                           lambda t: f"error: CLIP vision path '{t}' is a folder, not a file: give the weights file "
                                     f"inside it ({EXTS})."),
    }


@pytest.mark.parametrize("case", list(_encode_cases()), ids=[f"cli-encode-{c}" for c in _encode_cases()])
def test_cli_encode_bad_inputs_leave_nothing(case, tmp_path, capsys, image_png):
    make_args, expected = _encode_cases()[case]
    work = tmp_path / "w"
    work.mkdir()
    out = tmp_path / "out" / "features.safetensors"
    extra = make_args(work, image_png)
    images = [a for a in extra if not str(a).startswith("--")][:1] if not extra or extra[0] != "--weights" \
        else [image_png]
    flags = extra[:2] if extra and extra[0] == "--weights" else []
    code, _, err = _cli(["encode", *images, *flags, "--out", out], capsys)
    want = expected(work)
    assert code == 2
    assert (want.fullmatch(err) if isinstance(want, re.Pattern) else err == want), err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # no file, no *.partial


@pytest.mark.parametrize("case", ["out-is-folder", "out-parent-is-file"],
                         ids=["cli-encode-out-is-folder", "cli-encode-out-parent-is-file"])
def test_cli_encode_bad_out(case, tmp_path, capsys, image_png):
    if case == "out-is-folder":
        out = tmp_path / "dir"
        out.mkdir()
        want = f"error: --out '{out}' is a folder; give a file name such as '{out / 'features.safetensors'}'"
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "f.safetensors"
        want = (f"error: --out '{out}': '{tmp_path / 'file'}' is a file, so no folder can be made there; choose "
                f"another path")
    code, _, err = _cli(["encode", image_png, "--out", out], capsys)
    assert (code, err) == (2, want)


def test_cli_encode_nan_weights_named(tmp_path, capsys, image_png, clip_sd):
    path = _make("nan_safetensors", str(tmp_path / "nan.safetensors"), clip_sd, "visual.conv1.weight")
    out = tmp_path / "f.safetensors"
    code, _, err = _cli(["encode", image_png, "--weights", path, "--out", out], capsys)
    assert code == 2 and err.startswith(f"error: '{path}': tensor 'visual.conv1.weight' contains NaN or Inf values")
    assert sorted(os.listdir(tmp_path)) == ["img.png", "nan.safetensors"]


def test_cli_encode_failed_write_leaves_no_partial(tmp_path, capsys, image_png, h14_file, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "o" / "f.safetensors"
    code, _, err = _cli(["encode", image_png, "--weights", h14_file, "--out", out], capsys)
    assert (code, err) == (2, f"error: cannot use '{out}.partial': No space left on device.")
    assert os.listdir(tmp_path / "o") == []


def test_cli_encode_16bit_png_equals_8bit_encode(tmp_path, capsys, h14_file):
    """Oracle: a 16-bit PNG whose values are v·257 must encode exactly like the 8-bit PNG of v."""
    from safetensors.torch import load_file

    v = np.random.default_rng(2).integers(0, 255, (48, 48), dtype=np.uint8)
    Image.fromarray(v).save(tmp_path / "a8.png")
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    for name in ("a8", "a16"):
        code, _, _ = _cli(["encode", tmp_path / f"{name}.png", "--weights", h14_file,
                           "--out", tmp_path / f"{name}.safetensors"], capsys)
        assert code == 0
    f8, f16 = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("a8", "a16"))
    torch.testing.assert_close(f16["image_embeds"], f8["image_embeds"], atol=1e-6, rtol=0)


def test_cli_encode_animated_says_first_frame(tmp_path, capsys, h14_file):
    path = _animated(tmp_path / "a.gif")
    code, _, err = _cli(["encode", path, "--weights", h14_file, "--out", tmp_path / "f.st"], capsys)
    assert code == 0 and err == f"note: image '{path}' is animated (3 frames): using the first frame"


def _sample_cases():
    return {
        "model-random-bytes": (lambda t: ["--model", _write(t / "m.safetensors", b"\x00" * 8 + b"[]")],
                               lambda t: f"error: '{t / 'm.safetensors'}' is not a weights file: it is neither "
                                         f"safetensors nor a PyTorch checkpoint (it starts with bytes 00 00 00 00 00 "
                                         f"00 00 00). Check that you picked the right file and that the download is "
                                         f"complete (an HTML error page saved under the model's name looks like "
                                         f"this)."),
        "model-folder": (lambda t: ["--model", t],
                         lambda t: f"error: Wan model path '{t}' is a folder, not a file: give the weights file "
                                   f"inside it ({EXTS})."),
        "model-empty": (lambda t: ["--model", _write(t / "m.pt", b"")],
                        lambda t: f"error: '{t / 'm.pt'}' is empty (0 bytes): the download or copy did not finish. "
                                  f"Download the Wan model file again."),
        "image-text": (lambda t: ["--image", _write(t / "i.png", b"text")],
                       lambda t: f"error: '{t / 'i.png'}' is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP, "
                                 f"TIFF); it starts with b'text'. Give an image file."),
        "text-embeds-missing": (lambda t: ["--text-embeds", t / "nope.safetensors"],
                                lambda t: f"error: text embedding file not found: '{t / 'nope.safetensors'}'"),
        "text-embeds-nan": (lambda t: ["--text-embeds", _nan_embeds(t / "e.safetensors")],
                            lambda t: f"error: '{t / 'e.safetensors'}': tensor 'context' contains NaN or Inf values "
                                      f"(1 of 40960 entries); the file is corrupt or was saved from a diverged "
                                      f"training run. Use another copy of the weights."),
        "text-embeds-two-tensors": (lambda t: ["--text-embeds", _two_tensors(t / "e.safetensors")],
                                    lambda t: f"error: text embedding file '{t / 'e.safetensors'}' must hold exactly "
                                              f"one tensor; it has ['a', 'b']."),
    }


def _nan_embeds(path):
    t = torch.zeros(10, 4096)
    t[0, 0] = float("nan")
    save_file({"context": t}, str(path))
    return str(path)


def _two_tensors(path):
    save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, str(path))
    return str(path)


@pytest.mark.parametrize("case", list(_sample_cases()), ids=[f"cli-sample-{c}" for c in _sample_cases()])
def test_cli_sample_bad_inputs(case, tmp_path, capsys, files):
    make_args, expected = _sample_cases()[case]
    work = tmp_path / "w"
    work.mkdir()
    args = make_args(work)
    if "--model" not in args:  # the tiny t2v DiT: no embedded default model to build first
        args += ["--model", files / "wan.safetensors"]
    code, _, err = _cli(["sample", *args, "--length", "1", "--frames-per-block", "1", "--width", "16",
                         "--height", "16", "--steps", "1000", "--out", tmp_path / "out"], capsys)
    assert (code, err) == (2, expected(work))


@pytest.mark.parametrize("command", [["demo"], ["sample"], ["export-axera", "--parts", "vision"]],
                         ids=["cli-demo-out-is-file", "cli-sample-out-is-file", "cli-export-out-is-file"])
def test_cli_out_folder_is_a_file(command, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    code, _, err = _cli([*command, "--out", out], capsys)
    assert code == 2
    assert err in (f"error: '{out}' is in the way: a file exists where a folder is needed. Give --out a folder path, "
                   f"or remove that file.",
                   f"error: export folder '{out}' is a file; give a folder path (it is created if missing)")
    assert out.read_text() == "mine"


def _export_cases():
    return {
        "source-random-bytes": (lambda t: ["--source", _write(t / "c.bin", bytes(range(16, 200)))],
                                lambda t: re.compile(rf"error: '{re.escape(str(t / 'c.bin'))}' is not a weights "
                                                     rf"file: .*")),
        "source-missing": (lambda t: ["--source", t / "nope.safetensors"],
                           lambda t: f"error: --source '{t / 'nope.safetensors'}' does not exist (give a CLIP "
                                     f"checkpoint file or 'default')"),
        "calib-folder-missing": (lambda t: ["--calib-images", t / "nope"],
                                 lambda t: f"error: calibration image folder not found: '{t / 'nope'}'"),
        "calib-folder-only-text": (lambda t: ["--calib-images", _folder_with(t / "c", {"a.txt": b"x"})],
                                   lambda t: f"error: no images (.png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff) "
                                             f"in '{t / 'c'}' (found only: a.txt)"),
        "calib-folder-damaged-image": (lambda t: ["--calib-images", _folder_with(t / "c", {"a.png": b"nope"})],
                                       lambda t: f"error: '{t / 'c' / 'a.png'}' is not an image PIL can read (PNG, "
                                                 f"JPEG, WebP, GIF, BMP, TIFF); it starts with b'nope'. Give an image "
                                                 f"file."),
        "calib-prompts-missing": (lambda t: ["--calib-prompts", t / "p.txt"],
                                  lambda t: f"error: --calib-prompts '{t / 'p.txt'}' does not exist"),
        "out-foreign-folder": (lambda t: ["--out", _folder_with(t / "mine", {"thesis.tex": b"x"})],
                               lambda t: f"error: export folder '{t / 'mine'}' already holds other files and no "
                                         f"previous export (manifest.json); give a new or empty folder (an export "
                                         f"replaces its folder as a whole)"),
    }


def _folder_with(path, contents):
    os.makedirs(path, exist_ok=True)
    for name, data in contents.items():
        _write(os.path.join(path, name), data)
    return str(path)


@pytest.mark.parametrize("case", list(_export_cases()), ids=[f"cli-export-{c}" for c in _export_cases()])
def test_cli_export_bad_inputs(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_pipeline, "_build", _must_not_build)
    make_args, expected = _export_cases()[case]
    args = make_args(tmp_path)
    if "--out" not in args:
        args += ["--out", tmp_path / "export"]
    code, _, err = _cli(["export-axera", "--no-build", *args], capsys)
    want = expected(tmp_path)
    assert code == 2
    assert (want.fullmatch(err) if isinstance(want, re.Pattern) else err == want), err
    assert not (tmp_path / "export").exists()


def _must_not_build(*args, **kwargs):
    raise AssertionError("the export started although its input was bad")


@pytest.mark.parametrize("exc,want", [
    (IsADirectoryError(21, "Is a directory", "/data/x"), "'/data/x' is a folder; give a file path there (e.g. "
                                                         "'/data/x/out.safetensors')."),
    (FileExistsError(17, "File exists", "/data/x"), "'/data/x' is in the way: a file exists where a folder is "
                                                    "needed. Give --out a folder path, or remove that file."),
    (NotADirectoryError(20, "Not a directory", "/data/f/x"), "'/data/f/x' is in the way: a file exists where a "
                                                             "folder is needed. Give --out a folder path, or remove "
                                                             "that file."),
    (PermissionError(13, "Permission denied", "/ro/x"), "no permission to write or read '/ro/x'; choose a folder "
                                                        "you can write to (--out)."),
    (OSError(28, "No space left on device", "/d/x"), "cannot use '/d/x': No space left on device."),
    (OSError(5, "Input/output error"), "Input/output error (OSError)."),
    (MemoryError(), "out of memory; use a smaller model (--dtype fp16/bf16), fewer frames or a smaller size."),
    (TypeError("boom"), "unexpected TypeError: boom. This is a bug in comfyui-clipwan; set CLIPWAN_TRACEBACK=1 to "
                        "see the traceback and report it."),
    (FileNotFoundError("image not found: 'x'"), "image not found: 'x'"),
], ids=["cli-oserror-is-a-directory", "cli-oserror-exists", "cli-oserror-not-a-directory", "cli-oserror-permission",
        "cli-oserror-disk-full", "cli-oserror-no-filename", "cli-memoryerror", "cli-unexpected-bug",
        "cli-our-own-error"])
def test_cli_error_lines(exc, want):
    assert describe_error(exc) == want


def test_cli_unexpected_error_is_one_line(monkeypatch, capsys, tmp_path):
    import comfyui_clipwan.cli.clip as cli_clip

    monkeypatch.setattr(cli_clip, "read_image", lambda p: (_ for _ in ()).throw(KeyError("x")))
    code, _, err = _cli(["encode", tmp_path / "a.png", "--out", tmp_path / "f.safetensors"], capsys)
    assert (code, err) == (2, "error: unexpected KeyError: 'x'. This is a bug in comfyui-clipwan; set "
                              "CLIPWAN_TRACEBACK=1 to see the traceback and report it.")


# --------------------------------------------------------------------------------------------------------------
# export: atomic over a previous export, modes, calibration warning
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_source(files):
    """The tiny OpenCLIP file (64-wide vision and text towers, 64 px images) as an export source."""
    return load_source(str(files / "clip.safetensors"))


def _digest(folder):
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def previous_export(tmp_path_factory, tiny_source):
    folder = tmp_path_factory.mktemp("exports") / "clip"
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", "/usr/bin:/bin")
    export_clip(tiny_source, str(folder), parts="vision,text", calib_images=[torch.rand(2, 40, 40, 3)])
    mp.undo()
    return folder


@pytest.mark.parametrize("stage", ["check_export", "ort_session", "text_calibration_tar", "write_build_script"],
                         ids=lambda s: f"export-interrupted-at-{s}-keeps-previous")
def test_export_interrupted_over_previous_keeps_it_whole(stage, previous_export, tiny_source, monkeypatch):
    before = _digest(previous_export)
    target = export_pipeline if stage != "write_build_script" else export_pipeline.pulsar2

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, stage, interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_clip(tiny_source, str(previous_export), parts="vision,text", calib_images=[torch.zeros(1, 9, 9, 3)])
    assert _digest(previous_export) == before  # every file, manifest included, as it was
    assert sorted(os.listdir(previous_export.parent)) == ["clip"]  # no hidden work folder left behind
    rt = ClipRuntime(str(previous_export))
    assert len(rt.zero_shot(torch.rand(1, 32, 32, 3), ["a", "b"])[0]) == 2


def test_export_over_previous_replaces_every_file_and_modes_follow_umask(tmp_path, tiny_source, monkeypatch,
                                                                         caplog):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr("comfyui_clipwan.axera_export.onnx_export._param_bytes", lambda m: 1 << 40)  # .onnx.data
    folder = tmp_path / "clip"
    first = export_clip(tiny_source, str(folder), parts="vision", calib_images=[torch.rand(3, 16, 16, 3)])
    note = ("vision calibration used only 3 image(s); 32+ from your domain are recommended, or the quantised model "
            "may lose accuracy")
    assert note in first.manifest["notes"] and f"note: {note}" in first.report and note in caplog.text
    (folder / "vision.axmodel").write_text("stale build of the old model")
    old_mask = os.umask(0o022)
    try:
        result = export_clip(tiny_source, str(folder), parts="vision", calib_images=[torch.rand(40, 16, 16, 3)])
    finally:
        os.umask(old_mask)
    assert not (folder / "vision.axmodel").exists()
    assert result.manifest["parts"]["vision"]["external_data"] == "vision.onnx.data"
    modes = {name: oct(os.stat(folder / name).st_mode & 0o777) for name in
             ("vision.onnx", "vision.onnx.data", "manifest.json", "cpu_heads.npz", "build_axmodel.sh", "calib")}
    assert modes == {"vision.onnx": "0o644", "vision.onnx.data": "0o644", "manifest.json": "0o644",
                     "cpu_heads.npz": "0o644", "build_axmodel.sh": "0o755", "calib": "0o755"}
    assert oct(os.stat(folder).st_mode & 0o777) == "0o755"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["parts"]) == {"vision"} and not any("only" in n for n in manifest["notes"])
    assert manifest["parts"]["vision"]["calibration"]["count"] == 40


@pytest.mark.parametrize("case", ["file", "foreign"], ids=["export-target-is-a-file", "export-target-foreign-folder"])
def test_export_refuses_targets_it_would_damage(case, tmp_path, tiny_source):
    target = tmp_path / "t"
    if case == "file":
        target.write_text("mine")
        want = f"export folder '{target}' is a file; give a folder path (it is created if missing)"
    else:
        target.mkdir()
        (target / "notes.md").write_text("mine")
        want = (f"export folder '{target}' already holds other files and no previous export (manifest.json); give a "
                f"new or empty folder (an export replaces its folder as a whole)")
    with pytest.raises(ValueError) as info:
        export_clip(tiny_source, str(target), parts="vision")
    assert str(info.value) == want
    assert sorted(os.listdir(tmp_path)) == ["t"]


def test_export_latest_finder_ignores_work_folders(previous_export, tmp_path):
    root = previous_export.parent
    hidden = root / ".clip.partial-x"
    hidden.mkdir()
    (hidden / "manifest.json").write_text((previous_export / "manifest.json").read_text())
    try:
        assert find_latest_export(str(root)) == str(previous_export)
    finally:
        (hidden / "manifest.json").unlink()
        hidden.rmdir()


# --------------------------------------------------------------------------------------------------------------
# route: POST /sdapi/v1/interrogate
# --------------------------------------------------------------------------------------------------------------
def _client_calls(handler, fn):
    async def run():
        app = web.Application(client_max_size=1024 ** 2)
        app.router.add_post("/sdapi/v1/interrogate", handler)
        async with TestClient(TestServer(app)) as client:
            return await fn(client)

    return asyncio.run(run())


def _post_all(bodies):
    async def fn(client):
        out = []
        for body in bodies:
            r = await client.post("/sdapi/v1/interrogate", json=body)
            out.append((r.status, await r.json()))
        return out

    return fn


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ROUTE_ERRORS = {
    "bomb-png-413": (lambda: _b64(_bomb_png()), 413,
                     "image 'image' is 9000×9900 (89.1 megapixels), more than the limit of 16.8 megapixels; it was "
                     "not decoded. Downscale it (CLIP sees 224-336 px)."),
    "pil-bomb-413": (lambda: _b64(_bomb_png(20000, 10000)), 413, None),
    "text-400": (lambda: _b64(b"hello there"), 400,
                 "'image' is valid base64 but not an image PIL can read (PNG, JPEG, WebP…)"),
    "truncated-png-400": (lambda: _b64(_truncated_png()), 400, None),
    "empty-string-400": (lambda: "", 400, "'image' must be a non-empty base64 string (optionally a data: URL)"),
    "number-400": (lambda: 42, 400, "'image' must be a non-empty base64 string (optionally a data: URL)"),
    "data-url-not-base64-400": (lambda: "data:image/png,abc", 400,
                                "'image' data URL must be base64-encoded (data:image/png;base64,...)"),
    "bad-base64-400": (lambda: "@@@", 400, "'image' is not valid base64"),
}


@pytest.mark.parametrize("case", list(ROUTE_ERRORS), ids=[f"route-{c}" for c in ROUTE_ERRORS])
def test_route_bad_images(case, previous_export):
    make, status, message = ROUTE_ERRORS[case]
    service = axera_nodes.InterrogateService(lambda: str(previous_export))
    ((got_status, body),) = _client_calls(service.handle, _post_all([{"image": make()}]))
    assert got_status == status
    if message is not None:
        assert body["error"] == message
    elif case == "pil-bomb-413":
        assert body["error"] == ("image 'image' declares 200.0 megapixels, more than PIL's safety limit of 179.0 "
                                 "megapixels; it was not decoded. Downscale it (CLIP sees 224-336 px).")
    else:
        assert re.fullmatch(r"image 'image' is truncated or damaged \(OSError: .*\); save or download it again\.",
                            body["error"])


def test_route_bomb_does_not_grow_memory(previous_export):
    """A 134 KiB PNG declaring 9000×9900: refused from its header (decoding would take ~1 GB as float32)."""
    import resource

    data = _bomb_png()
    assert len(data) < 200 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(Exception) as info:
        decode_image(_b64(data))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert info.value.status == 413 and grown_mb < 50 and 9000 * 9900 > MAX_PIXELS


@pytest.mark.parametrize("case", ["16bit", "palette", "exif-rotated"], ids=lambda c: f"route-{c}-decoded-correctly")
def test_route_decodes_like_the_reader(case, previous_export):
    if case == "16bit":
        v = np.random.default_rng(3).integers(0, 255, (24, 24), dtype=np.uint8)
        data, oracle = _save_bytes(Image.fromarray(v.astype(np.uint16) * 257), "PNG"), np.repeat(v[..., None], 3, 2)
    elif case == "palette":
        data = _save_bytes(Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=4), "PNG")
        oracle = RGB
    else:
        buf = io.BytesIO()
        _exif_image(buf, 6)
        data = buf.getvalue()
        oracle = np.rot90(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), k=-1)
    image = decode_image(_b64(data))  # numpy: the serving path is torch-free
    np.testing.assert_array_equal(image[0], np.ascontiguousarray(oracle).astype(np.float32) / 255)
    service = axera_nodes.InterrogateService(lambda: str(previous_export), threshold=0.0)
    ((status, body),) = _client_calls(service.handle, _post_all([{"image": _b64(data), "labels": ["x", "y"]}]))
    ranked = ClipRuntime(str(previous_export)).zero_shot(image, ["x", "y"], template="a photo of a {}")[0]
    assert status == 200 and body["caption"] == ", ".join(label for label, _ in ranked)


@pytest.mark.parametrize("env,message", [
    ({"CLIPWAN_INTERROGATE_LABELS": "/nonexistent/labels.txt"},
     "the interrogate route is misconfigured: CLIPWAN_INTERROGATE_LABELS='/nonexistent/labels.txt': label file not "
     "found: '/nonexistent/labels.txt' (give a text file, one label per line). Fix the environment variable and "
     "restart ComfyUI."),
    ({"CLIPWAN_INTERROGATE_THRESHOLD": "high"},
     "the interrogate route is misconfigured: CLIPWAN_INTERROGATE_THRESHOLD must be a number in [0, 1], got "
     "'high'. Fix the environment variable and restart ComfyUI."),
    ({"CLIPWAN_INTERROGATE_THRESHOLD": "7"},
     "the interrogate route is misconfigured: CLIPWAN_INTERROGATE_THRESHOLD must be in [0, 1], got 7.0. Fix the "
     "environment variable and restart ComfyUI."),
], ids=["route-env-labels-missing-503", "route-env-threshold-not-number-503", "route-env-threshold-range-503"])
def test_route_bad_environment_is_503_not_an_import_failure(env, message, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    route = axera_nodes.LazyInterrogateRoute()  # building the route reads nothing
    ((status, body),) = _client_calls(route.handle, _post_all([{"image": "x"}]))
    assert (status, body) == (503, {"error": message})
    assert route.service is None  # retried on the next request


def test_route_registration_builds_nothing_and_imports_no_onnx(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        os.environ["CLIPWAN_INTERROGATE_THRESHOLD"] = "not a number"
        from aiohttp import web
        import comfyui_clipwan
        from comfyui_clipwan.nodes import axera_nodes
        class Server:
            routes = web.RouteTableDef()
        axera_nodes.register_routes(Server)
        print(sorted(m for m in ("onnx", "onnxruntime", "comfyui_clipwan.axera_export") if m in sys.modules),
              [r.path for r in Server.routes])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] ['/sdapi/v1/interrogate', '/sdapi/v1/interrogate/structured']"


def test_route_text_cache_bounded_by_entries():
    cache = EmbeddingCache(max_entries=3, max_bytes=1 << 30)
    for i in range(10):
        cache.put(f"p{i}", np.zeros(4, np.float32))
    assert len(cache) == 3 and cache.get("p0") is None and cache.get("p9") is not None


def test_route_text_cache_bounded_by_bytes():
    cache = EmbeddingCache(max_entries=1000, max_bytes=4096)
    for i in range(100):
        cache.put(f"p{i}", np.zeros(256, np.float32))  # 1 KiB each
    assert len(cache) == 4 and cache.nbytes == 4096


def test_route_many_distinct_labels_keep_runtime_cache_bounded(previous_export):
    rt = ClipRuntime(str(previous_export))
    rt._text_cache.max_entries = 50
    for start in range(0, 300, 100):
        rt.zero_shot(torch.rand(1, 16, 16, 3), [f"label {i}" for i in range(start, start + 100)])
    assert len(rt._text_cache) == 50


def test_route_runtime_cache_keeps_two_folders(previous_export, tmp_path):
    import shutil

    others = [str(shutil.copytree(previous_export, tmp_path / f"e{i}")) for i in range(2)]
    cache = RuntimeCache()
    for folder in [str(previous_export)] + others:
        cache.get(folder)
    assert list(cache._cache) == others


def test_route_concurrent_requests_all_answered(previous_export):
    # a queue as long as the burst: every request waits its turn (a shorter queue answers the rest 503)
    service = axera_nodes.InterrogateService(lambda: str(previous_export), threshold=0.0, max_queue=50)
    img = _b64(_save_bytes(Image.fromarray(RGB), "PNG"))

    async def fn(client):
        responses = await asyncio.gather(*[client.post("/sdapi/v1/interrogate", json={"image": img, "labels": ["a"]})
                                           for _ in range(50)])
        return [(r.status, await r.json()) for r in responses]

    results = _client_calls(service.handle, fn)
    assert [(status, body["caption"]) for status, body in results] == [(200, "a")] * 50


# --------------------------------------------------------------------------------------------------------------
# node functions and outputs
# --------------------------------------------------------------------------------------------------------------
def test_node_load_clip_vision_random_bytes(tmp_path):
    from comfyui_clipwan.nodes.clip_nodes import LoadCLIPVisionH14

    path = _write(tmp_path / "clip_vision_h.safetensors", bytes(range(16, 100)))
    with pytest.raises(ValueError) as info:
        LoadCLIPVisionH14().load(path)
    assert str(info.value).startswith(f"'{path}' is not a weights file: it is neither safetensors nor a PyTorch")


def test_node_load_causal_wan_folder(tmp_path):
    from comfyui_clipwan.nodes.wan_nodes import LoadCausalWanModel

    with pytest.raises(ValueError) as info:
        LoadCausalWanModel().load(str(tmp_path))
    assert str(info.value) == (f"Wan model path '{tmp_path}' is a folder, not a file: give the weights file inside "
                               f"it ({EXTS}).")


def test_node_load_causal_wan_nan_weights(tmp_path, wan_sd):
    from comfyui_clipwan.nodes.wan_nodes import LoadCausalWanModel

    path = _make("nan_safetensors", str(tmp_path / "wan.safetensors"), wan_sd, "blocks.0.ffn.0.weight")
    with pytest.raises(ValueError) as info:
        LoadCausalWanModel().load(path)
    assert str(info.value).startswith(f"'{path}': tensor 'blocks.0.ffn.0.weight' contains NaN or Inf values (1 of "
                                      f"20480 entries)")


@pytest.mark.parametrize("sub,want", [
    ("../x", "output_subfolder '../x' contains '..'; exports must stay inside ComfyUI's output directory ({root})"),
    ("/etc", "output_subfolder '/etc' is an absolute path; give a folder name relative to ComfyUI's output "
             "directory ({root})"),
    ("  ", "output_subfolder is empty: give a folder name such as 'clipwan_axera'"),
    ("./", "output_subfolder './' is the output directory itself; give a folder name inside it such as "
           "'clipwan_axera'"),
], ids=["node-export-dotdot", "node-export-absolute", "node-export-empty", "node-export-output-dir-itself"])
def test_node_export_folder_rules(sub, want, tmp_path):
    with pytest.raises(ValueError) as info:
        axera_nodes.safe_output_folder(sub, str(tmp_path))
    assert str(info.value) == want.format(root=tmp_path)


def test_node_zero_shot_empty_labels(previous_export):
    with pytest.raises(ValueError) as info:
        axera_nodes.CLIPZeroShotAxera().classify(torch.rand(1, 8, 8, 3), " \n , ", "a photo of {}.",
                                                 str(previous_export))
    assert str(info.value) == "labels is empty: give one label per line"


def test_output_clip_features_nan_named(files):
    model = load_clip_vision(files / "clip.safetensors")
    with torch.no_grad():
        model.model.patch_embedding.weight.view(-1)[0] = float("inf")
    with pytest.raises(ValueError) as info:
        model.encode_image(torch.rand(1, 64, 64, 3))
    assert str(info.value) == (f"CLIP vision ({files / 'clip.safetensors'}): the output 'last_hidden_state' "
                               f"contains NaN or Inf values; the activations overflowed in float32 (load the model "
                               f"in bf16 or fp32) or the weights are damaged")


def test_output_node_encode_nan_named(files):
    from comfyui_clipwan.nodes.clip_nodes import CLIPVisionEncodeWan

    model = load_clip_vision(files / "clip.safetensors")
    with torch.no_grad():
        model.model.class_embedding.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"the output 'last_hidden_state' contains NaN or Inf values"):
        CLIPVisionEncodeWan().encode(model, torch.rand(1, 64, 64, 3))


def test_output_latent_nan_named_by_block():
    x0 = torch.zeros(1, 16, 3, 2, 2)
    check_finite_latent(x0, 0, 0, torch.float32)
    x0[0, 0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError) as info:
        check_finite_latent(x0, 4, 12, torch.float16)
    assert str(info.value) == ("the sampled latent of block 4 (latent frames 12..14) contains NaN or Inf values: the "
                               "model's activations overflowed in float16, or an input (text embedding, CLIP "
                               "features, image latent) holds NaN. Load the model in bf16 or fp32 and check the "
                               "inputs.")


def test_output_sampler_refuses_nan_text_embedding():
    from comfyui_clipwan.wan import CausalSettings, sample_causal

    model = CausalWanModel.random(WAN_T2V, seed=1)
    text = torch.zeros(1, 4, 4096)
    text[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^the sampled latent of block 0 \(latent frames 0\.\.0\) contains NaN"):
        sample_causal(model, torch.zeros(1, 16, 1, 2, 2), text,
                      settings=CausalSettings(steps="1000", frames_per_block=1))


# ==============================================================================================================
# Round two: the inputs the new features brought (LoRA files, presets and families, streaming writers, text
# encoders, Wan 2.2, very long or very large requests). Ids: ``lora-…``, ``family-…``, ``window-…``,
# ``video-…``, ``fit-…``, ``tokenizer-…``, ``early-…``, ``message-…``, ``output-…``.
# ==============================================================================================================
from comfyui_clipwan.wan import CausalSettings, sample_causal  # noqa: E402
from comfyui_clipwan.wan.sampling import budget  # noqa: E402
from comfyui_clipwan.wan.model.lora import merge_lora  # noqa: E402

WAN22_TINY = WanConfig(dim=128, ffn_dim=160, num_heads=1, num_layers=1, in_dim=48, out_dim=48)
RANK = 4


def _peft_lora(sd, rank=RANK, seed=5, targets=("blocks.0.self_attn.q", "blocks.0.ffn.0")):
    """A PEFT LoRA (LongLive's key names) for the modules ``targets`` of the state dict ``sd``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in targets:
        w = sd[t + ".weight"]
        out[f"base_model.model.{t}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.1
        out[f"base_model.model.{t}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.1
    return out


@pytest.fixture(scope="module")
def lora_file(files, wan_sd):
    path = files / "lora.safetensors"
    save_file(_peft_lora(wan_sd), str(path))
    return path


class _Patcher:
    """The three ModelPatcher methods Apply Causal Wan LoRA calls, over a plain state dict (fp16 here)."""

    def __init__(self, sd, dtype=torch.float16):
        self.sd = {"diffusion_model." + k: v.to(dtype) for k, v in sd.items()}
        self.patches = {}

    def clone(self):
        return self

    def add_patches(self, patches, strength):
        self.patches.update(patches)
        return [k for k in patches if k in self.sd]

    def model_state_dict(self, prefix=None):
        return {k: v for k, v in self.sd.items() if prefix is None or k.startswith(prefix)}


def _lora_entry(entry, path, strength, wan_files, capsys):
    """Every way to apply a LoRA file: the Python API (merge, from_file), both nodes and the CLI."""
    from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA
    from comfyui_clipwan.nodes.wan_nodes import LoadCausalWanModel
    from comfyui_clipwan.wan.model.lora import load_lora_file

    model_file = str(wan_files / "wan.safetensors")
    if entry == "merge":
        return merge_lora(load_wan_state_dict(model_file)[0], load_lora_file(str(path)), strength,
                          source=os.path.basename(path))
    if entry == "from_file":
        return CausalWanModel.from_file(model_file, lora=str(path), lora_strength=strength)
    if entry == "load-node":
        return LoadCausalWanModel().load(model_file, "default", "auto", str(path), strength)
    if entry == "apply-node":
        return ApplyCausalWanLoRA().apply(_Patcher(load_wan_state_dict(model_file)[0]), str(path), strength)
    code, _, err = _cli(["sample", "--model", model_file, "--lora", path, f"--lora-strength={strength}",
                         "--out", wan_files / "cli_out"], capsys)
    assert code == 2
    raise ValueError(err.removeprefix("error: "))


LORA_ENTRIES = ["merge", "from_file", "load-node", "apply-node", "cli"]


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", LORA_ENTRIES)
def test_lora_strength_not_finite_refused_everywhere(entry, strength, files, lora_file, capsys):
    with pytest.raises(ValueError) as info:
        _lora_entry(entry, lora_file, strength, files, capsys)
    assert str(info.value) == (f"lora.safetensors: LoRA strength {strength} is not a finite number; give e.g. 1.0 "
                               f"(as trained), 0.5 or -1.0.")


@pytest.mark.parametrize("entry", ["merge-fp16", "from_file-fp16", "apply-node-fp16"])
def test_lora_strength_overflowing_the_weights_dtype_refused(entry, tmp_path, wan_sd, lora_file, files):
    """Strength 1e6 on fp16 weights: the merged weight passes 65504, it would be stored as inf (then NaN)."""
    from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA
    from comfyui_clipwan.wan.model.lora import load_lora_file

    lora = load_lora_file(str(lora_file))
    oracle = float(((wan_sd["blocks.0.self_attn.q.weight"].half().float()
                     + 1e6 * lora["base_model.model.blocks.0.self_attn.q.lora_B.weight"]
                     @ lora["base_model.model.blocks.0.self_attn.q.lora_A.weight"] / RANK * RANK).abs().max()))
    assert oracle > 65504
    with pytest.raises(ValueError) as info:
        if entry == "merge-fp16":
            merge_lora({k: v.half() for k, v in wan_sd.items()}, lora, 1e6, source="lora.safetensors")
        elif entry == "from_file-fp16":
            CausalWanModel.from_file(str(files / "wan.safetensors"), dtype="fp16", lora=str(lora_file),
                                     lora_strength=1e6)
        else:
            ApplyCausalWanLoRA().apply(_Patcher(wan_sd), str(lora_file), 1e6)
    msg = str(info.value)
    if entry == "from_file-fp16":  # merged in the file's fp32, refused where it is cast to fp16
        assert re.fullmatch(r"wan\.safetensors \+ LoRA lora\.safetensors x1e\+06: weight 'blocks\.0\.(self_attn\.q|"
                            r"ffn\.0)\.weight' holds values up to [\d.e+]+, beyond what float16 holds \(6\.55e\+04\); "
                            r"load the model in bf16 or fp32 \(or lower the LoRA strength\)\.", msg), msg
    else:
        assert re.fullmatch(r"lora\.safetensors at strength 1e\+06: the merged weight '(diffusion_model\.)?blocks\.0\."
                            r"(self_attn\.q|ffn\.0)\.weight' reaches [\d.e+]+, beyond what float16 holds \(6\.55e\+04\); "
                            r"lower the strength \(1\.0 = as trained\) or load the model in a wider dtype\.", msg), msg


def test_lora_large_but_fitting_strength_merges_exactly(wan_sd, lora_file):
    """Control: strength 10 on fp32 stays finite and equals W + 10·B@A (PEFT's merge written out here)."""
    from comfyui_clipwan.wan.model.lora import load_lora_file

    lora = load_lora_file(str(lora_file))
    merged = merge_lora(wan_sd, lora, 10.0)
    a, b = (lora[f"base_model.model.blocks.0.ffn.0.lora_{x}.weight"] for x in "AB")
    torch.testing.assert_close(merged["blocks.0.ffn.0.weight"], wan_sd["blocks.0.ffn.0.weight"] + 10.0 * (b @ a),
                               atol=1e-5, rtol=0)


def _comfy_kohya_key_map(sd):
    """ComfyUI core's ``model_lora_keys_unet`` (comfy/lora.py) for a Wan MODEL, written out: every weight
    ``diffusion_model.<path>.weight`` is reachable as ``lora_unet_<path with '.' -> '_'>``."""
    return {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): k for k in sd if k.endswith(".weight")}


@pytest.mark.parametrize("style", ["kohya", "kohya-alpha", "lycoris", "kohya-k_img"],
                         ids=lambda s: f"lora-{s}-names-load")
def test_lora_kohya_names_merge_like_comfyui(style, wan_sd):
    from comfyui_clipwan.wan.model.lora import lora_pairs

    sd = dict(wan_sd)
    if style == "kohya-k_img":  # an i2v model's image key projection: a Wan name with '_' inside
        sd = dict(CausalWanModel.random(WanConfig(dim=128, ffn_dim=160, num_heads=1, num_layers=1, in_dim=36,
                                                  has_img_emb=True), seed=2).state_dict())
        targets = ("blocks.0.cross_attn.k_img", "blocks.0.self_attn.o")
    else:
        targets = ("blocks.0.self_attn.q", "blocks.0.cross_attn.v", "blocks.0.ffn.2", "text_embedding.0")
    key_map = _comfy_kohya_key_map(sd)
    by_module = {v[:-len(".weight")]: k for k, v in key_map.items()}
    g = torch.Generator().manual_seed(9)
    lora, want = {}, {}
    for t in targets:
        name = by_module[t].replace("lora_unet_", "lycoris_") if style == "lycoris" else by_module[t]
        w = sd[t + ".weight"]
        down, up = torch.randn(2, w.shape[1], generator=g), torch.randn(w.shape[0], 2, generator=g)
        lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
        alpha = 1.0 if style == "kohya-alpha" else 2.0
        if style == "kohya-alpha":
            lora[f"{name}.alpha"] = torch.tensor(alpha)
        want[t + ".weight"] = w + 0.5 * (alpha / 2) * (up @ down)  # ComfyUI: strength · alpha/rank · up @ down
    assert sorted(lora_pairs(lora)) == sorted(want)
    merged = merge_lora(sd, lora, 0.5)
    for key, value in want.items():
        torch.testing.assert_close(merged[key], value, atol=1e-5, rtol=0)


def test_lora_kohya_names_through_apply_node(wan_sd, tmp_path):
    from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA

    lora = {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.randn(2, 128),
            "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.randn(128, 2)}
    save_file(lora, str(tmp_path / "k.safetensors"))
    patcher = _Patcher(wan_sd)
    ApplyCausalWanLoRA().apply(patcher, str(tmp_path / "k.safetensors"), 1.0)
    assert list(patcher.patches) == ["diffusion_model.blocks.0.self_attn.q.weight"]


@pytest.mark.parametrize("lora_width,model_width,kind,lora_said,model_said", [
    (3072, 1536, "another Wan generation", "Wan 2.2 TI2V-5B (width 3072)", "Wan 2.1 1.3B (width 1536)"),
    (1536, 3072, "another Wan generation", "Wan 2.1 1.3B (width 1536)", "Wan 2.2 TI2V-5B (width 3072)"),
    (5120, 1536, "another Wan size", "Wan 2.1 14B (width 5120)", "Wan 2.1 1.3B (width 1536)"),
], ids=["lora-wan22-lora-on-wan21", "lora-wan21-lora-on-wan22", "lora-14b-lora-on-1.3b"])
def test_lora_of_another_generation_named(lora_width, model_width, kind, lora_said, model_said):
    sd = {"head.modulation": torch.zeros(1, 2, model_width),
          "blocks.0.self_attn.q.weight": torch.zeros(model_width, model_width)}
    lora = {"blocks.0.self_attn.q.lora_A.weight": torch.zeros(1, lora_width),
            "blocks.0.self_attn.q.lora_B.weight": torch.zeros(lora_width, 1)}
    with pytest.raises(ValueError) as info:
        merge_lora(sd, lora, source="x.safetensors")
    assert str(info.value) == (f"x.safetensors: 'blocks.0.self_attn.q.weight' is [{model_width}, {model_width}] in "
                               f"the model but the LoRA gives [{lora_width}, {lora_width}]; the LoRA was trained on "
                               f"{kind}: {lora_said}, the model is {model_said}. Use a LoRA made for it.")


# --- family presets on the wrong model -----------------------------------------------------------------------
def _family_run(family, config, entry="api", **overrides):
    """Run ``family``'s own values on a tiny model of ``config`` through one entry point."""
    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
    from comfyui_clipwan.wan.sampling.presets import get_preset

    p = get_preset(family)
    model = CausalWanModel.random(config, seed=1)
    c = config.out_dim
    if entry == "node":
        values = {**p.sampler_values(), **overrides}
        latent = {"samples": torch.zeros(1, c, 1 + p.frames_per_block, 2, 2)}
        return CausalWanSampler().sample(model, [[torch.zeros(1, 4, 4096), {}]], latent, 0, **values)
    settings = CausalSettings(steps=p.steps, shift=p.shift, warp=p.warp_steps, frames_per_block=p.frames_per_block,
                              sink_size=p.sink_size, local_window=p.local_window, family=p.name,
                              independent_first_frame=p.independent_first_frame, **p.loop_rules())
    settings = dataclasses.replace(settings, **overrides)
    frames = (1 if p.independent_first_frame else 0) + p.frames_per_block
    return sample_causal(model, torch.zeros(1, c, frames, 2, 2), torch.zeros(1, 4, 4096), settings=settings)


import dataclasses  # noqa: E402

FAMILY_MISMATCH = {
    "family-wan22-family-on-wan21-api": ("LongLive 2.0", WAN_T2V, "api"),
    "family-wan22-family-on-wan21-node": ("LongLive 2.0", WAN_T2V, "node"),
    "family-wan21-family-on-wan22-api": ("Self-Forcing", WAN22_TINY, "api"),
    "family-wan21-family-on-wan22-node": ("Reward Forcing", WAN22_TINY, "node"),
}


@pytest.mark.parametrize("case", list(FAMILY_MISMATCH), ids=list(FAMILY_MISMATCH))
def test_family_of_another_generation_refused(case):
    from comfyui_clipwan.wan.sampling.presets import get_preset

    family, config, entry = FAMILY_MISMATCH[case]
    p = get_preset(family)
    gen = "Wan 2.2" if config.out_dim == 48 else "Wan 2.1"
    other = "Wan 2.1" if gen == "Wan 2.2" else "Wan 2.2"
    with pytest.raises(ValueError) as info:
        _family_run(family, config, entry)
    assert str(info.value).startswith(f"family '{family}' was distilled from {p.base} ({other}), but the model is "
                                      f"{config.describe()}: its loop rules do not apply to a {gen} model. Choose "
                                      f"family 'custom' or a {gen} family ("), str(info.value)


@pytest.mark.parametrize("family,dim,ffn,layers,size", [
    ("Self-Forcing", 5120, 13824, 40, "14B"), ("Krea Realtime 14B", 1536, 8960, 30, "1.3B")],
    ids=["family-1.3b-family-on-14b", "family-14b-family-on-1.3b"])
def test_family_of_another_size_refused(family, dim, ffn, layers, size):
    from comfyui_clipwan.wan.sampling.presets import check_family_fits, get_preset

    config = WanConfig(dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers, in_dim=16)
    p = get_preset(family)
    with pytest.raises(ValueError) as info:
        check_family_fits(family, config)
    assert str(info.value).startswith(f"family '{family}' was distilled from {p.base} "), str(info.value)
    assert f"but the model is {config.describe()}: its settings are for another size. Choose family 'custom' or a " \
           f"Wan 2.1 {size} family (" in str(info.value)


def test_family_on_a_custom_size_model_of_its_generation_runs():
    """Control: a tiny (custom-size) Wan 2.1 model takes a Wan 2.1 family and gives the family-less result for
    the same settings (Self-Forcing has no extra loop rules)."""
    with_family = _family_run("Self-Forcing", WAN_T2V)
    from comfyui_clipwan.wan.sampling.presets import get_preset

    p = get_preset("Self-Forcing")
    plain = sample_causal(CausalWanModel.random(WAN_T2V, seed=1), torch.zeros(1, 16, 4, 2, 2), torch.zeros(1, 4, 4096),
                          settings=CausalSettings(steps=p.steps, shift=p.shift, frames_per_block=3,
                                                  independent_first_frame=True))
    assert torch.equal(with_family, plain)


def test_family_rule_error_names_family_and_model():
    with pytest.raises(ValueError) as info:
        _family_run("MemFlow", WAN_T2V, sink_size=0)
    assert str(info.value).startswith(f"family 'MemFlow' on the model {WAN_T2V.describe()}: the memory loop (MemFlow) "
                                      f"needs an attention sink and a local window"), str(info.value)


@pytest.mark.parametrize("entry", ["generator_ema", "generator", "model"], ids=lambda e: f"family-entry-{e}-on-flat-file")
def test_preset_entry_on_a_flat_file_loads_it(entry, files, wan_sd):
    """A preset's checkpoint entry never refuses a flat .safetensors of the same weights (API and node)."""
    from comfyui_clipwan.nodes.wan_nodes import LoadCausalWanModel

    sd, _ = load_wan_state_dict(str(files / "wan.safetensors"), entry)
    assert sd.keys() == wan_sd.keys() and all(torch.equal(sd[k], wan_sd[k]) for k in sd)
    (model,) = LoadCausalWanModel().load(str(files / "wan.safetensors"), "default", entry)
    assert torch.equal(model.state_dict()["head.head.weight"], wan_sd["head.head.weight"])


def test_entry_missing_from_a_container_still_refused(tmp_path, wan_sd):
    """Control: a training checkpoint that lacks the entry is still an error naming the entries it has."""
    path = tmp_path / "ckpt.pt"
    torch.save({"generator": {"model." + k: v for k, v in wan_sd.items()}}, path)
    with pytest.raises(ValueError) as info:
        load_wan_state_dict(str(path), "generator_ema")
    assert str(info.value) == "ckpt.pt has no tensor entry 'generator_ema'; entries with tensors: ['generator']."


# --- a window larger than the video --------------------------------------------------------------------------
@pytest.mark.parametrize("rules", [{}, {"positions": "slots", "sink_ema": 0.999}, {"loop": "rolling"}],
                         ids=["window-huge-block-loop", "window-huge-slots", "window-huge-rolling"])
def test_window_larger_than_the_video_caches_only_the_video(rules):
    """local_window 10⁶ on 4 latent frames: the cache holds 4 frames (not 10⁶: ~1 TB at real size) and the run
    equals the run without a window (every frame is inside either way)."""
    model = CausalWanModel.random(WAN_T2V, seed=1)
    runs = {}
    for window in (0, 10 ** 6):
        stats = {}
        s = CausalSettings(steps="1000,500", frames_per_block=1, sink_size=1 if rules else 0, local_window=window,
                           **rules)
        runs[window] = (sample_causal(model, torch.zeros(1, 16, 4, 2, 2), torch.zeros(1, 4, 4096), settings=s,
                                      stats=stats), stats["cache_bytes"])
    assert torch.equal(runs[0][0], runs[10 ** 6][0])
    # 1 layer x (K, V) x 4 frames x 1 token x 128 channels x 4 bytes
    assert runs[10 ** 6][1] == runs[0][1] == 2 * 4 * 1 * 128 * 4


# --- video writers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps", [0, -16, float("nan"), float("inf"), 10 ** 9, "fast"],
                         ids=lambda f: f"video-fps-{f}")
def test_video_fps_refused_before_any_file(fps, tmp_path):
    from comfyui_clipwan.wan.video.writer import VideoWriter

    with pytest.raises(ValueError) as info:
        VideoWriter(str(tmp_path / "v.mp4"), fps=fps)
    assert str(info.value) == f"fps {fps!r} is not a frame rate: give a number above 0 and at most 1000 (Wan: 16)."
    assert os.listdir(tmp_path) == []


def test_video_fps_refused_by_the_stream_node_before_sampling(tmp_path, monkeypatch):
    from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
    from comfyui_clipwan.wan.vae.taehv import TAEHV

    monkeypatch.setattr(bridge_module(), "output_directory", lambda: str(tmp_path))
    # the settings' declaration checks the widget first (its range); wan.video.writer.check_fps guards the writer
    with pytest.raises(ValueError, match=r"^fps 0 is outside \[1, 120\]"):
        CausalWanStreamVideo().stream(CausalWanModel.random(WAN_T2V, seed=1), [[torch.zeros(1, 4, 4096), {}]],
                                      {"samples": torch.zeros(1, 16, 3, 2, 2)}, 0, TAEHV.random(), fps=0)
    assert os.listdir(tmp_path) == []


def bridge_module():
    from comfyui_clipwan.nodes import comfy_bridge

    return comfy_bridge


def _frames(n=3, seed=0, h=32, w=48):
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def test_video_two_writers_on_one_path_refused(tmp_path):
    from comfyui_clipwan.wan.video.writer import VideoWriter

    first = VideoWriter(str(tmp_path / "v.mp4"))
    with pytest.raises(ValueError) as info:
        VideoWriter(str(tmp_path / "v.mp4"))
    assert str(info.value) == (f"cannot write video '{tmp_path / 'v.mp4'}': another VideoWriter is writing that file "
                               f"now; give each writer its own path (close the first one before reusing the name).")
    first.write(_frames())
    assert first.close() == str(tmp_path / "v.mp4")
    with VideoWriter(str(tmp_path / "v.mp4")) as again:  # closed: the name is free again
        again.write(_frames(seed=1))


def test_video_writers_in_one_folder_never_share_a_temporary(tmp_path):
    """Two writers at once (same base name, other extension): each writes its own temporary and each file holds
    exactly its own frames (oracle: the frames decoded back are the ones written, up to the codec's loss)."""
    from comfyui_clipwan.wan.video.writer import VideoWriter, read_video_frames

    a, b = VideoWriter(str(tmp_path / "v.mp4")), VideoWriter(str(tmp_path / "v.webm"))
    a.write(np.zeros((2, 32, 48, 3), np.uint8))
    b.write(np.full((3, 32, 48, 3), 255, np.uint8))
    assert len([n for n in os.listdir(tmp_path) if ".partial" in n]) == 2
    assert a.close() == str(tmp_path / "v.mp4") and b.close() == str(tmp_path / "v.webm")
    da, db = read_video_frames(str(tmp_path / "v.mp4")), read_video_frames(str(tmp_path / "v.webm"))
    assert da.shape[0] == 2 and db.shape[0] == 3 and da.max() < 10 and db.min() > 245
    assert sorted(os.listdir(tmp_path)) == ["v.mp4", "v.webm"]


def test_video_close_without_frames_hands_back_nothing(tmp_path):
    from comfyui_clipwan.wan.video.writer import VideoWriter

    (tmp_path / "v.mp4").write_bytes(b"someone else's video")
    assert VideoWriter(str(tmp_path / "v.mp4")).close() is None
    assert (tmp_path / "v.mp4").read_bytes() == b"someone else's video"


def test_video_stream_runs_with_one_prefix_get_their_own_files(tmp_path, monkeypatch):
    """Two runs that start before either finishes: the names are reserved at the start, so each gets its own."""
    from comfyui_clipwan.wan.video.writer import VideoWriter

    bridge = bridge_module()
    monkeypatch.setattr(bridge, "output_directory", lambda: str(tmp_path))
    monkeypatch.setattr(bridge, "_folder_paths", lambda: None)
    first = bridge.video_save_path("ClipWan/causal", "mp4", 32, 32)
    second = bridge.video_save_path("ClipWan/causal", "mp4", 32, 32)
    assert (first[1], second[1]) == ("causal_00001_.mp4", "causal_00002_.mp4")
    writers = [VideoWriter(p, reserved=True) for p, _, _ in (first, second)]
    writers[1].write(_frames(2))
    assert writers[1].close() == second[0]
    assert writers[0].close() is None  # stopped before its first frame: its reserved name is given back
    assert sorted(os.listdir(tmp_path / "ClipWan")) == ["causal_00002_.mp4"]


@pytest.mark.parametrize("fmt", ["mp4", "webm"], ids=lambda f: f"video-{f}-same-frames-same-bytes")
def test_video_same_frames_give_byte_identical_files(fmt, tmp_path):
    from comfyui_clipwan.wan.video.writer import VideoWriter

    frames = _frames(9, h=96, w=160)
    digests = []
    for i in range(2):
        with VideoWriter(str(tmp_path / f"{i}.{fmt}"), fps=16) as w:
            w.write(frames[:4])
            w.write(frames[4:])
        digests.append(hashlib.sha256((tmp_path / f"{i}.{fmt}").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert re.search(rb"Lavf\d", (tmp_path / f"0.{fmt}").read_bytes()) is None  # bit-exact: no library version


def test_video_encoder_thread_count_is_fixed(tmp_path):
    """Why the count is fixed: x264's bytes depend on its thread count (the default follows the machine's cores)."""
    import av

    from comfyui_clipwan.wan.video import writer as video_writer

    frames = _frames(9, h=240, w=416)
    out = {}
    for threads in (1, video_writer.ENCODER_THREADS):
        with av.open(str(tmp_path / f"{threads}.mp4"), "w", format="mp4") as c:
            c.flags |= av.container.Flags.bitexact.value
            s = c.add_stream("libx264", rate=16, options={"crf": "19", "preset": "medium", "threads": str(threads)})
            s.width, s.height, s.pix_fmt = 416, 240, "yuv420p"
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        out[threads] = (tmp_path / f"{threads}.mp4").read_bytes()
    assert out[1] != out[video_writer.ENCODER_THREADS]
    assert video_writer.FORMATS["mp4"][2]["threads"] == video_writer.FORMATS["webm"][2]["threads"] == "4"


# --- output files: one mode, nothing stale --------------------------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return oct(os.stat(path).st_mode & 0o777)


def test_output_modes_are_the_users_default(tmp_path, capsys, files, umask_022, h14_file, image_png):
    """safetensors (latent, features), JSON, video: all 0644 under umask 022 (save_file alone makes 0600)."""
    from comfyui_clipwan.wan.video.writer import VideoWriter

    code, _, _ = _cli(["sample", "--model", files / "wan.safetensors", "--length", "1", "--frames-per-block", "1",
                       "--width", "16", "--height", "16", "--steps", "1000", "--out", tmp_path / "s"], capsys)
    assert code == 0
    code, _, _ = _cli(["encode", image_png, "--weights", h14_file, "--out", tmp_path / "f.safetensors"], capsys)
    assert code == 0
    with VideoWriter(str(tmp_path / "v.mp4")) as w:
        w.write(_frames())
    paths = [tmp_path / "s" / "wan_latent.safetensors", tmp_path / "s" / "wan_summary.json",
             tmp_path / "s" / "wan_preview.webp", tmp_path / "f.safetensors", tmp_path / "v.mp4"]
    assert [_mode(p) for p in paths] == ["0o644"] * 5


def test_output_interrupted_run_leaves_no_stale_summary(tmp_path, capsys, files, monkeypatch):
    """Run 1 writes its summary; run 2 into the same folder is interrupted: no summary describing run 1's files."""
    import comfyui_clipwan.wan as wan_pkg

    args = ["sample", "--model", files / "wan.safetensors", "--frames-per-block", "1", "--width", "16",
            "--height", "16", "--steps", "1000", "--out", tmp_path]
    code, _, _ = _cli([*args, "--length", "9"], capsys)
    assert code == 0 and json.loads((tmp_path / "wan_summary.json").read_text())["latent_shape"][2] == 3

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(wan_pkg, "sample_causal", interrupted)
    code, _, _ = _cli([*args, "--length", "1"], capsys)
    assert code == 130 and not (tmp_path / "wan_summary.json").exists()


# --- requests that cannot fit: refused up front with the size they would need ---------------------------------
@pytest.fixture
def eight_gib_free(monkeypatch):
    monkeypatch.setattr(budget, "free_bytes", lambda device=None: 8 * budget.GIB)


FIT_CASES = {
    "fit-i2v-million-frames": (lambda: _i2v(4_000_001, 832, 480),
                               "the conditioning latent [1, 16, 1000001, 60, 104] (float32) would need 371.9 GiB, but "
                               "this machine's memory has 8.0 GiB free"),
    "fit-ti2v-million-frames": (lambda: _ti2v(4_000_001, 1280, 704),
                                "the conditioning latent [1, 48, 1000001, 44, 80] (float32) would need 629.4 GiB, but "
                                "this machine's memory has 8.0 GiB free"),
    "fit-i2v-start-image-padding": (lambda: _i2v(20_001, 832, 480, image=True),
                                    "the 20001 pixel frames of 832x480 the VAE encodes (float32) would need 89.3 GiB, "
                                    "but this machine's memory has 8.0 GiB free"),
}


def _i2v(length, width, height, image=False):
    from comfyui_clipwan.wan.conditioning.image import i2v_latents

    return i2v_latents(width, height, length, 1, torch.zeros(1, 8, 8, 3) if image else None,
                       (lambda p: p) if image else None)


def _ti2v(length, width, height):
    from comfyui_clipwan.wan.conditioning.image import ti2v_latents

    return ti2v_latents(width, height, length, 1, None, None)


@pytest.mark.parametrize("case", list(FIT_CASES), ids=list(FIT_CASES))
def test_fit_conditioning_refused_with_its_size(case, eight_gib_free):
    make, start = FIT_CASES[case]
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(start + "; it was refused before anything was allocated."), str(info.value)


def test_fit_cli_long_length_refused_before_sampling(tmp_path, capsys, files, eight_gib_free):
    code, _, err = _cli(["sample", "--model", files / "wan.safetensors", "--length", "40000001", "--width", "832",
                         "--height", "480", "--out", tmp_path], capsys)
    need = budget.gib(4 * 16 * 10000001 * 60 * 104)  # oracle: the float32 latent's bytes
    assert code == 2 and err.startswith(f"error: the latent [1, 16, 10000001, 60, 104] (float32) would need {need}, "
                                        f"but this machine's memory has 8.0 GiB free"), err


def test_fit_huge_frame_refused_by_the_loop_before_sampling(monkeypatch):
    """A 4096² frame (65536 tokens): the KV cache alone needs more than the 64 MiB this test says are free."""
    monkeypatch.setattr(budget, "free_bytes", lambda device=None: 64 * 1024 ** 2)
    model = CausalWanModel.random(WAN_T2V, seed=1)
    with pytest.raises(ValueError) as info:
        sample_causal(model, torch.zeros(1, 16, 2, 512, 512), torch.zeros(1, 4, 4096),
                      settings=CausalSettings(steps="1000", frames_per_block=1))
    # oracle: 1 layer x (K, V) x 2 frames x 65536 tokens x 128 channels x 4 bytes + one block's activations
    cache = 2 * 2 * 65536 * 128 * 4
    block = 65536 * (160 + 6 * 128) * 4
    assert str(info.value) == (f"this run (2 latent frames of 512x512: a KV cache of 2 frames x 65536 tokens x 1 "
                               f"layers, and one block's activations) would need {budget.gib(cache + block)}, but "
                               f"this machine's memory has 64.0 MiB free; it was refused before anything was "
                               f"allocated. Use a smaller width/height or fewer frames, or a local_window (flat "
                               f"memory for any length).")


def test_fit_long_stream_with_a_window_stays_allowed(monkeypatch):
    """Control: 2000 latent frames fit with a window of 3 (flat cache); without the window they are refused."""
    monkeypatch.setattr(budget, "free_bytes", lambda device=None: 1024 ** 2)
    model = CausalWanModel.random(WAN_T2V, seed=1)
    latent, text = torch.zeros(1, 16, 2000, 2, 2), torch.zeros(1, 4, 4096)
    from comfyui_clipwan.wan.sampling.run import iter_causal_blocks

    loop = iter_causal_blocks(model, latent, text, settings=CausalSettings(frames_per_block=1, local_window=3))
    assert loop.cache_capacity() == 3
    with pytest.raises(ValueError, match=r"KV cache of 2000 frames"):
        iter_causal_blocks(model, latent, text, settings=CausalSettings(frames_per_block=1))


# --- text encoder and tokenizer files ------------------------------------------------------------------------
def _word_tokenizer(path, n_extra=0, eos=True):
    """A umt5-style tokenizer.json (WordLevel, '</s>' appended); ``n_extra`` more words grow its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "fox": 4}
    vocab.update({f"w{i}": 5 + i for i in range(n_extra)})
    if not eos:
        vocab = {("<eos>" if k == "</s>" else k): v for k, v in vocab.items()}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return UMT5EncoderModel(UMT5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4,
                                       is_encoder_decoder=False)).eval()


def _truncated_tokenizer(path):
    _word_tokenizer(path)
    data = open(path, "rb").read()
    return _write(path, data[: len(data) // 2])


TOKENIZER_ERRORS = {
    "tokenizer-json-empty": (lambda t: _write(t / "tokenizer.json", b""),
                             r"tokenizer '{p}' is empty \(0 bytes\): the download or copy did not finish\. Download "
                             r"the umt5-xxl tokenizer \(google/umt5-xxl\) again\."),
    "tokenizer-json-truncated": (lambda t: _truncated_tokenizer(t / "tokenizer.json"),
                                 r"tokenizer '{p}' cannot be read \(\w+: .*\); it is truncated, damaged or not a "
                                 r"tokenizer file\. Give the umt5-xxl tokenizer \(google/umt5-xxl: tokenizer\.json or "
                                 r"spiece\.model\), downloaded again\."),
    "tokenizer-json-foreign": (lambda t: _write(t / "tokenizer.json", json.dumps({"a": 1, "b": 2}).encode()),
                               r"tokenizer '{p}' cannot be read \(\w+: .*\); it is truncated, damaged or not a "
                               r"tokenizer file\. .*"),
    "tokenizer-spiece-random-bytes": (lambda t: _write(t / "spiece.model", bytes(range(256)) * 4),
                                      r"tokenizer '{p}' cannot be read \(\w+: .*\); it is truncated, damaged or not a "
                                      r"tokenizer file\. .*"),
    "tokenizer-folder-without-files": (lambda t: str(t),
                                       r"tokenizer '{p}' cannot be read \(\w+: .*\); it is truncated, damaged or not "
                                       r"a tokenizer file\. .*"),
    "tokenizer-without-eos": (lambda t: _word_tokenizer(t / "tokenizer.json", eos=False),
                              r"tokenizer '{p}' has no end-of-sequence token '</s>': it is not a T5 / umt5 tokenizer "
                              r"\(Wan needs google/umt5-xxl's\)\."),
}


@pytest.mark.parametrize("case", list(TOKENIZER_ERRORS), ids=list(TOKENIZER_ERRORS))
def test_tokenizer_bad_files_named(case, tmp_path):
    from comfyui_clipwan.wan.text.umt5 import load_tokenizer

    make, pattern = TOKENIZER_ERRORS[case]
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        load_tokenizer(path)
    assert re.fullmatch(pattern.format(p=re.escape(path)), str(info.value), re.S), str(info.value)


def test_tokenizer_larger_than_the_embedding_table_refused(tmp_path, tiny_umt5):
    from comfyui_clipwan.wan.text.umt5 import UMT5TextEncoder, load_tokenizer

    path = _word_tokenizer(tmp_path / "tokenizer.json", n_extra=60)  # 65 tokens, 40 embedding rows
    sd = {k: v for k, v in tiny_umt5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    with pytest.raises(ValueError) as info:
        UMT5TextEncoder.from_state_dict(sd, load_tokenizer(path), source="umt5_tiny.safetensors")
    assert str(info.value) == (f"tokenizer '{path}' has 65 tokens but the text encoder umt5_tiny.safetensors embeds "
                               f"only 40: they do not belong together (prompts would index past the table). Use the "
                               f"encoder's own tokenizer (umt5-xxl: google/umt5-xxl with 256384 embedding rows).")


def test_tokenizer_that_fits_encodes_like_transformers(tmp_path, tiny_umt5):
    """Control: a fitting tokenizer encodes exactly as transformers' model on the same ids."""
    from comfyui_clipwan.wan.text.umt5 import UMT5TextEncoder, load_tokenizer

    sd = {k: v for k, v in tiny_umt5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    enc = UMT5TextEncoder.from_state_dict(sd, load_tokenizer(_word_tokenizer(tmp_path / "tokenizer.json", 10)))
    with torch.no_grad():
        want = tiny_umt5(input_ids=torch.tensor([[3, 4, 1]])).last_hidden_state
    torch.testing.assert_close(enc.encode("a fox"), want, atol=1e-6, rtol=0)


# --- mismatches found before the first block ------------------------------------------------------------------
class _CountingHooks:
    def __init__(self):
        self.forwards = 0

    def on_forward_start(self, kind, block):
        self.forwards += 1

    on_forward_end = on_step = on_block = lambda self, *a: None


def _wan22_model():
    return CausalWanModel.random(WAN22_TINY, seed=2)


def test_early_tiny_decoder_on_a_wan22_model(monkeypatch):
    from comfyui_clipwan.wan.video.stream import stream_video
    from comfyui_clipwan.wan.vae.taehv import TAEHV

    hooks = _CountingHooks()
    with pytest.raises(ValueError) as info:
        stream_video(_wan22_model(), torch.zeros(1, 48, 2, 2, 2), torch.zeros(1, 4, 4096), vae=TAEHV.random(),
                     settings=CausalSettings(steps="4", frames_per_block=2), hooks=hooks)
    assert str(info.value) == (f"the decoder (TAEHVStreamingDecoder) reads 16-channel (Wan 2.1) latents, but the "
                               f"model {WAN22_TINY.describe()} makes 48-channel (Wan 2.2) latents: use the VAE of the "
                               f"model's generation (Wan 2.1: wan_2.1_vae or taew2_1, Wan 2.2: wan2.2_vae).")
    assert hooks.forwards == 0


def test_early_wan21_vae_on_a_wan22_model():
    from comfyui_clipwan.wan.video.stream import stream_video
    from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

    with pytest.raises(ValueError, match=r"^the decoder \(Wan 2\.1 VAE\) reads 16-channel \(Wan 2\.1\) latents, but "
                                         r"the model Wan 2\.2 custom ti2v .* makes 48-channel"):
        stream_video(_wan22_model(), torch.zeros(1, 48, 2, 2, 2), torch.zeros(1, 4, 4096),
                     vae=WanVAE.random(WanVAEConfig(dim=8)), settings=CausalSettings(steps="4", frames_per_block=2))


def test_early_wan22_vae_on_a_wan21_model():
    from comfyui_clipwan.wan.video.stream import check_decoder_fits

    class Wan22Decoder:  # what a Wan 2.2 VAE's stream decoder says about itself
        class vae:
            name = "Wan 2.2 VAE"

            class config:
                z_dim = 48

    with pytest.raises(ValueError, match=r"^the decoder \(Wan 2\.2 VAE\) reads 48-channel \(Wan 2\.2\) latents, but "
                                         r"the model Wan 2\.1 custom t2v"):
        check_decoder_fits(Wan22Decoder(), CausalWanModel.random(WAN_T2V, seed=1))


@pytest.mark.parametrize("which,width", [("switch", 768), ("negative", 4095), ("positive", 1024)],
                         ids=lambda v: f"early-text-width-{v}")
def test_early_text_of_the_wrong_width_named(which, width):
    from comfyui_clipwan.wan.sampling.loop import PromptSwitch

    hooks = _CountingHooks()
    good, bad = torch.zeros(1, 4, 4096), torch.zeros(1, 4, width)
    kwargs = {"switch": dict(prompt_switches=[PromptSwitch(2, bad)]), "negative": dict(negative_text=bad),
              "positive": {}}[which]
    name = {"switch": "switch_positive (the prompt switch at block 2)", "negative": "negative",
            "positive": "positive"}[which]
    with pytest.raises(ValueError) as info:
        sample_causal(CausalWanModel.random(WAN_T2V, seed=1), torch.zeros(1, 16, 3, 2, 2),
                      bad if which == "positive" else good, hooks=hooks,
                      settings=CausalSettings(steps="1000", frames_per_block=1,
                                              guidance_scale=2.0 if which == "negative" else 1.0), **kwargs)
    assert str(info.value) == (f"{name} text embedding has shape [1, 4, {width}]; the model ({WAN_T2V.describe()}) "
                               f"takes [batch, tokens, 4096] (Wan's umt5-xxl encoder output). Encode it with the Wan "
                               f"text encoder (umt5_xxl), not another CLIP/T5.")
    assert hooks.forwards == 0


def test_early_wan21_image_latent_on_a_wan22_model():
    from comfyui_clipwan.wan.conditioning.inputs import build_sampler_inputs

    image = torch.zeros(1, 16, 3, 4, 4)
    with pytest.raises(ValueError) as info:
        build_sampler_inputs(WAN22_TINY, torch.zeros(1, 48, 3, 2, 2), [[torch.zeros(1, 4, 4096), {
            "concat_latent_image": image, "concat_mask": torch.zeros(1, 1, 3, 4, 4)}]])
    assert str(info.value) == (f"concat_latent_image [1, 16, 3, 4, 4] has 16 channels, made by a Wan 2.1 VAE "
                               f"(wan_2.1_vae), but the model {WAN22_TINY.describe()} takes 48-channel latents: encode "
                               f"the start image with a Wan 2.2 VAE (wan2.2_vae) (Wan 2.2: Wan22ImageToVideoLatent).")


def test_early_cli_image_latent_of_another_generation(tmp_path, capsys, files):
    save_file({"latent": torch.zeros(1, 48, 1, 2, 2)}, str(tmp_path / "img.safetensors"))
    code, _, err = _cli(["sample", "--model", files / "wan.safetensors", "--image-latent", tmp_path / "img.safetensors",
                         "--length", "1", "--frames-per-block", "1", "--width", "16", "--height", "16",
                         "--out", tmp_path / "o"], capsys)
    assert (code, err) == (2, f"error: --image-latent '{tmp_path / 'img.safetensors'}' [1, 48, 1, 2, 2] has 48 "
                              f"channels, made by a Wan 2.2 VAE (wan2.2_vae), but the model {WAN_T2V.describe()} takes "
                              f"16-channel latents: encode the start image with a Wan 2.1 VAE (wan_2.1_vae) (Wan 2.2: "
                              f"Wan22ImageToVideoLatent).")


# --- messages that name the problem ---------------------------------------------------------------------------
@pytest.mark.parametrize("steps", ["nan", "inf", "1000,nan,250", [1000.0, float("-inf")]],
                         ids=lambda s: f"message-steps-{s}")
def test_message_non_finite_steps(steps):
    with pytest.raises(ValueError) as info:
        sample_causal(CausalWanModel.random(WAN_T2V, seed=1), torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 4, 4096),
                      settings=CausalSettings(steps=steps, frames_per_block=1))
    assert str(info.value) == (f"steps {steps!r} holds a value that is not a finite number (NaN or infinity); give a "
                               f"step count such as '4' or timesteps between 1 and 1000 such as '1000,750,500,250'.")


@pytest.mark.parametrize("seed", [2 ** 64, -1, 1.5, True], ids=lambda s: f"message-seed-{s}")
def test_message_seed_out_of_range(seed):
    with pytest.raises(ValueError) as info:
        sample_causal(CausalWanModel.random(WAN_T2V, seed=1), torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 4, 4096),
                      seed=seed, settings=CausalSettings(steps="1000", frames_per_block=1))
    assert str(info.value) == (f"seed {seed!r} is not a whole number from 0 to 2**64-1 (18446744073709551615), the "
                               f"range of ComfyUI's seeds; give e.g. 0 or 123456.")


def test_message_largest_seed_runs():
    """Control: 2⁶⁴-1 is ComfyUI's largest seed and runs (initial noise = torch's generator at that seed)."""
    out = sample_causal(CausalWanModel.random(WAN_T2V, seed=1), torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 4, 4096),
                        seed=2 ** 64 - 1, settings=CausalSettings(steps="1000", frames_per_block=1))
    assert torch.isfinite(out).all()


def test_message_wan22_odd_latent_asks_for_multiples_of_32():
    model = _wan22_model()
    with pytest.raises(ValueError) as info:
        model.forward(torch.zeros(1, 48, 1, 3, 2), torch.tensor([500.0]), torch.zeros(1, 4, 4096))
    assert str(info.value) == ("latent height/width 3x2 must be even (Wan patches are 2x2 latent pixels): use an image "
                               "size that is a multiple of 32 for a Wan 2.2 model.")


def test_lora_of_another_generation_named_by_the_apply_node(tmp_path):
    """The same message from Apply Causal Wan LoRA, on the MODEL's weights, before ComfyUI patches anything."""
    from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA

    sd = {"head.modulation": torch.zeros(1, 2, 1536), "blocks.0.self_attn.q.weight": torch.zeros(1536, 1536)}
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(1, 3072),
               "blocks.0.self_attn.q.lora_B.weight": torch.zeros(3072, 1)}, str(tmp_path / "ti2v.safetensors"))
    with pytest.raises(ValueError) as info:
        ApplyCausalWanLoRA().apply(_Patcher(sd), str(tmp_path / "ti2v.safetensors"), 1.0)
    assert str(info.value) == ("ti2v.safetensors: 'diffusion_model.blocks.0.self_attn.q.weight' is [1536, 1536] in the "
                               "MODEL but the LoRA gives [3072, 3072]; the LoRA was trained on another Wan generation: "
                               "Wan 2.2 TI2V-5B (width 3072), the model is Wan 2.1 1.3B (width 1536). Use a LoRA made "
                               "for it.")
