"""Memory of an Axera export of a real-size (random-init) CLIP vision tower: RSS peak per stage and what the
process still holds after ``export_clip`` returns (the ComfyUI server keeps running after an export).

Stages are timed by wrapping the pipeline's own steps; RSS is sampled every 20 ms in a thread (VmRSS), and the
peak is reset after the model is built so it measures the export alone.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import threading
import time


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="ViT-H/14", help="vision preset (default: ViT-H/14, Wan's CLIP)")
    parser.add_argument("--layers", type=int, default=None, help="reduce depth (default: the real depth)")


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024 ** 2


def run(args) -> int:
    from ..axera_export import export_clip, vision_source
    from ..axera_export import onnx_export, pipeline
    from ..clip_vision import default_clip_vision

    model = default_clip_vision(args.model, layers=args.layers)
    gc.collect()
    state = {"stage": "start", "peak": _rss_gb(), "log": []}

    def sample():
        while state.get("running", True):
            state["peak"] = max(state["peak"], _rss_gb())
            time.sleep(0.02)

    def mark(name):
        state["log"].append((state["stage"], state["peak"]))
        state["stage"], state["peak"] = name, _rss_gb()

    def wrap(module, name):
        original = getattr(module, name)

        def wrapped(*a, **k):
            mark(name)
            try:
                return original(*a, **k)
            finally:
                mark(f"(between steps, after {name})")
        setattr(module, name, wrapped)
        return original

    originals = [(m, n, wrap(m, n)) for m, n in ((pipeline, "export_onnx"), (pipeline, "check_export"),
                                                 (pipeline, "ort_session"), (onnx_export, "_consolidate_external"))]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    base = _rss_gb()
    params = sum(p.numel() for p in model.model.parameters())
    folder = tempfile.mkdtemp(prefix="clipwan_bench_export_")
    try:
        mark("prepare")
        t0 = time.perf_counter()
        export_clip(vision_source(model), os.path.join(folder, "export"), parts="vision", run_build=False)
        seconds = time.perf_counter() - t0
        gc.collect()
        mark("end")
    finally:
        state["running"] = False
        for module, name, original in originals:
            setattr(module, name, original)
        shutil.rmtree(folder, ignore_errors=True)
    after = _rss_gb()
    print(f"export of {args.model} vision ({params / 1e6:.0f} M params, {params * 4 / 1e9:.2f} GB fp32), "
          f"{seconds:.0f} s")
    print(f"  RSS with the model loaded, before the export: {base:.2f} GB")
    for stage, peak in state["log"][1:]:
        print(f"  peak during {stage:32s} {peak:.2f} GB")
    overall = max(p for _, p in state["log"])
    print(f"  overall peak {overall:.2f} GB ({overall - base:+.2f} GB over the loaded model); after the export "
          f"{after:.2f} GB ({after - base:+.2f} GB still held)")
    return 0
