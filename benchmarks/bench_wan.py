"""Causal Wan sampling benchmark (one run, small config, CPU unless CUDA is there):

1. time per block for N blocks with a sink + local window (block 10 should cost what block 2 costs),
   against the same run without a window (every block attends to all earlier frames, like a grow-only cache);
2. memory per block: KV-cache bytes and process RSS (flat once the window is full);
3. share of sampling time spent outside the DiT forward (sampler overhead);
4. time to the first block vs sampling all 21 latent frames (81 video frames) at once with the same model
   run bidirectionally (same steps).

Usage: ``comfyui-clipwan bench wan [--blocks 20] [--size 256] [--quick]``.
"""

from __future__ import annotations

import os
import time

import torch

from ..dtypes import DTYPE_BY_NAME
from ..wan import CausalSettings
from ..wan.model import dit
from ..wan.model.causal import DEFAULT_CONFIG, CausalWanModel
from ..wan.model.config import preset
from ..wan.sampling.loop import CausalLoop, SamplerHooks, TimingHooks, combine_hooks, initial_noise
from ..wan.sampling.scheduler import denoising_sigmas, x0_from_flow


def add_arguments(parser) -> None:
    parser.add_argument("--blocks", type=int, default=20, help="blocks to generate (default 20)")
    parser.add_argument("--frames-per-block", type=int, default=3)
    parser.add_argument("--sink", type=int, default=3, help="sink frames (default 3)")
    parser.add_argument("--window", type=int, default=9, help="local window in latent frames (default 9)")
    parser.add_argument("--size", type=int, default=256, help="video width in pixels (default 256)")
    parser.add_argument("--height", type=int, default=0, help="video height in pixels (default: = --size)")
    parser.add_argument("--config", default="default", choices=["default", "1.3B", "14B"],
                        help="model size: the small embedded default, or a released Wan 2.1 i2v size "
                             "(random init; needs a GPU in practice)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights/compute dtype")
    parser.add_argument("--steps", default="1000,750,500,250")
    parser.add_argument("--full-frames", type=int, default=21, help="latent frames of the all-at-once peer")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--quick", action="store_true", help="tiny run (for tests): 6 blocks, 64 px, 1 thread")
    parser.add_argument("--seed", type=int, default=0)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class _BlockClock(SamplerHooks):
    """Per block: wall time since the previous block, process RSS and (CUDA) peak memory."""

    def __init__(self, device):
        self.device = device
        self.times, self.rss, self.cuda_peak = [], [], []
        self.last = time.perf_counter()

    def on_block(self, result):
        _sync(self.device)
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        self.rss.append(_rss_mb())
        if self.device.type == "cuda":
            self.cuda_peak.append(torch.cuda.max_memory_allocated() / 2 ** 20)
            torch.cuda.reset_peak_memory_stats()


def _run_causal(model, frames, hw, settings, seed, device):
    h, w = hw
    text = torch.zeros(1, 512, 4096)
    clip = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed))
    latent = torch.zeros(1, 16, frames, h, w)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    clock, timing = _BlockClock(device), TimingHooks(device)
    t0 = clock.last = time.perf_counter()
    loop = CausalLoop(model, latent, text, seed=seed, settings=settings, clip_fea=clip,
                      hooks=combine_hooks(timing, clock))
    for _ in loop:  # the benchmark needs no whole-video latent
        pass
    _sync(device)
    total = time.perf_counter() - t0
    return {"times": clock.times, "rss": clock.rss, "cuda_peak": clock.cuda_peak, "total": total,
            "forward": timing.forward_s, "cache_mb": loop.cache_nbytes / 2 ** 20}


def _run_bidirectional(model, frames, hw, steps, shift, seed, device):
    h, w = hw
    text = torch.zeros(1, 512, 4096)
    clip = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed))
    x = initial_noise(seed, (1, 16, frames, h, w), device)
    sigmas = denoising_sigmas(steps, shift).tolist()
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():  # context encoded once, as the causal run does
        ctx = dit.encode_context(model.tree, model.config, text, clip, model.compute_dtype, 1, device)
    for j, sigma in enumerate(sigmas):
        with torch.no_grad():
            x_in = dit.join_concat(model.config, x, None)
            flow = dit.transformer(model.tree, model.config, x_in, torch.tensor([sigma * 1000.0], device=device),
                                   ctx, dtype=model.compute_dtype)
        x0 = x0_from_flow(x, flow, sigma)
        if j + 1 < len(sigmas):
            x = (1 - sigmas[j + 1]) * x0 + sigmas[j + 1] * torch.randn_like(x0)
    _sync(device)
    return time.perf_counter() - t0


def run(args) -> int:
    threads_before = torch.get_num_threads()
    try:
        if args.quick and not args.threads:
            args.threads = 1  # tiny ops: one thread avoids waiting on a busy second core
        if args.threads:
            torch.set_num_threads(args.threads)
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args) -> int:
    if args.quick:
        args.blocks, args.size, args.full_frames = 6, 64, 9
        args.sink, args.window = min(args.sink, 1), min(args.window, 4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hw = ((args.height or args.size) // 8, args.size // 8)
    config = DEFAULT_CONFIG if args.config == "default" else preset(args.config, "i2v")
    dtype = DTYPE_BY_NAME[args.dtype]
    model = CausalWanModel.random(config, seed=args.seed, dtype=dtype, device=device)
    n = args.frames_per_block
    frames = args.blocks * n
    print(f"bench wan: {config.describe()} {args.dtype} (seeded random init), {device}, "
          f"{torch.get_num_threads()} threads; video {args.size}x{args.height or args.size} px -> latent "
          f"{hw[1]}x{hw[0]}, {(hw[0] // 2) * (hw[1] // 2)} tokens/frame; {args.blocks} blocks x {n} frames; steps {args.steps}")

    # warm-up (allocator, kernels, RoPE tables)
    _run_causal(model, 2 * n, hw, CausalSettings(steps=args.steps, frames_per_block=n), args.seed, device)

    win = _run_causal(model, frames, hw, CausalSettings(steps=args.steps, frames_per_block=n, sink_size=args.sink,
                                                        local_window=args.window), args.seed, device)
    grow = _run_causal(model, frames, hw, CausalSettings(steps=args.steps, frames_per_block=n),
                       args.seed, device)
    full = _run_bidirectional(model, args.full_frames, hw, args.steps, 5.0, args.seed, device)

    print("\nblock  window: time s  RSS MB" + ("  CUDA peak MB" if win["cuda_peak"] else "")
          + "   | no window: time s  RSS MB")
    for i in range(args.blocks):
        cuda = f"  {win['cuda_peak'][i]:12.1f}" if win["cuda_peak"] else ""
        print(f"{i:5d}  {win['times'][i]:14.3f}  {win['rss'][i]:6.0f}{cuda}   | "
              f"{grow['times'][i]:17.3f}  {grow['rss'][i]:6.0f}")
    b2, b10 = 2, min(10, args.blocks - 1)
    ratio = win["times"][b10] / win["times"][b2]
    grow_ratio = grow["times"][b10] / grow["times"][b2]
    med = lambda xs: sorted(xs)[len(xs) // 2]
    robust = med(win["times"][max(b10 - 2, 3):b10 + 3]) / med(win["times"][1:4])
    robust_grow = med(grow["times"][max(b10 - 2, 3):b10 + 3]) / med(grow["times"][1:4])
    print(f"\n1. time per block with window {args.window} (sink {args.sink}): block {b10} / block {b2} = "
          f"{ratio:.3f} (target <= 1.15); without window: {grow_ratio:.3f}. Median of blocks around {b10} / "
          f"median of blocks 1-3 (robust to noise): window {robust:.3f}, no window {robust_grow:.3f}")
    last_half = win["rss"][args.blocks // 2:]
    print(f"2. KV cache: window {win['cache_mb']:.1f} MB (fixed) vs no window {grow['cache_mb']:.1f} MB for "
          f"{frames} frames ({grow['cache_mb'] / win['cache_mb']:.1f}x); RSS over the second half with window "
          f"{min(last_half):.0f}..{max(last_half):.0f} MB (spread {max(last_half) - min(last_half):.0f} MB)")
    if win["cuda_peak"]:
        later = win["cuda_peak"][args.blocks // 2:]
        print(f"   CUDA peak per block, second half: {min(later):.1f}..{max(later):.1f} MB")
    outside = (win["total"] - win["forward"]) / win["total"]
    print(f"3. time outside the DiT forward: {100 * outside:.2f} % of {win['total']:.2f} s (target <= 5 %)")
    first = win["times"][0]
    print(f"4. first block after {first:.3f} s vs all {args.full_frames} latent frames at once (bidirectional, "
          f"same steps) {full:.3f} s: first block {full / first:.1f}x sooner (target >= 10x)")
    return 0
