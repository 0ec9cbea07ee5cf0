"""``comfyui-clipwan encode``: CLIP vision features for Wan 2.1 i2v, written to a .safetensors file."""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from ..clip_vision import (CROP_MODES, DTYPE_NAMES, MULTI_IMAGE_MODES, ClipVisionOutput,
                           combine_images, default_clip_vision, load_clip_vision)
from ..images import read_image as _read_image
from ..outputs import publish
from ..wan.model.features import check_clip_features

DEFAULT_NOTE = "embedded default: seeded random-init ViT-H/14 of the real architecture (not pretrained)"


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode images into Wan 2.1 i2v CLIP features (.safetensors)",
                       description="Encodes images with a CLIP vision tower (any supported layout) and writes "
                                   "penultimate_hidden_states (Wan's clip_fea), last_hidden_state and image_embeds.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size; RGBA/grayscale accepted)")
    p.add_argument("--weights", help="CLIP vision file (Wan .pth, OpenCLIP, HF or ComfyUI safetensors); without "
                                     "it the embedded default is used: a seeded random-init ViT-H/14")
    p.add_argument("--crop", choices=CROP_MODES, default="center",
                   help="center = ComfyUI's CLIPVisionEncode; none = Wan's original squash (default: center)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="weight precision (default: fp32)")
    p.add_argument("--multi-image", choices=MULTI_IMAGE_MODES, default="per_image",
                   help="per_image [B,257,1280] | average [1,257,1280] | concat [1,B*257,1280]")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedded default model (no --weights)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run_encode)


def read_image(path: str) -> torch.Tensor:
    """An image file → ComfyUI IMAGE [1,H,W,3] in [0,1] through the pack's one image reader (images.py)."""
    return _read_image(path, note=lambda msg: print(f"note: {msg}", file=sys.stderr))


def encode_images(model, images, crop: str, multi_image: str, source: str) -> ClipVisionOutput:
    """Encode a list of [1,H,W,C] images of any sizes (each preprocessed alone), check, then combine them."""
    outs = [model.encode_image(img, crop=crop) for img in images]
    cat = lambda name: None if getattr(outs[0], name) is None else torch.cat([getattr(o, name) for o in outs])  # noqa: E731
    joined = ClipVisionOutput(cat("last_hidden_state"), cat("penultimate_hidden_states"), cat("image_embeds"),
                              None, [s for o in outs for s in o.image_sizes])
    check_clip_features(joined.penultimate_hidden_states, source)
    return combine_images(joined, multi_image)


def check_output_file(path: str) -> None:
    """Refuse an unusable output path before any work is done (not after minutes of encoding)."""
    if os.path.isdir(path):
        raise ValueError(f"--out '{path}' is a folder; give a file name such as "
                         f"'{os.path.join(path, 'features.safetensors')}'")
    folder = os.path.dirname(os.path.abspath(path))
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out '{path}': '{parent}' is a file, so no folder can be made there; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"--out '{path}': no permission to write there; choose a folder you can write to")


def write_features(path: str, out: ClipVisionOutput, metadata: dict) -> dict:
    import safetensors.torch

    tensors = {name: getattr(out, name).contiguous() for name in
               ("penultimate_hidden_states", "last_hidden_state", "image_embeds") if getattr(out, name) is not None}
    check_output_file(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".partial"
    try:
        safetensors.torch.save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()})
        publish(tmp, path)  # never a half-written file under the final name; the user's file mode, not 0600
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # nor a *.partial beside it
    return {k: list(v.shape) for k, v in tensors.items()}


def run_encode(args) -> int:
    check_output_file(args.out)
    images = [read_image(p) for p in args.images]
    t0 = time.perf_counter()
    if args.weights:
        model = load_clip_vision(args.weights, dtype=args.dtype)
        source = model.source
    else:
        print(f"no --weights: using the {DEFAULT_NOTE}, seed {args.seed}", flush=True)
        model = default_clip_vision(seed=args.seed, dtype=args.dtype)
        source = f"{DEFAULT_NOTE}, seed {args.seed}"
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = encode_images(model, images, args.crop, args.multi_image, source)
    encode_s = time.perf_counter() - t0
    meta = {"source": source, "model": model.config.name, "layout": model.layout, "dtype": args.dtype,
            "crop": args.crop, "multi_image": args.multi_image, "images": json.dumps(list(args.images))}
    shapes = write_features(args.out, out, meta)
    print(f"{model.config.name} from {source}: loaded in {load_s:.2f} s, encoded {len(images)} image(s) in "
          f"{encode_s:.2f} s")
    for name, shape in shapes.items():
        print(f"  {name}: {shape}")
    print(f"wrote {args.out}")
    return 0


def synthetic_image(seed: int = 0, height: int = 480, width: int = 832) -> torch.Tensor:
    """A deterministic test picture [1,H,W,3] (colour gradients, a disc and stripes): no file needed."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(-1, 1).expand(height, width)
    x = torch.linspace(0, 1, width).view(1, -1).expand(height, width)
    disc = (((x - 0.6) * width / height) ** 2 + (y - 0.45) ** 2 < 0.08).float()
    stripes = (torch.sin(40 * x + 10 * y) > 0).float()
    img = torch.stack([0.2 + 0.6 * x + 0.2 * disc, 0.3 + 0.5 * y * (1 - disc), 0.5 * stripes + 0.3 * disc], -1)
    img = img + 0.02 * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1).unsqueeze(0)


def demo_step(args, out_dir: str) -> dict:
    seed = getattr(args, "seed", 0)
    print(f"[clip] encoding a synthetic 832x480 test image with the {DEFAULT_NOTE} (seed {seed})")
    t0 = time.perf_counter()
    model = default_clip_vision(seed=seed)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.encode_image(synthetic_image(seed), crop="center")
    encode_s = time.perf_counter() - t0
    source = f"{DEFAULT_NOTE}, seed {seed}"
    check_clip_features(out.penultimate_hidden_states, source)
    path = os.path.join(out_dir, "clip_features.safetensors")
    shapes = write_features(path, out, {"source": source, "model": model.config.name, "crop": "center",
                                        "images": "synthetic test image (cli.clip.synthetic_image)"})
    print(f"[clip] penultimate_hidden_states {shapes['penultimate_hidden_states']} in {encode_s:.2f} s → {path}")
    return {"file": path, "shapes": shapes, "model_init_seconds": round(load_s, 3),
            "encode_seconds": round(encode_s, 3), "source": source}
