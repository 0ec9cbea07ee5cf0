"""Wan nodes: WanI2VConditioning, LoadCausalWanModel, CausalWanSampler.

Thin wrappers: the maths are in ``wan/``; ComfyUI is reached only through ``comfy_bridge`` (lazily), so these
classes also run in plain Python (tests, the CLI).
"""

from __future__ import annotations

import base64
import io
from typing import Optional

import torch

from . import comfy_bridge as bridge
from ..wan import conditioning as cond
from ..wan.causal_model import CausalWanModel
from ..wan.checkpoint import resolve_dtype
from ..wan.latent import LatentPreviewer, check_latent, denormalize, normalize
from ..wan.sampler import CausalSettings, PromptSwitch, loop_rules_for, sample_causal

UI_EVENT = "clipwan.causal_frames"
PREVIEW_MAX_SIDE = 256


class WanI2VConditioning:
    """Same inputs/outputs and result as core WanImageToVideo (V1 node, usable with our causal sampler)."""

    DESCRIPTION = ("Image-to-video conditioning for Wan 2.1, identical to core WanImageToVideo: an empty video "
                   "latent, the VAE latent of the start image with its mask (concat_latent_image / concat_mask) "
                   "and the CLIP vision output, added to both conditionings.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Positive text conditioning (Wan umt5 text encoder)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative text conditioning."}),
                "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE; encodes the start image."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 16384, "step": 16,
                                  "tooltip": "Video width in pixels (multiple of 16)."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 16384, "step": 16,
                                   "tooltip": "Video height in pixels (multiple of 16)."}),
                "length": ("INT", {"default": 81, "min": 1, "max": 16384, "step": 4,
                                   "tooltip": "Frames (1 + 4k); the latent has (length-1)//4 + 1 frames."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "Videos per batch."}),
            },
            "optional": {
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {
                    "tooltip": "CLIP ViT-H/14 output of the start image (Wan i2v's clip_fea)."}),
                "start_image": ("IMAGE", {"tooltip": "First frame(s) of the video."}),
            },
        }

    def encode(self, positive, negative, vae, width, height, length, batch_size, clip_vision_output=None,
               start_image=None):
        def resize(images_bchw, w, h):
            out = bridge.comfy_resize_center(images_bchw, w, h)
            return cond.resize_center_crop(images_bchw, w, h) if out is None else out

        encode = None if vae is None else (lambda pixels: vae.encode(pixels[:, :, :, :3]))
        latent, concat_latent, mask = cond.i2v_latents(width, height, length, batch_size, start_image, encode,
                                                       resize)
        values = {}
        if concat_latent is not None:
            values.update(concat_latent_image=concat_latent, concat_mask=mask)
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        if values:
            positive, negative = cond.set_values(positive, values), cond.set_values(negative, values)
        return positive, negative, {"samples": latent.to(bridge.intermediate_device())}


class LoadCausalWanModel:
    DESCRIPTION = ("Loads a Wan 2.1 or Wan 2.2 TI2V DiT for block-causal sampling: Self-Forcing / CausVid / LongLive "
                   "(1.0 and 2.0 model_bf16.pt) .pt checkpoints (generator_ema / generator / model entries, model. "
                   "prefixes) and Wan / ComfyUI .safetensors. Config (1.3B, 14B, TI2V-5B, t2v/i2v) is read from the "
                   "weights. Output goes to "
                   "Causal Wan Sampler (ClipWan).")
    CATEGORY = "ClipWan/loaders"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("causal_model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (bridge.list_model_files("diffusion_models", "checkpoints"), {
                    "tooltip": "File in models/diffusion_models (or unet) or models/checkpoints."}),
                "weight_dtype": (["default", "bf16", "fp16", "fp32"], {
                    "default": "default", "tooltip": "Weight/compute dtype; default keeps the file's dtype."}),
                "checkpoint_entry": (["auto", "generator_ema", "generator", "model"], {
                    "default": "auto",
                    "tooltip": "Which entry of a training checkpoint to use; auto prefers generator_ema."}),
            }
        }

    def load(self, model_name, weight_dtype="default", checkpoint_entry="auto"):
        path = bridge.resolve_model_path(model_name, "diffusion_models", "checkpoints")
        device = bridge.torch_device()
        return (CausalWanModel.from_file(path, dtype=resolve_dtype(weight_dtype), device=device,
                                         entry=checkpoint_entry),)


class CausalWanSampler:
    DESCRIPTION = ("Block-causal, KV-cached Wan 2.1 sampling (Self-Forcing / CausVid / LongLive inference): "
                   "frames are generated block by block with an attention sink and a local window, conditioned "
                   "on the text and on the image (CLIP features, concat latent, or first-frame latents for t2v "
                   "causal models). Takes a Wan 2.1 MODEL from Load Diffusion Model or Load Causal Wan Model. A "
                   "Wan 2.2 TI2V model (LongLive 2.0) runs LongLive 2.0's loop: UniPC steps (steps = a count, 4) "
                   "and the start image of a Wan22ImageToVideoLatent latent clamped as the clean first frame.")
    CATEGORY = "ClipWan/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "Wan 2.1 DiT: a ComfyUI MODEL (weights shared, not copied) or "
                                               "Load Causal Wan Model's output."}),
                "positive": ("CONDITIONING", {"tooltip": "Text conditioning (with image conditioning from "
                                                         "Wan I2V Conditioning)."}),
                "latent": ("LATENT", {"tooltip": "Wan video latent [B,16,T,H/8,W/8]; empty = from pure noise."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Noise seed (initial noise and per-step re-noising)."}),
                "steps": ("STRING", {"default": "1000,750,500,250",
                                     "tooltip": "Denoising timesteps per block (e.g. 1000,750,500,250), or a step "
                                                "count such as 4 (evenly spaced from 1000, then warped)."}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.01, "max": 100.0, "step": 0.1,
                                    "tooltip": "Timestep shift (Self-Forcing/LongLive 5, CausVid 8)."}),
                "warp_steps": ("BOOLEAN", {"default": True, "tooltip": (
                    "On: each step k becomes the shifted grid timestep (Self-Forcing, LongLive, Causal Forcing). "
                    "Off: the timesteps are fed as typed, sigma from the nearest grid point (CausVid, Krea).")}),
                "frames_per_block": ("INT", {"default": 3, "min": 1, "max": 64,
                                             "tooltip": "Latent frames generated per block."}),
                "sink_size": ("INT", {"default": 0, "min": 0, "max": 1024,
                                      "tooltip": "First latent frames kept in attention forever (with a window)."}),
                "local_window": ("INT", {"default": 0, "min": 0, "max": 4096,
                                         "tooltip": "Latent frames attended (sink + recent + block); 0 = all."}),
                "cache_dtype": (["auto", "bf16", "fp16", "fp32"], {
                    "default": "auto", "tooltip": "KV cache dtype; auto = the model's compute dtype."}),
                "independent_first_frame": ("BOOLEAN", {
                    "default": False, "tooltip": "First block = 1 latent frame (e.g. 21 latent frames with 3)."}),
                "guidance_scale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                                             "tooltip": "CFG scale; 1.0 = off (distilled models)."}),
                "image_conditioning": ("BOOLEAN", {"default": True,
                                                   "tooltip": "Use the image conditioning in `positive`."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (used when guidance_scale > 1)."}),
                "switch_positive": ("CONDITIONING", {"tooltip": "Prompt to switch to at switch_at_block."}),
                "switch_at_block": ("INT", {"default": 0, "min": 0, "max": 100000,
                                            "tooltip": "Block index where switch_positive takes over."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, model, positive, latent, seed, steps="1000,750,500,250", shift=5.0, warp_steps=True,
               frames_per_block=3,
               sink_size=0, local_window=0, cache_dtype="auto", independent_first_frame=False,
               guidance_scale=1.0, image_conditioning=True, negative=None, switch_positive=None,
               switch_at_block=0, unique_id=None):
        settings = CausalSettings(steps=steps, shift=shift, warp=warp_steps, frames_per_block=frames_per_block,
                                  sink_size=sink_size,
                                  local_window=local_window, cache_dtype=resolve_dtype(cache_dtype),
                                  independent_first_frame=independent_first_frame, guidance_scale=guidance_scale)
        if not positive:
            raise ValueError("positive conditioning is empty; connect a CLIP Text Encode (Wan umt5) output.")
        samples = latent["samples"]
        noise_mask = latent.get("noise_mask") if image_conditioning else None  # Wan22ImageToVideoLatent's start image
        if getattr(model, "is_clipwan_causal_model", False):
            job = _OwnModelJob(model, samples, positive, negative, switch_positive, image_conditioning, noise_mask)
        elif hasattr(getattr(model, "model", None), "diffusion_model"):
            job = _ComfyModelJob(model, samples, positive, negative, switch_positive, image_conditioning, seed,
                                 noise_mask)
        else:
            raise ValueError(f"model ({type(model).__name__}) is not a Wan 2.1 model: connect Load Diffusion Model "
                             f"(a Wan 2.1 file) or Load Causal Wan Model.")
        settings = loop_rules_for(settings, job.causal.config)
        switches = []
        if switch_positive is not None and switch_at_block > 0:
            switches.append(PromptSwitch(int(switch_at_block), job.switch_text))
        streamer = _BlockStreamer(job, unique_id, settings, samples.shape[2])
        z = sample_causal(job.causal, job.z, job.text, seed=seed, settings=settings, negative_text=job.neg_text,
                          clip_fea=job.clip, concat=job.concat, first_frames=job.first_frames,
                          prompt_switches=switches, on_block=streamer, check_interrupt=bridge.check_interrupt)
        out = job.to_raw(z)
        return ({"samples": out.to(bridge.intermediate_device())},)


def _first_tensor(conditioning):
    return conditioning[0][0] if conditioning else None


class _OwnModelJob:
    """Inputs for our own CausalWanModel: conditioning dicts read directly, Wan 2.1 latent normalisation."""

    def __init__(self, model, samples, positive, negative, switch_positive, image_conditioning, noise_mask=None):
        self.causal = model
        self.patcher = None
        cfg = model.config
        check_latent(samples, channels=cfg.out_dim)
        self.z = normalize(samples.float()) if torch.count_nonzero(samples) else samples.float()
        self.text = positive[0][0]
        self.neg_text = _first_tensor(negative)
        self.switch_text = _first_tensor(switch_positive)
        self.clip = self.concat = self.first_frames = None
        if image_conditioning:
            extra = positive[0][1]
            self.clip = cond.clip_features(extra.get("clip_vision_output"))
            image = extra.get("concat_latent_image")
            if image is not None:
                _check_same_grid(image, samples)
                image = normalize(image.float())
                if cfg.concat_channels:
                    self.concat = cond.concat_condition(image, extra.get("concat_mask"))
                else:
                    k = cond.known_prefix_frames(extra.get("concat_mask"), *image.shape[2:])
                    self.first_frames = image[:, :, :k] if k else None
        _start_from_noise_mask(self, samples, noise_mask, normalize)
        self.to_raw = denormalize


class _ComfyModelJob:
    """Inputs for a ComfyUI ModelPatcher: ComfyUI loads it, its extra_conds build the conditioning (the same
    tensors its own samplers feed the model) and its latent format normalises the latent."""

    def __init__(self, patcher, samples, positive, negative, switch_positive, image_conditioning, seed,
                 noise_mask=None):
        bridge.load_models_gpu([patcher])
        bm = patcher.model
        device = patcher.load_device
        dtype = bm.get_dtype_inference() if hasattr(bm, "get_dtype_inference") else bm.get_dtype()
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dtype = torch.bfloat16
        self.patcher = patcher
        self.causal = CausalWanModel.adopt(bm.diffusion_model, compute_dtype=dtype, device=device)
        cfg = self.causal.config
        check_latent(samples, channels=cfg.out_dim)
        self.z = bm.process_latent_in(samples.float()) if torch.count_nonzero(samples) else samples.float()
        image_keys = ("clip_vision_output", "concat_latent_image", "concat_mask")

        def model_conds(conditioning):
            text, extra = conditioning[0]
            if not image_conditioning:
                extra = {k: v for k, v in extra.items() if k not in image_keys}
            out = bm.extra_conds(noise=self.z.to(device), device=device, cross_attn=text, latent_image=self.z,
                                 seed=seed, **extra)
            return {k: getattr(v, "cond", v) for k, v in out.items()}, extra

        pos, extra = model_conds(positive)
        self.text = pos["c_crossattn"]
        self.clip = pos.get("clip_fea") if image_conditioning else None
        self.concat = pos.get("c_concat") if cfg.concat_channels else None
        self.first_frames = None
        if image_conditioning and not cfg.concat_channels and extra.get("concat_latent_image") is not None:
            image = extra["concat_latent_image"]
            _check_same_grid(image, samples)
            k = cond.known_prefix_frames(extra.get("concat_mask"), *image.shape[2:])
            self.first_frames = bm.process_latent_in(image.float())[:, :, :k] if k else None
        self.neg_text = model_conds(negative)[0]["c_crossattn"] if negative else None
        self.switch_text = model_conds(switch_positive)[0]["c_crossattn"] if switch_positive else None
        _start_from_noise_mask(self, samples, noise_mask, bm.process_latent_in)
        self.to_raw = bm.process_latent_out


def _start_from_noise_mask(job, samples: torch.Tensor, noise_mask, latent_in) -> None:
    """Wan 2.2 TI2V's start image (core ``Wan22ImageToVideoLatent``): the LATENT's leading frames hold the
    image's raw latent and its ``noise_mask`` is 0 there. Those frames become the clean first frames (the loop
    clamps them, LongLive 2.0 / TI2V style); sampling starts from noise everywhere else."""
    if noise_mask is None or job.first_frames is not None or job.causal.config.concat_channels:
        return
    k = cond.known_prefix_frames(noise_mask, *samples.shape[2:])
    if k:
        job.first_frames = latent_in(samples[:, :, :k].float())
        job.z = torch.zeros_like(samples, dtype=torch.float32)


def _check_same_grid(image: torch.Tensor, samples: torch.Tensor) -> None:
    if tuple(image.shape[2:]) != tuple(samples.shape[2:]):
        raise ValueError(f"concat_latent_image {list(image.shape)} does not match the latent "
                         f"{list(samples.shape)}: use the latent from the same Wan I2V Conditioning node "
                         f"(same width, height and length).")


class _BlockStreamer:
    """After each block: progress bar with a preview on the node, and the block's frames to the web UI."""

    def __init__(self, job, unique_id, settings, frames):
        from ..wan.sampler import block_layout

        self.job = job
        self.node = unique_id
        self.total = len(block_layout(frames, settings.frames_per_block, settings.independent_first_frame))
        self.progress = bridge.Progress(self.total, node_id=unique_id)
        self.previewer = LatentPreviewer()
        self.stream = bridge.prompt_server() is not None
        self.in_comfy = bridge.in_comfyui()

    def _frames_rgb(self, x0):
        """PIL images of the block's frames (first video in the batch)."""
        images = []
        if self.in_comfy:  # inside ComfyUI: its own previewer (our model: the Wan21 latent format)
            for f in range(x0.shape[2]):
                img = bridge.latent_preview_image(self.job.patcher, x0[:1, :, f:f + 1])
                if img is None:
                    images = []
                    break
                images.append(img)
        if not images:
            from ..wan.latent import frames_to_pil

            images = frames_to_pil(self.previewer.frames(x0[0]))
        return images

    def __call__(self, index, total, x0, start_frame):
        images = self._frames_rgb(x0)
        self.progress.update_absolute(index + 1, images[-1])
        if self.stream:
            payload = {"node": self.node, "block": index, "total_blocks": total, "frame_start": int(start_frame),
                       "frames": [_jpeg_base64(im) for im in images]}
            bridge.send_ui_event(UI_EVENT, payload)


def _jpeg_base64(image) -> str:
    image = image.convert("RGB")
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


NODE_CLASS_MAPPINGS = {
    "WanI2VConditioning": WanI2VConditioning,
    "LoadCausalWanModel": LoadCausalWanModel,
    "CausalWanSampler": CausalWanSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanI2VConditioning": "Wan I2V Conditioning (ClipWan)",
    "LoadCausalWanModel": "Load Causal Wan Model (ClipWan)",
    "CausalWanSampler": "Causal Wan Sampler (ClipWan)",
}
