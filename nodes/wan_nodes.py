"""Wan nodes: WanI2VConditioning, LoadCausalWanModel, CausalWanSampler.

Thin wrappers: the maths are in ``wan/``; ComfyUI is reached only through ``comfy_bridge`` (lazily), so these
classes also run in plain Python (tests, the CLI).
"""

from __future__ import annotations

import logging
import os

import torch

from . import comfy_bridge as bridge
from .causal_run import FAMILY_ALIASES, RunReporter, causal_node_inputs, prepare_run
from .model_files import resolve_model_file, validate_model_name
from ..wan.conditioning import image as cond
from ..wan.model.causal import CausalWanModel
from ..wan.model.checkpoint import load_wan_state_dict, resolve_dtype
from ..wan.model.lora import load_lora_file, merge_lora_file
from ..wan.model.lora_live import remember as remember_lora
from ..wan.sampling import settings_spec as spec
from ..wan.sampling.run import iter_causal_blocks

log = logging.getLogger("comfyui_clipwan")


class WanI2VConditioning:
    """Same inputs/outputs and result as core WanImageToVideo (V1 node, usable with our causal sampler)."""

    DESCRIPTION = ("Image-to-video conditioning for Wan 2.1, identical to core WanImageToVideo: an empty video "
                   "latent, the VAE latent of the start image with its mask (concat_latent_image / concat_mask) "
                   "and the CLIP vision output, added to both conditionings.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the image conditioning added.",
                       "Negative conditioning with the image conditioning added.",
                       "Empty video latent of the requested size (sample it).")
    SEARCH_ALIASES = ["wan image to video", "i2v", "image to video", "causal", "clipwan"]
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
                   "weights. Inside ComfyUI the output is an ordinary MODEL (ComfyUI loads it, manages its memory, "
                   "and any node taking a MODEL accepts it); Causal Wan Sampler (ClipWan) samples it block by block.")
    CATEGORY = "ClipWan/loaders"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("causal_model",)
    OUTPUT_TOOLTIPS = ("The Wan 2.1 diffusion model (a ComfyUI MODEL inside ComfyUI).",)
    SEARCH_ALIASES = ["self forcing", "self-forcing", "causvid", "longlive", "causal wan", "autoregressive wan",
                      "clipwan", "load wan", *FAMILY_ALIASES]
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (bridge.list_model_files("diffusion_models", "checkpoints"), {
                    "tooltip": "File in models/diffusion_models (or unet) or models/checkpoints."}),
                "weight_dtype": (["default", "bf16", "fp16", "fp32"], {
                    "default": "default", "tooltip": "Weight/compute dtype; default keeps the file's dtype "
                                                     "(inside ComfyUI: ComfyUI's choice for the device)."}),
                "checkpoint_entry": (["auto", "generator_ema", "generator", "model"], {
                    "default": "auto",
                    "tooltip": "Which entry of a training checkpoint to use; auto prefers generator_ema. "
                               "LongLive: generator (its configs' use_ema: false)."}),
            },
            "optional": {
                "lora_name": (["none"] + bridge.list_model_files("loras"), {
                    "default": "none", "tooltip": "LoRA merged into the weights, e.g. LongLive's lora.pt "
                                                  "(models/loras), with longlive_base.pt as model_name."}),
                "lora_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                            "tooltip": "LoRA scale (1.0 = as trained)."}),
                "vace_name": (["none"] + bridge.list_model_files("diffusion_models"), {
                    "default": "none", "tooltip": "Wan2.1-VACE weights put beside the model's blocks, as Daydream "
                                                  "Scope runs LongLive / Self-Forcing / Krea with VACE: a VACE "
                                                  "module file (Wan2_1-VACE_module_1_3B_bf16.safetensors) or a "
                                                  "whole Wan2.1-VACE checkpoint of the same size."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name, lora_name="none"):  # identifying or authors' names: nodes/model_files.py
        valid = validate_model_name(model_name, "diffusion_models", "checkpoints")
        return valid if valid is not True else validate_model_name(lora_name, "loras")

    def load(self, model_name, weight_dtype="default", checkpoint_entry="auto", lora_name="none",
             lora_strength=1.0, vace_name="none"):
        path = resolve_model_file(model_name, "diffusion_models", "checkpoints")
        sd, source = load_wan_state_dict(path, checkpoint_entry)
        if vace_name not in (None, "", "none"):  # before the LoRA, which touches the base blocks only (Scope's order)
            from ..wan.model.checkpoint import read_file
            from ..wan.model.vace import apply_vace, vace_state_dict_from

            vace_path = bridge.resolve_model_path(vace_name, "diffusion_models")
            sd = apply_vace(sd, vace_state_dict_from(read_file(vace_path), os.path.basename(vace_path)))
            source = f"{source} + VACE {os.path.basename(vace_path)}"
        lora = None
        if lora_name not in (None, "", "none"):  # e.g. LongLive's lora.pt, merged before anything is placed
            lora = resolve_model_file(lora_name, "loras")
            tensors = load_lora_file(lora)
            sd, source = merge_lora_file(sd, lora, lora_strength, source, tensors)
        dtype = resolve_dtype(weight_dtype)
        # Matrix-Game 2.0 (no text embedding, action modules) is no model ComfyUI knows: ours, on its device
        if bridge.in_comfyui() and not _is_matrix_game(sd):  # ComfyUI builds, places and offloads it like any UNETLoader model
            out = bridge.load_diffusion_model_state_dict(sd, dtype=dtype, source=source)
            tree = out.model.diffusion_model
        else:
            out = CausalWanModel.from_state_dict(sd, dtype=dtype, device=bridge.torch_device(), source=source)
            tree = out.tree
        if lora:  # a live strength change needs it (wan/model/lora_live.py)
            remember_lora(tree, os.path.basename(lora), tensors, lora_strength)
        return (out,)


def _is_matrix_game(sd) -> bool:
    return "text_embedding.0.weight" not in sd or any(".action_model." in k for k in sd)


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
    OUTPUT_TOOLTIPS = ("The sampled video latent (raw Wan VAE space): decode it with VAE Decode.",)
    SEARCH_ALIASES = ["self forcing", "self-forcing", "causvid", "longlive", "causal", "autoregressive video",
                      "kv cache", "streaming video", "clipwan", *FAMILY_ALIASES, "vace"]
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return causal_node_inputs(spec.SAMPLER)

    def sample(self, model, positive, latent, seed, negative=None, switch_positive=None, unique_id=None,
               actions=None, vace_control=None, restyle=None, timeline=None, **widgets):
        from .timeline_nodes import run_timeline

        causal, inputs, settings, switches, patcher = prepare_run(
            model, positive, latent, seed, negative=negative, switch_positive=switch_positive, unique_id=unique_id,
            actions=actions, vace_control=vace_control, restyle=restyle, timeline=timeline, **widgets)
        loop = iter_causal_blocks(causal, inputs.latent, inputs.text, seed=seed, settings=settings,
                                  negative_text=inputs.negative_text, clip_fea=inputs.clip_fea,
                                  concat=inputs.concat, first_frames=inputs.first_frames, prompt_switches=switches,
                                  check_interrupt=bridge.check_interrupt, actions=actions, vace=list(inputs.vace),
                                  restyle=inputs.restyle, timeline=run_timeline(timeline, None))
        loop.hooks = RunReporter(patcher, unique_id, loop.total_steps, inputs.to_raw)
        note = getattr(loop, "fallback_note", None)  # a family rule this node cannot run (no decoded pixels)
        if note:
            log.warning("Causal Wan Sampler: %s", note)
            bridge.progress_text(note, unique_id)
        z = torch.zeros(inputs.latent.shape, dtype=torch.float32, device=causal.device)
        for block in loop:
            z[:, :, block.start_frame:block.start_frame + block.num_frames] = block.x0
        out = inputs.to_raw(z)
        if inputs.reference_raw is not None:  # WanVaceToVideo's reference frames back in front, for TrimVideoLatent
            out = torch.cat([inputs.reference_raw.to(out), out], dim=2)
        return ({"samples": out.to(bridge.intermediate_device())},)


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
