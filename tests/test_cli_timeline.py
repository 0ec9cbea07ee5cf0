"""``comfyui-clipwan sample --timeline FILE --text-encoder ...``: a Scope timeline JSON through the CLI (tiny files with
the real key names), each prompt encoded once, the run's timeline saved and replayed without a text encoder."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_clipwan.cli import main
from comfyui_clipwan.wan import CausalWanModel, WanConfig

T2V = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import UMT5Config, UMT5EncoderModel

    d = tmp_path_factory.mktemp("cli_timeline")
    sd = CausalWanModel.random(T2V, seed=1).state_dict()
    for k in sd:
        if ".cross_attn.o." in k:  # a louder text path, so a prompt change shows in a tiny random model
            sd[k] = sd[k] * 50.0
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "wan_t2v_tiny.safetensors"))
    torch.manual_seed(0)
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=16, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    save_file({k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(d / "umt5_xxl_fp16.safetensors"))
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "fox": 5, "wolf": 6},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    # a Scope export: 0.25 s at 16 fps = output frame 4 -> latent frame 1 -> the first block from it is block 1
    (d / "timeline-fox.json").write_text(json.dumps({"prompts": [
        {"startTime": 0, "endTime": 0.25, "prompts": [{"text": "a red fox", "weight": 100}]},
        {"startTime": 0.25, "endTime": 2.0, "prompts": [{"text": "a wolf", "weight": 100}]},
        {"startTime": 2.0, "endTime": 3.0, "prompts": [{"text": "a red fox", "weight": 100}]}],
        "settings": {"pipelineId": "longlive", "seed": 42}}, indent=2))
    return d


def _base(files, out):
    return ["sample", "--model", str(files / "wan_t2v_tiny.safetensors"), "--no-image", "--width", "32", "--height",
            "32", "--length", "21", "--steps", "1000,500", "--out", str(out)]


def test_scope_timeline_through_the_cli_and_replay(files, tmp_path, capsys):
    enc = ["--text-encoder", str(files / "umt5_xxl_fp16.safetensors"), "--tokenizer", str(files / "tokenizer.json")]
    assert main(_base(files, tmp_path / "a") + enc + ["--timeline", str(files / "timeline-fox.json")]) == 0
    printed = capsys.readouterr().out
    assert "wan: timeline timeline-fox.json: 3 segment(s), 2 prompt(s) encoded once each" in printed
    summary = json.loads((tmp_path / "a" / "wan_summary.json").read_text())
    assert summary["timeline_prompts"] == [[0, "a red fox"], [1, "a wolf"]]  # 2 s is past the 2 blocks
    # replay: the saved timeline carries its embeddings, no text encoder needed; same latent
    assert main(_base(files, tmp_path / "b") + ["--timeline", str(tmp_path / "a" / "wan_timeline.json")]) == 0
    first = load_file(str(tmp_path / "a" / "wan_latent.safetensors"))["latent_tensor"]
    again = load_file(str(tmp_path / "b" / "wan_latent.safetensors"))["latent_tensor"]
    assert torch.equal(first, again)
    # sharp: the single prompt gives the same first block and a different second one
    assert main(_base(files, tmp_path / "c") + enc + ["--prompt", "a red fox"]) == 0
    single = load_file(str(tmp_path / "c" / "wan_latent.safetensors"))["latent_tensor"]
    assert torch.equal(single[:, :, :3], first[:, :, :3]) and (single[:, :, 3:] - first[:, :, 3:]).abs().max() > 1e-3


def test_timeline_errors(files, tmp_path, capsys):
    assert main(_base(files, tmp_path) + ["--timeline", str(files / "timeline-fox.json")]) == 2
    assert "has 2 prompt(s) to encode: give the umt5-xxl text encoder" in capsys.readouterr().err
    bad = tmp_path / "t.txt"
    bad.write_text("0: a fox\n3 blend: a wolf\n")
    assert main(_base(files, tmp_path) + ["--timeline", str(bad)]) == 2
    assert "t.txt, line 2: 'blend' without the number of blocks" in capsys.readouterr().err


def test_scene_cuts_through_the_cli(files, tmp_path, capsys):
    """A '1 cut: ...' line plays with the multi-shot flags (the cut block encoded with the prefix: one more text),
    and is refused without them, naming the family and the fix, before the model samples."""
    enc = ["--text-encoder", str(files / "umt5_xxl_fp16.safetensors"), "--tokenizer", str(files / "tokenizer.json")]
    cut = tmp_path / "shots.txt"
    cut.write_text("0: a red fox\n1 cut: a wolf\n")
    shots = ["--multi-shot-sink", "--multi-shot-rope-offset", "8", "--scene-cut-prefix", "red "]
    assert main(_base(files, tmp_path / "a") + enc + shots + ["--timeline", str(cut)]) == 0
    assert "2 segment(s), 3 prompt(s) encoded once each" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "wan_summary.json").read_text())
    assert summary["timeline_prompts"] == [[0, "a red fox"], [1, "a wolf"]]
    switch = tmp_path / "switch.txt"
    switch.write_text("0: a red fox\n1: a wolf\n")
    assert main(_base(files, tmp_path / "b") + enc + ["--timeline", str(switch)]) == 0
    first = load_file(str(tmp_path / "a" / "wan_latent.safetensors"))["latent_tensor"]
    plain = load_file(str(tmp_path / "b" / "wan_latent.safetensors"))["latent_tensor"]
    assert torch.equal(first[:, :, :3], plain[:, :, :3]) and (first[:, :, 3:] - plain[:, :, 3:]).abs().max() > 1e-3
    # replayed from the saved timeline (the prefixed embedding inside), with the same flags and no encoder
    assert main(_base(files, tmp_path / "c") + shots + ["--timeline", str(tmp_path / "a" / "wan_timeline.json")]) == 0
    again = load_file(str(tmp_path / "c" / "wan_latent.safetensors"))["latent_tensor"]
    assert torch.equal(again, first)
    capsys.readouterr()
    assert main(_base(files, tmp_path / "d") + enc + ["--timeline", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "family 'custom' has no multi-shot mode" in err and "shots.txt, line 2" in err


def test_image_and_lora_lines_through_the_cli_and_replay(files, tmp_path, capsys):
    """'1 image: fox.png' (encoded by --vae at the run's size) and '1 lora: 0.25' (the --lora merged at load), applied
    from block 1, saved in wan_timeline.json (+ tensors) and replayed without the image file or the VAE."""
    import numpy as np
    from PIL import Image

    from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

    torch.save(WanVAE.random(WanVAEConfig(dim=8), seed=2).tree.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    g = torch.Generator().manual_seed(4)
    lora = {f"blocks.{i}.self_attn.v.lora_{ab}.weight": torch.randn(*shape, generator=g) * 0.5
            for i in range(T2V.num_layers) for ab, shape in (("A", (4, 64)), ("B", (64, 4)))}
    save_file(lora, str(tmp_path / "style.safetensors"))
    folder = tmp_path / "timeline"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "fox.png")
    (folder / "steer.txt").write_text("0: a red fox\n1 image: fox.png\n1 lora: 0.25\n")
    enc = ["--text-encoder", str(files / "umt5_xxl_fp16.safetensors"), "--tokenizer", str(files / "tokenizer.json")]
    with_lora = ["--lora", str(tmp_path / "style.safetensors")]
    assert main(_base(files, tmp_path / "a") + enc + with_lora + ["--vae", str(tmp_path / "Wan2.1_VAE.pth"),
                                                                  "--timeline", str(folder / "steer.txt")]) == 0
    assert "timeline images encoded: block 1 fox.png (start)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "a" / "wan_timeline.json").read_text())
    assert [(c["block"], c["label"]) for c in saved["controls"]["images"]] == [(1, "fox.png")]
    assert saved["controls"]["loras"] == [{"block": 1, "strength": 0.25, "name": "style.safetensors",
                                           "source": "steer.txt, line 3"}]
    replay = ["--timeline", str(tmp_path / "a" / "wan_timeline.json")]
    assert main(_base(files, tmp_path / "b") + with_lora + replay) == 0
    first = load_file(str(tmp_path / "a" / "wan_latent.safetensors"))["latent_tensor"]
    assert torch.equal(first, load_file(str(tmp_path / "b" / "wan_latent.safetensors"))["latent_tensor"])
    assert main(_base(files, tmp_path / "c") + enc + with_lora + ["--prompt", "a red fox"]) == 0
    plain = load_file(str(tmp_path / "c" / "wan_latent.safetensors"))["latent_tensor"]
    assert torch.equal(plain[:, :, :3], first[:, :, :3]) and (plain[:, :, 3:] - first[:, :, 3:]).abs().max() > 1e-3
    # an image line without --vae: named before any block, with the fix
    assert main(_base(files, tmp_path / "d") + enc + ["--timeline", str(folder / "steer.txt")]) == 2
    assert "steer.txt, line 2: a new start image is encoded by the model's VAE: give --vae" in capsys.readouterr().err
