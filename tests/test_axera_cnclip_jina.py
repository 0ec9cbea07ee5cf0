"""Chinese-CLIP and Jina-CLIP v2 registered as export families: detection from key names, end-to-end export
(checks, Pulsar2 5.x/7.x configs, tokenizer carried), and the torch-free runtime's zero-shot scores vs the
oracle (transformers' ChineseCLIPModel for CN-CLIP; the torch towers, themselves checked against timm and a
reimplementation in test_jina_*.py, for Jina), softmax rule written out here."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from comfyui_clipwan.axera_export import families
from comfyui_clipwan.axera_export.pipeline import export_clip
from comfyui_clipwan.axera_export.pixels import preprocess
from comfyui_clipwan.axera_export.runtime import ClipRuntime
from comfyui_clipwan.axera_export.sources import load_source

CN_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "一", "只", "猫", "狗", "的", "照", "片", "鸟", "车",
            "a", "photo", "of", "cat", "dog", ".", "！"]
LABELS = ["猫", "狗", "鸟", "车"]
WORDS = ["a", "photo", "of", "cat", "dog", "bird", "car", "the", "in", "snow"]


def _vocab(folder):
    (folder / "vocab.txt").write_text("\n".join(CN_VOCAB) + "\n", encoding="utf-8")
    return str(folder / "vocab.txt")


def _tokenizer_json(folder):
    """A tiny XLM-R-shaped tokenizer.json (Unigram, ▁ word prefix, <s> … </s> template, <pad> = 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -2.0) for w in WORDS] + \
        [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz.▁"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    return str(folder / "tokenizer.json")


def _image():
    g = np.random.default_rng(0)
    return g.random((1, 48, 40, 3), dtype=np.float32)


def _softmax_rule(img, txt, logit_scale):
    img = img / np.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    logits = math.exp(logit_scale) * (img @ txt.T)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- Chinese-CLIP -------------------------------------------------------------------------------------------
def _hf_cnclip(folder):
    from safetensors.torch import save_file
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    cfg = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(CN_VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=64),
        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=32, patch_size=8), projection_dim=32)
    torch.manual_seed(0)
    model = ChineseCLIPModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(math.log(20.0))
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(cfg.to_json_string())
    _vocab(folder)
    return model, str(folder / "model.safetensors")


def test_families_detect_their_checkpoints(cn_export):
    from comfyui_clipwan.weights import open_weights as ow

    family, layout = families.detect(ow(cn_export[1].checkpoint).keys)
    assert (family.name, layout) == ("cnclip", "hf")
    assert families.detect(["bert.encoder.layer.0.attention.self.query.weight"])[0].name == "cnclip"
    assert families.detect(["vision_model.blocks.0.attn.q_proj.weight"])[0].name == "jinaclip"
    assert families.detect(["text_model.transformer.roberta.encoder.layers.0.mixer.Wqkv.weight"])[0].name == "jinaclip"
    # CLIP's own HF keys (text_model.encoder.layers.N — "layers") stay CLIP
    assert families.detect(["text_model.encoder.layers.0.self_attn.q_proj.weight"])[0].name == "clip"


@pytest.fixture(scope="module")
def cn_export(tmp_path_factory):
    """A tiny HF ChineseCLIPModel saved as an HF folder, loaded by family detection and exported once."""
    tmp = tmp_path_factory.mktemp("cnclip")
    model, path = _hf_cnclip(tmp / "cn")
    source = load_source(path)
    assert source.family == "cnclip" and source.text.config.context_length == 52
    result = export_clip(source, str(tmp / "out"), parity_samples=2, run_build=False, crop="none")
    result.checkpoint = path
    return model, result


def test_cnclip_export_and_runtime_match_transformers(cn_export):
    model, result = cn_export
    assert result.ok, result.report
    m = result.manifest
    assert m["family"]["name"] == "cnclip" and m["family"]["text_pooling"] == "first"
    assert m["family"]["tokenizer"]["files"] == ["tokenizer/vocab.txt"]
    assert m["family"]["tokenizer"]["kind"] == "wordpiece"
    assert m["parts"]["text"]["input"]["shape"] == [1, 52] and m["parts"]["text"]["output"]["shape"] == [1, 64]
    assert set(m["pulsar2"]["configs_valid_for"]) >= {"5.1", "7.0"}
    for part in ("vision", "text"):
        cfg = json.load(open(os.path.join(result.folder, "pulsar2", f"{part}.json")))
        assert cfg["quant"]["input_configs"][0]["calibration_dataset"].startswith("calib/")
    runtime = ClipRuntime(result.folder, backend="onnxruntime")
    image = _image()
    probs = dict(runtime.zero_shot(image, LABELS, template="{}")[0])
    # oracle: transformers' ChineseCLIPModel on the same preprocessed pixels and WordPiece ids
    pixels = torch.from_numpy(preprocess(image, 32, m["parts"]["vision"]["config"]["mean"],
                                         m["parts"]["vision"]["config"]["std"], "none"))
    ids = torch.from_numpy(runtime.tokenizer(LABELS))
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=ids.long(), attention_mask=(ids != 0).long())
    img, txt = (getattr(x, "pooler_output", x).numpy() for x in (img, txt))
    ref = _softmax_rule(img, txt, math.log(20.0))[0]
    assert max(abs(probs[label] - ref[i]) for i, label in enumerate(LABELS)) < 1e-4


# --- Jina-CLIP v2 -------------------------------------------------------------------------------------------
TINY_JINA = dict(image_size=60, patch_size=14, vision_layers=1, vision_width=64, vision_mlp=170, text_layers=1,
                 width=64, text_mlp=128, vocab_size=64)


def test_jinaclip_export_and_runtime_match_torch_towers(tmp_path):
    tok = _tokenizer_json(tmp_path)
    source = families.get_family("jinaclip").default_source(seed=1, tokenizer=tok, truncate_dim=32, **TINY_JINA)
    result = export_clip(source, str(tmp_path / "out"), parity_samples=2, run_build=False)
    assert result.ok, result.report
    m = result.manifest
    block = m["family"]
    assert block["name"] == "jinaclip" and block["text_pooling"] == "mean" and block["truncate_dim"] == 32
    assert block["tokenizer"]["pad_id"] == 1 and block["tokenizer"]["files"] == ["tokenizer/tokenizer.json"]
    assert m["parts"]["vision"]["input"]["shape"] == [1, 3, 60, 60] and m["parts"]["text"]["input"]["shape"] == [1, 77]
    heads = np.load(os.path.join(result.folder, "cpu_heads.npz"))
    assert heads["visual_projection"].shape == (32, 64) and heads["text_projection"].shape == (32, 64)
    assert set(m["pulsar2"]["configs_valid_for"]) >= {"5.1", "7.0"} and m["parts"]["vision"]["crop"] == "center"
    assert "mean over the non-pad tokens" in m["parts"]["text"]["split"]["npu"]
    runtime = ClipRuntime(result.folder, backend="onnxruntime")
    labels = ["cat", "dog", "bird in the snow", "a car"]
    probs = dict(runtime.zero_shot(_image(), labels, template="a photo of {}")[0])
    pixels = torch.from_numpy(runtime.pixels(_image()))
    ids = torch.from_numpy(runtime.tokenizer([f"a photo of {x}" for x in labels]))
    assert ids[0, 0] == 0 and 2 in ids[0].tolist() and ids[0, -1] == 1  # <s> … </s> <pad>…
    img = source.vision.encode(pixels).image_embeds.numpy()
    txt = source.text.encode(ids).numpy()
    assert img.shape == (1, 32) and txt.shape == (4, 32)
    ref = _softmax_rule(img, txt, source.text.logit_scale)[0]
    assert max(abs(probs[label] - ref[i]) for i, label in enumerate(labels)) < 1e-4


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    source = families.get_family("jinaclip").default_source(seed=0, **TINY_JINA)
    with pytest.raises(FileNotFoundError, match="tokenizer.json.*tokenizer="):
        export_clip(source, str(tmp_path / "out"), parts="text", run_build=False)
    cn = families.get_family("cnclip").default_source(seed=0, vision_layers=1, text_layers=1, vision_width=64,
                                                      width=64, vocab_size=30, proj_dim=16, image_size=32)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        export_clip(cn, str(tmp_path / "out2"), parts="text", run_build=False)


def test_runtime_serves_both_families_without_torch(tmp_path):
    """The board path: runtime + tokenizers + ORT in a process where importing torch fails."""
    tok = _tokenizer_json(tmp_path)
    jina = families.get_family("jinaclip").default_source(seed=2, tokenizer=tok, **TINY_JINA)
    export_clip(jina, str(tmp_path / "jina"), parity_samples=1, run_build=False)
    cn = families.get_family("cnclip").default_source(seed=2, tokenizer=_vocab(tmp_path), vision_layers=1,
                                                      text_layers=1, vision_width=64, width=64, vocab_size=30,
                                                      proj_dim=16, image_size=32)
    export_clip(cn, str(tmp_path / "cn"), parity_samples=1, run_build=False)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from comfyui_clipwan.axera_export.runtime import ClipRuntime\n"
        "img = np.random.default_rng(0).random((1, 40, 40, 3), dtype=np.float32)\n"
        f"for folder, labels in (({str(tmp_path / 'jina')!r}, ['cat', 'dog']), ({str(tmp_path / 'cn')!r}, ['猫', '狗'])):\n"
        "    r = ClipRuntime(folder, backend='onnxruntime')\n"
        "    p = r.zero_shot(img, labels, template='{}')[0]\n"
        "    assert abs(sum(x for _, x in p) - 1) < 1e-6, p\n"
        "    print(r.family.name, 'ok')\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["jinaclip", "ok", "cnclip", "ok"]


def test_service_structured_endpoint_on_a_cnclip_export(cn_export):
    """POST /sdapi/v1/interrogate/structured on a Chinese-CLIP export: per category the winner and its
    confidence = softmax within the category, vs transformers' ChineseCLIPModel on the decoded pixels."""
    import base64
    import io

    from PIL import Image

    from comfyui_clipwan.axera_export.interrogate import decode_image
    from comfyui_clipwan.axera_export.service import InterrogationService, ServiceConfig

    model, result = cn_export
    buf = io.BytesIO()
    Image.fromarray((_image()[0] * 255).astype(np.uint8)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    categories = {"animal": ["猫", "狗", "鸟"], "thing": ["车", "照片"]}
    service = InterrogationService(lambda: result.folder, ServiceConfig(labels=LABELS, template="{}", cache=False,
                                                                        backend="onnxruntime"))
    reply = service.respond("structured", json.dumps({"image": b64, "categories": categories}).encode())
    assert reply.status == 200, reply.payload
    runtime = ClipRuntime(result.folder, backend="onnxruntime")
    pixels = torch.from_numpy(runtime.pixels(decode_image(b64)))
    with torch.no_grad():
        img = getattr(o := model.get_image_features(pixel_values=pixels), "pooler_output", o).numpy()
    for name, values in categories.items():
        ids = torch.from_numpy(runtime.tokenizer(values))
        with torch.no_grad():
            out = model.get_text_features(input_ids=ids.long(), attention_mask=(ids != 0).long())
        ref = _softmax_rule(img, getattr(out, "pooler_output", out).numpy(), math.log(20.0))[0]
        got = reply.payload["results"][name]
        assert got["winner"] == values[int(ref.argmax())]
        assert abs(got["confidence"] - ref.max()) < 1e-4


def test_tokenizer_json_matches_transformers_fast_tokenizer(tmp_path):
    """Fixed-length ids of an XLM-R-style tokenizer.json vs transformers' own wrapper of the same file
    (``padding="max_length"``, ``truncation=True``): special tokens kept, </s> last when cut, <pad> = 1."""
    from transformers import PreTrainedTokenizerFast

    from comfyui_clipwan.axera_export.hf_tokenizers import TokenizerJson

    path = _tokenizer_json(tmp_path)
    texts = ["a photo of a cat", "the dog in the snow", "car " * 40, "zebra!"]
    ours = TokenizerJson(path, 16)(texts)
    ref = PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")(texts, padding="max_length", truncation=True, max_length=16)
    np.testing.assert_array_equal(ours, np.array(ref["input_ids"], np.int32))
    assert ours.dtype == np.int32 and ours[2, -1] == 2 and ours[0, -1] == 1


def test_manifest_states_each_familys_split(cn_export):
    _, result = cn_export
    text = result.manifest["parts"]["text"]["split"]
    assert "[CLS]" in text["npu"] and not any("EOT" in x for x in text["cpu"])
    assert "EOT" not in result.report and "[CLS] row by Slice" in result.report


def test_cli_export_of_a_cnclip_folder(cn_export, tmp_path, capsys):
    """`comfyui-clipwan export-axera --source <HF folder>/model.safetensors`: family from the keys, vocab.txt and
    config.json from beside the file, the family's squash crop by default, exit code 0."""
    from comfyui_clipwan.cli import main

    _, result = cn_export
    code = main(["export-axera", "--source", result.checkpoint, "--parts", "text", "--out", str(tmp_path / "cli"),
                 "--no-build"])
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = json.load(open(tmp_path / "cli" / "manifest.json"))
    assert manifest["family"]["name"] == "cnclip" and "Chinese-CLIP, hf layout" in manifest["source"]


def test_wan_features_output_is_refused_for_an_eva_tower(tmp_path):
    source = families.get_family("jinaclip").default_source(seed=0, **TINY_JINA)
    with pytest.raises(ValueError, match="vision_output='wan'.*Jina-CLIP.*embeddings"):
        export_clip(source, str(tmp_path / "out"), parts="vision", vision_output="wan", run_build=False)


def test_serve_interrogate_on_a_jina_export_with_identity_heads(tmp_path):
    """Jina-CLIP v2 without projections (identity heads, no truncation): the label cache file is written beside
    the model and the A1111 route answers with the softmax rule's top tags."""
    import base64
    import io

    from PIL import Image

    from comfyui_clipwan.axera_export.service import InterrogationService, ServiceConfig

    source = families.get_family("jinaclip").default_source(seed=4, tokenizer=_tokenizer_json(tmp_path), **TINY_JINA)
    result = export_clip(source, str(tmp_path / "out"), parity_samples=1, run_build=False)
    assert "text_projection" not in np.load(os.path.join(result.folder, "cpu_heads.npz")).files
    buf = io.BytesIO()
    Image.fromarray((_image()[0] * 255).astype(np.uint8)).save(buf, format="PNG")
    service = InterrogationService(lambda: result.folder, ServiceConfig(labels=WORDS, backend="onnxruntime"))
    reply = service.respond("interrogate", json.dumps({"image": base64.b64encode(buf.getvalue()).decode()}).encode())
    assert reply.status == 200, reply.payload
    assert reply.payload["caption"] and reply.payload["interrogations"]
    assert os.listdir(os.path.join(result.folder, "label_cache"))
