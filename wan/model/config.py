"""Wan 2.1 / Wan 2.2 DiT configuration, detected from the shapes of a state dict (works on meta tensors too).

The fixed parts (patch 1x2x2, 256-d time sinusoid, 4096-d umt5 text, 512 text tokens, 1280-d CLIP tokens,
eps 1e-6, head_dim 128) are the same for every Wan 2.1 size and for Wan 2.2 TI2V-5B; everything else is read
from the weights, so the same code handles 1.3B, 14B, TI2V-5B and the tiny test configs.

Wan 2.2 TI2V-5B is the Wan 2.1 DiT at another size whose in/out channels are the 48 channels of the Wan 2.2
VAE (``out_dim 48``): that output width is what tells the two generations apart (the 16-channel Wan 2.2 A14B
experts share Wan 2.1 14B's shapes and run as such).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Optional, Sequence

from .actions import ActionConfig

# Wan 2.1 sizes (Wan-Video/Wan2.1 wan/configs): used for naming and for tests, never required.
KNOWN_SIZES = {
    (1536, 8960, 30): "1.3B",
    (5120, 13824, 40): "14B",
    (3072, 14336, 30): "TI2V-5B",  # Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py (24 heads)
}
WAN22_LATENT_CHANNELS = 48  # Wan 2.2 VAE (16x spatial, 4x temporal); Wan 2.1's has 16
HEAD_DIM = 128  # every released Wan 2.1 model; ComfyUI derives num_heads = dim // 128 the same way
VACE_PREFIXES = ("vace_blocks.", "vace_patch_embedding.")  # Wan2.1-VACE's own modules (Wan, ComfyUI, Kijai/Scope)


@dataclasses.dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16  # 16 = t2v (noise only); 36 = i2v (noise 16 | mask 4 | image latent 16); 48 = Wan 2.2 TI2V
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple = (1, 2, 2)
    has_img_emb: bool = False  # img_emb MLP + k_img/v_img in cross-attention (Wan i2v)
    # Matrix-Game 2.0: no text at all; the cross-attention attends the img_emb tokens through its plain k/v
    image_context_only: bool = False
    actions: Optional[ActionConfig] = None  # Matrix-Game 2.0's keyboard/mouse modules (wan/model/actions.py)
    # Wan2.1-VACE (wan/model/vace.py): the main blocks that get a hint (one VACE block each, in order) and the
    # channels of the VACE context (96 = inactive 16 | reactive 16 | 8x8 mask 64); () / 0 = no VACE
    vace_layers: tuple = ()
    vace_in_dim: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def generation(self) -> str:
        """"Wan 2.2" for the 48-channel (Wan 2.2 VAE) models, else "Wan 2.1"."""
        return "Wan 2.2" if self.out_dim == WAN22_LATENT_CHANNELS else "Wan 2.1"

    @property
    def has_vace(self) -> bool:
        return bool(self.vace_layers)

    @property
    def model_type(self) -> str:
        if self.has_vace:
            return "vace"
        if self.has_img_emb:
            return "i2v"
        # TI2V: one model for text- and image-to-video; the image enters as the clean first latent frame
        # (timestep 0 on its tokens), not through extra channels or CLIP tokens
        return "ti2v" if self.generation == "Wan 2.2" and not self.concat_channels else "t2v"

    @property
    def concat_channels(self) -> int:
        """Channels concatenated to the noise (0 for t2v, 20 = mask 4 + image latent 16 for i2v)."""
        return self.in_dim - self.out_dim

    @property
    def size_name(self) -> str:
        return KNOWN_SIZES.get((self.dim, self.ffn_dim, self.num_layers), "custom")

    def describe(self) -> str:
        name = f"{self.generation} {self.size_name} {self.model_type}"
        if self.image_context_only:
            name = f"Matrix-Game 2.0 ({name}, CLIP context only"
            name += f", {self.actions.describe()})" if self.actions else ", no action module)"
        vace = f", {len(self.vace_layers)} VACE blocks, vace_in_dim {self.vace_in_dim}" if self.has_vace else ""
        return (f"{name} (dim {self.dim}, ffn {self.ffn_dim}, "
                f"{self.num_heads} heads, {self.num_layers} layers, in_dim {self.in_dim}{vace})")


def count_blocks(keys, prefix: str = "blocks") -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    if not ids:
        return 0
    if ids != set(range(max(ids) + 1)):
        missing = sorted(set(range(max(ids) + 1)) - ids)
        raise ValueError(f"Wan checkpoint is missing transformer blocks {missing[:8]} ({prefix}.N.* keys); "
                         f"the file is truncated or not a Wan 2.1 DiT.")
    return max(ids) + 1


def config_from_shapes(shapes: Mapping[str, Sequence[int]], num_heads: Optional[int] = None) -> WanConfig:
    """Config from ``{key: shape}`` of a Wan-named state dict (no prefix)."""
    # Matrix-Game 2.0 has no text embedding: its cross-attention only sees the CLIP tokens (img_emb, no k_img)
    image_only = "text_embedding.0.weight" not in shapes and "img_emb.proj.0.bias" in shapes \
        and "blocks.0.cross_attn.k_img.weight" not in shapes
    required = ("head.modulation", "patch_embedding.weight", "blocks.0.ffn.0.weight", "head.head.weight",
                "time_embedding.0.weight") + (() if image_only else ("text_embedding.0.weight",))
    missing = [k for k in required if k not in shapes]
    if missing:
        raise ValueError(f"not a Wan 2.1 / 2.2 DiT state dict: missing key(s) {missing} "
                         f"(expected Wan/ComfyUI key names such as 'blocks.0.self_attn.q.weight').")
    dim = int(shapes["head.modulation"][-1])
    heads = num_heads or max(1, dim // HEAD_DIM)
    if dim % heads:
        raise ValueError(f"Wan dim {dim} is not divisible by num_heads {heads}.")
    patch = tuple(int(s) for s in shapes["patch_embedding.weight"][2:])
    if patch != (1, 2, 2):
        raise ValueError(f"patch_embedding.weight has patch {patch}; Wan 2.1 and Wan 2.2 TI2V-5B use (1, 2, 2) "
                         f"(other patch sizes are not supported).")
    base = WanConfig(
        dim=dim,
        ffn_dim=int(shapes["blocks.0.ffn.0.weight"][0]),
        num_heads=heads,
        num_layers=count_blocks(shapes.keys()),
        in_dim=int(shapes["patch_embedding.weight"][1]),
        out_dim=int(shapes["head.head.weight"][0]) // 4,
        text_dim=4096 if image_only else int(shapes["text_embedding.0.weight"][1]),
        freq_dim=int(shapes["time_embedding.0.weight"][1]),
        has_img_emb="img_emb.proj.0.bias" in shapes,
        image_context_only=image_only,
        actions=ActionConfig.from_shapes(shapes, dim),
    )
    if not any(k.startswith(VACE_PREFIXES) for k in shapes):
        return base
    from .vace import vace_config_from_shapes  # the VACE rules live beside the VACE forward

    return vace_config_from_shapes(shapes, base)


def detect_config(state_dict: Mapping, num_heads: Optional[int] = None) -> WanConfig:
    """Config of a Wan-named state dict (tensor values; meta tensors are fine)."""
    return config_from_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, num_heads=num_heads)


def preset(name: str, model_type: str = "t2v") -> WanConfig:
    """The released sizes, for tests and docs: ``preset("1.3B")``, ``preset("14B", "i2v")``,
    ``preset("TI2V-5B")`` (Wan 2.2: 48 latent channels in and out, no CLIP image embedding)."""
    if name == "TI2V-5B":
        return WanConfig(3072, 14336, 24, 30, in_dim=WAN22_LATENT_CHANNELS, out_dim=WAN22_LATENT_CHANNELS)
    dims = {"1.3B": (1536, 8960, 12, 30), "14B": (5120, 13824, 40, 40)}[name]
    i2v = model_type == "i2v"
    return WanConfig(*dims, in_dim=36 if i2v else 16, has_img_emb=i2v)
