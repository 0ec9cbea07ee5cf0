"""`comfyui-clipwan export-axera` on a small full OpenCLIP checkpoint (real key layout, reduced size)."""

import json

import numpy as np
from PIL import Image

from comfyui_clipwan.axera_export.calibration import read_calibration_tar
from comfyui_clipwan.cli import main


def _tiny_openclip_file(path):
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.model.CLIP(
        embed_dim=64, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=224, head_width=64),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def test_export_axera_cli_with_image_folder_and_prompts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    ckpt = tmp_path / "tiny_clip.safetensors"
    _tiny_openclip_file(ckpt)
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(300, 200), (224, 224), (128, 400)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "notes.txt").write_text("ignored")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na red car\nsnowy mountains\n")
    out = tmp_path / "out"
    code = main(["export-axera", "--source", str(ckpt), "--parts", "vision,text", "--calib-images", str(images),
                 "--calib-prompts", str(prompts), "--out", str(out), "--npu-mode", "NPU2", "--opset", "14"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["npu_mode"] == "NPU2" and not manifest["random_init"]
    assert manifest["parts"]["vision"]["checks"]["ok"] and manifest["parts"]["text"]["checks"]["ok"]
    assert len(read_calibration_tar(str(out / "calib" / "vision_calib.tar"))) == 3
    assert [a.tolist()[0][:3] for a in read_calibration_tar(str(out / "calib" / "text_calib.tar"))][1] == \
        [49406, 320, 736]
    assert "No .axmodel was built. The Pulsar2 build inputs are ready" in printed
    assert "--npu_mode NPU2" in printed


def test_export_axera_cli_errors(tmp_path, capsys):
    assert main(["export-axera", "--source", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "error: --source '" in capsys.readouterr().err
    assert main(["export-axera", "--parts", "audio", "--out", str(tmp_path)]) == 2
    assert "error: parts must be a comma list of ('vision', 'text')" in capsys.readouterr().err
    assert main(["export-axera", "--calib-images", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "error: calibration image folder not found" in capsys.readouterr().err
