"""``comfyui-clipwan bench serve``: start-up time and memory of the board-side service, with and without torch.

Each start is a fresh ``comfyui-clipwan serve`` process on an export (the default random-init ViT-B/32 unless
``--export`` names one): seconds from process start until ``GET /health`` answers ready, and its resident memory
(VmRSS) after one interrogation. Peers in the same run: the torch-free path as shipped vs the same command with
``--preload-torch`` (torch imported first, as any path through the node modules would). Median of ``--starts``.

Usage: ``comfyui-clipwan bench serve [--starts 3] [--export DIR] [--labels FILE|imagenet-21k]``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def add_arguments(parser) -> None:
    parser.add_argument("--starts", type=int, default=3, help="process starts per peer (median reported)")
    parser.add_argument("--export", default=None, help="export folder (default: export the default ViT-B/32 to a "
                                                       "temp folder first)")
    parser.add_argument("--labels", default=None, help="vocabulary for serve (default: the built-in labels)")
    parser.add_argument("--vision-layers", type=int, default=None, help="reduce the default model (quick runs)")
    parser.add_argument("--text-layers", type=int, default=None, help="reduce the default model (quick runs)")
    parser.add_argument("--seed", type=int, default=0)


def export_default(folder: str, vision_layers=None, text_layers=None, seed: int = 0) -> str:
    """The default random-init ViT-B/32 CLIP (optionally shallower) exported without a Pulsar2 build."""
    import dataclasses

    from ..axera_export import default_source, export_clip
    from ..axera_export.text_model import VIT_B32_TEXT

    text = VIT_B32_TEXT if text_layers is None else dataclasses.replace(VIT_B32_TEXT, layers=text_layers)
    export_clip(default_source(seed=seed, vision_layers=vision_layers, text_config=text), folder,
                parts="vision,text", run_build=False, parity_samples=1)
    return folder


def _png_b64() -> str:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def start_once(folder: str, labels, preload_torch: bool) -> dict:
    """One serve process: seconds to ready, RSS after one request, whether torch was loaded."""
    cmd = [sys.executable, "-m", "comfyui_clipwan", "serve", "--export", folder, "--port", "0",
           "--log-level", "WARNING"]
    if labels:
        cmd += ["--labels", labels]
    if preload_torch:
        cmd.append("--preload-torch")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"serve did not start: {line}{proc.stderr.read()}")
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url + "/health") as r:
            health = json.loads(r.read())
        ready = time.perf_counter() - t0
        body = json.dumps({"image": _png_b64()}).encode()
        req = urllib.request.Request(url + "/sdapi/v1/interrogate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        t1 = time.perf_counter()
        with urllib.request.urlopen(req) as r:
            json.loads(r.read())
        first = time.perf_counter() - t1
        return {"ready_s": ready, "first_request_s": first, "rss_mib": _rss_mib(proc.pid),
                "torch": health["torch_loaded"]}
    finally:
        proc.terminate()
        proc.wait(10)


def run(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.export
        if folder is None:
            print("bench serve: exporting the default ViT-B/32 CLIP (seeded RANDOM-INIT) to a temp folder")
            folder = export_default(os.path.join(tmp, "export"), args.vision_layers, args.text_layers, args.seed)
        start_once(folder, args.labels, False)  # writes the label cache: every measured start loads it
        rows = {}
        for name, preload in (("torch-free (shipped)", False), ("with torch imported", True)):
            runs = [start_once(folder, args.labels, preload) for _ in range(args.starts)]
            rows[name] = {k: statistics.median(r[k] for r in runs) for k in ("ready_s", "first_request_s", "rss_mib")}
            rows[name]["torch"] = runs[0]["torch"]
    print(f"{'serve start':24s} {'ready s':>8s} {'1st request s':>14s} {'RSS MiB':>8s}  torch loaded")
    for name, r in rows.items():
        print(f"{name:24s} {r['ready_s']:8.2f} {r['first_request_s']:14.3f} {r['rss_mib']:8.0f}  {r['torch']}")
    free, heavy = rows["torch-free (shipped)"], rows["with torch imported"]
    print(f"torch costs {heavy['ready_s'] - free['ready_s']:.2f} s of start-up and "
          f"{heavy['rss_mib'] - free['rss_mib']:.0f} MiB of RSS here (median of {args.starts} starts each)")
    return 0
