"""Endless stream benchmark: is a block at latent frame 10,000 as cheap as one at frame 100?

One endless run (``EndlessLoop``, tiny random-init Wan 2.1 DiT, blocks of 3, sink 3 + window 12, one
process) is sampled past ``--far`` latent frames. Around latent frame ``--near`` and around ``--far`` it
measures the wall time of ``--window`` consecutive blocks (the median block) and the process RSS; the ratios
far / near are what an endless stream promises to keep at 1 (goal: within 5 %). Both RoPE position rules are
run: ``slots`` (relative, what endless streams use) and ``absolute`` (positions growing with the video).

Usage: ``comfyui-clipwan bench endless [--far 10000] [--quick]``.
"""

from __future__ import annotations

import json
import statistics
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--near", type=int, default=100, help="latent frame of the first measurement")
    parser.add_argument("--far", type=int, default=10000, help="latent frame of the second measurement")
    parser.add_argument("--window", type=int, default=30, help="blocks timed at each point (median reported)")
    parser.add_argument("--positions", default="slots,absolute", help="RoPE position rules to run")
    parser.add_argument("--quick", action="store_true", help="tiny run for tests: frames 30 and 300, 6 blocks")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(positions: str, near: int, far: int, window: int) -> dict:
    from ..wan import CausalSettings, CausalWanModel, WanConfig
    from ..wan.sampling.run import iter_causal_blocks

    config = WanConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, in_dim=16)
    model = CausalWanModel.random(config, seed=0)
    settings = CausalSettings(steps="1000,750,500,250", frames_per_block=3, sink_size=3, local_window=12,
                              positions=positions)
    text = torch.randn(1, 16, 4096, generator=torch.Generator().manual_seed(0))
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 3, 8, 8), text, seed=0, settings=settings, endless=True)
    points = {"near": near, "far": far}
    times = {k: [] for k in points}
    rss = {}
    t = time.perf_counter()
    for result in loop:
        now = time.perf_counter()
        for name, frame in points.items():
            if frame <= result.start_frame < frame + 3 * window:
                times[name].append(now - t)
                rss[name] = _rss_mb()
        t = time.perf_counter()
        if result.start_frame >= far + 3 * window:
            break
    out = {name: {"latent_frame": points[name], "block_ms": 1000 * statistics.median(times[name]),
                  "rss_mb": rss[name]} for name in points}
    out["time_ratio"] = out["far"]["block_ms"] / out["near"]["block_ms"]
    out["rss_ratio"] = out["far"]["rss_mb"] / out["near"]["rss_mb"]
    out["cache_frames"] = len(loop.cache_frames)
    return out


def run(args) -> int:
    near, far, window = (30, 300, 6) if args.quick else (args.near, args.far, args.window)
    figures = {}
    for positions in args.positions.split(","):
        r = figures[positions] = measure(positions.strip(), near, far, window)
        print(f"positions={positions}: block at latent frame {near}: {r['near']['block_ms']:.1f} ms, "
              f"RSS {r['near']['rss_mb']:.0f} MB | at frame {far}: {r['far']['block_ms']:.1f} ms, "
              f"RSS {r['far']['rss_mb']:.0f} MB | time far/near {r['time_ratio']:.3f}x, "
              f"RSS far/near {r['rss_ratio']:.3f}x, {r['cache_frames']} frames cached")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0
