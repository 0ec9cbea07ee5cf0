"""``comfyui-clipwan sample`` and the wan demo step: files written, routes reported, clear errors."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from comfyui_clipwan.cli import main
from comfyui_clipwan.wan import CausalWanModel, WanConfig

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)


def test_sample_with_model_file_and_image_latent_route3(tmp_path, capsys):
    model = tmp_path / "causal_t2v.safetensors"
    save_file({k: v.contiguous() for k, v in CausalWanModel.random(T2V, seed=1).state_dict().items()}, str(model))
    Image.new("RGB", (80, 48), (200, 30, 60)).save(tmp_path / "start.png")
    image_latent = torch.randn(1, 16, 1, 8, 8)
    save_file({"latent": image_latent}, str(tmp_path / "start_latent.safetensors"))
    out = tmp_path / "out"
    rc = main(["sample", "--model", str(model), "--image", str(tmp_path / "start.png"), "--width", "64",
               "--height", "64", "--length", "13", "--independent-first-frame", "--steps", "1000,500",
               "--image-latent", str(tmp_path / "start_latent.safetensors"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "route 3 — image latent written into the KV cache as the first 1 frame(s)" in printed
    assert "the model is t2v (no img_emb): CLIP features are not used" in printed
    latent = load_file(str(out / "wan_latent.safetensors"))["latent_tensor"]
    assert latent.shape == (1, 16, 4, 8, 8)
    torch.testing.assert_close(latent[:, :, :1], image_latent, atol=1e-5, rtol=0)  # frame 0 is the image
    summary = json.loads((out / "wan_summary.json").read_text())
    assert summary["image_routes"] == ["first_frames"] and summary["blocks"] == 2
    with Image.open(out / "wan_preview.webp") as webp:
        assert webp.n_frames == 4 and webp.size == (32, 32)


def test_sample_errors_are_clear(tmp_path, capsys):
    # a length that is not whole blocks runs as on the node: the last block is shorter, and the log says so
    rc = main(["sample", "--length", "13", "--frames-per-block", "3", "--out", str(tmp_path), "--no-image"])
    assert rc == 0
    assert ("wan: video length 13 = 4 latent frames is not a whole number of blocks of 3, so the last block has 1 "
            "frame(s) instead of 3") in capsys.readouterr().out
    assert json.loads((tmp_path / "wan_summary.json").read_text())["blocks"] == 2
    assert main(["sample", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    assert "error: Wan model file" in capsys.readouterr().err


def test_bench_wan_quick_prints_all_figures(capsys):
    assert main(["bench", "wan", "--quick"]) == 0
    out = capsys.readouterr().out
    for figure in ("1. time per block with window 4 (sink 1): block 5 / block 2 = ",
                   "2. KV cache: window 0.5 MB (fixed) vs no window 2.2 MB for 18 frames (4.5x)",
                   "3. time outside the DiT forward: ", "4. first block after "):
        assert figure in out
