"""``comfyui-clipwan export-axera``: CLIP → ONNX → Pulsar2 build inputs [→ .axmodel], and the demo step."""

from __future__ import annotations

import os
import sys

DEFAULT = "default"


def register(sub) -> None:
    p = sub.add_parser(
        "export-axera",
        help="export CLIP (vision/text) to ONNX + Pulsar2 build inputs for the Axera AX650N NPU",
        description="Exports the towers as separate static ONNX graphs, checks them (onnx.checker, AX650 op list, "
                    "ONNX Runtime vs torch parity), writes calibration tars, Pulsar2 configs and build_axmodel.sh, "
                    "and runs pulsar2 when it is on PATH. --source default = a seeded RANDOM-INIT ViT-B/32 CLIP.",
    )
    p.add_argument("--source", default=DEFAULT,
                   help="full CLIP, SigLIP, Chinese-CLIP or Jina-CLIP v2 checkpoint (HF CLIPModel / SiglipModel / "
                        "ChineseCLIPModel, open_clip, OFA-Sys cn_clip .pt, jinaai/jina-clip-v2 with its config.json; "
                        ".safetensors/.pth/.bin) or 'default'")
    p.add_argument("--tokenizer", default=None,
                   help="SigLIP: spiece.model / SigLIP2: tokenizer.json / Chinese-CLIP: vocab.txt / Jina-CLIP: "
                        "tokenizer.json, or their folder (default: beside --source)")
    p.add_argument("--parts", default="vision,text", help="vision,text | vision | text (default: both)")
    p.add_argument("--calib-images", default=None, help="folder of calibration images (32+ recommended)")
    p.add_argument("--calib-prompts", default=None, help="text file, one calibration prompt per line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--npu-mode", default="NPU3", choices=["NPU1", "NPU2", "NPU3", "NPU4"],
                   help="NPU cores the model may use (AX650: NPU1-3; AX620E/AX630C: NPU1-2; AX8860: NPU1/2/4)")
    p.add_argument("--target", default="AX650",
                   help="Pulsar2 target_hardware or chip: AX650 (AX650N boards and M.2 cards), AX620E (AX630C), "
                        "AX8860 (Pulsar2 7.x only), AX615, AX637, M76H, M57 (default AX650)")
    p.add_argument("--opset", type=int, default=14)
    p.add_argument("--precision", default="u16", choices=["u16", "mixed"])
    p.add_argument("--crop", default=None, choices=["center", "none"],
                   help="image preprocessing (center = ComfyUI CLIPVisionEncode, none = Wan's squash; default: "
                        "none for --vision-output wan and SigLIP, else center)")
    p.add_argument("--vision-output", default="embeddings", choices=["embeddings", "wan"],
                   help="embeddings: CLS → projection (zero-shot, interrogation); wan: Wan 2.1's i2v features "
                        "(hidden states after all blocks but the last, [1,257,1280] for ViT-H/14)")
    p.add_argument("--no-build", action="store_true", help="do not run pulsar2 even if it is on PATH")
    p.add_argument("--seed", type=int, default=0, help="seed of the default model")
    p.set_defaults(func=run_export)


def _source(args, parts):
    from ..axera_export import default_source, load_source

    if args.source == DEFAULT:
        print(f"source: embedded default — a seeded random-init ViT-B/32 CLIP (seed {args.seed}), NOT pretrained")
        return default_source(seed=args.seed)
    if not os.path.isfile(args.source):
        raise FileNotFoundError(f"--source '{args.source}' does not exist (give a CLIP checkpoint file or 'default')")
    return load_source(args.source, parts=parts, tokenizer=getattr(args, "tokenizer", None))


def run_export(args) -> int:
    from ..axera_export import export_clip, parse_parts
    from ..axera_export.calibration import load_image_folder

    from ..axera_export.pipeline import check_export_target

    parts = parse_parts(args.parts)
    check_export_target(os.path.abspath(args.out))  # before minutes of loading and exporting
    images = load_image_folder(args.calib_images, note=lambda msg: print(f"note: {msg}", file=sys.stderr)) \
        if args.calib_images else None
    prompts = None
    if args.calib_prompts:
        if not os.path.isfile(args.calib_prompts):
            raise FileNotFoundError(f"--calib-prompts '{args.calib_prompts}' does not exist")
        with open(args.calib_prompts) as f:
            prompts = [line.strip() for line in f if line.strip()]
    result = export_clip(_source(args, parts), args.out, parts=parts, calib_images=images, prompts=prompts,
                         npu_mode=args.npu_mode, opset=args.opset,
                         crop=args.crop or ("none" if args.vision_output == "wan" else None),
                         precision=args.precision, target=args.target, run_build=not args.no_build, progress=print,
                         vision_output=args.vision_output)
    print(result.report)
    return 0 if result.ok else 1


def demo_step(args, out_dir: str) -> dict:
    """Export the default ViT-B/32 (vision + text) and classify a synthetic image with the ONNX runtime."""
    import torch

    from ..axera_export import ClipRuntime, default_source, export_clip

    seed = int(getattr(args, "seed", 0))
    print("axera: exporting the EMBEDDED DEFAULT CLIP — a seeded random-init ViT-B/32 (real architecture, no "
          "pretrained weights) — to ONNX + Pulsar2 inputs, then zero-shot on a synthetic image with ONNX Runtime.")
    folder = os.path.join(out_dir, "axera")
    result = export_clip(default_source(seed=seed), folder, parts="vision,text", progress=print)
    print(result.report)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    image = torch.stack([xx, yy, (xx + yy) / 2], dim=-1)[None] * 0.8 + 0.2 * torch.rand(1, 256, 256, 3, generator=g)
    labels = ["cat", "dog", "car", "landscape", "abstract gradient"]
    runtime = ClipRuntime(folder, backend="onnxruntime")
    ranked = runtime.zero_shot(image, labels)[0]
    print("axera: zero-shot on a synthetic gradient (random-init model, so the ranking is meaningless): "
          + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    return {"folder": folder, "random_init": True, "checks_ok": result.ok,
            "built_axmodel": [p for p, i in result.manifest["parts"].items() if i.get("axmodel")],
            "zero_shot": {label: round(p, 4) for label, p in ranked}, "backends": runtime.backends}
