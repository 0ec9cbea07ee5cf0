"""How several encoded images become one Wan 2.1 i2v conditioning (shared by the node and the CLI).

What the features must look like is Wan's side of the contract: ``wan.model.features.check_clip_features``.
"""

from __future__ import annotations

import torch

from .loader import ClipVisionOutput

MULTI_IMAGE_MODES = ("per_image", "average", "concat")


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
