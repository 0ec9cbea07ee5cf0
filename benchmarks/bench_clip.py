"""``comfyui-clipwan bench clip``: our CLIP vision encoder vs open_clip vs transformers (SDPA).

Same random ViT-H/14 weights in all three, same dtype (fp32), batch 1 and 4, one run. Prints times, the
ratio of ours to the fastest peer, achieved FLOP/s as a fraction of this machine's fp32 matmul peak (measured
here with a large torch.mm), and load time / peak RSS of our loader vs a naive torch.load + load_state_dict,
each in a fresh subprocess so RSS figures are clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case, interleaved (best reported)")
    parser.add_argument("--layers", type=int, default=32, help="depth of the ViT-H/14 (default: the real 32)")
    parser.add_argument("--skip-load", action="store_true", help="skip the load-time/RSS comparison")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def vit_flops(config, batch: int) -> float:
    """Multiply-adds ×2 of one forward: patch embedding, per block qkv/out/MLP GEMMs + attention, projection."""
    t, w, m = config.num_tokens, config.width, config.mlp_dim
    patches = (config.image_size // config.patch_size) ** 2
    per_block = 2 * t * w * (3 * w + w + 2 * m) + 2 * 2 * t * t * w
    total = 2 * patches * 3 * config.patch_size ** 2 * w + config.layers * per_block
    if config.proj_dim:
        total += 2 * w * config.proj_dim
    return float(total * batch)


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved_best(cases: dict, repeats: int) -> dict:
    """Best (min) time of each case, the cases run round-robin so that load from other processes on a shared
    machine hits all of them alike; min is the least noisy estimate of what the code itself costs."""
    times = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()  # warm-up (allocator, oneDNN primitive cache)
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(_timed(fn))
    return {name: min(t) for name, t in times.items()}


def build_models(layers: int):
    """One random ViT-H/14 (open_clip init), shared by all three implementations."""
    import transformers
    from open_clip.transformer import VisionTransformer as OpenClipViT

    from ..clip_vision import ClipVisionModel, CONFIGS, build_empty_model

    config = CONFIGS["ViT-H/14"].replace(layers=layers)
    torch.manual_seed(0)
    oc = OpenClipViT(image_size=224, patch_size=14, width=1280, layers=layers, heads=16, mlp_ratio=4.0,
                     output_dim=1024).eval()
    ours = ClipVisionModel(build_empty_model(config), source="bench: random open_clip init", layout="open_clip")
    ours.load_sd({"visual." + k: v for k, v in oc.state_dict().items()})
    hf_cfg = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=layers,
                                           num_attention_heads=16, image_size=224, patch_size=14, projection_dim=1024,
                                           hidden_act="gelu", layer_norm_eps=1e-5, attn_implementation="sdpa")
    hf = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    hf.load_state_dict({k: v.contiguous() for k, v in ours.state_dict_hf().items()}, strict=False)
    return config, oc, ours, hf


LOAD_SCRIPT = textwrap.dedent("""
    import json, sys, time
    def status(field):  # VmHWM is per address space (ru_maxrss would carry the parent's peak across exec)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field)) * 1024
    import torch
    mode, path, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "naive":
        import transformers
    else:
        from comfyui_clipwan.clip_vision import load_clip_vision
    base = status("VmRSS")
    t0 = time.perf_counter()
    if mode == "naive":  # what most code does: build the module (fp32 init), torch.load everything, copy in
        cfg = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=layers,
                                            num_attention_heads=16, image_size=224, patch_size=14,
                                            projection_dim=1024, hidden_act="gelu")
        model = transformers.CLIPVisionModelWithProjection(cfg)
        model.load_state_dict(torch.load(path, weights_only=True), strict=False)
    else:
        model = load_clip_vision(path, dtype=mode).model
    seconds = time.perf_counter() - t0
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "peak_rss_growth": status("VmHWM") - base, "model_bytes": size}))
""")


def _load_case(mode: str, path: str, layers: int) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, mode, path, str(layers)], capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(f"load benchmark '{mode}' failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rss_over_model"] = result["peak_rss_growth"] / result["model_bytes"]
    return result


def run(args) -> int:
    import safetensors.torch

    threads = torch.get_num_threads()
    print(f"bench clip: ViT-H/14 ({args.layers} blocks), random weights shared by all implementations, fp32, "
          f"{threads} torch threads, {os.cpu_count()} CPUs")
    peak = matmul_peak()
    print(f"measured fp32 matmul peak (4096² torch.mm): {peak / 1e9:.1f} GFLOP/s")
    config, oc, ours, hf = build_models(args.layers)
    results = {"threads": threads, "matmul_peak_gflops": peak / 1e9, "layers": args.layers, "encode": []}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        pixels = torch.randn(batch, 3, 224, 224)
        flops = vit_flops(config, batch)
        cases = {
            "open_clip": lambda: oc(pixels),
            "transformers_sdpa": lambda: hf(pixel_values=pixels, output_hidden_states=True),
            "ours": lambda: ours.encode(pixels),
            "ours_penultimate_only": lambda: ours.encode(pixels, penultimate_only=True),
        }
        times = _interleaved_best(cases, args.repeats)
        peak = max(peak, matmul_peak(repeats=3))  # re-measured: on a shared machine take the best seen
        fastest_peer = min(times["open_clip"], times["transformers_sdpa"])
        print(f"\nbatch {batch}: {flops / 1e9:.0f} GFLOP per forward")
        for name, sec in times.items():
            achieved = flops / sec
            print(f"  {name:24s} {sec * 1000:9.1f} ms  {achieved / 1e9:7.1f} GFLOP/s  "
                  f"{100 * achieved / peak:5.1f}% of peak  ratio to fastest peer {sec / fastest_peer:.3f}")
        print(f"  (fp32 matmul peak, best so far: {peak / 1e9:.1f} GFLOP/s)")
        results["matmul_peak_gflops"] = peak / 1e9
        results["encode"].append({"batch": batch, "gflop": flops / 1e9,
                                  "seconds": times, "ratio_ours_to_fastest_peer": times["ours"] / fastest_peer,
                                  "fraction_of_peak_ours": flops / times["ours"] / peak})
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:
            sd = {k: v.contiguous() for k, v in ours.state_dict_hf().items()}
            del oc, hf, ours
            pth, st = os.path.join(tmp, "clip_vision_h.pth"), os.path.join(tmp, "clip_vision_h.safetensors")
            torch.save(sd, pth)
            safetensors.torch.save_file(sd, st)
            del sd
            print("\nload (fresh subprocess each; RSS growth = VmHWM − RSS before loading):")
            loads = {"naive torch.load + load_state_dict (.pth, fp32)": _load_case("naive", pth, args.layers),
                     "ours load_clip_vision (.pth, fp32)": _load_case("fp32", pth, args.layers),
                     "ours load_clip_vision (.safetensors, fp32)": _load_case("fp32", st, args.layers),
                     "ours load_clip_vision (.safetensors → fp16)": _load_case("fp16", st, args.layers)}
            for name, r in loads.items():
                print(f"  {name:46s} {r['seconds']:6.2f} s  peak RSS +{r['peak_rss_growth'] / 2**30:5.2f} GiB "
                      f"= {r['rss_over_model']:.2f}× the loaded model")
            results["load"] = loads
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0
