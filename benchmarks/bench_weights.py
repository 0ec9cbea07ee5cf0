"""Why ``weights.py`` reads ``.safetensors`` itself: the pack's reader against the ``safetensors`` library on
the same file, each load in a fresh subprocess (peak RSS = the process's ``VmHWM``).

Two loads of one bf16 file shaped like a DiT (many 2-D tensors):

1. **as stored** (the weights stay bf16): the pack's reader hands out zero-copy views of a private memory
   map (clean file pages the kernel can drop), the library's ``load_file`` / ``safe_open`` copy every tensor
   into anonymous memory;
2. **cast to fp32 while loading** (what a dtype choice on a loader does): the pack releases each source
   tensor's pages right after its cast (``FilePages``), so the process holds about one model, not two.

Every reader runs the pack's NaN/Inf check on every tensor (the library has none; the pack's reader runs it
inside ``read_weights``), so every row reads all the data, as a real model load does.
A third row times a truncated file: the pack refuses it from the header, naming the file; the library's error
is printed as it comes.

Usage: ``comfyui-clipwan bench weights [--mb 256]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import torch

READERS = {
    "pack": """
        from comfyui_clipwan.weights import FilePages, read_weights
        sd = read_weights(PATH, "bench")
        pages = FilePages() if CAST else None
        out = {}
        for k in list(sd):
            t = sd.pop(k)
            out[k] = t.float() if CAST else t
            if CAST:
                pages.release(t)
            del t
    """,
    "safetensors.load_file": """
        from safetensors.torch import load_file
        from comfyui_clipwan.weights import check_finite
        sd = load_file(PATH)
        out = {k: (check_finite(v, k, PATH).float() if CAST else check_finite(v, k, PATH)) for k, v in sd.items()}
        del sd
    """,
    "safetensors.safe_open": """
        from safetensors import safe_open
        from comfyui_clipwan.weights import check_finite
        out = {}
        with safe_open(PATH, framework="pt") as f:
            for k in f.keys():
                t = check_finite(f.get_tensor(k), k, PATH)
                out[k] = t.float() if CAST else t
                del t
    """,
}

_RUNNER = """
import json, time, torch
PATH, CAST = {path!r}, {cast!r}
t0 = time.perf_counter()
{body}
elapsed = time.perf_counter() - t0
total = sum(v.numel() * v.element_size() for v in out.values())
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
print(json.dumps(dict(seconds=elapsed, peak_mb=hwm / 1024, rss_after_mb=rss / 1024, loaded_mb=total / 2**20)))
"""


def add_arguments(parser) -> None:
    parser.add_argument("--mb", type=int, default=256, help="size of the bf16 test file in MB (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each reader (the fastest is reported)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def _write_file(path: str, mb: int) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    n, side, sd = 0, 1536, {}
    while n * side * side * 2 < mb * 2**20:
        sd[f"blocks.{n}.weight"] = torch.randn(side, side, generator=g).to(torch.bfloat16)
        n += 1
    save_file(sd, path)


def _run_one(name: str, path: str, cast: bool) -> dict:
    code = _RUNNER.format(path=path, cast=cast, body=textwrap.indent(textwrap.dedent(READERS[name]), ""))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _truncated(path: str) -> dict:
    from safetensors.torch import load_file

    from ..weights import WeightsFileError, read_weights

    cut = path + ".truncated"
    with open(path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(os.path.getsize(path) // 2))
    try:
        try:
            read_weights(cut, "bench")
            pack = "accepted"
        except WeightsFileError as exc:
            pack = str(exc)
        try:
            load_file(cut)
            lib = "accepted"
        except Exception as exc:  # the library's own error type
            lib = f"{type(exc).__name__}: {exc}"
    finally:
        os.remove(cut)
    return {"pack": pack, "safetensors": lib}


def run(args) -> int:
    results = {}
    with tempfile.TemporaryDirectory(prefix="clipwan-bench-weights-") as tmp:
        path = os.path.join(tmp, "model.safetensors")
        _write_file(path, args.mb)
        print(f"file: {os.path.getsize(path) / 2**20:.0f} MB bf16, {args.repeats} run(s) each, fresh process each")
        for cast in (False, True):
            label = "cast to fp32" if cast else "as stored (bf16)"
            print(f"\n{label}:")
            for name in READERS:
                runs = [_run_one(name, path, cast) for _ in range(args.repeats)]
                best = min(runs, key=lambda r: r["seconds"])
                best["peak_mb"] = min(r["peak_mb"] for r in runs)
                results[f"{name} / {label}"] = best
                print(f"  {name:24s} {best['seconds']:7.3f} s   peak RSS {best['peak_mb']:7.0f} MB   "
                      f"RSS after {best['rss_after_mb']:7.0f} MB   loaded {best['loaded_mb']:.0f} MB")
            pack = results[f"pack / {label}"]
            for name in list(READERS)[1:]:
                other = results[f"{name} / {label}"]
                print(f"  peak RSS {name} / pack = {other['peak_mb'] / pack['peak_mb']:.2f}x, "
                      f"time = {other['seconds'] / pack['seconds']:.2f}x")
        results["truncated file"] = _truncated(path)
        print("\ntruncated file (half the bytes):")
        for who, text in results["truncated file"].items():
            print(f"  {who}: {text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
