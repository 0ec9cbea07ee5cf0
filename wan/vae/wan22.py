"""Wan 2.2 video VAE (48 latent channels, 16x spatial and 4x temporal compression), the VAE of Wan 2.2
TI2V-5B / LongLive 2.0, with Wan's key names; encoder for the start image, whole and streaming decoder.

It is the Wan 2.1 VAE (``wan/vae/wan21.py``: causal convs, RMS norms, residual and attention blocks, causal time
resampling, the feature cache that makes block-by-block decoding equal a whole decode) with four changes,
which are all this module adds (Wan-Video/Wan2.2 ``wan/modules/vae2_2.py``, ComfyUI ``comfy/ldm/wan/vae2_2.py``):

* pixels are *patchified* 2x2 into 12 channels before the encoder and the decoder's 12 output channels are
  unpatchified back to RGB (the fourth 2x of the 16x);
* each resolution level is one block, ``encoder.downsamples.{i}.downsamples.{j}`` /
  ``decoder.upsamples.{i}.upsamples.{j}``, with a parameter-free shortcut around it: space/time-to-channel
  averaging on the way down ("AvgDown3D"), channel-to-space/time duplication on the way up ("DupUp3D");
  on the very first frame of a video the up shortcut drops the frame the main path does not make;
* the upsampling 2-D convs keep their channel count (Wan 2.1's halve it);
* the decoder has its own width (``dec_dim`` 256; encoder 160).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import wan21 as v21
from .latent import WAN22
from .wan21 import AttentionBlock, CausalConv3d, Conv2d, FeatureCache, RMSNorm3d, ResidualBlock, causal_conv, run_layer

PATCH = 2  # pixels are folded 2x2 into channels around the VAE
WAN22_ANCHOR = "decoder.upsamples.0.upsamples.0.residual.0.gamma"  # nested up blocks: only Wan 2.2


@dataclasses.dataclass(frozen=True)
class Wan22VAEConfig:
    dim: int = 160  # encoder base width (Wan2.2_VAE.pth)
    dec_dim: int = 256  # decoder base width
    z_dim: int = WAN22.channels
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple = (False, True, True)  # encoder levels; the decoder mirrors it

    def describe(self) -> str:
        return f"Wan 2.2 VAE (dim {self.dim}, decoder dim {self.dec_dim}, z_dim {self.z_dim})"


REAL_CONFIG = Wan22VAEConfig()


def config_from_shapes(shapes: Mapping[str, Sequence[int]], source: str = "state dict") -> Wan22VAEConfig:
    if WAN22_ANCHOR not in shapes:
        hint = (" It is a Wan 2.1 VAE (16 channels, 8x): use it with Wan 2.1 models." if v21.ANCHOR in shapes
                else "")
        raise ValueError(f"{source} is not a Wan 2.2 VAE: key '{WAN22_ANCHOR}' is missing.{hint} Use "
                         f"Wan2.2_VAE.pth or ComfyUI's wan2.2_vae.safetensors (models/vae).")
    for key in ("encoder.conv1.weight", "decoder.head.0.gamma", "conv2.weight"):
        if key not in shapes:
            raise ValueError(f"{source}: Wan 2.2 VAE key '{key}' is missing; the file is incomplete.")
    dim = int(shapes["encoder.conv1.weight"][0])
    level = "encoder.downsamples.{}.downsamples.{}.residual.{}"
    mult, i = [], 0
    while level.format(i, 0, "6.weight") in shapes:
        mult.append(int(shapes[level.format(i, 0, "6.weight")][0]) // dim)
        i += 1
    res = 0
    while level.format(0, res, "0.gamma") in shapes:
        res += 1
    time_down = tuple(f"encoder.downsamples.{i}.downsamples.{res}.time_conv.weight" in shapes
                      for i in range(len(mult) - 1))
    return Wan22VAEConfig(dim=dim, dec_dim=int(shapes["decoder.head.0.gamma"][0]), z_dim=int(shapes["conv2.weight"][0]),
                          dim_mult=tuple(mult), num_res_blocks=res, temporal_downsample=time_down)


# --------------------------------------------------------------------------------------------------
# Modules: parameter containers with Wan 2.2's names


class Resample(v21.Resample):
    """Wan 2.2's resampler: as Wan 2.1's, but upsampling keeps the channel count."""

    def __init__(self, dim: int, mode: str):
        super().__init__(dim, mode)
        if mode.startswith("upsample"):
            self.resample[1] = Conv2d(dim, dim, 3, padding=1)


class DownBlock(nn.Module):
    """``Down_ResidualBlock``: residual blocks (+ a downsample) and an averaging shortcut (no weights)."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, time_down: bool, space_down: bool):
        super().__init__()
        self.factors = (2 if time_down else 1, 2 if space_down else 1)
        self.out_dim = out_dim
        layers = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if space_down:
            layers.append(Resample(out_dim, "downsample3d" if time_down else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)


class UpBlock(nn.Module):
    """``Up_ResidualBlock``: residual blocks (+ an upsample) and, when upsampling, a duplicating shortcut."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, time_up: bool, space_up: bool):
        super().__init__()
        self.factors = (2 if time_up else 1, 2) if space_up else None
        self.out_dim = out_dim
        layers = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if space_up:
            layers.append(Resample(out_dim, "upsample3d" if time_up else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)


def _head_layers(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm3d(cin, images=False), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1))


class Encoder3d(nn.Module):
    def __init__(self, cfg: Wan22VAEConfig):
        super().__init__()
        dims = [cfg.dim * u for u in (1,) + tuple(cfg.dim_mult)]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        last = len(cfg.dim_mult) - 1
        self.downsamples = nn.Sequential(*[
            DownBlock(a, b, cfg.num_res_blocks, i < len(cfg.temporal_downsample) and cfg.temporal_downsample[i],
                      i != last) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = _head_layers(dims[-1], cfg.z_dim * 2)


class Decoder3d(nn.Module):
    def __init__(self, cfg: Wan22VAEConfig):
        super().__init__()
        mult = tuple(cfg.dim_mult)
        dims = [cfg.dec_dim * u for u in (mult[-1],) + mult[::-1]]
        up = tuple(cfg.temporal_downsample)[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        last = len(mult) - 1
        self.upsamples = nn.Sequential(*[
            UpBlock(a, b, cfg.num_res_blocks + 1, i < len(up) and up[i], i != last)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.head = _head_layers(dims[-1], 3 * PATCH * PATCH)


class Wan22VAETree(nn.Module):
    """Top-level keys as in Wan2.2_VAE.pth / wan2.2_vae.safetensors: ``encoder.*``, ``conv1``, ``conv2``,
    ``decoder.*``."""

    def __init__(self, cfg: Wan22VAEConfig = REAL_CONFIG):
        super().__init__()
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)


# --------------------------------------------------------------------------------------------------
# Functional maths (``cache`` = a FeatureCache to stream, None for the whole video at once)


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, C·4, T, H/2, W/2]``, channel order (c, column offset, row offset)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * PATCH * PATCH, t, h // PATCH, w // PATCH)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    b, c4, t, h, w = x.shape
    x = x.reshape(b, c4 // (PATCH * PATCH), PATCH, PATCH, t, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, c4 // (PATCH * PATCH), t, h * PATCH, w * PATCH)


def avg_down(x: torch.Tensor, out_dim: int, ft: int, fs: int) -> torch.Tensor:
    """Fold ``ft`` frames and ``fs x fs`` pixels into channels (zero frames padded in front to a multiple of
    ``ft``), then average groups of channels down to ``out_dim``."""
    pad = (ft - x.shape[2] % ft) % ft
    x = F.pad(x, (0, 0, 0, 0, pad, 0))
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, out_dim, c * ft * fs * fs // out_dim, t // ft, h // fs, w // fs)
    return x.mean(2)


def dup_up(x: torch.Tensor, out_dim: int, ft: int, fs: int, first: bool) -> torch.Tensor:
    """The inverse shape move: repeat channels, unfold them into ``ft`` frames and ``fs x fs`` pixels; on the
    video's first frame the leading ``ft - 1`` frames are dropped (the main path makes one frame there)."""
    b, c, t, h, w = x.shape
    x = x.repeat_interleave(out_dim * ft * fs * fs // c, dim=1)
    x = x.reshape(b, out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, out_dim, t * ft, h * fs, w * fs)
    return x[:, :, ft - 1:] if first else x


def down_block(block: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    h = x
    for layer in block.downsamples:
        h = run_layer(layer, h, cache)
    return h + avg_down(x, block.out_dim, *block.factors)


def up_block(block: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    h = x
    for layer in block.upsamples:
        h = run_layer(layer, h, cache)
    if block.factors is None:
        return h
    first = cache is None or not cache.get(("first_seen_shortcut", block), False)
    if cache is not None:
        cache[("first_seen_shortcut", block)] = True
    return h + dup_up(x, block.out_dim, *block.factors, first=first)


def run_encoder(encoder: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    """Patchified pixels -> mean|log-variance features (before the top-level ``conv1``)."""
    x = causal_conv(encoder.conv1, x, cache)
    for block in encoder.downsamples:
        x = down_block(block, x, cache)
    for layer in encoder.middle:
        x = run_layer(layer, x, cache)
    return v21._head(encoder.head, x, cache)


def run_decoder(decoder: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    """``x`` = the output of the top-level ``conv2``; returns RGB pixels (unpatchified) in about [-1, 1]."""
    x = causal_conv(decoder.conv1, x, cache)
    for layer in decoder.middle:
        x = run_layer(layer, x, cache)
    for block in decoder.upsamples:
        x = up_block(block, x, cache)
    return unpatchify(v21._head(decoder.head, x, cache))


# --------------------------------------------------------------------------------------------------
# The VAE object: same interface as the Wan 2.1 one (wan.vae.wan21.WanVAE / StreamingDecoder)


class Wan22VAE(v21.WanVAE):
    """A Wan 2.2 VAE over a module tree with Wan's names (ours, or ComfyUI's ``first_stage_model``).
    Raw latents ``[B, 48, T, H/16, W/16]``; pixels ``[B, 3, T, H, W]`` in [-1, 1]. Loading (``from_file``,
    ``from_state_dict``, ``adopt``, ``random``), ``decode`` and ``stream_decoder()`` are the Wan 2.1 VAE's."""

    read_config = staticmethod(config_from_shapes)
    tree_class = Wan22VAETree
    default_config = REAL_CONFIG
    name = "Wan 2.2 VAE"
    files_hint = "Wan2.2_VAE.pth or ComfyUI's wan2.2_vae.safetensors"
    run_decoder = staticmethod(run_decoder)

    def stream_encoder(self):
        raise NotImplementedError("block-by-block encoding (VACE control videos, video-to-video) is built for the Wan "
                                  "2.1 VAE (16 latent channels); the Wan 2.2 VAE encodes whole videos here.")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 1+4k, H, W]`` in [-1, 1] -> raw latent mean ``[B, 48, 1+k, H/16, W/16]``, in chunks of
        1, 4, 4, ... frames through the feature cache, as Wan does."""
        t = pixels.shape[2] if pixels.dim() == 5 else 0
        if pixels.dim() != 5 or (t - 1) % 4:
            raise ValueError(f"pixels have shape {list(pixels.shape)}; the Wan 2.2 VAE encodes [B, 3, 1+4k, H, W] "
                             f"(1, 5, 9, ... frames).")
        if pixels.shape[3] % 16 or pixels.shape[4] % 16:
            raise ValueError(f"height {pixels.shape[3]} and width {pixels.shape[4]} must be multiples of 16 for "
                             f"the Wan 2.2 VAE.")
        cache = FeatureCache()
        x = patchify(self._prepare(pixels))
        with torch.no_grad():
            chunks = [run_encoder(self.tree.encoder, x[:, :, s:e], cache)
                      for s, e in [(0, 1)] + [(1 + 4 * i, 5 + 4 * i) for i in range((t - 1) // 4)]]
            mu = self.tree.conv1(torch.cat(chunks, dim=2)).chunk(2, dim=1)[0]
        return mu.float()


def vae_class(keys) -> type:
    """``Wan22VAE`` for a Wan 2.2 state dict (keys, any prefix), else the Wan 2.1 ``WanVAE``."""
    return Wan22VAE if any(str(k).endswith(WAN22_ANCHOR) for k in keys) else v21.WanVAE


def load_vae(path: str, dtype=None, device="cpu") -> v21.WanVAE:
    """A Wan 2.1 or Wan 2.2 VAE file, whichever it is (same interface)."""
    from ..model.checkpoint import read_file

    raw = read_file(path)
    inner = next((raw[e] for e in ("state_dict", "model", "vae") if isinstance(raw.get(e), Mapping)), raw)
    return vae_class(inner).from_state_dict(inner, dtype=dtype, device=device, source=path.rsplit("/", 1)[-1])


def adopt_vae(first_stage_model: nn.Module, device=None, dtype=None) -> v21.WanVAE:
    """ComfyUI's loaded Wan 2.1 or 2.2 VAE module tree, wrapped without copying."""
    keys = first_stage_model.state_dict(keep_vars=True).keys()
    return vae_class(keys).adopt(first_stage_model, device=device, dtype=dtype)
