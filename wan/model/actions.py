"""Matrix-Game 2.0's keyboard / mouse conditioning inside the DiT blocks (its ``ActionModule``), with its key names.

Matrix-Game 2.0 (SkyworkAI/Matrix-Game, ``Matrix-Game-2/``, MIT) is SkyReels-V2-I2V-1.3B distilled with
Self-Forcing into a block-causal image-to-world model. No text: the cross-attention attends the CLIP tokens of
the start image through its plain ``k``/``v`` (``img_emb`` output, no ``k_img``), and the first blocks carry an
``action_model`` applied after the cross-attention and before the FFN:

  * mouse (``mouse_mlp``, ``t_qkv``, ``img_attn_{q,k}_norm``, ``proj_mouse``): every video token of latent
    frame f is joined with the mouse deltas of the ``4·window`` pixel frames before pixel frame ``4f``
    (earlier than pixel frame 0 -> frame 0), MLP'd and attended *over time* per spatial position (a token sees
    the same position in the last ``local_window`` latent frames), then projected back and added;
  * keyboard (``keyboard_embed``, ``mouse_attn_q``, ``keyboard_attn_kv``, ``key_attn_{q,k}_norm``,
    ``proj_keyboard``): the keys of the same pixel-frame window, embedded per frame and flattened, give one
    K/V per latent frame; every video token queries the last ``local_window`` latent frames' K/V.

Both attentions use a 1-D RoPE on the first ``rope_dims[0]`` (8) dims of their 64-d heads at the absolute
latent frame (theta 256; the height/width parts are at position 0, i.e. not rotated), and keep their own
K/V cache with the video's window rule (``wan/sampling/cache.py``). Their q/k RMSNorms carry a weight in the
file that the authors' forward never multiplies by: it is ignored here too.

Everything is read from the weights (``ActionConfig.from_shapes``): which blocks, keyboard width (universal 4:
W S A D; GTA drive 2: W S; Temple Run 7), mouse present or not, hidden sizes, heads (64-d heads).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..vae.latent import TIME_RATIO  # actions are given per pixel frame, the DiT sees latent frames

ROPE_DIMS = (8, 28, 28)  # the authors' rope_dim_list = mouse_qk_dim_list (sums to the 64-d action heads)
ROPE_THETA = 256.0
PREFIX = "action_model."

# the authors' three released action layouts (configs/distilled_model/*/config.json)
MODES = {"universal": (4, True), "gta_drive": (2, True), "templerun": (7, False)}


@dataclasses.dataclass(frozen=True)
class ActionConfig:
    blocks: tuple  # layer indices with an action_model (0..14 in every released file)
    dim: int  # the DiT width (img_hidden_size)
    keyboard_dim: int  # keys per frame (0: no keyboard branch)
    mouse_dim: int  # mouse values per frame (0: no mouse branch)
    hidden_size: int = 128  # keyboard_embed width
    keyboard_hidden: int = 1024
    mouse_hidden: int = 1024
    window: int = 3  # latent frames of actions per frame (windows_size)

    @property
    def head_dim(self) -> int:
        return sum(ROPE_DIMS)

    @property
    def heads(self) -> int:
        return (self.keyboard_hidden if self.keyboard_dim else self.mouse_hidden) // self.head_dim

    @property
    def pixel_window(self) -> int:
        return TIME_RATIO * self.window

    @property
    def mode(self) -> str:
        """"universal", "gta_drive", "templerun" (the authors' names), or "custom"."""
        for name, (keys, mouse) in MODES.items():
            if keys == self.keyboard_dim and mouse == bool(self.mouse_dim):
                return name
        return "custom"

    def describe(self) -> str:
        mouse = f"mouse {self.mouse_dim}" if self.mouse_dim else "no mouse"
        return f"Matrix-Game actions '{self.mode}' ({self.keyboard_dim} keys, {mouse}, blocks {len(self.blocks)})"

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], dim: int) -> Optional["ActionConfig"]:
        blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.action_model\.", k))})
        if not blocks:
            return None
        p = f"blocks.{blocks[0]}.{PREFIX}"
        kb, ms = shapes.get(p + "keyboard_embed.0.weight"), shapes.get(p + "mouse_mlp.0.weight")
        if kb is None and ms is None:
            raise ValueError(f"{p}* holds neither keyboard_embed nor mouse_mlp weights: not a Matrix-Game 2.0 "
                             f"action module (expected e.g. '{p}keyboard_embed.0.weight').")
        hidden = int(kb[0]) if kb is not None else 128
        window = 3
        if kb is not None:
            kv_in = int(shapes[p + "keyboard_attn_kv.weight"][1])
            window = kv_in // (hidden * TIME_RATIO)
        mouse_dim = 0
        if ms is not None:
            extra = int(ms[1]) - dim
            if extra <= 0 or extra % (TIME_RATIO * window):
                raise ValueError(f"{p}mouse_mlp.0.weight {list(ms)} does not fit dim {dim} + mouse x "
                                 f"{TIME_RATIO * window} frames.")
            mouse_dim = extra // (TIME_RATIO * window)
        kb_hidden = int(shapes[p + "mouse_attn_q.weight"][0]) if kb is not None else None
        ms_hidden = int(ms[0]) if ms is not None else None
        # a branch that is absent takes the other's width (unused; keeps the config comparable)
        return cls(blocks=tuple(blocks), dim=dim, keyboard_dim=int(kb[1]) if kb is not None else 0,
                   mouse_dim=mouse_dim, hidden_size=hidden, keyboard_hidden=kb_hidden or ms_hidden,
                   mouse_hidden=ms_hidden or kb_hidden, window=window)


# --------------------------------------------------------------------------------------------------
# Parameters (the authors' attribute names, so their files load as they are)


class _UnweightedRMSNorm(nn.Module):
    """Holds the file's ``weight`` (loaded, never used: the authors' action-module norm does not apply it)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class ActionModule(nn.Module):
    def __init__(self, cfg: ActionConfig):
        super().__init__()
        from .dit import Linear  # dit imports this module; the Linear that casts to the input's dtype

        d, hd = cfg.dim, cfg.head_dim
        if cfg.keyboard_dim:
            self.keyboard_embed = nn.Sequential(Linear(cfg.keyboard_dim, cfg.hidden_size), nn.SiLU(),
                                                Linear(cfg.hidden_size, cfg.hidden_size))
            self.mouse_attn_q = Linear(d, cfg.keyboard_hidden, bias=False)
            self.keyboard_attn_kv = Linear(cfg.hidden_size * cfg.pixel_window, 2 * cfg.keyboard_hidden, bias=False)
            self.proj_keyboard = Linear(cfg.keyboard_hidden, d, bias=False)
            self.key_attn_q_norm, self.key_attn_k_norm = _UnweightedRMSNorm(hd), _UnweightedRMSNorm(hd)
        if cfg.mouse_dim:
            c = cfg.mouse_hidden
            self.mouse_mlp = nn.Sequential(Linear(cfg.mouse_dim * cfg.pixel_window + d, c),
                                           nn.GELU(approximate="tanh"), Linear(c, c), nn.LayerNorm(c))
            self.t_qkv = Linear(c, 3 * c, bias=False)
            self.img_attn_q_norm, self.img_attn_k_norm = _UnweightedRMSNorm(hd), _UnweightedRMSNorm(hd)
            self.proj_mouse = Linear(c, d, bias=False)


# --------------------------------------------------------------------------------------------------
# Maths


def _rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _time_rope(start_frame: int, frames: int, device) -> tuple:
    """cos/sin ``[1, F, 1, 64]`` of the action heads' RoPE: the authors' 3-axis table at (frame, 0, 0), built
    like theirs (float32 frequencies, pairs interleaved): only the first ROPE_DIMS[0] dims rotate."""
    n = ROPE_DIMS[0]
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, n, 2)[: n // 2].float() / n))
    pos = torch.arange(start_frame, start_frame + frames, dtype=torch.float32)
    ang = torch.outer(pos, inv).repeat_interleave(2, dim=1)  # [F, 8]
    rest = sum(ROPE_DIMS) - n
    cos = torch.cat([ang.cos(), torch.ones(frames, rest)], 1)
    sin = torch.cat([ang.sin(), torch.zeros(frames, rest)], 1)
    return cos[None, :, None].to(device), sin[None, :, None].to(device)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
    return (xf * cos + turned * sin).to(x.dtype)


def _sdpa(q, k, v):  # [B, L, H, d] in and out
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype),
                                         v.transpose(1, 2).to(q.dtype))
    return out.transpose(1, 2)


def pixel_windows(values: torch.Tensor, start_frame: int, frames: int, pixel_window: int) -> torch.Tensor:
    """``values [B, N, C]`` per pixel frame -> ``[B, frames, pixel_window, C]``: for latent frame f, pixel frames
    ``4f - pixel_window .. 4f - 1``, those before frame 0 replaced by frame 0 (the authors' padding)."""
    idx = torch.tensor([[max(0, TIME_RATIO * f - pixel_window + j) for j in range(pixel_window)]
                        for f in range(start_frame, start_frame + frames)])
    if int(idx.max()) >= values.shape[1]:
        raise ValueError(f"actions cover {values.shape[1]} pixel frames; latent frame {start_frame + frames - 1} "
                         f"needs {int(idx.max()) + 1}.")
    return values[:, idx.to(values.device)]


def apply_actions(mod: ActionModule, cfg: ActionConfig, x: torch.Tensor, frames: int, start_frame: int,
                  keyboard: Optional[torch.Tensor], mouse: Optional[torch.Tensor], mouse_kv=None,
                  keyboard_kv=None) -> torch.Tensor:
    """One action module on the block's tokens ``x [B, frames·S, dim]`` (frame-major). ``keyboard``/``mouse``:
    ``[B, frames, pixel_window, C]`` windows (``pixel_windows``). ``mouse_kv(k, v)`` / ``keyboard_kv(k, v)``
    return the K/V to attend (a cache adding earlier frames); None = only this block's frames."""
    b, length, d = x.shape
    s = length // frames
    heads, hd = cfg.heads, cfg.head_dim
    cos, sin = _time_rope(start_frame, frames, x.device)
    if cfg.mouse_dim and mouse is not None:
        per_pos = x.view(b, frames, s, d).transpose(1, 2).reshape(b * s, frames, d)
        window = mouse.to(x.dtype).flatten(2)  # [B, F, pixel_window·C] (time-major)
        window = window[:, None].expand(b, s, frames, window.shape[-1]).reshape(b * s, frames, -1)
        z = mod.mouse_mlp(torch.cat([per_pos, window], -1))
        q, k, v = mod.t_qkv(z).unflatten(-1, (3, heads, hd)).unbind(2)  # each [(B S), F, H, hd]
        q, k = _rotate(_rms(q), cos, sin), _rotate(_rms(k), cos, sin)
        if mouse_kv is not None:
            k, v = mouse_kv(k, v)
        att = _sdpa(q, k, v).reshape(b, s, frames, heads * hd).transpose(1, 2).reshape(b, frames * s, -1)
        x = x + mod.proj_mouse(att)
    if cfg.keyboard_dim and keyboard is not None:
        emb = mod.keyboard_embed(keyboard.to(x.dtype)).flatten(2)  # [B, F, pixel_window·hidden]
        k, v = mod.keyboard_attn_kv(emb).unflatten(-1, (2, heads, hd)).unbind(2)  # [B, F, H, hd]
        q = mod.mouse_attn_q(x).view(b, frames, s, heads, hd).transpose(1, 2).reshape(b * s, frames, heads, hd)
        q, k = _rotate(_rms(q), cos, sin), _rotate(_rms(k), cos, sin)
        if keyboard_kv is not None:
            k, v = keyboard_kv(k, v)
        k, v = k.repeat_interleave(s, 0), v.repeat_interleave(s, 0)  # one keyboard K/V per video, all positions
        att = _sdpa(q, k, v).reshape(b, s, frames, heads * hd).transpose(1, 2).reshape(b, frames * s, -1)
        x = x + mod.proj_keyboard(att)
    return x
