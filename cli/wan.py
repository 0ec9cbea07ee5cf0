"""``comfyui-clipwan sample``: prompt + image -> block-causal Wan sampling -> a video file (or a latent).

Without ``--model``/``--clip`` it runs on the embedded defaults (seeded random-init models of the real
architectures). The text context is ``--prompt`` through the umt5-xxl encoder (``--text-encoder`` +
``--tokenizer``), ``--text-embeds`` (a saved umt5 output) or zeros (an empty-prompt stand-in). Routes (2)/(3)
take the start image's VAE latent: encoded by ``--vae`` (as WanImageToVideo does) or given with
``--image-latent``; without either only route (1), CLIP features, conditions on the image. With ``--video``
each block is decoded (``--vae``, or the tiny ``--tiny-vae``) and appended to the file as soon as it is final,
and the whole latent is not kept (``--save-latent`` keeps it); without it the output is the latent and a
latent -> RGB approximation (PCA of the latent channels), not decoded video.
"""

from __future__ import annotations

import os
import sys
import time

import torch

SUMMARY = "wan_summary.json"
CLIP_DEMO_LAYERS = 4  # the demo's CLIP ViT-H/14 is cut to 4 of 32 blocks to stay within seconds on a CPU


def register(sub) -> None:
    p = sub.add_parser("sample", help="image -> CLIP features -> block-causal Wan sampling -> latent + preview",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="Wan 2.1 DiT file (.safetensors or Self-Forcing/CausVid/LongLive .pt); "
                                   "default: the embedded random-init i2v model")
    p.add_argument("--entry", default=None, choices=ENTRIES,
                   help="checkpoint entry (auto / generator_ema / generator / model); default: the family's "
                        "entry where the file has it (--family), else auto")
    p.add_argument("--lora", help="LoRA file merged into --model (LongLive's lora.pt)")
    p.add_argument("--lora-strength", type=float, default=1.0)
    p.add_argument("--clip", help="CLIP vision ViT-H/14 file (clip_vision_h.safetensors or Wan's .pth); "
                                  "default: the embedded random-init ViT-H/14 (4 blocks)")
    p.add_argument("--image", help="start image (PNG/JPEG...); default: a synthetic test image")
    p.add_argument("--actions", help="Matrix-Game 2.0 keyboard/mouse actions: a timeline text file ('0-11: W' per "
                                     "line) or the authors' keyboard_condition/mouse_condition .json/.safetensors")
    p.add_argument("--text-embeds", help=".safetensors with a umt5 text embedding [L,4096] or [1,L,4096]; "
                                         "default: zeros (empty-prompt stand-in)")
    p.add_argument("--negative-embeds", help="negative umt5 embedding (.safetensors), used with --guidance-scale > 1")
    p.add_argument("--prompt", help="text prompt, encoded with --text-encoder (umt5-xxl) and --tokenizer")
    p.add_argument("--negative-prompt", help="negative prompt (used with --guidance-scale > 1)")
    p.add_argument("--timeline", help="prompt timeline file: plain text ('0: a fox' / '4: the fox jumps' / '8 blend 3: "
                   "...' / '12 cut: ...' a scene cut), a Daydream Scope timeline JSON, a LongLive/MemFlow interactive "
                   "JSONL (with --switch-frames), LongLive 2.0's per-block prompts ('[0,1,2] ...') or multi-shot "
                   "caption folder, or a saved .timeline.json; each prompt is encoded once with --text-encoder")
    p.add_argument("--switch-frames", help="latent frames where each later prompt of an interactive JSONL starts "
                                           "(their switch_frame_indices, e.g. 40,80,120,160,200)")
    p.add_argument("--timeline-line", type=int, default=1, help="which video (line) of an interactive JSONL (1-based)")
    p.add_argument("--text-encoder", help="umt5-xxl encoder: Wan's models_t5_umt5-xxl-enc-bf16.pth or ComfyUI's "
                                          "umt5_xxl_*.safetensors")
    p.add_argument("--tokenizer", help="umt5-xxl tokenizer: a folder (Wan's google/umt5-xxl), tokenizer.json or "
                                       "spiece.model")
    p.add_argument("--vae", help="Wan 2.1 VAE (Wan2.1_VAE.pth or wan_2.1_vae.safetensors): encodes the start image "
                                 "(routes 2/3) and decodes --video block by block")
    p.add_argument("--tiny-vae", help="taew2_1 tiny decoder (.pth/.safetensors): decode --video with it instead "
                                      "of --vae (much faster, approximate)")
    p.add_argument("--video", help="write the decoded video here while sampling (.mp4 H.264 or .webm VP9); needs "
                                   "--vae or --tiny-vae; the whole latent is then not kept")
    p.add_argument("--scores", action="store_true",
                   help="with --video: CLIP-score the frames as blocks are decoded and write VIDEO.clip_scores"
                        ".{csv,json,png} beside the video (CLIP-T vs --score-timeline or --prompt, CLIP-I vs "
                        "--score-image or the start image, frame consistency)")
    p.add_argument("--score-timeline", metavar="FILE", help="with --scores: 'FRAME: prompt' lines for CLIP-T")
    from .score import add_score_model_arguments

    add_score_model_arguments(p, "score-")
    p.add_argument("--save-latent", action="store_true",
                   help="with --video: also keep and save the whole latent and its preview (memory grows with length)")
    p.add_argument("--image-latent", help=".safetensors with the raw Wan VAE latent [1,16,T,H/8,W/8] (Wan 2.2: "
                                          "[1,48,T,H/16,W/16]) of the "
                                          "start image (routes 2/3); default: none (CLIP route only)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--length", type=int, default=25, help="pixel frames (1 + 4k); latent frames = (length-1)//4+1")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--out", default="clipwan_out", help="output folder")
    # the sampling settings (--family/--preset, --steps, --shift, --warp-steps, --frames-per-block, --sink-size,
    # --local-window, --cache-dtype, --independent-first-frame, --guidance-scale, --image-conditioning, --seed,
    # --fps): declared once in wan/sampling/settings_spec.py, old spellings kept as aliases
    settings_spec().add_cli_options(p)
    p.set_defaults(func=run_sample)


ENTRIES = ("auto", "generator_ema", "generator", "model")


def settings_spec():
    from ..wan.sampling import settings_spec

    return settings_spec


def sample_values(args, log=print) -> dict:
    """The sampling settings of ``args``, all checked before any model is loaded (errors name the flag).

    Explicit flags win over the family's (``--family``/``--preset``) values, and the log says which; what
    neither sets takes its default (``settings_spec``). The values are written back onto ``args`` under their
    setting names (``args.sink_size``, ...). ``--length``/``--width``/``--height`` and the block layout are
    checked here too: the CLI fits a length that is not whole blocks as the node does (a shorter last block)."""
    spec = settings_spec()
    explicit = spec.explicit_cli_values(args)
    values = {s.name: s.widget_default for s in spec.cli_settings()}
    family = explicit.get("family")
    if family not in (None, "custom"):
        from ..wan.sampling.presets import get_preset

        preset = get_preset(family)
        values.update({name: getattr(preset, name) for name in spec.PRESET_WIDGETS})
        given = {k: v for k, v in explicit.items() if k in spec.PRESET_WIDGETS}
        differences = preset.widget_differences({**given, "warp_steps": explicit.get("warp_steps",
                                                                                     preset.warp_steps)})
        if differences:  # an explicit flag wins over the family's value
            flags = [spec.flag_of(d.split(" ", 1)[0]) + " " + d.split(" ", 1)[1] for d in differences]
            log(f"wan: family {family} with the flags as given, which win over the family's values: "
                f"{'; '.join(flags)}")
    values.update(explicit)
    spec.check_values(values, spec.flag_of)
    for flag, value, least in (("--length", args.length, 1), ("--width", args.width, 16),
                               ("--height", args.height, 16)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{flag} {value} must be a whole number >= {least}.")
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value % 16:
            raise ValueError(f"{flag} {value} must be a multiple of 16 (32 for a Wan 2.2 model).")
    from ..wan.vae.latent import pixel_length_to_latent_frames

    run_values = {k: v for k, v in values.items() if spec.get(k).field}
    try:  # the block layout and the window, as the run will fit them
        spec.run_settings(run_values, values["family"], None, pixel_length_to_latent_frames(args.length))
    except ValueError as exc:
        message = spec.with_flags(str(exc))
        raise ValueError(f"--length {args.length}: {message}" if "latent has" in message else message) from None
    for name, value in values.items():
        setattr(args, name, value)
    return values


def _family_entry(values: dict):
    """The checkpoint entry the family's authors load (a preference: a file without it loads as it is)."""
    if values["family"] in (None, "custom"):
        return None
    from ..wan.sampling.presets import get_preset

    return get_preset(values["family"]).checkpoint_entry


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
    from ..outputs import forget_summary
    from ..wan import denormalize, sample_causal
    from ..wan.sampling.budget import check_latent_fits
    from ..wan.model.causal import CausalWanModel, default_causal_wan
    from ..wan.model.checkpoint import resolve_dtype
    from ..wan.conditioning.inputs import build_sampler_inputs, check_image_latent, conditioning
    from ..wan.vae.latent import latent_format, pixel_length_to_latent_frames
    from ..wan.conditioning.image import ImageRoutes, i2v_latents
    from ..wan.vae.wan21 import images_to_pixels

    values = sample_values(args, log)  # every setting checked before any model is loaded
    os.makedirs(out_dir, exist_ok=True)
    forget_summary(os.path.join(out_dir, SUMMARY))  # this run replaces the files the previous summary describes
    if getattr(args, "scores", False) and not getattr(args, "video", None):
        raise ValueError("--scores scores the decoded frames: give --video (and --vae or --tiny-vae) too.")
    if getattr(args, "lora", None) and not args.model:
        raise ValueError("--lora is merged into --model: give the base weights with --model (for LongLive: "
                         "longlive_base.pt).")
    dtype = resolve_dtype(args.dtype)
    t0 = time.perf_counter()
    if args.model:
        model = CausalWanModel.from_file(args.model, dtype=dtype, entry=getattr(args, "entry", None) or "auto",
                                         lora=getattr(args, "lora", None), prefer_entry=_family_entry(values),
                                         lora_strength=getattr(args, "lora_strength", 1.0))
    else:
        model = default_causal_wan(seed=args.seed, dtype=dtype)
    log(f"wan: model {model.config.describe()} — {model.source}")
    args.actions_timeline = _actions(args, model, log)  # checked against the model before anything else runs
    image = _load_image(args.image) if args.image else synthetic_image(args.width, args.height)
    log(f"wan: start image {'from ' + args.image if args.image else '(synthetic test picture)'} "
        f"{list(image.shape)}")

    clip_fea = clip = None
    no_image = not values["image_conditioning"]
    if not no_image and not ImageRoutes(model.config).clip:
        log("wan: the model is t2v (no img_emb): CLIP features are not used; the image enters only through "
            "--image-latent (route 3)")
    elif not no_image:
        clip = load_clip_vision(args.clip) if args.clip else default_clip_vision("ViT-H/14", seed=args.seed,
                                                                                 layers=CLIP_DEMO_LAYERS)
        # Matrix-Game 2.0 stretches its (already centre-cropped) frame to 224x224: crop none
        crop = "none" if model.config.image_context_only else "center"
        clip_fea = clip.encode_image(image, crop=crop).penultimate_hidden_states
        log(f"wan: CLIP features {list(clip_fea.shape)} — {clip.source if hasattr(clip, 'source') else args.clip}")

    text, negative = _text_contexts(args, model, log)
    timeline = _load_timeline(args, model, log)
    vae = _load_vae(args, model, dtype, log)

    fmt = latent_format(model.config.out_dim)  # Wan 2.1: 16 channels, 1/8; Wan 2.2: 48 channels, 1/16
    if args.width % (2 * fmt.spatial) or args.height % (2 * fmt.spatial):
        raise ValueError(f"--width {args.width} and --height {args.height} must be multiples of "
                         f"{2 * fmt.spatial} for a {fmt.name} model.")
    frames = pixel_length_to_latent_frames(args.length)
    check_latent_fits((1, fmt.channels, frames, args.height // fmt.spatial, args.width // fmt.spatial))
    latent = torch.zeros(1, fmt.channels, frames, args.height // fmt.spatial, args.width // fmt.spatial)
    _encode_timeline_images(args, timeline, model, vae, clip, log)  # 'B image: fox.png' lines: with --vae / --clip
    image_latent = mask = None
    if args.image_latent and not no_image:
        given = _load_tensor(args.image_latent, "image latent", 5)
        check_image_latent(given, model.config, f"--image-latent '{args.image_latent}'")
        if tuple(given.shape[3:]) != tuple(latent.shape[3:]):
            raise ValueError(f"--image-latent {list(given.shape)} does not match the video latent grid "
                             f"{list(latent.shape[3:])} (--width/--height / {fmt.spatial}).")
        known = min(given.shape[2], frames)
        # frames after the given ones: the latent mean (0 once normalised), marked "to generate" by the mask
        image_latent = denormalize(torch.zeros(1, fmt.channels, frames, *latent.shape[3:]))
        image_latent[:, :, :known] = given[:, :, :known]
        mask = torch.ones(1, 1, frames, *latent.shape[3:])
        mask[:, :, :known] = 0.0
    elif vae is not None and not no_image and fmt.channels == 16:
        _, image_latent, mask = i2v_latents(args.width, args.height, args.length, 1, image,
                                            lambda pixels: vae.encode(images_to_pixels(pixels)))
        log(f"wan: start image encoded by the VAE into a latent {list(image_latent.shape)}")
    elif not no_image:
        log("wan: route 1 only (CLIP features); routes 2/3 need the image's VAE latent (--vae or --image-latent)")
    # The same mapping as the sampler node: a ComfyUI-style CONDITIONING through wan.conditioning.inputs
    positive = conditioning(text, clip_vision_output=clip_fea, concat_latent_image=image_latent, concat_mask=mask)
    inputs = build_sampler_inputs(model.config, latent, positive, conditioning(negative) if negative is not None
                                  else None, image_conditioning=not no_image, report=log)
    if inputs.concat is not None:
        log("wan: route 2 — image latent concatenated to the noise")
    if inputs.first_frames is not None:
        known = inputs.first_frames.shape[2]
        if model.config.generation == "Wan 2.2":
            log(f"wan: route 3 — image latent ({known} frame(s)) clamped as the clean first frame(s) of the "
                f"first block")
        else:
            log(f"wan: route 3 — image latent written into the KV cache as the first {known} frame(s)")

    # the node's rule: family loop rules, the model generation's rules, the block layout fitted to the length
    run_values = {k: v for k, v in values.items() if settings_spec().get(k).field}
    settings, notes = settings_spec().run_settings(run_values, values["family"], model.config,
                                                   inputs.latent.shape[2])
    for note in notes:
        if not note.startswith("family "):  # the family's differences were logged with the flags
            log(f"wan: {note}")
    if getattr(args, "video", None):
        return _stream_to_video(args, model, inputs, settings, vae, fmt, out_dir, t0, log, image, timeline)
    block_times = []
    t_start = time.perf_counter()

    def on_block(i, n, x0, start):
        block_times.append(time.perf_counter() - t_start)
        log(f"wan: block {i + 1}/{n} (latent frames {start}..{start + x0.shape[2] - 1}) at "
            f"{block_times[-1]:.2f} s")

    z = sample_causal(model, inputs.latent, inputs.text, seed=args.seed, settings=settings,
                      negative_text=inputs.negative_text, clip_fea=inputs.clip_fea, concat=inputs.concat,
                      first_frames=inputs.first_frames, on_block=on_block, actions=args.actions_timeline,
                      timeline=timeline)
    summary = {"model": model.source, "config": model.config.describe(), "blocks": len(block_times),
               "first_block_s": round(block_times[0], 3), "sampling_s": round(block_times[-1], 3)}
    summary.update(_save_latent(z, inputs, model, fmt, out_dir, log))
    summary.update(_save_timeline(timeline, z.shape[2], settings, out_dir, log))
    return _finish(summary, inputs, t0, out_dir)


def _save_latent(z, inputs, model, fmt, out_dir, log) -> dict:
    """The raw latent (ComfyUI's Load Latent format) and its animated latent->RGB preview."""
    from ..outputs import save_safetensors as save_file
    from ..wan import LatentPreviewer
    from ..wan.vae.latent import save_animation

    raw = inputs.to_raw(z)
    latent_path = os.path.join(out_dir, "wan_latent.safetensors")
    # ComfyUI's LoadLatent reads the key "latent_tensor"
    save_file({"latent_tensor": raw.contiguous()}, latent_path,
              metadata={"source": model.source, "format": f"raw {fmt.name} VAE latent "
                                                              f"[B,{fmt.channels},T,H/{fmt.spatial},W/{fmt.spatial}]"})
    preview_path = save_animation(LatentPreviewer().frames(z[0]), os.path.join(out_dir, "wan_preview.webp"))
    log(f"wan: wrote {latent_path} {list(raw.shape)} and {preview_path} (latent->RGB approximation, not decoded)")
    return {"latent": latent_path, "latent_shape": list(raw.shape), "preview": preview_path,
            "latent_mean_abs": round(float(raw.abs().mean()), 4)}


def _finish(summary: dict, inputs, t0: float, out_dir: str) -> dict:
    summary.update({"total_s": round(time.perf_counter() - t0, 3), "image_routes": inputs.image_routes})
    from ..outputs import write_json

    write_json(summary, os.path.join(out_dir, SUMMARY))
    return summary


def _actions(args, model, log):
    """Matrix-Game 2.0's action timeline from --actions (None: idle for a Matrix-Game model)."""
    from ..wan.sampling.action_cache import check_actions

    if not getattr(args, "actions", None):
        if model.config.actions is not None:
            log(f"wan: no --actions: the {model.config.actions.mode} action module runs idle (no keys, no mouse)")
        return None
    from ..wan.conditioning.actions import load_actions

    from ..wan.vae.latent import latent_frames_to_pixel_length
    from ..wan.vae.latent import pixel_length_to_latent_frames

    timeline = load_actions(args.actions)
    check_actions(model.config, timeline)
    mode = timeline.resolve_mode(model.config.actions.mode)
    timeline.tensors(mode, latent_frames_to_pixel_length(pixel_length_to_latent_frames(args.length)), args.frames_per_block)
    log(f"wan: {timeline.describe()}")
    return timeline


def _text_contexts(args, model, log):
    """Text (and negative) context: --prompt through the umt5 encoder, or saved embeddings, or zeros."""
    if getattr(args, "prompt", None) is not None or getattr(args, "negative_prompt", None) is not None:
        if args.text_embeds:
            raise ValueError("give either --prompt (with --text-encoder) or --text-embeds, not both.")
        if not args.text_encoder or not args.tokenizer:
            raise ValueError("--prompt needs the umt5-xxl text encoder and its tokenizer: --text-encoder "
                             "models_t5_umt5-xxl-enc-bf16.pth (or umt5_xxl_fp16.safetensors) --tokenizer PATH.")
        from ..wan.text.umt5 import UMT5TextEncoder

        encoder = UMT5TextEncoder.from_file(args.text_encoder, args.tokenizer)
        if encoder.model.config.d_model != model.config.text_dim:
            raise ValueError(f"text encoder {encoder.source} gives {encoder.model.config.d_model}-d features but "
                             f"the model takes {model.config.text_dim}-d text; use Wan's umt5-xxl (4096-d).")
        text = encoder.encode(args.prompt or "")
        negative = encoder.encode(args.negative_prompt) if args.negative_prompt is not None else None
        log(f"wan: prompt encoded by {encoder.source}: {text.shape[1]} tokens")
        del encoder  # 5.7B parameters at full size: freed before sampling
        return text, negative
    if args.text_embeds:
        text = _load_tensor(args.text_embeds, "text embedding", 3)
        log(f"wan: text context {list(text.shape)} from {args.text_embeds}")
    elif model.config.image_context_only:
        text = torch.zeros(1, 1, 4096)
        log("wan: no text (Matrix-Game 2.0: the CLIP features are the whole cross-attention context)")
    else:
        text = torch.zeros(1, 512, 4096)
        log("wan: text context = zeros (no prompt; pass --prompt with --text-encoder, or --text-embeds)")
    negative = _load_tensor(args.negative_embeds, "negative embedding", 3) if args.negative_embeds else None
    return text, negative


def _load_timeline(args, model, log):
    """--timeline: the file read (any format), each prompt still without an embedding encoded once by umt5."""
    path = getattr(args, "timeline", None)
    if not path:
        return None
    from ..wan.sampling.loop import block_layout
    from ..wan.timeline import load
    from ..wan.vae.latent import pixel_length_to_latent_frames

    frames = [int(x) for x in str(getattr(args, "switch_frames", None) or "").replace(" ", "").split(",") if x]
    prefix = getattr(args, "scene_cut_prefix", "") or ""  # scene cuts: the cut block's text is prefix + prompt
    blocks = len(block_layout(pixel_length_to_latent_frames(args.length), args.frames_per_block,
                              args.independent_first_frame, shorter_last_block=True))  # a LongLive shot folder's
    timeline = load(path, switch_frames=frames or None, line=getattr(args, "timeline_line", 1),
                    fps=float(getattr(args, "fps", 16)), blocks=blocks, cut_prefix=prefix or None)
    texts = timeline.texts() + timeline.cut_texts(prefix)
    if texts:
        if not args.text_encoder or not args.tokenizer:
            raise ValueError(f"--timeline {path} has {len(texts)} prompt(s) to encode: give the umt5-xxl text encoder "
                             f"and its tokenizer (--text-encoder models_t5_umt5-xxl-enc-bf16.pth --tokenizer PATH), or "
                             f"a saved .timeline.json with its embeddings.")
        from ..wan.text.umt5 import UMT5TextEncoder

        encoder = UMT5TextEncoder.from_file(args.text_encoder, args.tokenizer)
        if encoder.model.config.d_model != model.config.text_dim:
            raise ValueError(f"text encoder {encoder.source} gives {encoder.model.config.d_model}-d features but the "
                             f"model takes {model.config.text_dim}-d text; use Wan's umt5-xxl (4096-d).")
        timeline.encode(encoder.encode, cut_prefix=prefix)
        del encoder
    log(f"wan: timeline {timeline.source}: {len(timeline)} segment(s), {len(texts)} prompt(s) encoded once each")
    return timeline


def _encode_timeline_images(args, timeline, model, vae, clip, log) -> None:
    """The timeline's image lines encoded at the run's size: the start-image latent with --vae, the CLIP reference with
    --clip (what the model reads: wan/timeline/controls.py)."""
    pending = [] if timeline is None else timeline.controls.pending_images()
    if not pending:
        return
    from ..wan.conditioning.image import ImageRoutes
    from ..wan.conditioning.inputs import WanLatentAdapter
    from ..wan.timeline.controls import image_encoder

    reads_clip = ImageRoutes(model.config).clip
    for change in pending:
        if change.route == "clip" and not reads_clip:
            raise ValueError(f"{change.source}: a CLIP reference change needs a model with an image embedding, but "
                             f"{model.config.describe()} is text-to-video; write 'image start' (a new start image).")
        if change.route == "both" and not reads_clip:
            change.route = "start"  # a text-to-video model reads the start image only
        if change.route in ("both", "start") and vae is None:
            raise ValueError(f"{change.source}: a new start image is encoded by the model's VAE: give --vae "
                             f"(wan_2.1_vae.safetensors), or write 'image clip' for the CLIP reference only.")
    encoder = image_encoder(None if vae is None else vae.encode, WanLatentAdapter().latent_in, args.width, args.height,
                            clip if reads_clip else None, "none" if model.config.image_context_only else "center")
    timeline.controls.encode_images(encoder, os.path.dirname(os.path.abspath(args.timeline)))
    log("wan: timeline images encoded: " + ", ".join(f"block {c.block} {c.label} ({c.route})" for c in pending))


def _save_timeline(timeline, frames: int, settings, out_dir: str, log) -> dict:
    """The run's timeline with the block each segment took effect at (replay: --timeline this file)."""
    if timeline is None:
        return {}
    from ..wan.sampling.loop import block_layout
    from ..wan.timeline import save

    layout = block_layout(frames, settings.frames_per_block, settings.independent_first_frame,
                          settings.shorter_last_block)
    path = save(timeline, os.path.join(out_dir, "wan_timeline.json"), layout)
    prompts = [[block, timeline.segments[i].label] for block, i in timeline.resolved(layout)]
    for block, label in prompts:
        log(f"wan: block {block}: {label[:70]}")
    return {"timeline": path, "timeline_prompts": prompts}


def _load_vae(args, model, dtype, log):
    from ..wan.vae.wan21 import WanVAE, WanVAEConfig
    from ..wan.vae.wan22 import load_vae

    if getattr(args, "demo_vae_dim", None):
        vae = WanVAE.random(WanVAEConfig(dim=args.demo_vae_dim), seed=args.seed)
        vae.source = (f"random-init Wan 2.1 VAE architecture at dim {args.demo_vae_dim} (real: 96), seed "
                      f"{args.seed}, NOT trained")
        log(f"wan: VAE = {vae.source}; the decoded video is coloured noise by design")
        return vae
    if not getattr(args, "vae", None):
        return None
    vae = load_vae(args.vae, dtype=dtype)  # Wan 2.1 or Wan 2.2, whichever the file is
    if vae.config.z_dim != model.config.out_dim:
        raise ValueError(f"--vae {vae.source} is a {vae.name} ({vae.config.z_dim} latent channels) but the model "
                         f"is {model.config.describe()} ({model.config.out_dim} channels): use the VAE of the "
                         f"model's generation (Wan 2.1: wan_2.1_vae, Wan 2.2 TI2V: wan2.2_vae).")
    log(f"wan: VAE {vae.config.describe()} from {vae.source}")
    return vae


def _video_scorer(args, image, log):
    """``--scores``: the CLIP scorer (CLIP-I against ``--score-image``, else the start image)."""
    from .score import build_scorer, read_timeline

    if not getattr(args, "scores", False):
        return None
    prompts = read_timeline(args.score_timeline) if getattr(args, "score_timeline", None) else \
        getattr(args, "score_prompts", None) or getattr(args, "prompt", None)
    from ..clip_vision.score_stream import LiveScorer

    # one vision forward per block; with --score-budget the stride follows the measured time
    return LiveScorer(build_scorer(args, prompts, log, default_reference=image),
                      budget_percent=getattr(args, "score_budget_percent", 0.0) or 0.0)


def _stream_to_video(args, model, inputs, settings, vae, fmt, out_dir, t0, log, image=None,
                     timeline=None) -> dict:
    """Sample and decode block by block into the video file (nothing of the whole video kept)."""
    from ..wan.video.stream import stream_video
    from ..wan.vae.taehv import TAEHV
    from ..wan.video.writer import VideoWriter

    if getattr(args, "tiny_vae", None):
        decoder = TAEHV.from_file(args.tiny_vae)
        log(f"wan: decoding with the tiny decoder {decoder.source}")
    elif vae is not None:
        decoder = vae
    else:
        raise ValueError("--video needs a decoder: --vae wan_2.1_vae.safetensors (or --tiny-vae taew2_1.safetensors).")
    keep = bool(getattr(args, "save_latent", False))
    scorer = _video_scorer(args, image, log)
    run = stream_video(model, inputs.latent, inputs.text, vae=decoder, to_raw=inputs.to_raw, seed=args.seed,
                       encode=getattr(vae, "encode", None), from_raw=inputs.from_raw, keep_latent=keep,
                       settings=settings, negative_text=inputs.negative_text, clip_fea=inputs.clip_fea,
                       concat=inputs.concat, first_frames=inputs.first_frames,
                       actions=getattr(args, "actions_timeline", None), timeline=timeline)
    t_start = time.perf_counter()
    first = None
    with VideoWriter(args.video, fps=args.fps) as writer:
        for piece in run:
            writer.write(piece.frames[0])
            if scorer is not None:  # only the frames to score are held, until their block is complete
                scorer.add(piece.frames[0], piece.frame_start, piece.index, piece.block_done)
            now = time.perf_counter() - t_start
            first = now if first is None else first
            if piece.block_done:
                log(f"wan: block {piece.index + 1}/{piece.total} decoded, {writer.frames_written} frames written "
                    f"at {now:.2f} s")
    log(f"wan: wrote {args.video} ({writer.frames_written} frames, {args.fps} fps, decoded block by block)")
    summary = {
        "model": model.source, "config": model.config.describe(), "video": os.path.abspath(args.video),
        "video_frames": writer.frames_written, "decoder": getattr(decoder, "source", ""), "blocks": run.blocks_done,
        "first_frames_s": round(first, 3), "sampling_and_decode_s": round(time.perf_counter() - t_start, 3),
    }
    if scorer is not None:
        from .score import SCORE_SUFFIX, finish_scores

        scorer.finish()
        scores = finish_scores(scorer.scorer, os.path.splitext(args.video)[0] + SCORE_SUFFIX,
                               f"CLIP scores — {os.path.basename(args.video)}", log=log)
        summary["clip_scores"] = scores["paths"]
        summary["clip_score_means"] = scores["means"]
    if keep:
        summary.update(_save_latent(run.latent, inputs, model, fmt, out_dir, log))
    summary.update(_save_timeline(timeline, inputs.latent.shape[2], settings, out_dir, log))
    return _finish(summary, inputs, t0, out_dir)


def run_sample(args) -> int:
    run_pipeline(args, args.out)
    return 0


class _DemoArgs:
    """``sample``'s defaults for the demo (embedded models, synthetic image, 7 latent frames)."""

    model = clip = image = text_embeds = negative_embeds = image_latent = None
    width = height = 128
    length = 25
    steps = "1000,750,500,250"
    frames_per_block = 3
    sink_size = 1
    local_window = 4
    independent_first_frame = True
    dtype = "fp32"
    prompt = negative_prompt = text_encoder = tokenizer = vae = tiny_vae = timeline = None
    demo_vae_dim = 8  # a random-init Wan 2.1 VAE at 1/12 width: encode + decode stay within seconds on a CPU
    fps = 16
    save_latent = True
    # CLIP scores beside the video, on the embedded default CLIP pair (random init: the numbers are real, their
    # meaning is not), every 4th frame to keep the demo fast
    scores = True
    score_every = 4
    score_clip = score_tokenizer = score_image = score_timeline = None
    score_prompts = "a synthetic test picture"


def demo_step(args, out_dir: str) -> dict:
    demo = _DemoArgs()
    demo.seed = int(getattr(args, "seed", 0))
    demo.video = os.path.join(out_dir, "wan_video.mp4")
    print("wan: demo on the EMBEDDED DEFAULTS — a seeded random-init Wan 2.1 i2v DiT (real architecture, "
          "small) and a seeded random-init CLIP ViT-H/14 cut to 4 blocks; no pretrained weights, so the video "
          "is noise-like by design. Sink 1 + window 4 frames, first frame independent, 3 frames per block. The "
          "video (wan_video.mp4) is decoded block by block by a random-init Wan 2.1 VAE at dim 8 (real: 96), "
          "untrained too.")
    return run_pipeline(demo, out_dir)
