"""Wan 2.1 DiT (t2v and i2v) in plain PyTorch, with Wan's own state-dict key names.

The maths live in functions over a *module tree with Wan's attribute names* (``blocks[i].self_attn.q``,
``blocks[i].cross_attn.k_img``, ``head.modulation`` ...). ``WanDiT`` below is one such tree; ComfyUI's
``WanModel`` (``MODEL.model.diffusion_model``) is another, so the causal sampler can run on ComfyUI's loaded
weights without copying them: Linear / Conv / embedding sub-modules are *called* (ComfyUI's own ops then
handle its weight casting and offloading), parameter-free norms and attention are ours.

Self-attention takes an optional ``kv_hook(layer, k, v) -> (k_all, v_all)``: the block-causal KV cache
(``wan/sampling/cache.py``) plugs in there, and ``attn_mask`` gives the masked, cache-free reference used by tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .actions import ActionModule
from .config import WanConfig
from .features import CLIP_DIM, check_clip_features
from .rope import apply_rope, rope_cos_sin

KVHook = Callable[[int, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
# (layer, block module, tokens, frames) -> tokens: Matrix-Game's action modules (wan/sampling/action_cache.py)
ActionHook = Callable[[int, nn.Module, torch.Tensor, int], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Modules (parameter containers with Wan's names)


class Linear(nn.Linear):
    """nn.Linear that computes in the input's dtype/device (a no-op cast when they already match)."""

    def forward(self, x):
        w, b = self.weight, self.bias
        if w.dtype != x.dtype or w.device != x.device:
            w = w.to(device=x.device, dtype=x.dtype)
            b = None if b is None else b.to(device=x.device, dtype=x.dtype)
        return F.linear(x, w, b)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return y * self.weight.to(device=x.device, dtype=x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, eps: float, image: bool):
        super().__init__()
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        if image:
            self.k_img, self.v_img = Linear(dim, dim), Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)


class Block(nn.Module):
    def __init__(self, cfg: WanConfig, index: int = 0):
        super().__init__()
        d = cfg.dim
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))
        self.self_attn = SelfAttention(d, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(d, cfg.eps, cfg.has_img_emb and not cfg.image_context_only)
        self.ffn = nn.Sequential(Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), Linear(cfg.ffn_dim, d))
        if cfg.actions is not None and index in cfg.actions.blocks:
            self.action_model = ActionModule(cfg.actions)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))
        self.head = Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))


class ImageEmbedding(nn.Module):
    """Wan's MLPProj: LayerNorm(1280) -> Linear 1280->1280 -> GELU -> Linear 1280->dim -> LayerNorm(dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(CLIP_DIM), Linear(CLIP_DIM, CLIP_DIM), nn.GELU(),
                                  Linear(CLIP_DIM, dim), nn.LayerNorm(dim))

    def forward(self, x):
        return self.proj(x)


class WanDiT(nn.Module):
    """Wan 2.1 DiT parameters with Wan/ComfyUI key names (``load_state_dict`` takes their files as is)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        if not cfg.image_context_only:
            self.text_embedding = nn.Sequential(Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), Linear(d, d))
        self.time_embedding = nn.Sequential(Linear(cfg.freq_dim, d), nn.SiLU(), Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.has_img_emb:
            self.img_emb = ImageEmbedding(d)
        if cfg.has_vace:
            from .vace import add_vace_modules  # VACE's modules and rules live in vace.py (it builds on this file)

            add_vace_modules(self, cfg)


def init_random(model: WanDiT, seed: int, std: float = 0.02) -> WanDiT:
    """Seeded random init (the embedded default and tests): normal(0, std) weights, zero biases, unit norms.

    Modulation tables get small values too (a trained Wan has non-zero ones), so every path is exercised.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name.endswith("norm_k_img.weight"):
                p.fill_(1.0)
            elif p.dim() == 1 and (".norm" in name or name.startswith("img_emb.proj.0") or
                                   name.startswith("img_emb.proj.4") or ".mouse_mlp.3." in name):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# --------------------------------------------------------------------------------------------------
# Functional maths over a Wan module tree


def _f32(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=torch.float32)


def _layer_norm(x: torch.Tensor, eps: float, norm: Optional[nn.Module] = None) -> torch.Tensor:
    # Wan normalises in fp32 and casts back (WanLayerNorm); norm1/norm2/head.norm have no parameters.
    w = b = None
    if norm is not None and getattr(norm, "weight", None) is not None:
        w, b = _f32(norm.weight, x), _f32(norm.bias, x)
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep sinusoid in float64: ``cat(cos(t*f), sin(t*f))``, f = 10000^(-i/(dim/2))."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    arg = t[..., None] * freqs
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


def time_modulation(tree: nn.Module, cfg: WanConfig, t: torch.Tensor):
    """Per-frame timesteps ``t [B, F]`` -> ``e [B, F, dim]`` and ``e0 [B, F, 6, dim]`` (fp32)."""
    sin = sinusoidal_embedding(t, cfg.freq_dim).float()
    e = tree.time_embedding(sin).float()
    e0 = tree.time_projection(e).float().unflatten(-1, (6, cfg.dim))
    return e, e0


@dataclasses.dataclass
class CrossContext:
    """Cross-attention keys/values of one conditioning, per layer, computed once per video.

    Text and image K/V are kept apart because Wan i2v runs two softmax attentions and sums them (a joint
    cache over image+text tokens would be one softmax, which is not what the model was trained with).
    """

    text_k: List[torch.Tensor]
    text_v: List[torch.Tensor]
    img_k: List[Optional[torch.Tensor]]
    img_v: List[Optional[torch.Tensor]]
    # the VACE blocks' own cross-attention K/V of the text (Wan2.1-VACE: t2v cross-attention), empty without VACE
    vace_k: List[torch.Tensor] = dataclasses.field(default_factory=list)
    vace_v: List[torch.Tensor] = dataclasses.field(default_factory=list)

    @property
    def has_image(self) -> bool:
        return self.img_k[0] is not None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1))  # [B, L, H, d]


def encode_context(tree: nn.Module, cfg: WanConfig, text: torch.Tensor, clip_fea: Optional[torch.Tensor],
                   dtype: torch.dtype, batch: int, device=None) -> CrossContext:
    """Embed the umt5 text states ``[B|1, L, 4096]`` (zero-padded to 512 like Wan) and the CLIP features
    ``[B|1, 257, 1280]`` (i2v only) and project them to each layer's cross-attention K/V.

    Matrix-Game 2.0 (``image_context_only``) has no text: its cross-attention attends ``img_emb(clip_fea)``
    through the plain ``k``/``v`` (one softmax, stored as the "text" K/V); ``text`` is ignored."""
    if cfg.image_context_only:
        return _encode_image_only(tree, cfg, clip_fea, dtype, batch, device)
    if text.dim() != 3 or text.shape[-1] != cfg.text_dim:
        raise ValueError(f"text conditioning has shape {list(text.shape)}; the model expects "
                         f"[batch, tokens, {cfg.text_dim}] umt5-xxl hidden states (Wan's text encoder).")
    device = device if device is not None else tree.blocks[0].self_attn.q.weight.device
    text = text.to(device=device, dtype=dtype)
    if text.shape[1] < cfg.text_len:
        text = F.pad(text, (0, 0, 0, cfg.text_len - text.shape[1]))
    ctx = _expand_batch(tree.text_embedding(text), batch, "text")
    out = CrossContext([], [], *image_kv(tree, cfg, clip_fea, dtype, batch, device))
    h = cfg.num_heads
    for blk in tree.blocks:
        ca = blk.cross_attn
        out.text_k.append(_heads(ca.norm_k(ca.k(ctx)), h))
        out.text_v.append(_heads(ca.v(ctx), h))
    for blk in getattr(tree, "vace_blocks", None) or ():
        ca = blk.cross_attn
        out.vace_k.append(_heads(ca.norm_k(ca.k(ctx)), h))
        out.vace_v.append(_heads(ca.v(ctx), h))
    return out


def image_kv(tree: nn.Module, cfg: WanConfig, clip_fea: Optional[torch.Tensor], dtype: torch.dtype, batch: int,
             device=None) -> tuple:
    """Each layer's image cross-attention K/V of the CLIP features ``[B|1, 257, 1280]`` (``img_emb`` -> ``k_img`` /
    ``v_img``): ``(img_k, img_v)`` lists, of ``None`` without features. A reference-image change recomputes only
    these (``dataclasses.replace(ctx, img_k=..., img_v=...)``); the text K/V stay."""
    if clip_fea is None:
        return [None] * len(tree.blocks), [None] * len(tree.blocks)
    check_clip_features(clip_fea)
    device = device if device is not None else tree.blocks[0].self_attn.q.weight.device
    img = _expand_batch(tree.img_emb(clip_fea.to(device=device, dtype=dtype)), batch, "CLIP features")
    h = cfg.num_heads
    return ([_heads(blk.cross_attn.norm_k_img(blk.cross_attn.k_img(img)), h) for blk in tree.blocks],
            [_heads(blk.cross_attn.v_img(img), h) for blk in tree.blocks])


def _encode_image_only(tree, cfg: WanConfig, clip_fea, dtype, batch: int, device=None) -> CrossContext:
    if clip_fea is None:
        raise ValueError(f"{cfg.describe()} conditions on the start image's CLIP vision features only (no text): "
                         f"connect CLIP Vision Encode (ViT-H/14, crop none) to the image conditioning.")
    check_clip_features(clip_fea)
    device = device if device is not None else tree.blocks[0].self_attn.q.weight.device
    img = _expand_batch(tree.img_emb(clip_fea.to(device=device, dtype=dtype)), batch, "CLIP features")
    out = CrossContext([], [], [], [])
    for blk in tree.blocks:
        ca = blk.cross_attn
        out.text_k.append(_heads(ca.norm_k(ca.k(img)), cfg.num_heads))
        out.text_v.append(_heads(ca.v(img), cfg.num_heads))
        out.img_k.append(None)
        out.img_v.append(None)
    return out


def _expand_batch(x: Optional[torch.Tensor], batch: int, what: str) -> Optional[torch.Tensor]:
    if x is None or x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    if x.shape[0] > batch:  # ComfyUI uses the first B entries of a larger conditioning batch
        return x[:batch]
    raise ValueError(f"{what} has batch {x.shape[0]} but the latent has batch {batch}; give one entry or {batch}.")


def _attention(q, k, v, mask=None):
    # [B, L, H, d] layout in and out; SDPA wants [B, H, L, d].
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def patchify(tree: nn.Module, cfg: WanConfig, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if x.shape[1] != cfg.in_dim:
        raise ValueError(f"model input has {x.shape[1]} channels but the model's patch_embedding takes "
                         f"{cfg.in_dim} ({cfg.describe()}).")
    pe = tree.patch_embedding
    w = getattr(pe, "weight", None)
    conv_dtype = w.dtype if w is not None and w.dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype
    tokens = pe(x.to(conv_dtype)).to(dtype)  # [B, dim, F, H/2, W/2]
    return tokens.flatten(2).transpose(1, 2)  # [B, F*h*w, dim], token order (frame, row, column)


def unpatchify(cfg: WanConfig, tokens: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    pt, ph, pw = cfg.patch_size
    x = tokens.view(b, frames, h, w, pt, ph, pw, cfg.out_dim)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b c f pt h ph w pw  (Wan's "fhwpqrc->cfphqwr")
    return x.reshape(b, cfg.out_dim, frames * pt, h * ph, w * pw)


def run_block(blk: nn.Module, cfg: WanConfig, tokens: torch.Tensor, e0: torch.Tensor, cross: tuple, cos, sin,
              frames: int, dtype: torch.dtype, kv_hook: Optional[Callable] = None,
              attn_mask: Optional[torch.Tensor] = None, action: Optional[Callable] = None) -> torch.Tensor:
    """One Wan attention block (``blocks[i]``, or a VACE block: same maths) on ``tokens [B, frames*s, dim]``.

    ``e0 [B, F, 6, D]`` the per-frame time modulation, ``cross = (text_k, text_v, img_k, img_v)`` this block's
    cross-attention K/V, ``cos/sin`` the RoPE tables of the tokens, ``kv_hook(k, v)`` what self-attention sees,
    ``action(tokens)`` the block's Matrix-Game 2.0 action module, run between the cross-attention and the FFN."""
    b = tokens.shape[0]
    s = tokens.shape[1] // frames
    nh = cfg.num_heads
    mod = (_f32(blk.modulation, e0) + e0).unsqueeze(3)  # [B, F, 6, 1, D]
    sh_a, sc_a, g_a, sh_f, sc_f, g_f = mod.unbind(2)  # each [B, F, 1, D]

    def modulate(z, shift, scale):
        zf = _layer_norm(z, cfg.eps).float().view(b, frames, s, -1)
        return (zf * (1 + scale) + shift).flatten(1, 2).to(dtype)

    def gated(y, gate):
        return (y.float().view(b, frames, s, -1) * gate).flatten(1, 2).to(dtype)

    # self-attention (RoPE at absolute frame positions; the cache hook adds earlier frames' K/V)
    sa = blk.self_attn
    z = modulate(tokens, sh_a, sc_a)
    q = apply_rope(_heads(sa.norm_q(sa.q(z)), nh), cos, sin)
    k = apply_rope(_heads(sa.norm_k(sa.k(z)), nh), cos, sin)
    v = _heads(sa.v(z), nh)
    if kv_hook is not None:
        k, v = kv_hook(k, v)
    tokens = tokens + gated(sa.o(_attention(q, k, v, attn_mask)), g_a)

    # cross-attention: text and image attended separately and summed (Wan i2v); not gated
    text_k, text_v, img_k, img_v = cross
    ca = blk.cross_attn
    z = _layer_norm(tokens, cfg.eps, blk.norm3)
    q = _heads(ca.norm_q(ca.q(z)), nh)
    y = _attention(q, text_k, text_v)
    if img_k is not None:
        y = y + _attention(q, img_k, img_v)
    tokens = tokens + ca.o(y)
    if action is not None:
        tokens = action(tokens)

    # feed-forward
    return tokens + gated(blk.ffn(modulate(tokens, sh_f, sc_f)), g_f)


def transformer(tree: nn.Module, cfg: WanConfig, x: torch.Tensor, t: torch.Tensor, ctx: CrossContext,
                start_frame: int = 0, kv_hook: Optional[KVHook] = None, attn_mask: Optional[torch.Tensor] = None,
                dtype: Optional[torch.dtype] = None, run_head: bool = True,
                action_hook: Optional[ActionHook] = None, vace=None) -> Optional[torch.Tensor]:
    """One DiT evaluation on latent frames ``x [B, in_dim, F, H, W]`` whose first frame has absolute index
    ``start_frame``; ``t`` is ``[B]`` or per-frame ``[B, F]`` (0..1000). Returns the flow ``[B, 16, F, H, W]``
    (or None with ``run_head=False``: a cache-writing pass needs only the blocks). ``action_hook`` runs each
    block's ``action_model`` (Matrix-Game 2.0) between the cross-attention and the FFN.

    ``vace`` (``wan/model/vace.py`` ``VaceStep``): the VACE context of these frames; its hints are added after
    the main blocks they map to (Wan2.1-VACE), nothing else changes."""
    dtype = dtype or x.dtype
    b, _, frames, height, width = x.shape
    if height % 2 or width % 2:
        from ..vae.latent import latent_format

        step = 2 * latent_format(cfg.out_dim).spatial  # Wan 2.1: 16 px, Wan 2.2 (16x VAE): 32 px
        raise ValueError(f"latent height/width {height}x{width} must be even (Wan patches are 2x2 latent "
                         f"pixels): use an image size that is a multiple of {step} for a {cfg.generation} model.")
    h, w = height // 2, width // 2
    tokens = patchify(tree, cfg, x, dtype)
    t = t.reshape(b, -1) if t.dim() else t.reshape(1, 1).expand(b, 1)
    if t.shape[1] == 1:
        t = t.expand(b, frames)
    e, e0 = time_modulation(tree, cfg, t.to(tokens.device))  # [B,F,D], [B,F,6,D]
    hints = vace.hints(tree, cfg, tokens, e0, ctx, (frames, h, w), dtype) if vace is not None else {}
    cos, sin = rope_cos_sin(cfg.head_dim, start_frame, frames, h, w, tokens.device)
    for i, blk in enumerate(tree.blocks):
        hook = None if kv_hook is None else (lambda k, v, i=i: kv_hook(i, k, v))
        cross = (ctx.text_k[i], ctx.text_v[i], ctx.img_k[i], ctx.img_v[i])
        action = None
        if action_hook is not None and hasattr(blk, "action_model"):
            action = (lambda z, i=i, blk=blk: action_hook(i, blk.action_model, z, frames))
        tokens = run_block(blk, cfg, tokens, e0, cross, cos, sin, frames, dtype, hook, attn_mask, action)
        if i in hints:
            tokens = tokens + hints[i]

    if not run_head:
        return None
    s = h * w
    hm = (_f32(tree.head.modulation, e).unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3)  # [B, F, 2, 1, D]
    shift, scale = hm.unbind(2)
    z = _layer_norm(tokens, cfg.eps).float().view(b, frames, s, -1)
    z = (z * (1 + scale) + shift).flatten(1, 2).to(dtype)
    out = tree.head.head(z).float()
    return unpatchify(cfg, out, frames, h, w)


def forward(tree: nn.Module, cfg: WanConfig, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
            clip_fea: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
            dtype: Optional[torch.dtype] = None, vace=None) -> torch.Tensor:
    """Plain bidirectional Wan forward (all frames attend to all frames), like Wan's ``WanModel.forward``.

    ``x [B, 16, F, H, W]`` noisy latent, ``y [B, 20, F, H, W]`` i2v concat (mask 4 | image latent 16),
    returns the flow prediction ``[B, 16, F, H, W]`` (float32).
    """
    dtype = dtype or model_dtype(tree)
    x = join_concat(cfg, x, y)
    ctx = encode_context(tree, cfg, text, clip_fea if cfg.has_img_emb else None, dtype, x.shape[0], x.device)
    return transformer(tree, cfg, x, t, ctx, dtype=dtype, vace=vace)


def join_concat(cfg: WanConfig, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """Channel-concatenate the i2v condition (Wan's ``cat([x, y])``: noise 16 | mask 4 | image latent 16)."""
    extra = cfg.concat_channels
    if y is None:
        if extra:  # ComfyUI feeds zeros when an i2v model gets no start image
            y = x.new_zeros(x.shape[0], extra, *x.shape[2:])
        else:
            return x
    elif not extra:
        raise ValueError(
            f"the model is text-to-video (in_dim {cfg.in_dim}) but image concat conditioning "
            f"(concat_latent_image/concat_mask, {y.shape[1]} channels) was given to the DiT; a t2v causal model "
            f"takes the start image as first-frame latents in the KV cache instead (CausalWanSampler does this "
            f"when image conditioning is on).")
    if y.shape[1] != extra or y.shape[2:] != x.shape[2:]:
        raise ValueError(f"i2v concat conditioning has shape {list(y.shape)}; expected "
                         f"[{x.shape[0]}, {extra}, {', '.join(map(str, x.shape[2:]))}] for this latent.")
    return torch.cat([x, y.to(x.dtype)], dim=1)


def model_dtype(tree: nn.Module) -> torch.dtype:
    w = tree.blocks[0].self_attn.q.weight
    return w.dtype if w.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
