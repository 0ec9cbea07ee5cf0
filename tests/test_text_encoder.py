"""umt5 text encoder: Wan's .pth layout and ComfyUI's (HF-named) .safetensors layout load into the same
encoder; outputs equal an independent minimal implementation of Wan's T5 encoder written here (from the Wan
layout's tensors) and transformers' UMT5EncoderModel; real umt5-xxl shapes on meta; tokenizer by path."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel

from comfyui_clipwan.wan.text import umt5 as TE
TINY = dict(vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            dropout_rate=0.0, is_encoder_decoder=False)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = UMT5EncoderModel(UMT5Config(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms and position biases
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _wan_layout(hf_sd):
    """The same tensors under Wan's names (models_t5_umt5-xxl-enc-bf16.pth)."""
    names = {"layer.0.layer_norm.weight": "norm1.weight", "layer.0.SelfAttention.q.weight": "attn.q.weight",
             "layer.0.SelfAttention.k.weight": "attn.k.weight", "layer.0.SelfAttention.v.weight": "attn.v.weight",
             "layer.0.SelfAttention.o.weight": "attn.o.weight",
             "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
             "layer.1.layer_norm.weight": "norm2.weight", "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
             "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight", "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight"}
    out = {"token_embedding.weight": hf_sd["shared.weight"], "norm.weight": hf_sd["encoder.final_layer_norm.weight"]}
    for k, v in hf_sd.items():
        if k.startswith("encoder.block."):
            _, _, i, rest = k.split(".", 3)
            out[f"blocks.{i}.{names[rest]}"] = v
    return out


def _bucket(rel, num_buckets=32, max_dist=128):
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float().clamp_min(1) / exact) / math.log(max_dist / exact) * (half - exact)).long()
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def wan_t5_reference(sd, ids, heads=4):
    """Wan's T5Encoder forward (no scaling in attention, per-layer relative bias, tanh-GELU gate)."""
    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    x = sd["token_embedding.weight"][ids]
    b, n = ids.shape
    pos = torch.arange(n)
    buckets = _bucket(pos[None, :] - pos[:, None])
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        h = norm(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{c}.weight"]).view(b, n, heads, -1) for c in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        a = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)
        o = torch.einsum("bnij,bjnc->binc", a, v).reshape(b, n, -1)
        x = x + F.linear(o, sd[p + "attn.o.weight"])
        h = norm(x, sd[p + "norm2.weight"])
        g = F.linear(h, sd[p + "ffn.gate.0.weight"])
        g = 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * g, sd[p + "ffn.fc2.weight"])
        i += 1
    return norm(x, sd["norm.weight"])


def test_wan_and_comfy_layouts_match_wan_reference_and_transformers(hf_model, tmp_path):
    hf_sd = {k: v.clone() for k, v in hf_model.state_dict().items()}
    wan_sd = _wan_layout(hf_sd)
    torch.save(wan_sd, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    save_file({k: v.contiguous() for k, v in hf_sd.items() if k != "encoder.embed_tokens.weight"},
              tmp_path / "umt5_xxl_fp16.safetensors")
    ids = torch.tensor([[5, 17, 3, 42, 8, 1]])
    ref = wan_t5_reference(wan_sd, ids)
    with torch.no_grad():
        hf = hf_model(input_ids=ids).last_hidden_state
    assert (hf - ref).abs().max() < 1e-4  # the two oracles agree
    for name in ("models_t5_umt5-xxl-enc-bf16.pth", "umt5_xxl_fp16.safetensors"):
        enc = TE.UMT5TextEncoder.from_file(str(tmp_path / name))
        out = enc.encode_ids(ids)
        assert out.shape == (1, 6, 32)
        assert (out - ref).abs().max() < 1e-4, name


def test_fp8_scaled_weights_are_rescaled(hf_model):
    sd = {k: v.clone() for k, v in hf_model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    key = "encoder.block.0.layer.1.DenseReluDense.wo.weight"
    scaled = dict(sd)
    scaled[key] = sd[key] / 4.0
    scaled[key.replace("weight", "scale_weight")] = torch.tensor(4.0)
    scaled["scaled_fp8"] = torch.zeros(0)
    a = TE.UMT5TextEncoder.from_state_dict(sd).encode_ids(torch.tensor([[1, 2, 3]]))
    b = TE.UMT5TextEncoder.from_state_dict(scaled).encode_ids(torch.tensor([[1, 2, 3]]))
    assert (a - b).abs().max() < 1e-5


def test_real_umt5_xxl_shapes_on_meta():
    cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    hf = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    wan = _wan_layout(hf)
    assert len(wan) == 2 + 24 * 10  # Wan's encoder file: 242 tensors
    assert wan["token_embedding.weight"].shape == (256384, 4096)
    assert wan["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)
    assert wan["blocks.0.ffn.gate.0.weight"].shape == (10240, 4096)
    back = TE.to_hf_layout(wan)
    got = TE.config_from_shapes(back)
    assert (got.d_model, got.num_layers, got.num_heads, got.d_ff, got.vocab_size) == (4096, 24, 64, 10240, 256384)
    assert sum(v.numel() for v in hf.values()) == 5_680_910_336  # umt5-xxl encoder: 5.68B parameters


def test_tokenizer_json_and_prompt_cleaning(hf_model, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "fox": 5, "&": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    sd = {k: v for k, v in hf_model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    enc = TE.UMT5TextEncoder.from_state_dict(sd, TE.load_tokenizer(str(tmp_path / "tokenizer.json")))
    assert enc.tokenize("  a   red\n fox &amp; ").tolist() == [[3, 4, 5, 6, 1]]
    ctx = enc.encode("a red fox")
    assert ctx.shape == (1, 4, 32)
    assert (ctx - enc.encode_ids(torch.tensor([[3, 4, 5, 1]]))).abs().max() == 0


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a umt5-xxl text encoder"):
        TE.to_hf_layout({"text_model.embeddings.token_embedding.weight": torch.zeros(1)}, "clip_l.safetensors")
    with pytest.raises(ValueError, match="unexpected key 'blocks.0.cross_attn.q.weight'"):
        TE.wan_to_hf({"blocks.0.cross_attn.q.weight": torch.zeros(1)}, "t5.pth")
    with pytest.raises(FileNotFoundError, match="tokenizer .* does not exist"):
        TE.load_tokenizer(str(tmp_path / "nope"))
    enc = TE.UMT5TextEncoder(UMT5EncoderModel(UMT5Config(**TINY)))
    with pytest.raises(ValueError, match="no tokenizer"):
        enc.tokenize("hello")
