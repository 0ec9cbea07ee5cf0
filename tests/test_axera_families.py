"""The family abstraction of the Axera export: registry, manifest entry, score rules and heads.

Oracles: the score and pooling rules written out here from their definitions (CLIP: softmax of
``exp(logit_scale)·cos``; SigLIP: ``sigmoid(exp(logit_scale)·cos + logit_bias)``), never the rules under test.
"""

import math
import os

import numpy as np
import pytest

from comfyui_clipwan.axera_export import families
from comfyui_clipwan.axera_export.families.base import Family, POOLINGS
from comfyui_clipwan.axera_export.pipeline import export_clip
from comfyui_clipwan.axera_export.runtime import ClipRuntime
from comfyui_clipwan.axera_export.sources import default_source
from comfyui_clipwan.axera_export.text_model import TextConfig


def test_registry_and_old_manifests():
    assert families.of_manifest({}).name == "clip"  # exports written before families are CLIP's
    assert families.of_manifest({"family": {"name": "clip"}}) is families.FAMILIES["clip"]
    with pytest.raises(ValueError, match="unknown model family 'nope'.*update comfyui-clipwan"):
        families.get_family("nope")


def test_score_rules_against_definitions():
    cos = np.array([[0.3, 0.1, -0.2], [0.05, 0.2, 0.25]])
    block = {"logit_scale": math.log(50.0), "logit_bias": -4.0}
    e = np.exp(50.0 * cos)
    np.testing.assert_allclose(Family().probabilities(cos, block, "softmax"), e / e.sum(-1, keepdims=True),
                               rtol=1e-12)
    np.testing.assert_allclose(Family().probabilities(cos, block, "sigmoid"), 1 / (1 + np.exp(-(50.0 * cos - 4.0))),
                               rtol=1e-9)
    hidden = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    ids = np.array([[5, 9, 2, 0], [5, 1, 3, 9]])
    np.testing.assert_array_equal(POOLINGS["eot_argmax"](hidden, ids), hidden[[0, 1], [1, 3]])
    np.testing.assert_array_equal(POOLINGS["last"](hidden, ids), hidden[:, 3])


def test_clip_export_manifest_names_its_family(tmp_path):
    source = default_source(seed=3, vision_layers=1, text_config=TextConfig(layers=1, width=64, heads=1, mlp_dim=256))
    result = export_clip(source, str(tmp_path / "x"), parity_samples=1, run_build=False)
    block = result.manifest["family"]
    assert block["name"] == "clip" and block["score_rule"] == "softmax" and block["text_pooling"] == "eot_argmax"
    assert block["logit_scale"] == pytest.approx(source.text.logit_scale) and block["logit_bias"] == 0.0
    assert block["tokenizer"]["files"] == ["tokenizer/bpe_simple_vocab_16e6.txt.gz"]
    assert block["tokenizer"]["context_length"] == 77 and block["tokenizer"]["kind"] == "clip_bpe"
    runtime = ClipRuntime(result.folder, backend="onnxruntime")
    assert runtime.tokenizer.files == {"bpe_simple_vocab_16e6.txt.gz":
                                       os.path.join(result.folder, "tokenizer", "bpe_simple_vocab_16e6.txt.gz")}
    probs = runtime.zero_shot(np.full((1, 40, 40, 3), 0.5, np.float32), ["cat", "dog"])[0]
    assert sum(p for _, p in probs) == pytest.approx(1.0)


def test_tokenizer_files_missing_or_of_another_model_are_named(tmp_path):
    """Chinese-CLIP / Jina-CLIP / SigLIP share the file rules: a missing tokenizer file names the file and where to put
    it, one with more ids than the text tower has rows is refused, an export lacking its file says to copy it."""
    from types import SimpleNamespace

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "狐", "狸", "a", "fox", "##es"]))

    def source(where, rows):
        config = SimpleNamespace(context_length=52, vocab_size=rows, pad_id=1)
        return SimpleNamespace(tokenizer_path=where, description="test source", text=SimpleNamespace(config=config))

    cnclip, jina = families.FAMILIES["cnclip"], families.FAMILIES["jinaclip"]
    assert cnclip.export_tokenizer(source(str(tmp_path), 10)).info["vocab_size"] == 10  # the folder's vocab.txt
    with pytest.raises(ValueError, match=r"has 10 tokens but the text tower only 9: it belongs to another model"):
        cnclip.export_tokenizer(source(str(vocab), 9))
    with pytest.raises(FileNotFoundError, match=r"test source: Jina-CLIP's 'tokenizer.json' was not found in .*"
                                                r"put the model's tokenizer.json beside the checkpoint"):
        jina.export_tokenizer(source(str(tmp_path), 10))
    with pytest.raises(FileNotFoundError, match=r"Chinese-CLIP's WordPiece vocabulary 'vocab.txt' was not found: "
                                                r".*cn_clip/clip/vocab.txt"):
        cnclip.export_tokenizer(source(None, 10))
    block = {"tokenizer": {"context_length": 52, "kind": "sentencepiece", "files": ["tokenizer/spiece.model"]}}
    for family in (cnclip, jina, families.FAMILIES["siglip"]):
        with pytest.raises(FileNotFoundError, match=r"lacks its tokenizer file .*copy the whole export folder"):
            family.tokenizer(block, str(tmp_path / "export"))
