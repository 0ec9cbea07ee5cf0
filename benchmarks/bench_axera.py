"""Axera export benchmark (one run): ONNX Runtime vs torch eager latency of the exported towers, per model
family, and export time.

Peers, same weights, same inputs, batch 1, same CPU thread count, per family (``--family clip|siglip|all``):
* vision: torch eager = the pack's torch tower (PyTorch SDPA attention) → image embedding;
          ORT = the exported ``vision.onnx`` + the family's CPU head (CLIP: projection; SigLIP: none) as the
          runtime runs it.
* text:   torch eager = our text tower with PyTorch SDPA + the CPU head; ORT = ``text.onnx`` + the CPU head.
Also: seconds to export each tower (trace + save) and the whole export_clip (checks, calibration, configs).

Models: seeded RANDOM-INIT at real sizes (CLIP: ``--model`` ViT-B/32 + its text tower; SigLIP:
google/siglip-base-patch16-224's sizes, 12+12 layers, 32000-token vocabulary). SigLIP's tokenizer cannot be
downloaded here: a small SentencePiece model is trained on the built-in prompts (timing does not depend on it).

Chinese-CLIP (``cnclip``: ViT-B/16 + RoBERTa-wwm-ext-base sizes) and Jina-CLIP v2 (``jinaclip``: EVA02-L/14 at
512 px + Jina-XLM-RoBERTa) run at their real widths with the depth cut to ``--vision-layers``/``--text-layers``
(default 2 each: per-layer cost at the real width); their torch peer is our plain-op tower module. Their
tokenizers get a SYNTHETIC vocabulary of the real file format (timings only); Jina's text table is cut to 32000
rows (a Gather reads one row per token: same timing; the real 250002-row table is 1 GB in fp32).

Usage: ``comfyui-clipwan bench axera [--family all] [--iters 20] [--model ViT-B/32] [--vision-layers N]``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

FAMILY_CHOICES = ("clip", "siglip", "cnclip", "jinaclip", "all")
ALL_FAMILIES = ("clip", "siglip", "cnclip", "jinaclip")


def add_arguments(parser) -> None:
    parser.add_argument("--family", default="clip", choices=FAMILY_CHOICES,
                        help="which model families to export and time (default clip; all = every family)")
    parser.add_argument("--iters", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model", default="ViT-B/32", help="vision preset of the default CLIP model (ViT-B/32)")
    parser.add_argument("--vision-layers", type=int, default=None,
                        help="reduce depth for quick runs (CLIP: vision; SigLIP: both towers)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both peers (0 = torch's current)")
    parser.add_argument("--out", default=None, help="keep the exports in this folder (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-layers", type=int, default=None, help="text depth of cnclip/jinaclip (default 2)")


def _median_ms(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _siglip_tokenizer(folder: str) -> str:
    """A SentencePiece model with SigLIP's special pieces, trained on the built-in prompts (a stand-in)."""
    import sentencepiece

    from ..axera_export.pipeline import DEFAULT_PROMPTS

    os.makedirs(folder, exist_ok=True)
    text = os.path.join(folder, "prompts.txt")
    with open(text, "w") as f:
        f.write("\n".join(list(DEFAULT_PROMPTS) * 4))
    sentencepiece.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(folder, "spiece"), vocab_size=64, hard_vocab_limit=False,
                                             pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                             eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    return os.path.join(folder, "spiece.model")


def _synthetic_tokenizer(family: str, folder: str, vocab_size: int) -> str:
    """A tokenizer file of the family's real format over a synthetic vocabulary (timings only)."""
    os.makedirs(folder, exist_ok=True)
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


def _source(name: str, args, tmp: str):
    from ..axera_export import default_source
    from ..axera_export.families import get_family

    if name == "clip":
        return default_source(seed=args.seed, vision_name=args.model, vision_layers=args.vision_layers)
    if name in ("cnclip", "jinaclip"):
        sizes = {"vision_layers": args.vision_layers or 2, "text_layers": args.text_layers or 2}
        if name == "jinaclip":
            sizes["vocab_size"] = 32000  # see the module doc
        tok = _synthetic_tokenizer(name, os.path.join(tmp, f"tok_{name}"), sizes.get("vocab_size", 21128))
        return get_family(name).default_source(args.seed, tokenizer=tok, **sizes)
    sizes = {} if args.vision_layers is None else {"layers": args.vision_layers}
    return get_family(name).default_source(args.seed, tokenizer=_siglip_tokenizer(os.path.join(tmp, "tok")), **sizes)


def bench_family(name: str, args, tmp: str, threads: int) -> dict:
    from ..axera_export import export_clip
    from ..axera_export.families import get_family
    from ..axera_export.onnx_export import TEXT_INPUT, VISION_INPUT, ort_session

    family = get_family(name)
    source = _source(name, args, tmp)
    print(f"[{name}] {source.description}")
    folder = os.path.join(args.out or tmp, name)
    t0 = time.perf_counter()
    result = export_clip(source, folder, parts="vision,text", run_build=False)
    export_total = time.perf_counter() - t0
    parts = result.manifest["parts"]
    heads = dict(np.load(os.path.join(folder, "cpu_heads.npz")))

    vision = source.vision
    size = vision.config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    vsess = ort_session(os.path.join(folder, parts["vision"]["onnx"]), threads)
    torch_vision = _median_ms(lambda: vision.encode(pixels).image_embeds, args.iters, args.warmup)
    ort_vision = _median_ms(lambda: family.vision_head(vsess.run(None, {VISION_INPUT: pixels.numpy()})[0], heads),
                            args.iters, args.warmup)

    ids = family.export_tokenizer(source)(["a photo of a dog running on the beach at sunset"])
    ids_t = torch.from_numpy(ids)
    tower = source.text.build()

    def torch_text():
        with torch.inference_mode():
            return family.text_head(tower(ids_t).numpy(), ids, heads)

    tsess = ort_session(os.path.join(folder, parts["text"]["onnx"]), threads)
    torch_text_ms = _median_ms(torch_text, args.iters, args.warmup)
    ort_text = _median_ms(lambda: family.text_head(tsess.run(None, {TEXT_INPUT: ids})[0], ids, heads),
                          args.iters, args.warmup)
    return {"family": name, "rows": [("vision", torch_vision, ort_vision), ("text", torch_text_ms, ort_text)],
            "parts": parts, "export_total": export_total}


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    names = ALL_FAMILIES if args.family == "all" else (args.family,)
    print(f"bench axera: {', '.join(names)} (seeded RANDOM-INIT, real architecture), batch 1, {threads} CPU threads "
          f"for torch and ONNX Runtime, median of {args.iters} runs")
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_family(name, args, tmp, threads) for name in names]
    print(f"{'family':8s} {'tower':8s} {'torch eager ms':>15s} {'ORT ms':>10s} {'ORT/torch':>10s}  target <= 0.80")
    for r in results:
        for tower, t, o in r["rows"]:
            print(f"{r['family']:8s} {tower:8s} {t:15.2f} {o:10.2f} {o / t:10.2f}  {'OK' if o / t <= 0.8 else 'MISSED'}")
    for r in results:
        parts = r["parts"]
        print(f"[{r['family']}] export: vision trace+save {parts['vision']['export_seconds']:.1f} s, text "
              f"{parts['text']['export_seconds']:.1f} s; whole export_clip (checks, calibration, configs) "
              f"{r['export_total']:.1f} s; parity max|diff|: vision "
              f"{parts['vision']['checks']['parity']['max_abs_diff']:.1e}, text "
              f"{parts['text']['checks']['parity']['max_abs_diff']:.1e}")
    return 0
