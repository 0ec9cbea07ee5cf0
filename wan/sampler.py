"""Block-causal, KV-cached Wan 2.1 sampling (the Self-Forcing / CausVid / LongLive inference loop), with
image conditioning for i2v.

Per block of latent frames: start from noise, run the few-step list (x0 = x_t - σ·flow, re-noise to the next
σ with fresh seeded noise), then one pass at t=0 on the clean block that writes its K/V into the cache for
the following blocks. Cross-attention K/V of the text and of the CLIP image tokens are computed once per
video (and again only at a prompt switch).

Image conditioning, three routes (all optional, all switchable off):
  (1) ``clip_fea [B,257,1280]`` -> ``img_emb`` -> separate image K/V in every cross-attention (i2v models);
  (2) ``concat [B,20,T,h,w]`` (mask 4 | normalised image latent 16) channel-joined to the noise (in_dim 36);
  (3) ``first_frames [B,16,T0,h,w]`` (normalised clean latents) written into the cache as the first
      frame(s) and copied to the output, so a t2v-distilled causal model continues from the image.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Optional, Sequence

import torch

from . import model as dit
from .cache import KVCache
from .causal_model import CausalWanModel
from .latent import check_latent
from .scheduler import DEFAULT_SHIFT, DEFAULT_STEPS, denoising_schedule, renoise, x0_from_flow


@dataclasses.dataclass
class CausalSettings:
    steps: object = DEFAULT_STEPS  # list of timesteps, "1000,750,500,250", or a count "4" (scheduler.parse_steps)
    shift: float = DEFAULT_SHIFT
    warp: bool = True  # warp the list onto the shifted grid (Self-Forcing...); off: CausVid / Krea lists
    frames_per_block: int = 3
    sink_size: int = 0  # frames kept forever (attention sink); only meaningful with a window
    local_window: int = 0  # frames attended in all (sink + recent + the block); 0 = no window
    cache_dtype: Optional[torch.dtype] = None  # None = the model's compute dtype
    independent_first_frame: bool = False  # first block = 1 latent frame, then blocks of frames_per_block
    guidance_scale: float = 1.0  # distilled models: 1.0 (no CFG); > 1 runs a negative branch with its own cache


@dataclasses.dataclass
class PromptSwitch:
    """From block ``start_block`` on, use ``text`` (LongLive-style: cached frames are re-encoded with it)."""

    start_block: int
    text: torch.Tensor


def block_layout(num_frames: int, frames_per_block: int, independent_first_frame: bool = False) -> list:
    """``[(start_frame, num_frames), ...]`` of the blocks; a clear error if the length does not fit."""
    n = int(frames_per_block)
    if n < 1:
        raise ValueError(f"frames_per_block must be >= 1 (got {n}).")
    first = 1 if independent_first_frame else 0
    rest = num_frames - first
    if num_frames < 1 or rest % n or rest < 0:
        fit = [first + n * k for k in range(1, 64) if first + n * k > 0]
        near = sorted(fit, key=lambda f: abs(f - num_frames))[:3]
        pixel = [4 * (f - 1) + 1 for f in sorted(near)]
        alt = ("with independent_first_frame off, multiples of %d" % n) if first else \
              ("or enable independent_first_frame for 1 + %d·k frames" % n)
        raise ValueError(
            f"the latent has {num_frames} frames, which does not fit blocks of {n} frame(s)"
            f"{' after an independent first frame' if first else ''}: use {sorted(near)} latent frames "
            f"(video length {pixel} in WanI2VConditioning), {alt}, or change frames_per_block.")
    layout = [(0, 1)] if first else []
    layout += [(s, n) for s in range(first, num_frames, n)]
    return layout


def check_window(settings: CausalSettings, layout: Sequence) -> None:
    sink, window = int(settings.sink_size), int(settings.local_window)
    if sink < 0 or window < 0:
        raise ValueError(f"sink_size ({sink}) and local_window ({window}) must be >= 0.")
    biggest = max(n for _, n in layout)
    if window and window < sink + biggest:
        raise ValueError(f"local_window {window} is too small: it must hold the {sink} sink frame(s) plus one "
                         f"block of {biggest} frame(s); set local_window >= {sink + biggest}, or 0 for no window.")


def step_noise(seed: int, block: int, step: int, shape, device) -> torch.Tensor:
    """Fresh noise for re-noising ``block`` to its step ``step`` (>= 1); CPU generator like ComfyUI, so
    results do not depend on the device."""
    g = torch.Generator().manual_seed((int(seed) + 1000 * (block + 1) + step) % (2 ** 63))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


def initial_noise(seed: int, shape, device=None) -> torch.Tensor:
    """Same construction as ComfyUI's ``prepare_noise`` (CPU generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


_warned_no_img_emb = set()


def _image_inputs(model: CausalWanModel, clip_fea, concat, first_frames):
    cfg = model.config
    if clip_fea is not None and not cfg.has_img_emb:
        key = id(model.tree)
        if key not in _warned_no_img_emb:
            _warned_no_img_emb.add(key)
            warnings.warn(f"CLIP vision features were given but the model has no image embedding "
                          f"({cfg.describe()}): they are skipped. Use an i2v Wan model to condition on CLIP "
                          f"features, or switch image conditioning off to silence this.", stacklevel=3)
        clip_fea = None
    if clip_fea is not None:
        dit.check_clip_features(clip_fea)
    if concat is not None and not cfg.concat_channels:
        raise ValueError(
            f"the model is text-to-video (in_dim {cfg.in_dim}) and cannot take channel-concat image "
            f"conditioning; pass the start image as first-frame latents (route 3) instead — CausalWanSampler "
            f"does this from WanI2VConditioning's output.")
    if first_frames is not None and cfg.concat_channels:
        first_frames = None  # an i2v model sees the image through the concat channels (route 2)
    return clip_fea, concat, first_frames


class _Branch:
    """One conditioning (positive, or negative for CFG) with its own cross context and self-attn cache."""

    def __init__(self, ctx, cache):
        self.ctx, self.cache = ctx, cache


def sample_causal(model: CausalWanModel, latent: torch.Tensor, text: torch.Tensor, *, seed: int = 0,
                  settings: Optional[CausalSettings] = None, negative_text: Optional[torch.Tensor] = None,
                  clip_fea: Optional[torch.Tensor] = None, concat: Optional[torch.Tensor] = None,
                  first_frames: Optional[torch.Tensor] = None, prompt_switches: Sequence[PromptSwitch] = (),
                  on_block: Optional[Callable] = None, check_interrupt: Optional[Callable[[], None]] = None,
                  stats: Optional[dict] = None) -> torch.Tensor:
    """Sample a video latent block by block. ``latent [B,16,T,h,w]`` is in the model's (normalised) space;
    zeros mean "from pure noise" (a first step below 1000 starts from ``(1-σ)·latent + σ·noise``).

    ``on_block(index, total, x0_block, start_frame)`` is called as soon as a block is final (before its
    cache pass, so a stream shows it without waiting for that pass);
    ``check_interrupt()`` between steps may raise to stop (nothing is returned then).
    Returns the clean latent, float32, same shape.
    """
    s = settings or CausalSettings()
    check_latent(latent)
    cfg = model.config
    b, _, frames, height, width = latent.shape
    layout = block_layout(frames, s.frames_per_block, s.independent_first_frame)
    check_window(s, layout)
    schedule = denoising_schedule(s.steps, s.shift, s.warp)
    sigmas, timesteps = list(schedule.sigmas), list(schedule.timesteps)
    clip_fea, concat, first_frames = _image_inputs(model, clip_fea, concat, first_frames)
    if concat is not None and (concat.shape[0] not in (1, b) or concat.shape[1] != cfg.concat_channels
                               or tuple(concat.shape[2:]) != (frames, height, width)):
        raise ValueError(f"concat conditioning has shape {list(concat.shape)}; expected "
                         f"[{b}, {cfg.concat_channels}, {frames}, {height}, {width}] to match the latent.")
    known = 0
    if first_frames is not None:
        check_latent(first_frames, "start image latent")
        known = first_frames.shape[2]
        if tuple(first_frames.shape[3:]) != (height, width) or known > frames:
            raise ValueError(f"start image latent {list(first_frames.shape)} does not fit the latent "
                             f"{list(latent.shape)} (same height/width, at most as many frames).")
        starts = [st for st, _ in layout] + [frames]
        if known not in starts:
            raise ValueError(f"the start image covers {known} latent frame(s) but block boundaries are at "
                             f"{starts[:6]}: enable independent_first_frame (first block = 1 frame) or set "
                             f"frames_per_block so a block ends after frame {known}.")
    guidance = float(s.guidance_scale)
    if guidance > 1.0 and negative_text is None:
        raise ValueError(f"guidance_scale {guidance} > 1 needs a negative conditioning; connect one, or use "
                         f"guidance_scale 1.0 (distilled causal models are run without CFG).")
    for sw in prompt_switches:
        if not 0 < sw.start_block < len(layout):
            raise ValueError(f"prompt switch at block {sw.start_block}: must be between 1 and {len(layout) - 1}.")

    dev = model.device
    dtype = model.compute_dtype
    tokens = (height // 2) * (width // 2)
    capacity = int(s.local_window) if s.local_window else frames
    cache_dtype = s.cache_dtype or dtype

    def new_cache():
        return KVCache(cfg.num_layers, b, cfg.num_heads, cfg.head_dim, tokens, capacity,
                       int(s.sink_size), int(s.local_window), cache_dtype, dev)

    timer = stats if stats is not None else {}
    sync_timing = stats is not None and dev.type == "cuda"
    timer.setdefault("forward_s", 0.0)
    import time

    def run(x, t_value, branch, start, y_block, head=True):
        t0 = time.perf_counter()
        x_in = dit.join_concat(cfg, x.to(dev), None if y_block is None else y_block.to(dev))
        t = torch.full((b,), float(t_value), dtype=torch.float64, device=dev)
        out = dit.transformer(model.tree, cfg, x_in, t, branch.ctx, start_frame=start,
                              kv_hook=branch.cache.hook(start), dtype=dtype, run_head=head)
        if sync_timing:  # CUDA runs asynchronously: wait, so the time is charged to the forward
            torch.cuda.synchronize(dev)
        timer["forward_s"] += time.perf_counter() - t0
        return out

    with torch.no_grad():
        t0 = time.perf_counter()
        branches = [_Branch(dit.encode_context(model.tree, cfg, text, clip_fea, dtype, b, dev), new_cache())]
        if guidance > 1.0:
            branches.append(_Branch(dit.encode_context(model.tree, cfg, negative_text, clip_fea, dtype, b, dev),
                                    new_cache()))
        timer["forward_s"] += time.perf_counter() - t0
        noise = initial_noise(seed, latent.shape, dev)
        start_x = renoise(latent.float().to(dev), noise, sigmas[0]) if sigmas[0] < 1.0 else noise
        y = None if concat is None else concat.float().to(dev).expand(b, *concat.shape[1:])
        out = torch.zeros(latent.shape, dtype=torch.float32, device=dev)
        switches = {sw.start_block: sw.text for sw in prompt_switches}

        for bi, (start, n) in enumerate(layout):
            if bi in switches:
                t0 = time.perf_counter()
                branches[0].ctx = dit.encode_context(model.tree, cfg, switches[bi], clip_fea, dtype, b, dev)
                timer["forward_s"] += time.perf_counter() - t0
                _recache(branches[0], out, y, layout[:bi], run)
            for br in branches:
                br.cache.begin_block(start, n)
            y_blk = None if y is None else y[:, :, start:start + n]
            if start + n <= known:  # route (3): a known clean frame, only written into the cache
                x0 = first_frames[:, :, start:start + n].float().to(dev).expand(b, -1, -1, -1, -1)
            else:
                x = start_x[:, :, start:start + n]
                for j, sigma in enumerate(sigmas):
                    if check_interrupt is not None:
                        check_interrupt()
                    flows = [run(x, timesteps[j], br, start, y_blk) for br in branches]
                    flow = flows[0] if len(flows) == 1 else flows[1] + guidance * (flows[0] - flows[1])
                    x0 = x0_from_flow(x, flow, sigma)
                    if j + 1 < len(sigmas):
                        x = renoise(x0, step_noise(seed, bi, j + 1, x0.shape, dev), sigmas[j + 1])
            out[:, :, start:start + n] = x0
            if on_block is not None:  # the block is final now: stream it before the cache pass
                on_block(bi, len(layout), x0, start)
            if check_interrupt is not None:
                check_interrupt()
            for br in branches:  # context pass at t=0: the clean block's K/V become the cache
                run(x0, 0.0, br, start, y_blk, head=False)
                br.cache.commit()
    timer["cache_bytes"] = sum(br.cache.nbytes for br in branches)
    timer["cache_frames"] = list(branches[0].cache.frames)
    return out


def _recache(branch: _Branch, out: torch.Tensor, y, done_layout, run) -> None:
    """LongLive's KV re-cache at a prompt switch: the frames still in the cache are re-encoded at t=0 with
    the new prompt (same block boundaries, same absolute positions), so what follows is not pulled back to
    the old prompt through the cached keys."""
    kept = set(branch.cache.frames)
    branch.cache.reset()
    for start, n in done_layout:
        frames = [f for f in range(start, start + n) if f in kept]
        # a block may be partly evicted; re-encode each contiguous run of kept frames
        runs = []
        for f in frames:
            if runs and f == runs[-1][-1] + 1:
                runs[-1].append(f)
            else:
                runs.append([f])
        for r in runs:
            a, m = r[0], len(r)
            branch.cache.begin_block(a, m)
            run(out[:, :, a:a + m], 0.0, branch, a, None if y is None else y[:, :, a:a + m], head=False)
            branch.cache.commit()
