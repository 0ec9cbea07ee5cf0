"""The CLIP → Wan 2.1 i2v contract: what ``clip_fea`` (CLIP vision features) must look like, checked here only.

Wan's ``img_emb`` takes ViT-H/14 penultimate hidden states: 1280 wide, 257 tokens per 224 px image
(16×16 patches of 14 px + CLS). Image tokens get their own K/V and softmax in every cross-attention, so
any whole number of images works: k images concatenated along tokens (CLIPVisionEncodeWan "concat",
core's WanFirstLastFrameToVideo) give ``[batch, k·257, 1280]`` and are as valid as one.
"""

from __future__ import annotations

import torch

CLIP_DIM = 1280  # ViT-H/14 width
CLIP_TOKENS = 257  # per image: 16x16 patches + CLS

_VIT_H_FILES = "clip_vision_h.safetensors or Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


def check_clip_features(clip_fea, source: str = "CLIP vision features") -> None:
    """Raise ValueError unless ``clip_fea`` is ``[batch, k·257, 1280]`` (k ≥ 1), naming the source and the fix."""
    if not isinstance(clip_fea, torch.Tensor) or clip_fea.ndim != 3:
        found = list(clip_fea.shape) if isinstance(clip_fea, torch.Tensor) else type(clip_fea).__name__
        raise ValueError(f"{source}: expected penultimate hidden states [batch, {CLIP_TOKENS}, {CLIP_DIM}], "
                         f"got {found}. Connect the output of a CLIP Vision Encode node (a ViT-H/14 model).")
    batch, tokens, width = clip_fea.shape
    if width != CLIP_DIM:
        raise ValueError(
            f"{source}: {width}-wide features {list(clip_fea.shape)}, but Wan 2.1 i2v needs {CLIP_DIM}-wide "
            f"ViT-H/14 features [batch, {CLIP_TOKENS}, {CLIP_DIM}] (a {width}-wide model is e.g. ViT-L/14 = 1024 "
            f"or ViT-bigG = 1664). Load the ViT-H/14 file instead: {_VIT_H_FILES}.")
    if tokens == 0 or tokens % CLIP_TOKENS:
        raise ValueError(
            f"{source}: {tokens} tokens {list(clip_fea.shape)}, but Wan 2.1 i2v needs {CLIP_TOKENS} per image "
            f"([batch, {CLIP_TOKENS}, {CLIP_DIM}], or k images side by side: [batch, k*{CLIP_TOKENS}, {CLIP_DIM}]). "
            f"Use a 224 px ViT-H/14 model ({_VIT_H_FILES}).")
