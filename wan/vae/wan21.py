"""Wan 2.1 video VAE (encoder + decoder) in plain PyTorch, with Wan's own state-dict key names, and a
*streaming* decoder whose causal temporal feature cache lives across calls.

Why streaming works: every temporal operation in Wan's VAE is causal (3-tap convolutions padded only into
the past, a time-doubling conv that sees only earlier frames, per-frame spatial attention). Decoding latent
frame after latent frame while keeping, per causal conv, its last two input frames (the "feature cache")
therefore gives the same frames as decoding the whole latent at once. The causal sampler produces blocks
of latent frames in order, so each block can be decoded the moment it is final, in memory that does not
grow with the video's length.

As in ``wan/model/dit.py`` the maths are functions over a *module tree with Wan's attribute names*
(``decoder.upsamples[i].residual[2]``, ``decoder.middle[1].to_qkv`` ...). ``WanVAETree`` below is one such
tree; ComfyUI's ``VAE.first_stage_model`` for a Wan 2.1 VAE is another, so inside ComfyUI the stream decodes
with ComfyUI's loaded weights without copying them. Convolutions are *called* (their own ``forward`` with
a ``cache_x`` argument, the interface Wan's and ComfyUI's ``CausalConv3d`` share); norms, resampling and
attention are computed here.

Two code paths, on purpose:
* ``WanVAE.decode_whole``: every layer over the whole sequence at once (zero padding in the past only);
  the reference for tests and small clips (memory grows with length).
* ``StreamingDecoder``: one latent frame at a time through the feature cache (what Wan itself does), any
  number of calls, bounded memory.

Building blocks reused by the Wan 2.2 VAE: ``CausalConv3d``, ``RMSNorm3d``, ``ResidualBlock``,
``AttentionBlock``, ``Resample`` (modules) and ``causal_conv``, ``rms_norm``, ``residual_block``,
``attention_block``, ``resample``, ``run_layer`` (functions, ``cache`` = a ``FeatureCache`` or None).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .latent import LATENT_CHANNELS

CACHE_T = 2  # frames of the past a 3-tap causal conv needs

ANCHOR = "decoder.middle.0.residual.0.gamma"  # in every Wan VAE (2.1 and 2.2), in no other VAE
WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # Wan 2.2's nested up blocks
PREFIXES = ("first_stage_model.", "vae.", "model.", "module.")


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    dim: int = 96  # base width; Wan 2.1's released VAE: 96
    z_dim: int = LATENT_CHANNELS
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple = (False, True, True)  # encoder levels; the decoder mirrors it
    image_channels: int = 3
    out_channels: int = 3

    def describe(self) -> str:
        return f"Wan 2.1 VAE (dim {self.dim}, z_dim {self.z_dim})"


REAL_CONFIG = WanVAEConfig()


def config_from_shapes(shapes: Mapping[str, Sequence[int]], source: str = "state dict") -> WanVAEConfig:
    """Architecture of a Wan 2.1 VAE state dict from its tensor shapes; a clear error for anything else."""
    if ANCHOR not in shapes:
        sample = ", ".join(list(shapes)[:5])
        raise ValueError(f"{source} is not a Wan VAE: key '{ANCHOR}' is missing (first keys: {sample}). Use "
                         f"Wan2.1_VAE.pth or ComfyUI's wan_2.1_vae.safetensors (models/vae).")
    if WAN22_MARKER in shapes:
        raise ValueError(f"{source} is a Wan 2.2 VAE (48 latent channels, 16x spatial); this decoder is for the "
                         f"Wan 2.1 VAE (16 channels, 8x). Use wan_2.1_vae.safetensors with Wan 2.1 models.")
    for key in ("decoder.head.0.gamma", "conv2.weight", "decoder.head.2.weight"):
        if key not in shapes:
            raise ValueError(f"{source}: Wan 2.1 VAE key '{key}' is missing; the file is incomplete or not a "
                             f"Wan 2.1 VAE.")
    enc = shapes.get("encoder.conv1.weight")
    return WanVAEConfig(dim=int(shapes["decoder.head.0.gamma"][0]), z_dim=int(shapes["conv2.weight"][0]),
                        image_channels=int(enc[1]) if enc is not None else 3,
                        out_channels=int(shapes["decoder.head.2.weight"][0]))


# --------------------------------------------------------------------------------------------------
# Modules: parameter containers with Wan's names (Sequential indices included, they are in the keys)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded in time only into the past. ``forward(x, cache_x)`` puts ``cache_x`` (earlier frames)
    in front of ``x`` and zeros before those, up to the kernel's reach (Wan's and ComfyUI's interface)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.time_pad = 2 * self.padding[0]
        self.space_pad = (self.padding[2], self.padding[2], self.padding[1], self.padding[1])
        self.padding = (0, 0, 0)

    def forward(self, x, cache_x=None):
        if self.time_pad:
            parts = [x]
            have = 0
            if cache_x is not None:
                parts.insert(0, cache_x.to(device=x.device, dtype=x.dtype))
                have = cache_x.shape[2]
            if self.time_pad > have:
                zeros = x.new_zeros(x.shape[0], x.shape[1], self.time_pad - have, *x.shape[3:])
                parts.insert(0, zeros)
            x = torch.cat(parts, dim=2)
        x = F.pad(x, self.space_pad)
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return F.conv3d(x, self.weight.to(device=x.device, dtype=x.dtype), bias, self.stride)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that computes in the input's dtype/device."""

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return self._conv_forward(x, self.weight.to(device=x.device, dtype=x.dtype), bias)


class RMSNorm3d(nn.Module):
    """Wan's ``RMS_norm``: L2-normalise over channels, times sqrt(C) and ``gamma``."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # indices matter (keys residual.0/.2/.3/.6): norm, SiLU, conv, norm, SiLU, dropout, conv
        self.residual = nn.Sequential(RMSNorm3d(in_dim, images=False), nn.SiLU(),
                                      CausalConv3d(in_dim, out_dim, 3, padding=1),
                                      RMSNorm3d(out_dim, images=False), nn.SiLU(), nn.Identity(),
                                      CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm3d(dim, images=True)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)


class Resample(nn.Module):
    """2x spatial up/down sampling, optionally with a 2x causal time change (``upsample3d`` /
    ``downsample3d``); ``resample.1`` is the 2-D conv, ``time_conv`` the temporal one."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=(2, 2)))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))
        else:
            raise ValueError(f"unknown resample mode '{mode}'")


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        dims = [cfg.dim * u for u in (1,) + tuple(cfg.dim_mult)]
        self.conv1 = CausalConv3d(cfg.image_channels, dims[0], 3, padding=1)
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        out_dim = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim))
        self.head = nn.Sequential(RMSNorm3d(out_dim, images=False), nn.SiLU(),
                                  CausalConv3d(out_dim, cfg.z_dim * 2, 3, padding=1))


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        mult = tuple(cfg.dim_mult)
        dims = [cfg.dim * u for u in (mult[-1],) + mult[::-1]]
        temporal_upsample = tuple(cfg.temporal_downsample)[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim = in_dim // 2  # the previous Resample's 2-D conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm3d(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1))


class WanVAETree(nn.Module):
    """Top-level keys: ``encoder.*``, ``conv1`` (after the encoder: mean|log-variance), ``conv2`` (before
    the decoder), ``decoder.*``."""

    def __init__(self, cfg: WanVAEConfig = REAL_CONFIG):
        super().__init__()
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)


def init_random(tree: nn.Module, seed: int) -> nn.Module:
    """Seeded random init (tests, the demo): fan-in-scaled normal weights, small biases, norm gains ~1.
    Not a trained VAE: the frames it decodes are coloured noise with the right shape and timing."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in tree.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return tree


# --------------------------------------------------------------------------------------------------
# Functional maths over a tree with Wan's names (ours or ComfyUI's). ``cache`` is a FeatureCache to stream
# (state carried from call to call), or None to process the given frames as the whole video.


class FeatureCache(dict):
    """Per-module state of a stream: for each 3-tap causal conv its last ``CACHE_T`` input frames, for
    each temporal resampler whether the first frame was seen (Wan treats the very first frame apart)."""


def causal_conv(conv: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    if cache is None or conv.kernel_size[0] == 1:
        return conv(x)
    past = cache.get(conv)
    out = conv(x, past)
    joined = x if past is None else torch.cat([past.to(x), x], dim=2)
    cache[conv] = joined[:, :, -CACHE_T:].clone()  # a copy, so the block's activations can be freed
    return out


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gamma = norm.gamma.to(device=x.device, dtype=x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
    out = F.normalize(x, dim=1) * (x.shape[1] ** 0.5) * gamma
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        out = out + bias.to(device=x.device, dtype=x.dtype).reshape(gamma.shape)
    return out


def residual_block(block: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    r = block.residual
    h = causal_conv(r[2], F.silu(rms_norm(r[0], x)), cache)
    h = causal_conv(r[6], F.silu(rms_norm(r[3], h)), cache)
    shortcut = x if isinstance(block.shortcut, nn.Identity) else block.shortcut(x)
    return h + shortcut


def _frames_as_images(x: torch.Tensor) -> torch.Tensor:  # [B,C,T,H,W] -> [B*T,C,H,W]
    return x.transpose(1, 2).flatten(0, 1)


def _images_as_frames(y: torch.Tensor, batch: int) -> torch.Tensor:
    return y.unflatten(0, (batch, -1)).transpose(1, 2)


def attention_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    y = rms_norm(block.norm, _frames_as_images(x))
    n, c, h, w = y.shape
    q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in block.to_qkv(y).chunk(3, dim=1))
    y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(n, c, h, w)
    return x + _images_as_frames(block.proj(y), b)


def _time_upsample(layer: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    """Wan's rule: the video's first frame stays one frame; every later frame becomes two, made by a causal
    (3,1,1) conv over the later frames only (so the second frame sees zeros, not the first, in its past)."""
    first_seen = cache is not None and cache.get(("first_seen", layer), False)
    head, rest = (None, x) if first_seen else (x[:, :, :1], x[:, :, 1:])
    if cache is not None:
        cache[("first_seen", layer)] = True
    if rest.shape[2] == 0:
        return head
    y = causal_conv(layer.time_conv, rest, cache)  # [B, 2C, T, H, W]: channel halves = the two new frames
    b, c2, t, h, w = y.shape
    y = y.reshape(b, 2, c2 // 2, t, h, w)
    y = torch.stack((y[:, 0], y[:, 1]), dim=3).reshape(b, c2 // 2, 2 * t, h, w)
    return y if head is None else torch.cat([head, y], dim=2)


def _time_downsample(layer: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    """The encoder's mirror: the first frame is kept, then each pair of later frames becomes one (a stride-2
    (3,1,1) conv whose third tap is the previous pair's last frame)."""
    past = None if cache is None else cache.get(layer)
    head, rest = (None, x) if past is not None else (x[:, :, :1], x[:, :, 1:])
    if rest.shape[2] % 2:
        raise ValueError(f"the Wan VAE encoder takes 1 + 4k frames (a first frame, then groups of 4); a chunk "
                         f"left {rest.shape[2]} frame(s) after its first frame at a temporal downsample. "
                         f"Pad the video to 1 + 4k frames.")
    if cache is not None:
        cache[layer] = x[:, :, -1:].clone()
    if rest.shape[2] == 0:
        return head
    prev = head if past is None else past.to(x)
    y = layer.time_conv(torch.cat([prev, rest], dim=2))
    return y if head is None else torch.cat([head, y], dim=2)


def resample(layer: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    mode = layer.mode
    if mode == "upsample3d":
        x = _time_upsample(layer, x, cache)
    b = x.shape[0]
    y = _frames_as_images(x)
    if mode.startswith("upsample"):
        # nearest-neighbour 2x in float (bf16 nearest is not supported everywhere), as Wan does
        y = F.interpolate(y.float(), scale_factor=2.0, mode="nearest-exact").to(y.dtype)
        y = layer.resample[1](y)
    elif mode.startswith("downsample"):
        y = layer.resample[1](F.pad(y, (0, 1, 0, 1)))
    x = _images_as_frames(y, b)
    if mode == "downsample3d":
        x = _time_downsample(layer, x, cache)
    return x


def run_layer(layer: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    """One entry of ``downsamples`` / ``middle`` / ``upsamples``, recognised by its Wan attribute names."""
    if hasattr(layer, "residual"):
        return residual_block(layer, x, cache)
    if hasattr(layer, "to_qkv"):
        return attention_block(layer, x)
    if hasattr(layer, "mode"):
        return resample(layer, x, cache)
    raise TypeError(f"unexpected Wan VAE layer {type(layer).__name__}")


def _head(head: nn.Sequential, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    return causal_conv(head[2], F.silu(rms_norm(head[0], x)), cache)


def run_decoder(decoder: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    """``x`` = the output of the top-level ``conv2``; returns pixels in about [-1, 1]."""
    x = causal_conv(decoder.conv1, x, cache)
    for layer in list(decoder.middle) + list(decoder.upsamples):
        x = run_layer(layer, x, cache)
    return _head(decoder.head, x, cache)


def run_encoder(encoder: nn.Module, x: torch.Tensor, cache: Optional[FeatureCache]) -> torch.Tensor:
    x = causal_conv(encoder.conv1, x, cache)
    for layer in list(encoder.downsamples) + list(encoder.middle):
        x = run_layer(layer, x, cache)
    return _head(encoder.head, x, cache)


def decoded_frames(latent_frames: int, first: bool = True) -> int:
    """Pixel frames from ``latent_frames`` latent frames (the video's first latent frame gives 1, others 4)."""
    return 4 * latent_frames - (3 if first and latent_frames else 0)


# --------------------------------------------------------------------------------------------------
# The VAE object: load / adopt, encode, decode (whole or streaming)


class WanVAE:
    """A Wan 2.1 VAE over a module tree with Wan's names (ours, or ComfyUI's ``first_stage_model``).

    Latents here are *raw* VAE latents (what ComfyUI's LATENT carries); ``wan.vae.latent.normalize`` maps them
    to the DiT's space. Pixels are ``[B, 3, T, H, W]`` in [-1, 1].
    """

    # what a subclass for another Wan VAE generation replaces (wan/vae/wan22.py): its config reader, module tree,
    # default size, the files to name in errors, and the decoder/encoder functions over the tree
    read_config = staticmethod(config_from_shapes)
    tree_class = WanVAETree
    default_config = REAL_CONFIG
    name = "Wan 2.1 VAE"
    files_hint = "Wan2.1_VAE.pth or ComfyUI's wan_2.1_vae.safetensors"
    run_decoder = staticmethod(run_decoder)

    def __init__(self, tree: nn.Module, config: WanVAEConfig, source: str = "", device=None, dtype=None):
        self.tree = tree
        self.config = config
        self.source = source
        first = next(iter(tree.parameters()))
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or (first.dtype if first.is_floating_point() else torch.float32)

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], dtype=None, device="cpu",
                        source: str = "state dict") -> "WanVAE":
        """Build on the meta device and *assign* the tensors (no copy unless dtype/device change)."""
        sd = strip_prefix(sd, source)
        config = cls.read_config({k: tuple(v.shape) for k, v in sd.items()}, source)
        with torch.device("meta"):
            tree = cls.tree_class(config)
        expected = tree.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        wrong = [f"{k} {list(sd[k].shape)} (expected {list(expected[k].shape)})" for k in sorted(expected)
                 if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"{source} does not match {config.describe()}: missing keys {missing[:4]}, "
                             f"unexpected keys {unexpected[:4]}, wrong shapes {wrong[:3]}. Use {cls.files_hint}, "
                             f"unmodified.")
        tensors = {k: v.to(device=device, dtype=dtype if (dtype and v.is_floating_point()) else None)
                   for k, v in sd.items()}
        tree.load_state_dict(tensors, strict=True, assign=True)
        return cls(tree.eval().requires_grad_(False), config, source)

    @classmethod
    def from_file(cls, path: str, dtype=None, device="cpu") -> "WanVAE":
        from ..model.checkpoint import read_file

        name = os.path.basename(path)
        raw = read_file(path)
        if isinstance(raw, Mapping) and ANCHOR not in raw:
            for entry in ("state_dict", "model", "vae"):  # training checkpoints wrap the weights
                if isinstance(raw.get(entry), Mapping):
                    raw = raw[entry]
                    break
        return cls.from_state_dict(raw, dtype=dtype, device=device, source=name)

    @classmethod
    def random(cls, config: Optional[WanVAEConfig] = None, seed: int = 0, dtype=torch.float32,
               device="cpu") -> "WanVAE":
        config = config or cls.default_config
        tree = init_random(cls.tree_class(config), seed).to(device=device, dtype=dtype)
        return cls(tree.eval().requires_grad_(False), config, f"random-init seed {seed} (not trained)")

    @classmethod
    def adopt(cls, first_stage_model: nn.Module, device=None, dtype=None, source: str = "ComfyUI VAE") -> "WanVAE":
        """Wrap ComfyUI's loaded Wan 2.1 VAE module tree *without copying* its weights."""
        shapes = {k: tuple(v.shape) for k, v in first_stage_model.state_dict(keep_vars=True).items()}
        return cls(first_stage_model, cls.read_config(shapes, source), source, device=device, dtype=dtype)

    # --- use ----------------------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def decode_whole(self, z: torch.Tensor) -> torch.Tensor:
        """Reference path: all latent frames through every layer at once (memory grows with length)."""
        with torch.no_grad():
            x = self.tree.conv2(self._prepare(z))
            return self.run_decoder(self.tree.decoder, x, None).float()

    def stream_decoder(self) -> "StreamingDecoder":
        return StreamingDecoder(self)

    def stream_encoder(self) -> "StreamingEncoder":
        return StreamingEncoder(self)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Whole video through a fresh streaming decoder (bounded working memory)."""
        return self.stream_decoder().decode(z)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 1+4k, H, W]`` in [-1, 1] -> raw latent mean ``[B, 16, 1+k, H/8, W/8]``, in chunks of
        1, 4, 4, ... frames through the feature cache, as Wan does (bounded memory for long inputs)."""
        t = pixels.shape[2]
        if pixels.dim() != 5 or (t - 1) % 4:
            raise ValueError(f"pixels have shape {list(pixels.shape)}; the Wan VAE encodes [B, 3, 1+4k, H, W] "
                             f"(1, 5, 9, ... frames).")
        if pixels.shape[3] % 8 or pixels.shape[4] % 8:
            raise ValueError(f"height {pixels.shape[3]} and width {pixels.shape[4]} must be multiples of 8.")
        cache = FeatureCache()
        chunks = []
        with torch.no_grad():
            for s, e in [(0, 1)] + [(1 + 4 * i, 5 + 4 * i) for i in range((t - 1) // 4)]:
                chunks.append(run_encoder(self.tree.encoder, self._prepare(pixels[:, :, s:e]), cache))
            mu = self.tree.conv1(torch.cat(chunks, dim=2)).chunk(2, dim=1)[0]
        return mu.float()


class StreamingEncoder:
    """Encode a video block after block: ``encode(pixels)`` takes the next pixel frames ``[B, 3, f, H, W]`` in
    [-1, 1] (the video's first call starts with its first frame alone, as Wan encodes: 1, then 4 per latent frame)
    and returns their raw latent means. The feature cache is carried from call to call, so the concatenated
    outputs equal ``WanVAE.encode`` of the whole video; memory stays that of one chunk whatever the length."""

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache = FeatureCache()
        self.pixel_frames = 0

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 5 or pixels.shape[1] != 3 or pixels.shape[3] % 8 or pixels.shape[4] % 8:
            raise ValueError(f"pixels have shape {list(pixels.shape)}; the Wan VAE encodes [B, 3, frames, H, W] "
                             f"with H and W multiples of 8.")
        chunks, t, i = [], pixels.shape[2], 0
        tree = self.vae.tree
        with torch.no_grad():
            while i < t:
                size = 1 if self.pixel_frames == 0 else 4
                if t - i < size:
                    raise ValueError(f"{t - i} pixel frame(s) left over: after the first frame the Wan VAE encodes "
                                     f"groups of 4 (one latent frame each).")
                chunks.append(run_encoder(tree.encoder, self.vae._prepare(pixels[:, :, i:i + size]), self.cache))
                i += size
                self.pixel_frames += size
            return tree.conv1(torch.cat(chunks, dim=2)).chunk(2, dim=1)[0].float()


class StreamingDecoder:
    """Decode a video block after block: ``decode(z_block)`` takes the next raw latent frames and returns
    their pixels ``[B, 3, F, H, W]`` in [-1, 1] (the first latent frame of the video gives 1 frame, every
    later one 4). The feature cache is carried from call to call, so the concatenated outputs equal a
    decode of the whole latent; memory stays that of one latent frame whatever the length."""

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache = FeatureCache()
        self.latent_frames = 0

    def reset(self) -> None:
        self.cache = FeatureCache()
        self.latent_frames = 0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != self.vae.config.z_dim:
            raise ValueError(f"latent block has shape {list(z.shape)}; expected [B, {self.vae.config.z_dim}, "
                             f"frames, h, w] (raw {self.vae.name} latents).")
        tree = self.vae.tree
        outs = []
        with torch.no_grad():
            for i in range(z.shape[2]):  # one latent frame at a time, as Wan decodes: memory of one frame
                x = tree.conv2(self.vae._prepare(z[:, :, i:i + 1]))
                outs.append(self.vae.run_decoder(tree.decoder, x, self.cache).float())
                self.latent_frames += 1
        return torch.cat(outs, dim=2)


def strip_prefix(sd: Mapping, source: str = "state dict") -> dict:
    """Wan VAE keys from a file that may wrap them in a prefix (``first_stage_model.``, ``vae.`` ...)."""
    if ANCHOR in sd:
        return dict(sd)
    for prefix in PREFIXES:
        if prefix + ANCHOR in sd:
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)  # config_from_shapes names the missing key


def pixels_to_images(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> ComfyUI IMAGE ``[B*F, H, W, 3]`` in [0, 1]."""
    return ((pixels.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1)


def images_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[F, H, W, 3]`` in [0, 1] -> ``[1, 3, F, H, W]`` in [-1, 1]."""
    return (images[..., :3].float() * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)
