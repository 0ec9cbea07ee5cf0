"""SigLIP and SigLIP2 (fixed resolution): sigmoid scores, MAP-pooled image embedding, last-token text embedding.

* layouts: HF ``SiglipModel`` (google/siglip-*, google/siglip2-*-patch16-224 …) and open_clip ``ViT-*-SigLIP*``
  (``visual.trunk.*`` timm ViT with ``attn_pool``, ``text.*``): ``clip_vision.siglip_layouts``, the one place.
  SigLIP2 NaFlex checkpoints are refused with the reason (variable resolution: no static NPU graph).
* tokenizer: SigLIP = SentencePiece ``spiece.model``; SigLIP2 = Gemma ``tokenizer.json`` (+ its optional
  ``tokenizer_config.json``), both padded to 64 (``axera_export.siglip_tokenizer``). The files come from beside
  the checkpoint (its Hugging Face repo folder) or a ``tokenizer`` path; the export carries copies.
* text pooling: the last position; CPU head: ``text_model.head`` (Linear with bias).
* image: the whole tower including the MAP head runs on the NPU (no CPU head); squash to the tower's size, mean
  = std = 0.5 (HF ``SiglipImageProcessor``: resize without crop).
* score: ``sigmoid(exp(logit_scale)·cos + logit_bias)`` per label (no competition between labels).
"""

from __future__ import annotations

import os
from typing import Optional

from .base import Family, Tokenizer, check_tokenizer_fits, exported_tokenizer_files

SENTENCEPIECE, GEMMA = "sentencepiece", "gemma"
GEMMA_VOCAB = 256000


class SiglipFamily(Family):
    name = "siglip"
    title = "SigLIP / SigLIP2 (google/siglip*, open_clip ViT-*-SigLIP*)"
    layouts = ("hf", "open_clip")
    score_rule = "sigmoid"
    text_pooling = "last"
    default_crop = "none"
    cpu_split = {
        "vision": {"npu": "patch Conv + positions → encoder blocks → post-LN → MAP attention-pooling head "
                          "(output image_pooled = the image embedding)", "cpu": ["L2 normalisation"]},
        "text": {"npu": "token Gather (1-D ids) + positions → encoder blocks (no mask) → final LN (output "
                        "text_hidden)", "cpu": ["last-token pooling: hidden[:, -1]", "text head (fp32 GEMM + bias)",
                                               "L2 normalisation"]},
    }

    def detect(self, keys) -> Optional[str]:
        from ...clip_vision.siglip_layouts import detect_layout

        return detect_layout(keys)

    def load(self, path, parts, tokenizer: Optional[str] = None):
        from ...clip_vision.siglip import load_siglip
        from ..sources import ClipSource

        vision, text, layout = load_siglip(path, parts)
        return ClipSource(f"'{os.path.basename(path)}' (SigLIP, {layout} layout)", False, vision, text,
                          family=self.name, tokenizer_path=tokenizer or os.path.dirname(os.path.abspath(path)))

    def default_source(self, seed: int = 0, tokenizer: Optional[str] = None, **sizes):
        """Seeded random-init SigLIP at google/siglip-base-patch16-224's sizes (``sizes`` override them:
        ``layers``, ``width``, ``image_size`` … of ``random_siglip_state_dict``); NOT pretrained."""
        from ...clip_vision.siglip import random_siglip_state_dict, siglip_from_state_dict
        from ..sources import ClipSource

        sd = random_siglip_state_dict(seed=seed, **sizes)
        width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
        heads = {"num_attention_heads": max(1, width // 64)}
        vision, text, _ = siglip_from_state_dict(sd, source="random-init SigLIP",
                                                 config={"vision_config": heads, "text_config": heads})
        vision.layout = text.layout = "default"
        return ClipSource(f"embedded default: seeded random-init SigLIP ({vision.config.name}, "
                          f"{vision.config.layers} vision / {text.config.layers} text layers, seed {seed}), "
                          f"not pretrained", True, vision, text, family=self.name, tokenizer_path=tokenizer)

    def text_heads(self, text) -> dict:
        return {"text_projection": text.projection.numpy(), "text_projection_bias": text.projection_bias.numpy()}

    # --- tokenizer -------------------------------------------------------------------------------------
    def export_tokenizer(self, source) -> Tokenizer:
        if source.tokenizer_path is None:
            raise ValueError(f"{source.description}: SigLIP's tokenizer is not bundled; give the folder (or file) "
                             f"holding spiece.model (SigLIP) or tokenizer.json (SigLIP2) as tokenizer=...")
        return self.find_tokenizer(source.tokenizer_path, source.text.config.vocab_size,
                                   source.text.config.context_length)

    def find_tokenizer(self, where: str, vocab: int, context_length: int) -> Tokenizer:
        """The tokenizer in ``where`` (a file, or a folder holding ``spiece.model`` / ``tokenizer.json``) for a
        text tower of ``vocab`` tokens; clear errors naming the file and where to put it."""
        from ..siglip_tokenizer import GEMMA_CONFIG_FILE, GEMMA_FILE, SPIECE_FILE, missing_file

        folder = where if os.path.isdir(where) else os.path.dirname(os.path.abspath(where))
        candidates = [where] if os.path.isfile(where) else \
            [os.path.join(folder, n) for n in ((GEMMA_FILE, SPIECE_FILE) if vocab == GEMMA_VOCAB
                                               else (SPIECE_FILE, GEMMA_FILE))]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise missing_file(GEMMA_FILE if vocab == GEMMA_VOCAB else SPIECE_FILE, where,
                               "SigLIP2" if vocab == GEMMA_VOCAB else "SigLIP")
        kind = GEMMA if os.path.basename(path) == GEMMA_FILE or path.endswith(".json") else SENTENCEPIECE
        files = {GEMMA_FILE if kind == GEMMA else SPIECE_FILE: path}
        config = os.path.join(folder, GEMMA_CONFIG_FILE)
        if kind == GEMMA and os.path.isfile(config):
            files[GEMMA_CONFIG_FILE] = config
        return check_tokenizer_fits(self._build(kind, files, context_length), path, vocab,
                                    " (SigLIP: spiece.model; SigLIP2: Gemma's tokenizer.json)")

    def tokenizer(self, block, folder) -> Tokenizer:
        info = block["tokenizer"]
        files = {os.path.basename(f): os.path.join(folder, f) for f in info["files"]}
        exported_tokenizer_files(folder, files.values())
        return self._build(info["kind"], files, info["context_length"])

    @staticmethod
    def _build(kind: str, files: dict, context_length: int) -> Tokenizer:
        from ..siglip_tokenizer import (GEMMA_CONFIG_FILE, GEMMA_FILE, SPIECE_FILE, GemmaTokenizer,
                                        SentencePieceTokenizer, read_gemma_config)

        if kind == GEMMA:
            path = files[GEMMA_FILE]
            config = read_gemma_config(os.path.dirname(files[GEMMA_CONFIG_FILE])) if GEMMA_CONFIG_FILE in files else {}
            tok = GemmaTokenizer(path, context_length, config)
            size, name = tok.tok.get_vocab_size(), "SigLIP2 Gemma tokenizer"
        else:
            tok = SentencePieceTokenizer(files[SPIECE_FILE], context_length)
            size, name = tok.sp.get_piece_size(), "SigLIP SentencePiece"
        return Tokenizer(tok, context_length, dict(files), {"kind": kind, "name": name, "vocab_size": size})


FAMILY = SiglipFamily()
