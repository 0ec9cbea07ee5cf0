"""``comfyui-clipwan sample --prompt ... --text-encoder ... --vae ... --video OUT.mp4``: prompt + image -> a
video file written block by block (tiny files with the real key names); the demo's decoded video; errors."""

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from comfyui_clipwan.cli import main
from comfyui_clipwan.wan import CausalWanModel, WanConfig
from comfyui_clipwan.wan.video.writer import read_video_frames
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

I2V = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True, text_dim=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import UMT5Config, UMT5EncoderModel

    d = tmp_path_factory.mktemp("cli_stream")
    save_file({k: v.contiguous() for k, v in CausalWanModel.random(I2V, seed=1).state_dict().items()},
              str(d / "wan_i2v_tiny.safetensors"))
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=2)
    torch.save(vae.tree.state_dict(), d / "Wan2.1_VAE.pth")
    torch.manual_seed(0)
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=16, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    save_file({k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(d / "umt5_xxl_fp16.safetensors"))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "fox": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    Image.new("RGB", (80, 48), (200, 30, 60)).save(d / "start.png")
    return d


def test_prompt_image_to_video_file(files, tmp_path, capsys):
    out = tmp_path / "out"
    video = tmp_path / "clip.mp4"
    rc = main(["sample", "--model", str(files / "wan_i2v_tiny.safetensors"), "--image", str(files / "start.png"),
               "--prompt", "a red  fox", "--text-encoder", str(files / "umt5_xxl_fp16.safetensors"),
               "--tokenizer", str(files / "tokenizer.json"), "--vae", str(files / "Wan2.1_VAE.pth"),
               "--video", str(video), "--width", "32", "--height", "32", "--length", "21", "--steps", "1000,500",
               "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "wan: prompt encoded by umt5_xxl_fp16.safetensors: 4 tokens" in printed
    assert "wan: start image encoded by the VAE into a latent [1, 16, 6, 4, 4]" in printed
    assert "route 2 — image latent concatenated to the noise" in printed
    assert "wan: block 2/2 decoded, 21 frames written at" in printed
    assert read_video_frames(str(video)).shape == (21, 32, 32, 3)
    summary = json.loads((out / "wan_summary.json").read_text())
    assert summary["video_frames"] == 21 and summary["blocks"] == 2
    assert summary["image_routes"] == ["clip", "concat"]
    assert not (out / "wan_latent.safetensors").exists()  # streaming: the whole latent is not kept


def test_cli_errors(files, tmp_path, capsys):
    base = ["sample", "--model", str(files / "wan_i2v_tiny.safetensors"), "--width", "32", "--height", "32",
            "--length", "21", "--out", str(tmp_path)]
    assert main(base + ["--prompt", "a fox"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --prompt needs the umt5-xxl text encoder and its tokenizer: --text-encoder "
        "models_t5_umt5-xxl-enc-bf16.pth (or umt5_xxl_fp16.safetensors) --tokenizer PATH.")
    assert main(base + ["--video", str(tmp_path / "v.mp4"), "--no-image"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --video needs a decoder: --vae wan_2.1_vae.safetensors (or --tiny-vae taew2_1.safetensors).")
    assert main(base + ["--vae", str(files / "wan_i2v_tiny.safetensors")]) == 2
    assert "is not a Wan VAE: key 'decoder.middle.0.residual.0.gamma' is missing" in capsys.readouterr().err


def test_demo_step_writes_a_decoded_video(tmp_path, capsys):
    from comfyui_clipwan.cli.wan import demo_step

    result = demo_step(argparse.Namespace(seed=0), str(tmp_path))
    printed = capsys.readouterr().out
    assert "random-init Wan 2.1 VAE architecture at dim 8 (real: 96), seed 0, NOT trained" in printed
    assert read_video_frames(result["video"]).shape == (25, 128, 128, 3)
    assert result["video_frames"] == 25 and result["image_routes"] == ["clip", "concat"]
    assert (tmp_path / "wan_latent.safetensors").exists() and (tmp_path / "wan_preview.webp").exists()
    # CLIP scores beside the video, every 4th frame: frames 0, 4, ..., 24
    from comfyui_clipwan.clip_vision.scores import read_csv

    rows = read_csv(str(tmp_path / "wan_video.clip_scores.csv"))
    assert [r.frame for r in rows] == list(range(0, 25, 4)) and (tmp_path / "wan_video.clip_scores.png").exists()
    assert result["clip_score_means"]["frames"] == 7
