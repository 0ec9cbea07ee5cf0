"""Chinese-CLIP: our BERT text tower and the clip_vision vision tower vs transformers' ChineseCLIPModel (oracle),
both checkpoint layouts (HF, OFA-Sys cn_clip), the WordPiece tokenizer vs transformers' BertTokenizer, and the
ONNX export (ORT vs torch, AX650 op list)."""

import numpy as np
import pytest
import torch

from comfyui_clipwan.axera_export.cnclip import load_cnclip
from comfyui_clipwan.axera_export.hf_tokenizers import WordPiece
from comfyui_clipwan.axera_export.onnx_export import ExportGraph, check_export, export_onnx, ort_session, parity
from comfyui_clipwan.axera_export.towers.bert import bert_weights_from_state_dict, detect_layout

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "一", "只", "猫", "狗", "的", "照", "片", "在", "雪",
         "地", "里", "a", "photo", "of", "cat", "dog", "##s", "play", "##ing", "in", "the", "snow", ",", ".", "!",
         "cafe", "1", "2", "##3"]
TEXTS = ["一只猫的照片", "A photo of dogs playing in the snow!", "狗在雪地里 playing, 123", "Café ÉTÉ 猫",
         "一只猫的照片" * 12, "unknownword 猫"]


def _vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return str(path)


def _hf_model(vocab=len(VOCAB), seed=0, width=64, heads=4):
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    cfg = ChineseCLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=2, num_attention_heads=heads,
                         intermediate_size=2 * width, max_position_embeddings=64),
        vision_config=dict(hidden_size=width, num_hidden_layers=2, num_attention_heads=heads,
                           intermediate_size=2 * width, image_size=32, patch_size=8),
        projection_dim=48)
    torch.manual_seed(seed)
    model = ChineseCLIPModel(cfg).eval()
    with torch.no_grad():  # make every tensor (LayerNorms, biases too) non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, cfg


def _hf_text(model, ids):
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids.long(), attention_mask=(ids != 0).long())
    return getattr(out, "pooler_output", out)


def _hf_image(model, pixels):
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return getattr(out, "pooler_output", out)


def _save_hf(model, cfg, folder):
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(cfg.to_json_string())
    return str(folder / "model.safetensors")


def _to_cn_clip(sd):
    """HF ChineseCLIPModel → OFA-Sys cn_clip names, written here from cn_clip/clip/model.py (independent of the
    code under test): ``module.`` wrapper, bert.*, visual.* in the OpenAI layout, text_projection as a matrix."""
    out = {}
    for k, v in sd.items():
        if k.startswith("text_model."):
            out["module.bert." + k[len("text_model."):]] = v
    out["module.text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["module.logit_scale"] = sd["logit_scale"]
    v = "vision_model."
    out["module.visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["module.visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["module.visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    for a, b in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"module.visual.{b}.{p}"] = sd[f"{v}{a}.{p}"]
    out["module.visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    n = 0
    while f"{v}encoder.layers.{n}.layer_norm1.weight" in sd:
        s, d = f"{v}encoder.layers.{n}.", f"module.visual.transformer.resblocks.{n}."
        for p in ("weight", "bias"):
            out[d + f"attn.in_proj_{p}"] = torch.cat([sd[s + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[d + f"{b}.{p}"] = sd[s + f"{a}.{p}"]
        n += 1
    return out


def _python_bert_tokenizer(vocab):
    """transformers' pure-Python WordPiece (BasicTokenizer + WordpieceTokenizer): in transformers 5 that is
    ``BertTokenizerLegacy`` (``BertTokenizer`` became a wrapper of the same Rust library we use); before, it was
    ``BertTokenizer`` itself."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:
        from transformers import BertTokenizer as Slow
    return Slow(vocab, do_lower_case=True)


def test_wordpiece_matches_transformers_bert_tokenizer(tmp_path):
    vocab = _vocab(tmp_path)
    ours = WordPiece(vocab)(TEXTS)
    ref_tok = _python_bert_tokenizer(vocab)
    assert ours.dtype == np.int32 and ours.shape == (len(TEXTS), 52)
    for row, text in enumerate(TEXTS):
        # cn_clip.clip.tokenize: [CLS] + ids[:context-2] + [SEP], zero padded
        ids = [2] + ref_tok.convert_tokens_to_ids(ref_tok.tokenize(text))[:50] + [3]
        np.testing.assert_array_equal(ours[row], ids + [0] * (52 - len(ids)), err_msg=text)
    assert ours[4, 51] == 3 and ours[0, 1:7].tolist() == [5, 6, 7, 9, 10, 11]  # one token per character


def test_hf_layout_matches_transformers(tmp_path):
    model, cfg = _hf_model()
    path = _save_hf(model, cfg, tmp_path / "hf")
    vision, text = load_cnclip(path)
    assert text.layout == "hf" and text.config.heads == 4 and text.config.context_length == 52
    ids = torch.from_numpy(WordPiece(_vocab(tmp_path))(TEXTS))
    ours = text.encode(ids)
    assert ours.shape == (len(TEXTS), 48)
    assert (ours - _hf_text(model, ids)).abs().max().item() < 1e-5
    assert text.logit_scale == pytest.approx(model.logit_scale.item())
    assert vision.config.act == "quick_gelu" and vision.layout == "hf"
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    img = vision.encode(pixels).image_embeds
    assert (img - _hf_image(model, pixels)).abs().max().item() < 1e-5


def test_cn_clip_layout_matches_transformers(tmp_path):
    # no config.json travels with a cn_clip .pt: heads come from the 64-wide-head rule of every release
    model, _ = _hf_model(seed=1, width=128, heads=2)
    path = tmp_path / "clip_cn_vit-tiny.pt"
    torch.save({"epoch": 1, "state_dict": _to_cn_clip(model.state_dict())}, path)
    vision, text = load_cnclip(str(path))
    assert text.layout == "cn_clip" and vision.layout == "open_clip"
    ids = torch.from_numpy(WordPiece(_vocab(tmp_path))(TEXTS[:3]))
    assert (text.encode(ids) - _hf_text(model, ids)).abs().max().item() < 1e-5
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert (vision.encode(pixels).image_embeds - _hf_image(model, pixels)).abs().max().item() < 1e-5


def test_no_text_tower_is_a_clear_error():
    with pytest.raises(ValueError, match="no Chinese-CLIP .*text tower.*parts=vision"):
        detect_layout(["vision_model.encoder.layers.0.self_attn.q_proj.weight"])
    model, _ = _hf_model()
    sd = {k: v for k, v in model.state_dict().items() if ".layer.1.output.dense" not in k}
    with pytest.raises(ValueError, match="incomplete.*layer.1.output.dense"):
        bert_weights_from_state_dict(sd)


def test_onnx_export_parity_and_op_list(tmp_path):
    model, _ = _hf_model(seed=2)
    text = bert_weights_from_state_dict(model.state_dict(), heads=4)
    ids = WordPiece(_vocab(tmp_path))(TEXTS[:2])
    result = export_onnx(ExportGraph(text.build()), torch.from_numpy(ids[:1]), str(tmp_path / "text.onnx"),
                         "input_ids", "text_pooled")
    assert check_export(result) == [] and result.checker == "ok"
    assert result.input_dtype == "int32" and result.output_shape == [1, 64]
    assert not {"Shape", "Range", "Trilu", "Neg"} & set(result.ops)
    sess = ort_session(result.path)
    pooled = np.concatenate([sess.run(None, {"input_ids": ids[i:i + 1]})[0] for i in range(len(ids))])
    with torch.no_grad():
        ref = text.build()(torch.from_numpy(ids)).numpy()
    assert parity(pooled, ref)["ok"]
    # and the projected embedding equals the transformers oracle end to end
    proj = pooled @ text.projection.numpy().T
    assert np.abs(proj - _hf_text(model, torch.from_numpy(ids)).numpy()).max() < 1e-4
