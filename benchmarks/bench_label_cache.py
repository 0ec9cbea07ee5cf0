"""``comfyui-clipwan bench label-cache``: interrogation over a large vocabulary with the label cache vs without.

One run, one export (the default random-init ViT-B/32 unless ``--export``), ONNX Runtime on the CPU:

* first-time encoding of the vocabulary (every label through the text tower, then the cache file written) vs
  loading that cache file into a fresh service (the check against the model included);
* requests per second through ``InterrogationService.respond`` (decode, preprocess, image tower, scoring)
  with the cached vocabulary vs re-encoding every label per request (what a service without a cache does;
  measured on ``--reencode-requests`` requests, as each takes seconds to minutes).

Usage: ``comfyui-clipwan bench label-cache [--labels imagenet-21k] [--limit 1000] [--requests 20]``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from .bench_serve import _png_b64, export_default


def add_arguments(parser) -> None:
    parser.add_argument("--labels", default="imagenet-21k",
                        help="vocabulary: a label file or imagenet-21k (default; needs timm's data files)")
    parser.add_argument("--limit", type=int, default=1000, help="first N labels of the vocabulary (0 = all)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests with the cache")
    parser.add_argument("--reencode-requests", type=int, default=1, help="timed requests re-encoding the labels")
    parser.add_argument("--export", default=None, help="export folder (default: the default ViT-B/32)")
    parser.add_argument("--vision-layers", type=int, default=None, help="reduce the default model (quick runs)")
    parser.add_argument("--text-layers", type=int, default=None, help="reduce the default model (quick runs)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..axera_export.runtime import ClipRuntime
    from ..axera_export.service import InterrogationService, ServiceConfig
    from ..axera_export.vocabulary import DEFAULT_TEMPLATE, Vocabulary, resolve_labels

    all_labels, name = resolve_labels(args.labels)
    labels = all_labels[:args.limit] if args.limit else all_labels
    body = json.dumps({"image": _png_b64()}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.export
        if folder is None:
            print("bench label-cache: exporting the default ViT-B/32 CLIP (seeded RANDOM-INIT) to a temp folder")
            folder = export_default(os.path.join(tmp, "export"), args.vision_layers, args.text_layers, args.seed)
        config = ServiceConfig(labels=labels, labels_name=f"bench-{name}-{len(labels)}")
        first = InterrogationService(lambda: folder, config)
        info = first.prepare()["vocabulary"]
        encode_s = info["seconds"]
        if not info["status"].startswith("encoded"):
            print(f"note: the cache existed already ({info['path']}); first-time encoding measured anew below")
            t0 = time.perf_counter()
            Vocabulary.encode(ClipRuntime(folder), labels, DEFAULT_TEMPLATE)
            encode_s = time.perf_counter() - t0
        size_mib = os.path.getsize(info["path"]) / 2 ** 20
        loads = []
        for _ in range(5):
            service = InterrogationService(lambda: folder, config)
            service.runtimes.get(folder)  # the model itself loads either way: time the vocabulary only
            t0 = time.perf_counter()
            service.prepare()
            loads.append(time.perf_counter() - t0)
        load_s = statistics.median(loads)

        def timed(svc, n):
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                reply = svc.respond("interrogate", body)
                assert reply.status == 200, reply.payload
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        service.respond("interrogate", body)  # warm
        cached_s = timed(service, args.requests)
        nocache = InterrogationService(lambda: folder, ServiceConfig(labels=labels, cache=False))
        nocache.prepare()

        def reencode_once():  # a service without a cache: encode the vocabulary, then answer
            nocache._vocab.clear()
            nocache.runtimes.get(folder)._text_cache = type(nocache.runtimes.get(folder)._text_cache)()
            return nocache.respond("interrogate", body)

        t_re = []
        for _ in range(args.reencode_requests):
            t0 = time.perf_counter()
            assert reencode_once().status == 200
            t_re.append(time.perf_counter() - t0)
        reencode_s = statistics.median(t_re)

    full = _full_scale(vocab_of(service), all_labels) if len(all_labels) > len(labels) else None

    print(f"vocabulary: {len(labels)} labels ({name}), template {DEFAULT_TEMPLATE!r}, cache file {size_mib:.1f} MiB,"
          f" ONNX Runtime on the CPU")
    print(f"first-time encoding + write {encode_s:8.2f} s   cache load + model check {load_s * 1000:8.1f} ms   "
          f"ratio {encode_s / load_s:,.0f}x")
    print(f"requests/s  cached {1 / cached_s:8.2f}   re-encoding labels {1 / reencode_s:8.4f}   "
          f"ratio {reencode_s / cached_s:,.0f}x (goal >= 100x)")
    if full:
        print(f"full vocabulary ({len(all_labels)} labels; cache file of that size, rows tiled from the measured "
              f"ones): cache file {full['mib']:.1f} MiB, load {full['load_ms']:.1f} ms, scoring per request "
              f"{full['rank_ms']:.1f} ms; first-time encoding at the measured rate "
              f"≈ {encode_s / len(labels) * len(all_labels) / 60:.0f} min")
    return 0


def vocab_of(service):
    return next(iter(service._vocab.values()))[1]


def _full_scale(vocab, all_labels) -> dict:
    """Load and scoring time of a cache holding the whole vocabulary: the same file format at full size, its
    rows tiled from the encoded ones (only the times are measured, not the tags)."""
    import numpy as np

    from ..axera_export.interrogate import rank
    from ..axera_export.vocabulary import Vocabulary

    table = np.resize(vocab.embeddings, (len(all_labels), vocab.embeddings.shape[1]))
    big = Vocabulary(all_labels, table, vocab.template, vocab.fingerprint, vocab.files)
    with tempfile.TemporaryDirectory() as tmp:
        path = big.save(os.path.join(tmp, "full.npz"))
        loads = []
        for _ in range(5):
            t0 = time.perf_counter()
            Vocabulary.load(path)
            loads.append(time.perf_counter() - t0)
        mib = os.path.getsize(path) / 2 ** 20
    image = table[0]
    ranks = []
    for _ in range(10):
        t0 = time.perf_counter()
        rank(image, table, all_labels, "softmax", np.log(100.0), 0.25, 10)
        ranks.append(time.perf_counter() - t0)
    return {"mib": mib, "load_ms": statistics.median(loads) * 1000, "rank_ms": statistics.median(ranks) * 1000}
