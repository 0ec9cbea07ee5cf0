"""Jina-CLIP v2's text tower (Jina-XLM-RoBERTa with LoRA adapters) vs a minimal reimplementation written here
from the public definitions (Jina's LoRAParametrization applied at run time, post-LN rotary encoder as vLLM's
JinaRobertaModel port, HFTextEncoder's masked mean pooling), key names, errors, and the ONNX export."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_clipwan.axera_export.onnx_export import ExportGraph, check_export, export_onnx, ort_session, parity
from comfyui_clipwan.axera_export.towers.xlmr import xlmr_weights_from_state_dict

ROOT = "text_model.transformer.roberta."
W, HEADS, LAYERS, MLP, VOCAB, RANK = 64, 2, 2, 128, 40, 4
TASKS = ["retrieval.query", "retrieval.passage", "text-matching"]
CONFIG = {"text_config": {"default_lora_task": "retrieval.query", "embed_dim": W, "pooler_type": "mean_pooler",
                          "hf_model_config_kwargs": {"lora_adaptations": TASKS, "lora_alpha": 2, "lora_rank": RANK,
                                                     "rotary_emb_base": 20000.0, "num_attention_heads": HEADS,
                                                     "layer_norm_eps": 1e-5, "pad_token_id": 1}}}


def _jina_state_dict(seed=0, lora=True, proj=False):
    """Real Jina-CLIP v2 text key names: torch parametrisations (original + one LoRA pair per adapter) on every
    Linear and Embedding of the backbone, plain LayerNorms."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def param(name, shape, embedding=False):
        w = torch.randn(shape, generator=g) * (0.5 if embedding else shape[-1] ** -0.5)
        if not lora:
            sd[ROOT + name + ".weight"] = w
            return
        p = ROOT + name + ".parametrizations.weight."
        sd[p + "original"] = w
        if embedding:  # A [n, vocab, r], B [n, r, dim]
            sd[p + "0.lora_A"] = torch.randn(len(TASKS), shape[0], RANK, generator=g) * 0.3
            sd[p + "0.lora_B"] = torch.randn(len(TASKS), RANK, shape[1], generator=g) * 0.3
        else:  # A [n, r, in], B [n, out, r]
            sd[p + "0.lora_A"] = torch.randn(len(TASKS), RANK, shape[1], generator=g) * 0.3
            sd[p + "0.lora_B"] = torch.randn(len(TASKS), shape[0], RANK, generator=g) * 0.3

    def norm(name):
        sd[ROOT + name + ".weight"] = 1 + 0.1 * torch.randn(W, generator=g)
        sd[ROOT + name + ".bias"] = 0.1 * torch.randn(W, generator=g)

    param("embeddings.word_embeddings", (VOCAB, W), embedding=True)
    param("embeddings.token_type_embeddings", (1, W), embedding=True)
    norm("emb_ln")
    for n in range(LAYERS):
        p = f"encoder.layers.{n}."
        for name, shape in (("mixer.Wqkv", (3 * W, W)), ("mixer.out_proj", (W, W)), ("mlp.fc1", (MLP, W)),
                            ("mlp.fc2", (W, MLP))):
            param(p + name, shape)
            sd[ROOT + p + name + ".bias"] = 0.05 * torch.randn(shape[0], generator=g)
        norm(p + "norm1")
        norm(p + "norm2")
    if proj:
        sd["text_model.proj.weight"] = torch.randn(48, W, generator=g) * W ** -0.5
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return sd


def _reference(sd, ids, task=0, alpha=2.0, base=20000.0, pad=1):
    """Jina's forward from the definitions: LoRA applied at run time, SDPA with a boolean key mask, NeoX rotary
    (transformers' rotate_half), post-LN blocks, exact GELU, mean over the non-pad tokens."""
    from transformers.models.llama.modeling_llama import rotate_half

    def weight(name, embedding=False):
        p = ROOT + name + ".parametrizations.weight."
        if p + "original" not in sd:
            return sd[ROOT + name + ".weight"]
        a, b = sd[p + "0.lora_A"][task], sd[p + "0.lora_B"][task]
        delta = (a @ b) if embedding else (b @ a)
        return sd[p + "original"] + delta * (alpha / RANK)

    ids = ids.long()
    keep = ids != pad
    x = F.embedding(ids, weight("embeddings.word_embeddings", True))
    x = x + weight("embeddings.token_type_embeddings", True)[0]
    x = F.layer_norm(x, (W,), sd[ROOT + "emb_ln.weight"], sd[ROOT + "emb_ln.bias"], 1e-5)
    d = W // HEADS
    t = torch.arange(ids.shape[1], dtype=torch.float64)
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.cat([t[:, None] * inv, t[:, None] * inv], -1)
    cos, sin = ang.cos().float(), ang.sin().float()
    for n in range(LAYERS):
        p = f"encoder.layers.{n}."
        qkv = F.linear(x, weight(p + "mixer.Wqkv"), sd[ROOT + p + "mixer.Wqkv.bias"])
        q, k, v = (y.view(*ids.shape, HEADS, d).transpose(1, 2) for y in qkv.chunk(3, -1))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        a = a.transpose(1, 2).reshape(*ids.shape, W)
        x = F.layer_norm(x + F.linear(a, weight(p + "mixer.out_proj"), sd[ROOT + p + "mixer.out_proj.bias"]), (W,),
                         sd[ROOT + p + "norm1.weight"], sd[ROOT + p + "norm1.bias"], 1e-5)
        h = F.gelu(F.linear(x, weight(p + "mlp.fc1"), sd[ROOT + p + "mlp.fc1.bias"]))
        x = F.layer_norm(x + F.linear(h, weight(p + "mlp.fc2"), sd[ROOT + p + "mlp.fc2.bias"]), (W,),
                         sd[ROOT + p + "norm2.weight"], sd[ROOT + p + "norm2.bias"], 1e-5)
    m = keep.unsqueeze(-1).float()
    return (x * m).sum(1) / m.sum(1)


def _ids(rows, length=77):
    g = torch.Generator().manual_seed(9)
    out = torch.ones(len(rows), length, dtype=torch.int32)  # <pad> = 1
    for r, n in enumerate(rows):
        out[r, 0], out[r, n - 1] = 0, 2  # <s> … </s>
        out[r, 1:n - 1] = torch.randint(3, VOCAB, (n - 2,), generator=g)
    return out


@pytest.mark.parametrize("task", ["retrieval.query", "text-matching"])
def test_matches_reference_with_lora_merged(task):
    sd = _jina_state_dict()
    weights = xlmr_weights_from_state_dict(sd, CONFIG, lora_task=task)
    c = weights.config
    assert (c.layers, c.heads, c.rotary_base, c.pad_id, weights.layout, weights.lora_task) == \
        (LAYERS, HEADS, 20000.0, 1, "lora", task)
    ids = _ids([5, 12, 77])
    ours = weights.encode(ids)
    with torch.no_grad():
        ref = _reference(sd, ids, task=TASKS.index(task))
        other = _reference(sd, ids, task=(TASKS.index(task) + 1) % 3)
    assert (ours - ref).abs().max().item() < 1e-5
    assert (ours - other).abs().max().item() > 1e-3  # the adapter choice matters


def test_padding_length_does_not_change_the_embedding():
    weights = xlmr_weights_from_state_dict(_jina_state_dict(seed=1), CONFIG)
    short = xlmr_weights_from_state_dict(_jina_state_dict(seed=1), CONFIG, context_length=16)
    ids = _ids([7, 11])
    assert (weights.encode(ids) - short.encode(ids[:, :16].contiguous())).abs().max().item() < 1e-5


def test_merged_checkpoint_and_projection():
    sd = _jina_state_dict(seed=2, lora=False, proj=True)
    weights = xlmr_weights_from_state_dict(sd, {"rotary_emb_base": 20000.0, "num_attention_heads": HEADS})
    assert weights.layout == "merged" and weights.projection.shape == (48, W)
    ids = _ids([9])
    with torch.no_grad():
        ref = _reference(sd, ids) @ sd["text_model.proj.weight"].T
    assert (weights.encode(ids) - ref).abs().max().item() < 1e-5


def test_missing_facts_are_errors_not_guesses():
    sd = _jina_state_dict(seed=3)
    with pytest.raises(ValueError, match="rotary_emb_base"):
        xlmr_weights_from_state_dict(_jina_state_dict(seed=3, lora=False), {})
    with pytest.raises(ValueError, match="LoRA adapters.*default_lora_task"):
        xlmr_weights_from_state_dict(sd, {"rotary_emb_base": 1e4})
    with pytest.raises(ValueError, match="not among"):
        xlmr_weights_from_state_dict(sd, CONFIG, lora_task="classification")
    with pytest.raises(ValueError, match="no Jina-XLM-RoBERTa text tower"):
        xlmr_weights_from_state_dict({"vision_model.cls_token": torch.zeros(1)}, CONFIG)


def test_onnx_export_parity_and_op_list(tmp_path):
    weights = xlmr_weights_from_state_dict(_jina_state_dict(seed=4), CONFIG, context_length=32)
    tower = weights.build()
    ids = _ids([6, 32], length=32)
    result = export_onnx(ExportGraph(tower), ids[:1], str(tmp_path / "text.onnx"), "input_ids", "text_pooled")
    assert check_export(result) == [] and result.checker == "ok"
    assert result.input_dtype == "int32" and result.output_shape == [1, W]
    assert not {"Shape", "Range", "Neg", "Not", "CumSum"} & set(result.ops)
    sess = ort_session(result.path)
    pooled = np.concatenate([sess.run(None, {"input_ids": ids[i:i + 1].numpy()})[0] for i in range(2)])
    with torch.no_grad():
        ref = tower(ids).numpy()
    assert parity(pooled, ref)["ok"]
