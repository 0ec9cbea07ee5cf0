"""``comfyui-clipwan serve`` and ``comfyui-clipwan label-cache``: the board-side interrogation service.

Torch-free: this module and everything it imports on the serving path use numpy + onnxruntime/axengine + the
numpy tokenizer only (``cli/__init__`` parses these commands without loading the other command modules).
"""

from __future__ import annotations

import logging
import os
import sys
import time

LIGHT_COMMANDS = ("serve", "label-cache")  # parsed without importing the torch-based command modules


def _add_model_arguments(p) -> None:
    from ..axera_export.providers import BACKENDS
    from ..axera_export.vocabulary import DEFAULT_TEMPLATE

    p.add_argument("--export", required=True, help="export folder (written by export-axera: manifest.json, "
                                                    "vision/text .onnx or .axmodel)")
    p.add_argument("--labels", default=None,
                   help="vocabulary: a text file (one label per line), 'imagenet-21k' (ImageNet-21k's 20,101 class "
                        "names, read from timm's data files), or omit for the 36 built-in labels")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template; {label} or {} is the label")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: .axmodel on the NPU provider pyaxengine offers (board or AXCL card), else ONNX "
                        "Runtime; axengine: board NPU; axcl: PCIe/M.2 card; onnxruntime: the .onnx on the CPU")


def register(sub) -> None:
    from ..axera_export.interrogate import DEFAULT_THRESHOLD, DEFAULT_TOP_K, SCORES
    from ..axera_export.serve import DEFAULT_HOST, DEFAULT_PORT
    from ..axera_export.service import DEFAULT_MAX_QUEUE

    p = sub.add_parser("serve", help="HTTP interrogation service on an exported CLIP (A1111 /sdapi/v1/interrogate "
                                     "and /sdapi/v1/interrogate/structured), no ComfyUI, no torch",
                       description="Serves POST /sdapi/v1/interrogate (Automatic1111's request; caption + scored "
                                   "tags) and POST /sdapi/v1/interrogate/structured (categories → winner + "
                                   "confidence) on an export folder. Loopback only unless --host says otherwise.")
    _add_model_arguments(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"interface (default {DEFAULT_HOST}: this machine only; "
                                                        f"0.0.0.0 exposes the unauthenticated API to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}, A1111's)")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"tags scoring at least this (default {DEFAULT_THRESHOLD} for softmax/sigmoid; 0.2 suits "
                        f"cosine)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"at most this many tags (default "
                                                                    f"{DEFAULT_TOP_K})")
    p.add_argument("--score", default=None, choices=SCORES,
                   help="softmax: probability over the vocabulary (CLIP's rule); sigmoid: per-label probability "
                        "(SigLIP's); cosine: raw similarity (default: the exported model's own rule)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests that may wait for the accelerator; more get 503 (default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--no-cache", action="store_true", help="encode the vocabulary in memory, write no cache file")
    p.add_argument("--preload-torch", action="store_true",
                   help="import torch first (only to measure what torch costs on this path; never needed)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.set_defaults(func=run_serve)

    c = sub.add_parser("label-cache", help="encode a label list once into the cache file beside an exported model",
                       description="Encodes every label with the template through the export's text tower and "
                                   "writes <export>/label_cache/<list>.<engine>.npz (checked against the model by "
                                   "hash); serve loads it in milliseconds.")
    _add_model_arguments(c)
    c.set_defaults(func=run_label_cache)


def _rss_mib() -> float:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource  # Unix only
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _service(args):
    from ..axera_export.interrogate import DEFAULT_THRESHOLD, Defaults
    from ..axera_export.service import InterrogationService, ServiceConfig
    from ..axera_export.vocabulary import resolve_labels

    if not os.path.isdir(args.export):
        raise FileNotFoundError(f"--export '{args.export}' is not a folder (give the folder export-axera wrote)")
    labels, name = resolve_labels(args.labels)
    score = getattr(args, "score", None)
    threshold = getattr(args, "threshold", None)
    defaults = Defaults(threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                        top_k=getattr(args, "top_k", 10), score=score)
    config = ServiceConfig(labels=labels, labels_name=name, template=args.template, defaults=defaults,
                           max_queue=getattr(args, "max_queue", 4), backend=args.backend,
                           cache=not getattr(args, "no_cache", False))
    folder = os.path.abspath(args.export)
    return InterrogationService(lambda: folder, config)


def _progress(done: int, total: int) -> None:
    print(f"  encoded {done}/{total} labels", file=sys.stderr, flush=True)


def run_label_cache(args) -> int:
    service = _service(args)
    info = service.prepare(progress=_progress)
    v = info["vocabulary"]
    print(f"label cache: {v['count']} labels, {v['status']}, {v['seconds']:.2f} s → {v.get('path')}")
    print(f"text tower ran on {info['backend'].get('text')}")
    return 0


def run_serve(args) -> int:
    t0 = time.perf_counter()
    if args.preload_torch:
        import torch  # noqa: F401 — measurement only
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(message)s")
    from ..axera_export.serve import Server

    service = _service(args)
    info = service.prepare(progress=_progress)
    server = Server(service, args.host, args.port)
    ready = time.perf_counter() - t0
    vocab = info["vocabulary"]
    print(f"serving {info['folder']} on {server.url} ({', '.join(f'{k}: {v}' for k, v in info['backend'].items())})"
          + (" — RANDOM-INIT model: tags are meaningless" if info["random_init"] else ""), flush=True)
    print(f"vocabulary: {vocab['count']} labels, {vocab['status']} in {vocab['seconds']:.3f} s; ready in "
          f"{ready:.2f} s, RSS {_rss_mib():.0f} MiB, torch imported: {'torch' in sys.modules}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
