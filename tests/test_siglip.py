"""SigLIP / SigLIP2 in the Axera export and the serving path (issue #21).

Oracles, each independent of the code under test: transformers' ``SiglipModel`` (towers, ``logits_per_image``),
open_clip's ``CustomTextCLIP`` over a timm SigLIP trunk (the open_clip layout), transformers'
``SiglipTokenizer`` / ``Siglip2Tokenizer`` on the same tokenizer files (built here: a SentencePiece model trained
on a few sentences, a byte-fallback BPE ``tokenizer.json``), ONNX Runtime vs our torch towers, the Pulsar2
config schema. Every model is random-init at the real key names, tiny.
"""

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_clipwan.axera_export import pulsar2
from comfyui_clipwan.axera_export.pipeline import export_clip
from comfyui_clipwan.axera_export.runtime import ClipRuntime
from comfyui_clipwan.axera_export.serve import Server
from comfyui_clipwan.axera_export.service import InterrogationService, ServiceConfig
from comfyui_clipwan.axera_export.siglip_tokenizer import GemmaTokenizer, SentencePieceTokenizer, read_gemma_config
from comfyui_clipwan.axera_export.sources import load_source
from comfyui_clipwan.clip_vision.siglip import siglip_from_state_dict

transformers = pytest.importorskip("transformers")
SENTENCES = ["a photo of a cat", "a photo of a dog running on the beach", "A red car, parked in the city at night!",
             "mountain lake under the stars", "bowl of soup; a violin", "robots dance in the rain",
             "the quick brown fox jumps over the lazy dog"] * 20
LABELS = ["cat", "dog", "red car", "lake"]
TEMPLATE = "a photo of a {label}"


def _siglip_config(vocab=100, context=64, width=32, heads=4, layers=2, image=32, patch=8):
    return transformers.SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=context, projection_size=width),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image, patch_size=patch))


def _hf_model(config, seed=0):
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # HF zero-inits biases and the head; perturb everything so every weight is checked
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _features(out):
    return getattr(out, "pooler_output", out)  # transformers 5 returns an output object, 4 a tensor


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    import sentencepiece

    folder = tmp_path_factory.mktemp("spiece")
    (folder / "s.txt").write_text("\n".join(SENTENCES))
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "s.txt"), model_prefix=str(folder / "spiece"), vocab_size=50, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    return str(folder / "spiece.model")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """A Gemma-style tokenizer.json (byte-fallback BPE, spaces as ▁, ``$A <eos>`` post-processor, <pad>=0,
    <eos>=1, <bos>=2) + the tokenizer_config.json fields google/siglip2-* ship."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator([s.lower() for s in SENTENCES], trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    folder = tmp_path_factory.mktemp("gemma")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True, "bos_token": "<bos>",
        "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "right"}))
    return str(folder)


# --- torch towers vs transformers / open_clip ----------------------------------------------------------------
def test_towers_match_transformers_siglip(tmp_path):
    from safetensors.torch import save_file

    config = _siglip_config()
    model = _hf_model(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    config.save_pretrained(str(tmp_path))  # heads/activation come from the config.json beside the file
    source = load_source(str(tmp_path / "model.safetensors"))
    assert source.family == "siglip" and source.vision.layout == "hf" and source.vision.config.heads == 4
    assert source.text.config.causal is False and source.text.pooling == "last"
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 100, (2, 64))
    with torch.no_grad():
        ref_img = _features(model.get_image_features(pixel_values=pixels))
        ref_txt = _features(model.get_text_features(input_ids=ids))
    assert (source.vision.encode(pixels).image_embeds - ref_img).abs().max() <= 1e-4
    assert (source.text.encode(ids.int()) - ref_txt).abs().max() <= 1e-4
    assert source.text.logit_scale == pytest.approx(model.logit_scale.item())
    assert source.text.logit_bias == pytest.approx(model.logit_bias.item())
    # the plain-op graph (what ONNX traces) is the same function
    assert (source.vision.model.pooled(pixels, export=True) - ref_img).abs().max() <= 1e-4


@pytest.mark.parametrize("vocab, text_act", [(100, "none"), (256000, "tanh")], ids=["siglip", "siglip2"])
def test_towers_match_open_clip_layout(vocab, text_act):
    """open_clip ViT-*-SigLIP / -SigLIP2 (timm trunk with attn_pool, exact GELU; text tower exact / tanh GELU as
    open_clip's configs say), read from its own state dict."""
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("timm")
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    import timm

    name = "clipwan_test_vit_siglip"
    if not timm.models.is_model(name):
        @register_model
        def clipwan_test_vit_siglip(pretrained=False, **kwargs):  # a tiny vit_base_patch16_siglip_224
            args = dict(patch_size=8, embed_dim=64, depth=2, num_heads=1, class_token=False, global_pool="map",
                        img_size=32)
            return _create_vision_transformer(name, pretrained=pretrained, **dict(args, **kwargs))

    torch.manual_seed(1)
    model = open_clip.model.CustomTextCLIP(
        64, dict(image_size=32, timm_model_name=name, timm_model_pretrained=False, timm_pool="map", timm_proj="none"),
        dict(context_length=16, vocab_size=vocab, width=64, heads=1, layers=2, no_causal_mask=True, proj_bias=True,
             pool_type="last", norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": text_act}),
        init_logit_bias=-10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # under a wrapper prefix, as some files are
    vision, text, layout = siglip_from_state_dict(sd)
    assert layout == "open_clip" and vision.config.act == "gelu" and text.config.act == \
        ("gelu_tanh" if text_act == "tanh" else "gelu")
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        assert (vision.encode(pixels).image_embeds - model.encode_image(pixels)).abs().max() <= 1e-4
        assert (text.encode(ids.int()) - model.encode_text(ids)).abs().max() <= 1e-4
    assert text.logit_bias == pytest.approx(model.logit_bias.item())


def test_naflex_and_missing_towers_are_refused():
    config = transformers.Siglip2Config(
        text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           patch_size=8, num_patches=16))
    sd = transformers.Siglip2Model(config).state_dict()
    with pytest.raises(ValueError, match="NaFlex checkpoint .* no static graph for the NPU.*siglip2-base-patch16-224"):
        siglip_from_state_dict(sd, source="'naflex.safetensors'")
    vision_only = {k: v for k, v in _hf_model(_siglip_config()).state_dict().items() if k.startswith("vision_model.")}
    with pytest.raises(ValueError, match="no SigLIP text tower .* export parts=vision"):
        siglip_from_state_dict(vision_only, parts=("text",))


# --- tokenizers vs transformers on the same files ----------------------------------------------------------
HARD_TEXTS = ["a photo of a cat.", "A  Red CAR, parked!!  ", "zebra xylophone qq", "a photo of a dog " * 20,
              "l'été à Paris", "tabs\tand\nnewlines", ""]


def test_sentencepiece_tokenizer_matches_siglip_tokenizer(spiece):
    hf = transformers.SiglipTokenizer(vocab_file=spiece)
    ref = hf(HARD_TEXTS, padding="max_length", max_length=64, truncation=True)["input_ids"]
    ours = SentencePieceTokenizer(spiece)(HARD_TEXTS)
    assert ours.dtype == np.int32 and ours.shape == (len(HARD_TEXTS), 64)
    np.testing.assert_array_equal(ours, np.array(ref))


def test_gemma_tokenizer_matches_siglip2_tokenizer(gemma):
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    hf = Siglip2Tokenizer.from_pretrained(gemma)  # Gemma tokenizer + SigLIP2's lower-casing
    texts = [t for t in HARD_TEXTS if t]
    ref = hf(texts, padding="max_length", max_length=64, truncation=True)["input_ids"]
    ours = GemmaTokenizer(os.path.join(gemma, "tokenizer.json"), config=read_gemma_config(gemma))(texts)
    np.testing.assert_array_equal(ours, np.array(ref))


def test_missing_tokenizer_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SigLIP needs its tokenizer file 'spiece.model', which is not in "
                                                r".*put it beside the checkpoint"):
        SentencePieceTokenizer(str(tmp_path / "spiece.model"))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _hf_model(_siglip_config()).state_dict().items()},
              str(tmp_path / "model.safetensors"))
    source = load_source(str(tmp_path / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="'spiece.model'.*google/siglip-base-patch16-224"):
        export_clip(source, str(tmp_path / "out"), parts="text", run_build=False)


# --- export: ONNX parity, op list, Pulsar2 5/7 configs, and the board-side service -------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, spiece):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("siglip")
    config = _siglip_config()
    model = _hf_model(config, seed=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config.save_pretrained(str(folder))
    source = load_source(str(folder / "model.safetensors"), tokenizer=spiece)
    result = export_clip(source, str(folder / "export"), run_build=False, parity_samples=2)
    return model, result


def test_export_checks_and_pulsar2_configs(exported):
    _, result = exported
    m = result.manifest
    assert result.ok and m["family"]["name"] == "siglip" and m["family"]["score_rule"] == "sigmoid"
    assert m["family"]["tokenizer"] == {"kind": "sentencepiece", "name": "SigLIP SentencePiece", "vocab_size": 50,
                                        "files": ["tokenizer/spiece.model"], "context_length": 64}
    for part in ("vision", "text"):
        checks = m["parts"][part]["checks"]
        assert checks["onnx_checker"] == "ok" and checks["ax650_op_issues"] == []
        assert checks["parity"]["max_abs_diff"] <= 1e-4 and checks["parity"]["samples"] == 2
        config = json.load(open(os.path.join(result.folder, m["parts"][part]["pulsar2_config"])))
        assert pulsar2.validate_config(config, "5") == [] and pulsar2.validate_config(config, "7") == []
    assert m["parts"]["vision"]["output"]["shape"] == [1, 32] and m["parts"]["vision"]["crop"] == "none"
    assert m["parts"]["text"]["input"] == {"name": "input_ids", "shape": [1, 64], "dtype": "int32"}


def test_siglip2_export_carries_the_gemma_tokenizer(tmp_path, gemma):
    """SigLIP2: the export copies tokenizer.json + tokenizer_config.json; the runtime's text embeddings (ORT,
    no torch) = transformers' get_text_features on Siglip2Tokenizer ids."""
    from safetensors.torch import save_file
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    config = _siglip_config(vocab=200)
    model = _hf_model(config, seed=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    config.save_pretrained(str(tmp_path))
    result = export_clip(load_source(str(tmp_path / "model.safetensors"), parts="text", tokenizer=gemma),
                         str(tmp_path / "export"), parts="text", run_build=False, parity_samples=1)
    assert result.ok and result.manifest["family"]["tokenizer"]["files"] == \
        ["tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    texts = ["A photo of a CAT", "robots dance in the rain"]
    ids = Siglip2Tokenizer.from_pretrained(gemma)(texts, padding="max_length", max_length=64,
                                                  return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
    got = ClipRuntime(result.folder, backend="onnxruntime").text_embeddings(texts)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def _png(size=32, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _hf_sigmoid(model, spiece, png, labels):
    """transformers' own probabilities: sigmoid(logits_per_image), its tokenizer, pixels (x - 0.5) / 0.5 of the
    PNG at the tower's size (no resize, so no resampling kernel is compared)."""
    ids = transformers.SiglipTokenizer(vocab_file=spiece)([TEMPLATE.format(label=x) for x in labels],
                                                          padding="max_length", max_length=64, return_tensors="pt")
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0)
    pixels = ((image.permute(2, 0, 1)[None] - 0.5) / 0.5)
    with torch.no_grad():
        return torch.sigmoid(model(input_ids=ids["input_ids"], pixel_values=pixels).logits_per_image)[0].numpy()


def test_serve_round_trip_gives_transformers_sigmoid(exported, spiece):
    model, result = exported
    png = _png()
    expected = _hf_sigmoid(model, spiece, png, LABELS)
    service = InterrogationService(lambda: result.folder, ServiceConfig(labels=LABELS, labels_name="t",
                                                                        template=TEMPLATE, cache=False))
    with Server(service, port=0) as server:
        body = json.dumps({"image": base64.b64encode(png).decode(), "threshold": 0.0, "top_k": 4}).encode()
        req = urllib.request.Request(server.url + "/sdapi/v1/interrogate", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
    got = {t["tag"]: t["score"] for t in answer["interrogations"]}
    np.testing.assert_allclose([got[x] for x in LABELS], expected, atol=1e-5)
    assert [t["tag"] for t in answer["interrogations"]] == [LABELS[i] for i in np.argsort(-expected)]
    runtime = ClipRuntime(result.folder, backend="onnxruntime")
    image = np.asarray(Image.open(io.BytesIO(png)), np.float32)[None] / 255.0
    probs = dict(runtime.zero_shot(image, LABELS, template=TEMPLATE)[0])
    np.testing.assert_allclose([probs[x] for x in LABELS], expected, atol=1e-5)


def test_serve_cli_without_torch(exported, tmp_path):
    """`comfyui-clipwan serve` on a SigLIP export: sentencepiece + numpy + ONNX Runtime, torch never imported."""
    _, result = exported
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    cmd = [sys.executable, "-m", "comfyui_clipwan", "serve", "--export", result.folder, "--port", "0", "--labels",
           str(labels), "--no-cache"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), [line, proc.stderr.read() if proc.poll() is not None else ""]
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        req = urllib.request.Request(url + "/sdapi/v1/interrogate",
                                     data=json.dumps({"image": base64.b64encode(_png()).decode()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["caption"]
        with urllib.request.urlopen(url + "/health") as r:
            assert json.loads(r.read())["torch_loaded"] is False
    finally:
        proc.terminate()
        proc.wait(10)


# --- #22: CLIP scores with a SigLIP checkpoint ------------------------------------------------------------------
def test_video_scores_with_siglip_match_transformers(tmp_path, spiece):
    """CLIP-T / CLIP-I / consistency of a SigLIP file = 100 · cos of transformers' get_image_features /
    get_text_features (pixels (x - 0.5) / 0.5 of frames at the tower's size, 8-bit levels so ComfyUI's centre
    preprocessing changes nothing; its own tokenizer padded to 64)."""
    import shutil

    from safetensors.torch import save_file

    from comfyui_clipwan.clip_vision.scores import load_score_models, score_frames

    config = _siglip_config()
    model = _hf_model(config, seed=5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    config.save_pretrained(str(tmp_path))
    shutil.copyfile(spiece, tmp_path / "spiece.model")  # an HF repo folder: the tokenizer beside the weights
    vision, text = load_score_models(str(tmp_path / "model.safetensors"))
    assert text.kind == "siglip"
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (5, 32, 32, 3)).astype(np.float32) / 255.0)
    reference = torch.from_numpy(rng.integers(0, 256, (1, 32, 32, 3)).astype(np.float32) / 255.0)
    prompts = [(0, "a photo of a cat"), (3, "a red car at night")]
    rows = score_frames(vision, frames, text, prompts, reference).rows

    def image_features(x):
        with torch.no_grad():
            f = _features(model.get_image_features(pixel_values=(x.permute(0, 3, 1, 2) - 0.5) / 0.5))
        return torch.nn.functional.normalize(f, dim=-1)

    ids = transformers.SiglipTokenizer(vocab_file=spiece)([p for _, p in prompts], padding="max_length",
                                                          max_length=64, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        txt = torch.nn.functional.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
    img, ref = image_features(frames), image_features(reference)[0]
    segment = [0, 0, 0, 1, 1]
    np.testing.assert_allclose([r.clip_t for r in rows], [100 * float(img[i] @ txt[segment[i]]) for i in range(5)],
                               atol=1e-4)
    np.testing.assert_allclose([r.clip_i for r in rows], (100 * img @ ref).numpy(), atol=1e-4)
    np.testing.assert_allclose([r.consistency for r in rows[1:]],
                               [100 * float(img[i] @ img[i - 1]) for i in range(1, 5)], atol=1e-4)
