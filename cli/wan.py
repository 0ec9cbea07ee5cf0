"""``comfyui-clipwan sample``: image -> CLIP features -> block-causal Wan sampling -> latent + animated preview.

Without ``--model``/``--clip`` it runs on the embedded defaults (seeded random-init models of the real
architectures). There is no Wan VAE and no umt5 text encoder in the pack, so:
  * the text context is ``--text-embeds`` (a saved umt5 output) or zeros (an empty prompt stand-in);
  * routes (2)/(3) need the start image's *VAE latent*: give it with ``--image-latent`` (e.g. saved from
    ComfyUI); without it only route (1), CLIP features, conditions on the image (an i2v model then gets
    zero concat channels, exactly what ComfyUI feeds it without a start image);
  * the preview is a latent -> RGB approximation (PCA of the 16 latent channels), not decoded video.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

CLIP_DEMO_LAYERS = 4  # the demo's CLIP ViT-H/14 is cut to 4 of 32 blocks to stay within seconds on a CPU


def register(sub) -> None:
    p = sub.add_parser("sample", help="image -> CLIP features -> block-causal Wan sampling -> latent + preview",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="Wan 2.1 DiT file (.safetensors or Self-Forcing/CausVid/LongLive .pt); "
                                   "default: the embedded random-init i2v model")
    p.add_argument("--entry", default=None, help="checkpoint entry (auto / generator_ema / generator / model); "
                                                "default: the preset's, else auto")
    p.add_argument("--lora", help="LoRA file merged into --model (LongLive's lora.pt)")
    p.add_argument("--lora-strength", type=float, default=1.0)
    p.add_argument("--preset", choices=_preset_names(), help="a released family's settings (docs/wan.md table): "
                   "sets --steps/--shift/warp/--frames-per-block/--sink/--window/--independent-first-frame/"
                   "--guidance and the default --entry")
    p.add_argument("--clip", help="CLIP vision ViT-H/14 file (clip_vision_h.safetensors or Wan's .pth); "
                                  "default: the embedded random-init ViT-H/14 (4 blocks)")
    p.add_argument("--image", help="start image (PNG/JPEG...); default: a synthetic test image")
    p.add_argument("--text-embeds", help=".safetensors with a umt5 text embedding [L,4096] or [1,L,4096]; "
                                         "default: zeros (empty-prompt stand-in)")
    p.add_argument("--negative-embeds", help="negative umt5 embedding (.safetensors), used with --guidance > 1")
    p.add_argument("--image-latent", help=".safetensors with the raw Wan VAE latent [1,16,T,H/8,W/8] (Wan 2.2: "
                                          "[1,48,T,H/16,W/16]) of the "
                                          "start image (routes 2/3); default: none (CLIP route only)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--length", type=int, default=25, help="pixel frames (1 + 4k); latent frames = (length-1)//4+1")
    p.add_argument("--steps", default=None,
                   help="timesteps per block, or a step count such as 4 (evenly spaced from 1000, then warped); "
                        "default 1000,750,500,250 (Wan 2.2 TI2V / LongLive 2.0: 4 UniPC steps)")
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--no-warp", dest="warp", action="store_false",
                   help="feed the timesteps as typed (CausVid, Krea lists) instead of warping them by --shift")
    p.add_argument("--frames-per-block", type=int, default=3)
    p.add_argument("--sink", type=int, default=0, help="attention sink frames")
    p.add_argument("--window", type=int, default=0, help="local attention window in latent frames (0 = none)")
    p.add_argument("--independent-first-frame", action="store_true")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--no-image", action="store_true", help="switch image conditioning off")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="clipwan_out", help="output folder")
    p.set_defaults(func=run_sample)


def _preset_names() -> list:
    from ..wan.presets import preset_names

    return preset_names()


def apply_preset(args) -> None:
    """Overwrite the sampling arguments with the preset's (the table in wan/presets.py)."""
    if not getattr(args, "preset", None):
        return
    from ..wan.presets import get_preset

    p = get_preset(args.preset)
    args.steps, args.shift, args.warp = p.steps, p.shift, p.warp_steps
    args.frames_per_block, args.sink, args.window = p.frames_per_block, p.sink_size, p.local_window
    args.independent_first_frame, args.guidance = p.independent_first_frame, p.guidance_scale
    if getattr(args, "entry", None) is None:
        args.entry = p.checkpoint_entry


def synthetic_image(width: int = 128, height: int = 128) -> torch.Tensor:
    """A deterministic test picture (gradient + disc), IMAGE layout [1, H, W, 3] in 0..1."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    disc = (((x - 0.6) ** 2 + (y - 0.45) ** 2) < 0.05).float()
    return torch.stack([x, y * 0.8 + 0.1 * disc, 0.3 + 0.7 * disc], -1).unsqueeze(0).clamp(0, 1)


def _load_image(path: str) -> torch.Tensor:
    from ..images import read_image

    return read_image(path, note=lambda msg: print(f"note: {msg}", file=sys.stderr))


def _load_tensor(path: str, what: str, dims: int) -> torch.Tensor:
    from ..weights import read_weights

    tensors = read_weights(path, what)  # the one reader: clear errors, NaN/Inf refused naming the tensor
    if len(tensors) != 1 or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ValueError(f"{what} file '{path}' must hold exactly one tensor; it has {sorted(tensors)}.")
    t = next(iter(tensors.values())).float()
    while t.dim() < dims:
        t = t.unsqueeze(0)
    return t


def run_pipeline(args, out_dir: str, log=print) -> dict:
    from ..clip_vision import default_clip_vision, load_clip_vision
    from ..wan import CausalSettings, LatentPreviewer, denormalize, sample_causal
    from ..wan.causal_model import CausalWanModel, default_causal_wan
    from ..wan.checkpoint import resolve_dtype
    from ..wan.inputs import build_sampler_inputs, conditioning
    from ..wan.latent import latent_format, pixel_length_to_latent_frames, save_animation
    from ..wan.sampler import loop_rules_for

    os.makedirs(out_dir, exist_ok=True)
    apply_preset(args)
    if getattr(args, "lora", None) and not args.model:
        raise ValueError("--lora is merged into --model: give the base weights with --model (for LongLive: "
                         "longlive_base.pt).")
    dtype = resolve_dtype(args.dtype)
    t0 = time.perf_counter()
    if args.model:
        model = CausalWanModel.from_file(args.model, dtype=dtype, entry=getattr(args, "entry", None) or "auto",
                                         lora=getattr(args, "lora", None),
                                         lora_strength=getattr(args, "lora_strength", 1.0))
    else:
        model = default_causal_wan(seed=args.seed, dtype=dtype)
    log(f"wan: model {model.config.describe()} — {model.source}")
    image = _load_image(args.image) if args.image else synthetic_image(args.width, args.height)
    log(f"wan: start image {'from ' + args.image if args.image else '(synthetic test picture)'} "
        f"{list(image.shape)}")

    clip_fea = None
    if not args.no_image and not model.config.has_img_emb:
        log("wan: the model is t2v (no img_emb): CLIP features are not used; the image enters only through "
            "--image-latent (route 3)")
    elif not args.no_image:
        clip = load_clip_vision(args.clip) if args.clip else default_clip_vision("ViT-H/14", seed=args.seed,
                                                                                 layers=CLIP_DEMO_LAYERS)
        clip_fea = clip.encode_image(image, crop="center").penultimate_hidden_states
        log(f"wan: CLIP features {list(clip_fea.shape)} — {clip.source if hasattr(clip, 'source') else args.clip}")

    if args.text_embeds:
        text = _load_tensor(args.text_embeds, "text embedding", 3)
        log(f"wan: text context {list(text.shape)} from {args.text_embeds}")
    else:
        text = torch.zeros(1, 512, 4096)
        log("wan: text context = zeros (no umt5 text encoder in the pack; pass --text-embeds for a real prompt)")
    negative = _load_tensor(args.negative_embeds, "negative embedding", 3) if args.negative_embeds else None

    fmt = latent_format(model.config.out_dim)  # Wan 2.1: 16 channels, 1/8; Wan 2.2: 48 channels, 1/16
    if args.width % (2 * fmt.spatial) or args.height % (2 * fmt.spatial):
        raise ValueError(f"--width {args.width} and --height {args.height} must be multiples of "
                         f"{2 * fmt.spatial} for a {fmt.name} model.")
    frames = pixel_length_to_latent_frames(args.length)
    latent = torch.zeros(1, fmt.channels, frames, args.height // fmt.spatial, args.width // fmt.spatial)
    image_latent = mask = None
    if args.image_latent and not args.no_image:
        given = _load_tensor(args.image_latent, "image latent", 5)
        if tuple(given.shape[3:]) != tuple(latent.shape[3:]):
            raise ValueError(f"--image-latent {list(given.shape)} does not match the video latent grid "
                             f"{list(latent.shape[3:])} (--width/--height / {fmt.spatial}).")
        known = min(given.shape[2], frames)
        # frames after the given ones: the latent mean (0 once normalised), marked "to generate" by the mask
        image_latent = denormalize(torch.zeros(1, fmt.channels, frames, *latent.shape[3:]))
        image_latent[:, :, :known] = given[:, :, :known]
        mask = torch.ones(1, 1, frames, *latent.shape[3:])
        mask[:, :, :known] = 0.0
    elif not args.no_image:
        log("wan: route 1 only (CLIP features); routes 2/3 need the image's VAE latent (--image-latent)")
    # The same mapping as the sampler node: a ComfyUI-style CONDITIONING through wan.inputs
    positive = conditioning(text, clip_vision_output=clip_fea, concat_latent_image=image_latent, concat_mask=mask)
    inputs = build_sampler_inputs(model.config, latent, positive, conditioning(negative) if negative is not None
                                  else None, image_conditioning=not args.no_image, report=log)
    if inputs.concat is not None:
        log("wan: route 2 — image latent concatenated to the noise")
    if inputs.first_frames is not None:
        known = inputs.first_frames.shape[2]
        if model.config.generation == "Wan 2.2":
            log(f"wan: route 3 — image latent ({known} frame(s)) clamped as the clean first frame(s) of the "
                f"first block")
        else:
            log(f"wan: route 3 — image latent written into the KV cache as the first {known} frame(s)")

    steps = args.steps or ("4" if model.config.generation == "Wan 2.2" else "1000,750,500,250")
    settings = CausalSettings(steps=steps, shift=args.shift, warp=getattr(args, "warp", True),
                              frames_per_block=args.frames_per_block,
                              sink_size=args.sink, local_window=args.window,
                              independent_first_frame=args.independent_first_frame, guidance_scale=args.guidance)
    settings = loop_rules_for(settings, model.config)  # Wan 2.2 TI2V: LongLive 2.0's UniPC + first-frame clamp
    previewer = LatentPreviewer()
    block_times = []
    t_start = time.perf_counter()

    def on_block(i, n, x0, start):
        block_times.append(time.perf_counter() - t_start)
        log(f"wan: block {i + 1}/{n} (latent frames {start}..{start + x0.shape[2] - 1}) at "
            f"{block_times[-1]:.2f} s")

    z = sample_causal(model, inputs.latent, inputs.text, seed=args.seed, settings=settings,
                      negative_text=inputs.negative_text, clip_fea=inputs.clip_fea, concat=inputs.concat,
                      first_frames=inputs.first_frames, on_block=on_block)
    raw = inputs.to_raw(z)
    from safetensors.torch import save_file

    latent_path = os.path.join(out_dir, "wan_latent.safetensors")
    # ComfyUI's LoadLatent reads the key "latent_tensor"
    save_file({"latent_tensor": raw.contiguous()}, latent_path,
              metadata={"source": model.source, "format": f"raw {fmt.name} VAE latent "
                                                              f"[B,{fmt.channels},T,H/{fmt.spatial},W/{fmt.spatial}]"})
    preview_path = save_animation(previewer.frames(z[0]), os.path.join(out_dir, "wan_preview.webp"))
    log(f"wan: wrote {latent_path} {list(raw.shape)} and {preview_path} (latent->RGB approximation, not decoded)")
    summary = {
        "model": model.source, "config": model.config.describe(), "latent": latent_path,
        "latent_shape": list(raw.shape), "preview": preview_path, "blocks": len(block_times),
        "first_block_s": round(block_times[0], 3), "sampling_s": round(block_times[-1], 3),
        "total_s": round(time.perf_counter() - t0, 3), "image_routes": inputs.image_routes,
        "latent_mean_abs": round(float(raw.abs().mean()), 4),
    }
    with open(os.path.join(out_dir, "wan_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def run_sample(args) -> int:
    run_pipeline(args, args.out)
    return 0


class _DemoArgs:
    """``sample``'s defaults for the demo (embedded models, synthetic image, 7 latent frames)."""

    model = clip = image = text_embeds = negative_embeds = image_latent = None
    width = height = 128
    length = 25
    steps = "1000,750,500,250"
    shift = 5.0
    warp = True
    frames_per_block = 3
    sink = 1
    window = 4
    independent_first_frame = True
    guidance = 1.0
    no_image = False
    dtype = "fp32"


def demo_step(args, out_dir: str) -> dict:
    demo = _DemoArgs()
    demo.seed = int(getattr(args, "seed", 0))
    print("wan: demo on the EMBEDDED DEFAULTS — a seeded random-init Wan 2.1 i2v DiT (real architecture, "
          "small) and a seeded random-init CLIP ViT-H/14 cut to 4 blocks; no pretrained weights, so the video "
          "is noise-like by design. Sink 1 + window 4 frames, first frame independent, 3 frames per block.")
    return run_pipeline(demo, out_dir)
