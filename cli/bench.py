"""``comfyui-clipwan bench {clip,wan,axera,export-memory,stream,endless,control,live,weights,serve,label-cache}``: run one
of the benchmarks in ``benchmarks/``.

Each benchmark module ``benchmarks/bench_<name>.py`` defines ``add_arguments(parser)`` and ``run(args) -> int``
and prints its figures as ratios against peers measured in the same run.
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "clip": "CLIP vision encode vs open_clip and transformers (same weights, same dtype)",
    "wan": "causal Wan sampling: time and memory per block, time to first block",
    "axera": "ONNX Runtime vs torch eager latency for exported vision/text towers per family (--family), export time",
    "export-memory": "Axera export of a real-size random-init ViT-H vision tower: peak RSS per stage, RSS held after",
    "stream": "decode per block while sampling vs sample-then-decode: first frame, total time, peak RSS vs length",
    "endless": "an endless stream: time per block and RSS at latent frame 10,000 vs frame 100",
    "weights": "the pack's safetensors reader vs the safetensors library: load time, peak RSS, a truncated file",
    "control": "VACE and video-to-video per block vs plain; peak RSS vs length of a streamed control video",
    "live": "live prompts while streaming: blocks and seconds to take effect, time per block with a change pending",
    "serve": "board-side interrogation service: start-up time and RSS, torch-free path vs torch imported",
    "label-cache": "interrogation over a large vocabulary: requests/s and load time, label cache vs re-encoding",
}


def register(sub) -> None:
    bench = sub.add_parser("bench", help="run a benchmark (prints ratios against peers measured in the same run)")
    which = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, text in BENCHMARKS.items():
        parser = which.add_parser(name, help=text, description=text)
        try:
            module = importlib.import_module(f"..benchmarks.bench_{name.replace('-', '_')}", __package__)
        except ModuleNotFoundError as exc:
            if not exc.name.endswith(f"bench_{name.replace('-', '_')}"):
                raise
            parser.set_defaults(func=lambda args, n=name: _missing(n))
            continue
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


def _missing(name: str) -> int:
    raise RuntimeError(f"benchmark '{name}' is not available in this build (benchmarks/bench_{name}.py missing)")
