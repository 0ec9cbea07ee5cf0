"""Control benchmark (one run, tiny models, CPU unless CUDA is there):

1. time per block with Wan2.1-VACE (a reference image + a control video) vs the same model without VACE input, at
   two VACE densities: a VACE block on every 2nd main block (Wan2.1-VACE 1.3B: 15 on 30) and on every 5th (14B: 8
   on 40). The hints run on the denoising steps only (Scope's rule: the cache pass has none), so the ratio is
   ``(steps·(1 + vace/main) + 1) / (steps + 1)`` in DiT work, plus the VACE patch embedding;
2. video-to-video time per block (the input video read and VAE-encoded block by block, Krea's strength 0.6 with the
   same number of steps) vs text-to-video;
3. peak RSS (``VmHWM``, each run in a fresh subprocess) of a VACE run whose control video is generated frame by
   frame and encoded block by block, at 100 and at 2,000 latent frames (blocks of 4, sink 4 + window 12).

Usage: ``comfyui-clipwan bench control [--quick]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--blocks", type=int, default=4, help="blocks of 3 latent frames in the timing runs")
    parser.add_argument("--size", type=int, default=64, help="video width and height in pixels (default 64)")
    parser.add_argument("--layers", type=int, default=10, help="main blocks of the tiny DiT (dim 256)")
    parser.add_argument("--vae-dim", type=int, default=16, help="VAE base width of the encoder (Wan 2.1's: 96)")
    parser.add_argument("--short", type=int, default=100, help="latent frames of the short memory run")
    parser.add_argument("--long", type=int, default=2000, help="latent frames of the long memory run")
    parser.add_argument("--memory-size", type=int, default=32, help="video size in pixels of the memory runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, alternating (fastest reported)")
    parser.add_argument("--skip-memory", action="store_true", help="only the timing part")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--quick", action="store_true", help="tiny run (for tests)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def _config(layers: int, every: int):
    from ..wan import WanConfig

    base = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=layers, in_dim=16)
    return dataclasses.replace(base, vace_layers=tuple(range(0, layers, every)), vace_in_dim=96)


def _frames(count: int, size: int, seed: int = 0):
    """A synthetic control / input video, made frame by frame (nothing of it is held)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, size, size, generator=g)
    for i in range(count):
        yield (base + 0.01 * i).remainder(1.0)


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _vace_case(layers, every, blocks, size, vae, repeats, seed=0) -> dict:
    from ..wan import CausalSettings, CausalWanModel, normalize
    from ..wan.conditioning.control import VaceControl, VideoControl
    from ..wan.sampling.run import iter_causal_blocks

    cfg = _config(layers, every)
    model = CausalWanModel.random(cfg, seed=seed)
    frames = 3 * blocks
    latent = torch.zeros(1, 16, frames, size // 8, size // 8)
    text = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(seed)) * 0.1
    settings = CausalSettings(frames_per_block=3)
    reference = torch.zeros(1, 96, 1, size // 8, size // 8)
    reference[:, :16] = torch.randn(1, 16, 1, size // 8, size // 8)

    def run(vace):
        for _ in iter_causal_blocks(model, latent, text, settings=settings, vace=vace() if vace else None):
            pass

    def with_vace():
        return VaceControl(control=VideoControl(_frames(1 + 4 * (frames - 1), size), vae, normalize),
                           reference=reference)

    encoded = with_vace().control.read(0, frames)  # the same control video, encoded beforehand

    def with_tensor():
        return VaceControl(control=encoded, reference=reference)

    run(None)  # warm-up
    plain = vace = hints = float("inf")
    for _ in range(repeats):  # alternate
        plain = min(plain, _timed(lambda: run(None), 1))
        hints = min(hints, _timed(lambda: run(with_tensor), 1))
        vace = min(vace, _timed(lambda: run(with_vace), 1))
    return {"layers": layers, "vace_blocks": len(cfg.vace_layers), "plain_s_per_block": plain / blocks,
            "hints_s_per_block": hints / blocks, "vace_s_per_block": vace / blocks, "hint_ratio": hints / plain,
            "ratio": vace / plain}


def _restyle_case(blocks, size, vae, repeats, layers, seed=0) -> dict:
    from ..wan import CausalSettings, CausalWanModel, WanConfig, normalize
    from ..wan.conditioning.restyle import Restyle, restyle_steps
    from ..wan.sampling.run import iter_causal_blocks
    from ..wan.video.source import LatentFrames

    model = CausalWanModel.random(WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=layers), seed=seed)
    frames = 3 * blocks
    latent = torch.zeros(1, 16, frames, size // 8, size // 8)
    text = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(seed)) * 0.1
    t2v = CausalSettings(steps=restyle_steps(1.0), frames_per_block=3)
    v2v = CausalSettings(steps=restyle_steps(0.6), frames_per_block=3)

    def run(restyle):
        settings = v2v if restyle else t2v
        source = Restyle(LatentFrames(_frames(1 + 4 * (frames - 1), size), vae.stream_encoder(), normalize)) \
            if restyle else None
        for _ in iter_causal_blocks(model, latent, text, settings=settings, restyle=source):
            pass

    run(False)
    a = b = float("inf")
    for _ in range(repeats):
        a = min(a, _timed(lambda: run(False), 1))
        b = min(b, _timed(lambda: run(True), 1))
    return {"t2v_s_per_block": a / blocks, "v2v_s_per_block": b / blocks, "ratio": b / a}


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    def status(field):  # VmHWM: this process's peak resident set
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field)) * 1024
    import torch
    from comfyui_clipwan.benchmarks.bench_control import memory_run
    frames, size, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if threads:
        torch.set_num_threads(threads)
    result = memory_run(frames, size)
    result["peak_rss_bytes"] = status("VmHWM")
    print(json.dumps(result))
""")


def memory_run(latent_frames: int, size: int) -> dict:
    """A VACE run over ``latent_frames`` latent frames whose control video is made and encoded block by block."""
    from ..wan import CausalSettings, CausalWanModel, normalize
    from ..wan.conditioning.control import VaceControl, VideoControl
    from ..wan.sampling.run import iter_causal_blocks
    from ..wan.vae.wan21 import WanVAE, WanVAEConfig

    model = CausalWanModel.random(_config(2, 2), seed=0)
    vae = WanVAE.random(WanVAEConfig(dim=8), seed=0)
    control = VaceControl(control=VideoControl(_frames(1 + 4 * (latent_frames - 1), size), vae, normalize))
    latent = torch.zeros(1, 16, latent_frames, size // 8, size // 8)
    text = torch.zeros(1, 512, 4096)
    settings = CausalSettings(steps="1000,500", frames_per_block=4, sink_size=4, local_window=12)
    t0 = time.perf_counter()
    blocks = 0
    for _ in iter_causal_blocks(model, latent, text, settings=settings, vace=control):
        blocks += 1
    return {"latent_frames": latent_frames, "blocks": blocks, "seconds": time.perf_counter() - t0,
            "control_frames_read": control.control.next_latent}


def _memory_case(latent_frames: int, args) -> dict:
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(here), env.get("PYTHONPATH", "")] if p)
    with tempfile.TemporaryDirectory():
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(latent_frames), str(args.memory_size),
                              str(args.threads)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory run at {latent_frames} latent frames failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> int:
    threads_before = torch.get_num_threads()
    try:
        if args.quick and not args.threads:
            args.threads = 1
        if args.threads:
            torch.set_num_threads(args.threads)
        results = _run(args)
    finally:
        torch.set_num_threads(threads_before)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _run(args) -> dict:
    from ..wan.vae.wan21 import WanVAE, WanVAEConfig

    if args.quick:
        args.blocks, args.size, args.layers, args.vae_dim, args.repeats = 2, 32, 10, 8, 1
        args.short, args.long, args.memory_size = 8, 24, 32
    vae = WanVAE.random(WanVAEConfig(dim=args.vae_dim), seed=0)
    print(f"bench control: tiny DiT (dim 256, {args.layers} blocks) + Wan 2.1 VAE encoder at dim {args.vae_dim} (seeded "
          f"random init), CPU, {torch.get_num_threads()} threads; {args.blocks} blocks of 3 latent frames at "
          f"{args.size}x{args.size} px, 4 steps + the cache pass; fastest of {args.repeats} alternating runs")
    results = {"threads": torch.get_num_threads(), "size": args.size, "blocks": args.blocks, "vace": []}
    for every, label in ((2, "every 2nd block (Wan2.1-VACE 1.3B density)"), (5, "every 5th block (14B density)")):
        r = _vace_case(args.layers, every, args.blocks, args.size, vae, args.repeats)
        results["vace"].append(r)
        print(f"  VACE, {r['vace_blocks']} VACE blocks on {r['layers']}, {label}: without VACE "
              f"{r['plain_s_per_block'] * 1e3:.0f} ms/block; hint path (reference + control already encoded) "
              f"{r['hints_s_per_block'] * 1e3:.0f} ms/block -> {r['hint_ratio']:.2f}x; with the control video "
              f"encoded per block {r['vace_s_per_block'] * 1e3:.0f} ms/block -> {r['ratio']:.2f}x")
    r = _restyle_case(args.blocks, args.size, vae, args.repeats, args.layers)
    results["restyle"] = r
    print(f"  video-to-video (input encoded per block, strength 0.6, 5 steps) {r['v2v_s_per_block'] * 1e3:.0f} ms/block "
          f"vs text-to-video {r['t2v_s_per_block'] * 1e3:.0f} ms/block -> {r['ratio']:.2f}x")
    if not args.skip_memory:
        short, long = _memory_case(args.short, args), _memory_case(args.long, args)
        results["memory"] = {"short": short, "long": long, "peak_rss_ratio": long["peak_rss_bytes"] /
                             short["peak_rss_bytes"]}
        print(f"  peak RSS of a VACE run with its control video made and encoded block by block ({args.memory_size}x"
              f"{args.memory_size} px, blocks of 4, sink 4 + window 12): {args.short} latent frames "
              f"{short['peak_rss_bytes'] / 2 ** 20:.0f} MiB, {args.long} latent frames ({long['seconds']:.0f} s) "
              f"{long['peak_rss_bytes'] / 2 ** 20:.0f} MiB -> ratio {results['memory']['peak_rss_ratio']:.3f}")
    return results
