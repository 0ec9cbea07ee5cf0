"""Image embeddings alone, with the last block's work cut to what they read (for CLIP scores).

``image_embeds`` = ``visual_projection(post_layernorm(CLS of the last block))``: of the last block only the CLS
token's output is read. Its attention still needs the keys and values of every token, but the query, the
attention output, the residual and the MLP are needed for the CLS token alone. So the last block here computes
LayerNorm + K|V for all tokens and everything else for one token — about 5/6 of that block's GEMM work saved
(ViT-B/32, 50 tokens: ~7 % of a frame's forward) — with the same weights and the same operations as
``model.Block.forward`` (the numbers agree to float rounding; tests/test_score_speed.py).

Other vision models (ComfyUI's CLIP_VISION, a tower without projection) go through their ``encode_image``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import Block, _activation, _cast, _layer_norm, _linear, _residual_linear
from .preprocess import preprocess_images


def _cls_of_last_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, 0]`` computed for the CLS token only: ``[B, T, W] -> [B, W]``."""
    b, t, w = x.shape
    heads, d = block.heads, w // block.heads
    h = _layer_norm(x, block.layer_norm1)
    weight, bias = _cast(block.qkv.weight, h), _cast(block.qkv.bias, h)
    q = F.linear(h[:, :1], weight[:w], bias[:w]).view(b, 1, heads, d).transpose(1, 2)
    k, v = F.linear(h, weight[w:], bias[w:]).view(b, t, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, w)
    cls = _residual_linear(x[:, 0].contiguous(), attn, block.out_proj)
    mlp = _activation(_linear(_layer_norm(cls, block.layer_norm2), block.fc1), block.act, export=False)
    return _residual_linear(cls, mlp, block.fc2)


def supports(vision) -> bool:
    """Whether ``vision`` is the pack's own tower with a projection (the fast path)."""
    model = getattr(vision, "model", None)
    return getattr(model, "visual_projection", None) is not None and hasattr(model, "layers") and \
        len(getattr(model, "layers", ())) > 0 and hasattr(vision, "compute_dtype")


@torch.inference_mode()
def image_embeds(vision, frames: torch.Tensor, crop="center") -> torch.Tensor:
    """IMAGE ``[F,H,W,3]`` -> the tower's ``image_embeds`` ``[F, D]`` (float32, CPU), not normalised."""
    if not supports(vision):
        return vision.encode_image(frames, crop=crop).image_embeds
    model = vision.model
    pixels = preprocess_images(frames, model.config, crop).to(vision.device, vision.compute_dtype)
    x = model.embed(pixels)
    for block in model.layers[:-1]:
        x = block(x)
    pooled = _layer_norm(_cls_of_last_block(model.layers[-1], x), model.post_layernorm)
    embeds = _linear(pooled, model.visual_projection).float().cpu()
    if not torch.isfinite(embeds).all():
        raise ValueError(f"CLIP vision ({vision.source}): the image embeddings contain NaN or Inf values; the "
                         f"activations overflowed in {str(vision.dtype).replace('torch.', '')} (load the model in "
                         f"bf16 or fp32) or the weights are damaged")
    return embeds
