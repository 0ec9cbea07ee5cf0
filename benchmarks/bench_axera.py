"""Axera export benchmark (one run): ONNX Runtime vs torch eager latency of the exported CLIP, export time.

Peers, same weights, same inputs, batch 1, same CPU thread count:
* vision: torch eager = the pack's ``clip_vision`` model (PyTorch SDPA attention) → image_embeds;
          ORT = the exported ``vision.onnx`` + the CPU head (projection) exactly as the runtime runs it.
* text:   torch eager = our text tower with PyTorch SDPA + CPU head; ORT = ``text.onnx`` + CPU head.
Also: seconds to export each tower (trace + save) and the whole export_clip (checks, calibration, configs).

Usage: ``comfyui-clipwan bench axera [--iters 20] [--model ViT-B/32] [--vision-layers N]``.

``--family cnclip|jinaclip``: the same comparison for a seeded random-init Chinese-CLIP (ViT-B/16 + RoBERTa-wwm-
ext-base sizes) or Jina-CLIP v2 (EVA02-L/14 at 512 px + Jina-XLM-RoBERTa, real widths), depth reduced with
``--vision-layers``/``--text-layers`` (default 2 each: per-layer cost at the real width). Torch eager = our tower
module (the family's definition, checked against transformers/timm in the tests) + the CPU head; ORT = the
exported graph + the same CPU head. Their tokenizers get a SYNTHETIC vocabulary of the real format (timings
only: the ids are what matter to the graphs).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--iters", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model", default="ViT-B/32", help="vision preset of the default model (ViT-B/32)")
    parser.add_argument("--vision-layers", type=int, default=None, help="reduce vision depth (quick runs)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both peers (0 = torch's current)")
    parser.add_argument("--out", default=None, help="keep the export in this folder (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="clip", choices=["clip", "cnclip", "jinaclip"],
                        help="model family (cnclip/jinaclip: random-init at the real widths, reduced depth)")
    parser.add_argument("--text-layers", type=int, default=None, help="text depth of --family cnclip/jinaclip")


def _median_ms(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _synthetic_tokenizer(family: str, folder: str, vocab_size: int) -> str:
    """A tokenizer file of the family's real format over a synthetic vocabulary (timings only)."""
    if family == "cnclip":
        path = os.path.join(folder, "vocab.txt")
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        chars = [chr(0x4E00 + i) for i in range(vocab_size - len(specials))]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(specials + chars) + "\n")
        return path
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["dog", "running", "on", "the", "beach", "at", "sunset", "a", "photo", "of"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -2.0) for w in words] + \
        [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    return path


def run_family(args) -> int:
    """ORT vs torch eager for a non-CLIP family (see the module doc)."""
    import numpy as np

    from ..axera_export import export_clip, families
    from ..axera_export.onnx_export import TEXT_INPUT, VISION_INPUT, ort_session

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    family = families.get_family(args.family)
    depth = {"vision_layers": args.vision_layers or 2, "text_layers": args.text_layers or 2}
    with tempfile.TemporaryDirectory() as tmp:
        if args.family == "jinaclip":
            # XLM-R's 250002-row table is 1 GB in fp32; the Gather costs one row per token whatever its size,
            # so the timing is the same with a 32000-row table (said in the header line)
            depth["vocab_size"] = 32000
        tok = _synthetic_tokenizer(args.family, tmp, depth.get("vocab_size", 21128))
        source = family.default_source(seed=args.seed, tokenizer=tok, **depth)
        vocab_note = f", vocabulary {depth['vocab_size']} rows" if "vocab_size" in depth else ""
        print(f"bench axera --family {args.family}: {source.description}{vocab_note}; batch 1, {threads} CPU threads for "
              f"torch and ONNX Runtime, median of {args.iters} runs")
        folder = args.out or os.path.join(tmp, "export")
        t0 = time.perf_counter()
        result = export_clip(source, folder, parts="vision,text", run_build=False)
        export_total = time.perf_counter() - t0
        parts = result.manifest["parts"]
        heads = dict(np.load(os.path.join(folder, "cpu_heads.npz")))
        size = source.vision.config.image_size
        pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        vsess = ort_session(os.path.join(folder, parts["vision"]["onnx"]), threads)
        torch_vision = _median_ms(lambda: source.vision.encode(pixels).image_embeds, args.iters, args.warmup)
        ort_vision = _median_ms(lambda: family.vision_head(vsess.run(None, {VISION_INPUT: pixels.numpy()})[0],
                                                           heads), args.iters, args.warmup)
        tokenizer = family.export_tokenizer(source)
        ids = tokenizer(["a photo of a dog running on the beach at sunset"])
        ids_t = torch.from_numpy(ids)
        tower = source.text.build()

        def torch_text():
            with torch.inference_mode():
                return family.text_head(tower(ids_t).numpy(), ids, heads)

        tsess = ort_session(os.path.join(folder, parts["text"]["onnx"]), threads)
        torch_text_ms = _median_ms(torch_text, args.iters, args.warmup)
        ort_text = _median_ms(lambda: family.text_head(tsess.run(None, {TEXT_INPUT: ids})[0], ids, heads),
                              args.iters, args.warmup)
    _print_rows([("vision", torch_vision, ort_vision), ("text", torch_text_ms, ort_text)], parts, export_total)
    return 0


def _print_rows(rows, parts, export_total) -> None:
    print(f"{'tower':8s} {'torch eager ms':>15s} {'ORT ms':>10s} {'ORT/torch':>10s}  target <= 0.80")
    for name, t, o in rows:
        print(f"{name:8s} {t:15.2f} {o:10.2f} {o / t:10.2f}  {'OK' if o / t <= 0.8 else 'MISSED'}")
    print(f"export: vision trace+save {parts['vision']['export_seconds']:.1f} s, text "
          f"{parts['text']['export_seconds']:.1f} s; whole export_clip (checks, calibration, configs) "
          f"{export_total:.1f} s")
    print(f"parity max|diff|: vision {parts['vision']['checks']['parity']['max_abs_diff']:.1e}, "
          f"text {parts['text']['checks']['parity']['max_abs_diff']:.1e}")


def run(args) -> int:
    if getattr(args, "family", "clip") != "clip":
        return run_family(args)
    from ..axera_export import default_source, export_clip
    from ..axera_export.onnx_export import TEXT_INPUT, VISION_INPUT, ort_session
    from ..axera_export.heads import text_head, vision_head
    from ..axera_export.tokenizer import tokenize

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"bench axera: default {args.model} CLIP (seeded RANDOM-INIT, real architecture), batch 1, "
          f"{threads} CPU threads for torch and ONNX Runtime, median of {args.iters} runs")
    source = default_source(seed=args.seed, vision_name=args.model, vision_layers=args.vision_layers)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or os.path.join(tmp, "export")
        t0 = time.perf_counter()
        result = export_clip(source, folder, parts="vision,text", run_build=False)
        export_total = time.perf_counter() - t0
        parts = result.manifest["parts"]

        cv = source.vision
        size = cv.config.image_size
        pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        vproj = cv.state_dict_hf()["visual_projection.weight"].numpy()
        vsess = ort_session(os.path.join(folder, parts["vision"]["onnx"]), threads)
        torch_vision = _median_ms(lambda: cv.encode(pixels).image_embeds, args.iters, args.warmup)
        ort_vision = _median_ms(lambda: vision_head(vsess.run(None, {VISION_INPUT: pixels.numpy()})[0], vproj),
                                args.iters, args.warmup)

        ids = tokenize(["a photo of a dog running on the beach at sunset"])
        ids_t = torch.from_numpy(ids)
        tower = source.text.build()
        tproj = source.text.projection.numpy()

        def torch_text():
            with torch.inference_mode():
                return text_head(tower(ids_t).numpy(), ids, tproj)

        tsess = ort_session(os.path.join(folder, parts["text"]["onnx"]), threads)
        torch_text_ms = _median_ms(torch_text, args.iters, args.warmup)
        ort_text = _median_ms(lambda: text_head(tsess.run(None, {TEXT_INPUT: ids})[0], ids, tproj),
                              args.iters, args.warmup)

    _print_rows([("vision", torch_vision, ort_vision), ("text", torch_text_ms, ort_text)], parts, export_total)
    return 0
