"""Wan2.1-VACE on the pack's DiT: its weights (detected from the keys), its modules and its hint path.

What Wan2.1-VACE adds to a text-to-video Wan (Wan-Video/Wan2.1 ``wan/modules/vace_model.py``; the same key
names in ComfyUI's ``VaceWanModel`` and in Kijai's VACE module files that Daydream Scope loads):

* ``vace_patch_embedding`` — a Conv3d like ``patch_embedding`` from the VACE context's ``vace_in_dim`` channels
  (96 = inactive latent 16 | reactive latent 16 | the 8x8 pixel mask folded into 64 channels);
* ``vace_blocks.N`` — full Wan attention blocks (t2v cross-attention) plus ``after_proj`` (and ``before_proj`` on
  block 0). Block 0 starts from ``before_proj(context tokens) + x tokens`` (x = the patch-embedded input, before
  any main block); each block's ``after_proj`` output is a *hint*, added × the context scale to the output of
  the main block it maps to: blocks ``0, L/n, 2L/n ...`` for ``n`` VACE blocks (1.3B: 15 blocks on every 2nd of
  30; 14B: 8 on every 5th of 40 — Wan's configs, ComfyUI's rule, Scope's ``vace_layers``).

Causally (Daydream Scope, ``wan2_1/vace``): each block's hints come from that block's context only — the
block's control frames, after the reference frames (which stay in the conditioning, never in the denoised
latent) — and a VACE block attends only to its own tokens (no cache). The token rule is Scope's: the context
tokens are cut (or zero-padded) to the block's own token count, so with ``R`` reference frames the last ``R``
control frames of each block are not seen (``design.md``, ``attention_blocks.py`` ``c[:, :x.size(1)]``). A
bidirectional Wan2.1-VACE forward has context and latent of the same length, where the rule is the identity.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import dit
from .config import VACE_PREFIXES, WanConfig, count_blocks
from .rope import rope_cos_sin

MASK_CHANNELS = 64  # the 8x8 pixel mask of each latent pixel, folded into channels (Wan's vace_encode_masks)


class VaceBlock(dit.Block):
    """A Wan attention block with VACE's projections (``before_proj`` on the first block only)."""

    def __init__(self, cfg: WanConfig, first: bool):
        super().__init__(dataclasses.replace(cfg, has_img_emb=False))  # VACE blocks use t2v cross-attention
        if first:
            self.before_proj = dit.Linear(cfg.dim, cfg.dim)
        self.after_proj = dit.Linear(cfg.dim, cfg.dim)


def add_vace_modules(tree: nn.Module, cfg: WanConfig) -> None:
    """Give a ``WanDiT`` its VACE modules (Wan's names: ``vace_blocks.N.*``, ``vace_patch_embedding.*``)."""
    tree.vace_blocks = nn.ModuleList(VaceBlock(cfg, first=(n == 0)) for n in range(len(cfg.vace_layers)))
    tree.vace_patch_embedding = nn.Conv3d(cfg.vace_in_dim, cfg.dim, kernel_size=cfg.patch_size,
                                          stride=cfg.patch_size)


def vace_layers_for(num_layers: int, count: int) -> tuple:
    """The main blocks that take the hints of ``count`` VACE blocks: every ``num_layers // count``-th from 0."""
    if count < 1 or num_layers % count:
        raise ValueError(f"{count} VACE blocks do not spread evenly over a Wan of {num_layers} blocks (Wan2.1-VACE "
                         f"1.3B: 15 of 30, 14B: 8 of 40); the VACE weights are for another model size.")
    return tuple(range(0, num_layers, num_layers // count))


def vace_config_from_shapes(shapes: Mapping[str, Sequence[int]], base: WanConfig) -> WanConfig:
    """``base`` with the VACE part read from ``{key: shape}``; a clear error for a VACE of another size or
    generation than the DiT it sits beside."""
    pe = shapes.get("vace_patch_embedding.weight")
    count = count_blocks(shapes.keys(), "vace_blocks")
    if pe is None or not count:
        raise ValueError(f"incomplete VACE weights: {'no vace_patch_embedding.weight' if pe is None else ''}"
                         f"{' and ' if pe is None and not count else ''}{'no vace_blocks.N.*' if not count else ''}"
                         f"; a Wan2.1-VACE checkpoint (or VACE module file) has both.")
    if base.generation != "Wan 2.1" or base.has_img_emb:
        raise ValueError(f"Wan2.1-VACE weights sit beside a {base.describe()}: Wan2.1-VACE is trained on the "
                         f"text-to-video Wan 2.1 (16 latent channels, no CLIP image embedding); use a Wan 2.1 "
                         f"t2v base of the same size (1.3B: Self-Forcing, LongLive, Reward Forcing, MemFlow; "
                         f"14B: Krea Realtime Video).")
    vace_dim = int(pe[0])
    ffn = shapes.get("vace_blocks.0.ffn.0.weight")
    if vace_dim != base.dim or ffn is None or int(ffn[0]) != base.ffn_dim:
        size = {1536: "1.3B", 5120: "14B"}.get(vace_dim, f"dim {vace_dim}")
        raise ValueError(f"the VACE weights are for a Wan {size} (vace_patch_embedding.weight {list(pe)}, "
                         f"vace_blocks.0.ffn.0.weight {list(ffn) if ffn is not None else 'missing'}) but the base "
                         f"model is {base.describe()}: use the VACE of the base's size (Wan2.1-VACE-1.3B or its "
                         f"module file for 1.3B bases, -14B for 14B bases such as Krea).")
    in_dim = int(pe[1])
    if in_dim != 2 * base.out_dim + MASK_CHANNELS or tuple(int(p) for p in pe[2:]) != tuple(base.patch_size):
        raise ValueError(f"vace_patch_embedding.weight has shape {list(pe)}; Wan2.1-VACE takes "
                         f"{2 * base.out_dim + MASK_CHANNELS} channels (inactive {base.out_dim} | reactive "
                         f"{base.out_dim} | mask {MASK_CHANNELS}) with patch {list(base.patch_size)}: these weights "
                         f"are another generation of VACE.")
    if "vace_blocks.0.before_proj.weight" not in shapes or "vace_blocks.0.after_proj.weight" not in shapes:
        raise ValueError("VACE block 0 lacks before_proj/after_proj weights (vace_blocks.0.before_proj.weight, "
                         "vace_blocks.0.after_proj.weight): not Wan2.1-VACE weights.")
    return dataclasses.replace(base, vace_layers=vace_layers_for(base.num_layers, count), vace_in_dim=in_dim)


# --------------------------------------------------------------------------------------------------
# Weights: a full VACE checkpoint, or a VACE module file applied onto a (causal) base
# --------------------------------------------------------------------------------------------------
def is_vace_key(key: str) -> bool:
    return key.startswith(VACE_PREFIXES)


def vace_state_dict_from(raw: Mapping, name: str = "VACE file") -> dict:
    """The VACE tensors of a file's contents (a VACE module file such as Kijai's
    ``Wan2_1-VACE_module_1_3B_bf16.safetensors``, or a whole Wan2.1-VACE checkpoint in Wan's or ComfyUI's
    layout), with Wan's names and nothing else."""
    from .checkpoint import select_state_dict  # checkpoint.py reads files; this module only maps names

    sd, _ = select_state_dict(raw, "auto", name)
    anchors = [k for k in sd if str(k).endswith("vace_patch_embedding.weight")]
    if not anchors:
        raise ValueError(f"{name} has no VACE weights (no vace_patch_embedding.weight; expected vace_blocks.N.* and "
                         f"vace_patch_embedding.* keys): pick a Wan2.1-VACE checkpoint or VACE module file.")
    prefix = min(anchors, key=len)[: -len("vace_patch_embedding.weight")]
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and is_vace_key(k[len(prefix):])}
    return out


def apply_vace(base: Mapping, vace: Mapping) -> dict:
    """``base`` (Wan-named DiT tensors) with ``vace``'s VACE tensors in place of any it had (Scope's
    ``load_vace_weights_only``: the base's own blocks are kept as they are)."""
    out = {k: v for k, v in base.items() if not is_vace_key(k)}
    out.update(vace)
    return out


# --------------------------------------------------------------------------------------------------
# The hint path
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class VaceStep:
    """The VACE input of one DiT evaluation: ``contexts`` = ``[(context [B, vace_in_dim, Fc, H, W], scale)]``
    (one entry per VACE conditioning; ComfyUI sums the hints of several), in the model's latent space."""

    contexts: list

    def hints(self, tree: nn.Module, cfg: WanConfig, x_tokens: torch.Tensor, e0: torch.Tensor, ctx, grid,
              dtype: torch.dtype) -> dict:
        """``{main block index: hint × scale}`` for tokens ``x_tokens [B, F*h*w, D]`` of ``grid = (F, h, w)``."""
        if not cfg.has_vace:
            raise ValueError(f"VACE conditioning was given but the model has no VACE weights ({cfg.describe()}): "
                             f"load a Wan2.1-VACE checkpoint, or apply a VACE module file to the base model.")
        if len(ctx.vace_k) != len(cfg.vace_layers):
            raise ValueError("the cross-attention context was encoded without the VACE blocks; encode it with the "
                             "VACE model (dit.encode_context on the tree that holds vace_blocks).")
        frames, h, w = grid
        cos, sin = rope_cos_sin(cfg.head_dim, 0, frames, h, w, x_tokens.device)
        hints: dict = {}
        for context, scale in self.contexts:
            c = context_tokens(tree, cfg, context, x_tokens, dtype)
            for n, blk in enumerate(tree.vace_blocks):
                if n == 0:
                    c = blk.before_proj(c) + x_tokens
                c = dit.run_block(blk, cfg, c, e0, (ctx.vace_k[n], ctx.vace_v[n], None, None), cos, sin, frames,
                                  dtype)
                hint = blk.after_proj(c) * float(scale)
                layer = cfg.vace_layers[n]
                hints[layer] = hint if layer not in hints else hints[layer] + hint
        return hints


def context_tokens(tree: nn.Module, cfg: WanConfig, context: torch.Tensor, x_tokens: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """Patch-embedded VACE context, cut or zero-padded to the latent's token count (Scope's rule; identity when
    context and latent have the same frames)."""
    if context.dim() != 5 or context.shape[1] != cfg.vace_in_dim:
        raise ValueError(f"VACE context has shape {list(context.shape)}; expected [batch, {cfg.vace_in_dim}, frames, "
                         f"height, width] (inactive | reactive latents and the folded mask).")
    pe = tree.vace_patch_embedding
    w = getattr(pe, "weight", None)
    conv_dtype = w.dtype if w is not None and w.dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype
    c = pe(context.to(device=x_tokens.device, dtype=conv_dtype)).to(dtype).flatten(2).transpose(1, 2)
    if c.shape[0] != x_tokens.shape[0]:
        c = c.expand(x_tokens.shape[0], -1, -1) if c.shape[0] == 1 else c[:x_tokens.shape[0]]
    n = x_tokens.shape[1]
    return c[:, :n] if c.shape[1] >= n else F.pad(c, (0, 0, 0, n - c.shape[1]))
