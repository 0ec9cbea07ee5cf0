"""Wan's text encoder: the umt5-xxl *encoder* (24 layers, 4096-d, per-layer relative position bias), built
on transformers' ``UMT5EncoderModel``, loaded from the two layouts people have:

* Wan's ``models_t5_umt5-xxl-enc-bf16.pth``: Wan's own module names (``token_embedding``,
  ``blocks.N.attn.q``, ``blocks.N.ffn.gate.0`` / ``fc1`` / ``fc2``, ``blocks.N.pos_embedding.embedding``,
  ``norm``);
* ComfyUI's ``umt5_xxl_fp16.safetensors`` / ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``: Hugging Face T5
  names (``shared``, ``encoder.block.N.layer.0.SelfAttention.q`` ...), fp8 weights with ``scale_weight``.

The prompt is cleaned and tokenized as Wan does (umt5 tokenizer, end-of-sequence token, at most 512
tokens); the context is the encoder's output for the real tokens only (Wan trims the padding; the DiT pads
with zeros to 512). Tokenizer files are given by path: a ``tokenizer.json``, a ``spiece.model`` or a folder.
"""

from __future__ import annotations

import html
import os
import re
from typing import Mapping, Optional

import torch

TEXT_LEN = 512  # Wan's text_len
ANCHOR_WAN = "blocks.0.attn.q.weight"
ANCHOR_HF = "encoder.block.0.layer.0.SelfAttention.q.weight"

_WAN_TO_HF = (  # (Wan per-block name, HF per-block name)
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),  # the GELU branch
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),  # the linear branch
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)


def wan_to_hf(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """Wan's umt5 encoder keys -> Hugging Face ``UMT5EncoderModel`` keys (tensors shared, not copied)."""
    out = {}
    per_block = dict(_WAN_TO_HF)
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            if rest not in per_block:
                raise ValueError(f"{source}: unexpected key '{key}' for Wan's umt5 encoder (is it the full "
                                 f"encoder-decoder T5? Wan ships the encoder only: models_t5_umt5-xxl-enc-bf16.pth).")
            out[f"encoder.block.{idx}.{per_block[rest]}"] = value
        else:
            raise ValueError(f"{source}: unexpected key '{key}' for Wan's umt5 encoder.")
    return out


def to_hf_layout(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """Any supported file's tensors in Hugging Face names, fp8 ``scale_weight`` applied."""
    if ANCHOR_WAN in sd:
        return wan_to_hf(sd, source)
    if ANCHOR_HF not in sd:
        sample = ", ".join(list(sd)[:5])
        raise ValueError(f"{source} is not a umt5-xxl text encoder (no '{ANCHOR_WAN}' (Wan) or '{ANCHOR_HF}' "
                         f"(ComfyUI/HF) key; first keys: {sample}). Use models_t5_umt5-xxl-enc-bf16.pth or "
                         f"umt5_xxl_fp16.safetensors.")
    out = {}
    for key, value in sd.items():
        if key.endswith(".scale_weight") or key.endswith(".scale_input") or key in ("scaled_fp8",):
            continue
        if key.startswith("decoder.") or key.startswith("lm_head."):
            continue  # a full T5 checkpoint: the encoder is all Wan uses
        scale = sd.get(key[: -len("weight")] + "scale_weight") if key.endswith(".weight") else None
        if scale is not None:
            value = value.to(torch.float32) * scale.to(torch.float32)
        out[key] = value
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    out.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight in the model
    return out


def config_from_shapes(sd: Mapping[str, torch.Tensor]):
    """``UMT5Config`` of an HF-layout encoder state dict (umt5-xxl: 4096-d, 64 heads, 24 layers)."""
    from transformers import UMT5Config

    vocab, d_model = sd["shared.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    d_ff = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    return UMT5Config(vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner) // int(heads), d_ff=int(d_ff),
                      num_layers=int(layers), num_heads=int(heads), relative_attention_num_buckets=int(buckets),
                      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                      layer_norm_epsilon=1e-6, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: HTML entities resolved, runs of whitespace collapsed, ends stripped
    (plus ftfy's mojibake fixes when ftfy is installed, as Wan has it)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(path: str):
    """A umt5 tokenizer from a ``tokenizer.json``, a ``spiece.model`` or a folder holding either. A file that
    cannot be read as one (truncated, empty, another format) is a ``ValueError`` naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer '{path}' does not exist; give the umt5-xxl tokenizer folder (Wan's "
                                f"google/umt5-xxl) or its tokenizer.json / spiece.model file.")
    if not os.path.isdir(path) and not path.endswith((".json", ".model")):
        raise ValueError(f"tokenizer '{os.path.basename(path)}': expected a folder, a tokenizer.json or a "
                         f"spiece.model.")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"tokenizer '{path}' is empty (0 bytes): the download or copy did not finish. Download "
                         f"the umt5-xxl tokenizer (google/umt5-xxl) again.")
    try:
        if os.path.isdir(path):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        elif path.endswith(".json"):
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast(tokenizer_file=path, eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")
        else:
            _check_sentencepiece(path)
            from transformers import T5Tokenizer

            tokenizer = T5Tokenizer(vocab_file=path)
    except Exception as exc:  # noqa: BLE001 — tokenizers/sentencepiece raise bare Exceptions on bad files
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ValueError(f"tokenizer '{path}' cannot be read ({type(exc).__name__}: {detail}); it is truncated, "
                         f"damaged or not a tokenizer file. Give the umt5-xxl tokenizer (google/umt5-xxl: "
                         f"tokenizer.json or spiece.model), downloaded again.") from None
    eos = tokenizer.eos_token_id
    if eos is None or eos >= tokenizer.vocab_size:  # absent, or only added on top of the file's vocabulary
        raise ValueError(f"tokenizer '{path}' has no end-of-sequence token '</s>': it is not a T5 / umt5 "
                         f"tokenizer (Wan needs google/umt5-xxl's).")
    tokenizer.clipwan_source = path  # named in the encoder's checks
    return tokenizer


def _check_sentencepiece(path: str) -> None:
    """Parse a spiece.model with sentencepiece itself: transformers 5's T5Tokenizer builds a default vocabulary
    from a file it cannot read instead of failing (sentencepiece is a dependency of the pack)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    processor.Load(path)  # raises on a file that is not a SentencePiece model


def check_tokenizer_fits(tokenizer, model, source: str = "text encoder") -> None:
    """Every id the tokenizer can give must have a row in the encoder's embedding table."""
    if tokenizer is None:
        return
    rows = int(model.get_input_embeddings().num_embeddings)
    size = len(tokenizer)
    if size > rows:
        name = getattr(tokenizer, "clipwan_source", None) or type(tokenizer).__name__
        raise ValueError(f"tokenizer '{name}' has {size} tokens but the text encoder {source} embeds only {rows}: "
                         f"they do not belong together (prompts would index past the table). Use the encoder's own "
                         f"tokenizer (umt5-xxl: google/umt5-xxl with 256384 embedding rows).")


class UMT5TextEncoder:
    """``encode(prompt) -> [1, L, 4096]`` Wan text context (L = the prompt's tokens incl. end-of-sequence)."""

    def __init__(self, model, tokenizer=None, source: str = ""):
        self.model = model.eval().requires_grad_(False)
        check_tokenizer_fits(tokenizer, self.model, source or "text encoder")
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], tokenizer=None, dtype=None, device="cpu",
                        source: str = "state dict") -> "UMT5TextEncoder":
        from transformers import UMT5EncoderModel

        hf = to_hf_layout(sd, source)
        config = config_from_shapes(hf)
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        expected = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
        missing = sorted(set(expected) - set(hf))
        unexpected = sorted(set(hf) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{source} does not match a umt5 encoder ({config.num_layers} layers, d_model "
                             f"{config.d_model}): missing keys {missing[:4]}, unexpected keys {unexpected[:4]}.")
        target = dtype or next(iter(hf.values())).dtype
        if target not in (torch.float32, torch.float16, torch.bfloat16):
            target = torch.bfloat16
        tensors = {k: v.to(device=device, dtype=target) for k, v in hf.items()}
        tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
        model.load_state_dict(tensors, strict=True, assign=True)
        model.encoder.embed_tokens = model.shared  # tie (assign replaced the parameters)
        return cls(model, tokenizer, source)

    @classmethod
    def from_file(cls, path: str, tokenizer_path: Optional[str] = None, dtype=None,
                  device="cpu") -> "UMT5TextEncoder":
        from ..model.checkpoint import read_file

        tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
        return cls.from_state_dict(read_file(path), tokenizer, dtype=dtype, device=device,
                                   source=os.path.basename(path))

    @property
    def device(self):
        return self.model.shared.weight.device

    def tokenize(self, prompt: str) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("no tokenizer: give the umt5-xxl tokenizer (--tokenizer PATH: a folder, "
                             "tokenizer.json or spiece.model).")
        ids = self.tokenizer(clean_prompt(prompt), truncation=True, max_length=TEXT_LEN, add_special_tokens=True,
                             return_tensors="pt")["input_ids"]
        return ids

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` (no padding) -> hidden states ``[B, L, d_model]`` float32."""
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.device)).last_hidden_state
        return out.float()

    def encode(self, prompt: str) -> torch.Tensor:
        return self.encode_ids(self.tokenize(prompt))
