"""What Wan 2.1 i2v needs from a CLIP vision output, and how several images become one conditioning.

Shared by the ComfyUI node and the CLI so the rules exist once.
"""

from __future__ import annotations

import torch

from .loader import ClipVisionOutput

WAN_TOKENS = 257  # 16×16 patches of a 224 px ViT-H/14 + CLS
WAN_WIDTH = 1280  # ViT-H/14 hidden size; Wan's img_emb MLP takes 1280-wide tokens
MULTI_IMAGE_MODES = ("per_image", "average", "concat")


def check_wan_features(hidden: torch.Tensor, source: str) -> None:
    """Raise ValueError unless ``hidden`` is [B, 257, 1280], naming the file, what was found and what is needed."""
    if hidden is None or hidden.ndim != 3:
        raise ValueError(f"'{source}' gave no penultimate hidden states [B,257,1280]; Wan 2.1 i2v needs them")
    width, tokens = hidden.shape[-1], hidden.shape[1]
    if width != WAN_WIDTH:
        raise ValueError(
            f"'{source}' gives {width}-wide features, but Wan 2.1 i2v needs {WAN_WIDTH}-wide ViT-H/14 features "
            f"[B,{WAN_TOKENS},{WAN_WIDTH}] (a {width}-wide model is e.g. ViT-L/14 = 1024 or ViT-bigG = 1664). "
            f"Load the ViT-H/14 file instead: clip_vision_h.safetensors or Wan's "
            f"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth.")
    if tokens != WAN_TOKENS:
        raise ValueError(f"'{source}' gives {tokens} tokens per image, but Wan 2.1 i2v needs {WAN_TOKENS} "
                         f"(224 px, patch 14). Use a 224 px ViT-H/14 model.")


def combine_images(out: ClipVisionOutput, mode: str) -> ClipVisionOutput:
    """Turn a batch of B encoded images into Wan conditioning.

    ``per_image``: unchanged, [B,257,1280] (one conditioning per batch item).
    ``average``:   mean over the batch, [1,257,1280] (one blended reference).
    ``concat``:    tokens of all images side by side, [1,B·257,1280] (as ComfyUI's WanFirstLastFrameToVideo does
                   for two images; Wan's image cross-attention accepts any token count). ``image_embeds`` are
                   averaged, since a pooled embedding has no token axis.
    """
    if mode not in MULTI_IMAGE_MODES:
        raise ValueError(f"multi_image must be one of {list(MULTI_IMAGE_MODES)}, got {mode!r}")
    if mode == "per_image":
        return out

    def mean(t):
        return None if t is None else t.mean(dim=0, keepdim=True)

    def tokens(t):
        return None if t is None else t.reshape(1, -1, t.shape[-1])

    join = mean if mode == "average" else tokens
    sizes = out.image_sizes[:1] if mode == "average" else list(out.image_sizes)
    return ClipVisionOutput(last_hidden_state=join(out.last_hidden_state),
                            penultimate_hidden_states=join(out.penultimate_hidden_states),
                            image_embeds=mean(out.image_embeds), mm_projected=None, image_sizes=sizes)
