"""Wan nodes: WanI2VConditioning, LoadCausalWanModel, CausalWanSampler.

Thin wrappers: the maths are in ``wan/``; ComfyUI is reached only through ``comfy_bridge`` (lazily), so these
classes also run in plain Python (tests, the CLI).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import os

import torch

from . import comfy_bridge as bridge
from .model_files import resolve_model_file, validate_model_name
from ..wan.conditioning import image as cond
from ..wan.model.causal import CausalWanModel
from ..wan.model.checkpoint import load_wan_state_dict, resolve_dtype
from ..wan.conditioning.inputs import WanLatentAdapter, build_sampler_inputs
from ..wan.vae.latent import LatentPreviewer
from ..wan.model.lora import merge_lora_file
from ..wan.sampling import settings_spec as spec
from ..wan.sampling.settings_spec import FAMILY_TOOLTIP  # noqa: F401  (other causal node modules use it)
from ..wan.sampling.loop import PromptSwitch, SamplerHooks
from ..wan.sampling.run import iter_causal_blocks
from ..wan.sampling.action_cache import check_actions

log = logging.getLogger("comfyui_clipwan")
UI_EVENT = "clipwan.causal_frames"
PREVIEW_MAX_SIDE = 256


# the causal families by the names users search for (the loader loads them, the sampler and the stream node run
# them); "vace" finds the two causal nodes, which take VACE-style control
FAMILY_ALIASES = ["krea", "krea realtime", "memflow", "rolling forcing", "rolling", "reward forcing", "reward",
                  "causal forcing", "causal forcing++"]


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
        if lora_name not in (None, "", "none"):  # e.g. LongLive's lora.pt, merged before anything is placed
            sd, source = merge_lora_file(sd, resolve_model_file(lora_name, "loras"), lora_strength, source)
        dtype = resolve_dtype(weight_dtype)
        # Matrix-Game 2.0 (no text embedding, action modules) is no model ComfyUI knows: ours, on its device
        if bridge.in_comfyui() and not _is_matrix_game(sd):  # ComfyUI builds, places and offloads it like any UNETLoader model
            return (bridge.load_diffusion_model_state_dict(sd, dtype=dtype, source=source),)
        return (CausalWanModel.from_state_dict(sd, dtype=dtype, device=bridge.torch_device(), source=source),)


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
        loop.hooks = _RunReporter(patcher, unique_id, loop.total_steps, inputs.to_raw)
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


# the sockets of both causal nodes; their widgets come from wan/sampling/settings_spec.py
SAMPLER_SOCKETS = {
    "model": ("MODEL", {"tooltip": "Wan 2.1 DiT: from Load Diffusion Model or Load Causal Wan Model "
                                   "(weights shared, not copied)."}),
    "positive": ("CONDITIONING", {"tooltip": "Text conditioning (with image conditioning from "
                                             "Wan I2V Conditioning)."}),
    "latent": ("LATENT", {"tooltip": "Wan video latent [B,16,T,H/8,W/8]; empty = from pure noise."}),
}
OPTIONAL_SOCKETS = {
    "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (used when guidance_scale > 1)."}),
    "switch_positive": ("CONDITIONING", {"tooltip": "Prompt to switch to at switch_at_block "
                                                    "(LongLive-style; needs switch_at_block >= 1)."}),
    "actions": ("CLIPWAN_ACTIONS", {"tooltip": "Matrix-Game 2.0 keyboard / mouse actions (Matrix-Game Actions "
                                               "node); none = idle. Other models refuse it."}),
    # a control video / a video to restyle, streamed (nodes/control_nodes.py)
    "vace_control": ("CLIPWAN_CONTROL", {"tooltip": "Causal VACE Control: a control video read block by block "
                                                    "and/or a reference image (VACE models)."}),
    "restyle": ("CLIPWAN_RESTYLE", {"tooltip": "Causal Video Restyle: an input video restyled block by block "
                                               "(video-to-video, Krea's strength rule)."}),
    "timeline": ("CLIPWAN_TIMELINE", {"tooltip": (
        "A prompt timeline (Prompt Timeline nodes): any number of prompts, switched with the family's rule or "
        "blended; replaces positive's text (its image conditioning stays). Not together with switch_positive.")}),
}


def causal_node_inputs(node: str, required_sockets: dict = None, optional_sockets: dict = None) -> dict:
    """``INPUT_TYPES`` of a causal node: its sockets around the settings' widgets (``settings_spec``), in the
    order saved workflows have them (the widgets from switch_at_block on were added after the optional sockets).
    Only seed (and the sockets) are required; every other widget is optional with its old default, most under
    the node's advanced section."""
    required, optional = spec.node_inputs(node)
    names = list(optional)
    later = names[names.index("switch_at_block"):]
    settings = {k: v for k, v in optional.items() if k not in later}
    return {"required": {**SAMPLER_SOCKETS, **required, **(required_sockets or {})},
            "optional": {**settings, **OPTIONAL_SOCKETS, **(optional_sockets or {}),
                         **{k: optional[k] for k in later}},
            "hidden": {"unique_id": "UNIQUE_ID"}}


def prepare_run(model, positive, latent, seed, negative=None, switch_positive=None, unique_id=None, actions=None,
                vace_control=None, restyle=None, timeline=None, **widgets):
    """The sampler's widgets and sockets -> ``(CausalWanModel, SamplerInputs, CausalSettings, prompt switches,
    ModelPatcher or None)``; shared by Causal Wan Sampler and Causal Wan Stream Video (nodes/stream_nodes.py).

    ``widgets`` are the settings' widgets by name (``settings_spec``; missing ones take their defaults, as an
    API prompt saved before a widget existed). ``family`` (a preset name, or "custom") adds that family's loop
    rules to the widgets' settings; the widgets themselves are never overridden — where they differ from the
    family's values one log line names them. A length that is not a whole number of blocks runs with a shorter
    last block where the loop allows it (``fit_block_layout``), said in the log and on the node. The run rule
    is ``settings_spec.run_settings``, the CLI's too."""
    if timeline is not None and switch_positive is not None:
        raise ValueError("both a timeline and switch_positive are connected: put the switch into the timeline (a Prompt "
                         "Timeline node) and disconnect switch_positive.")
    values = {**spec.widget_defaults(spec.SAMPLER), **widgets, "seed": seed}
    unknown = sorted(set(values) - set(spec.widget_defaults(spec.SAMPLER)))
    if unknown:
        raise TypeError(f"prepare_run: unknown input(s) {unknown}.")
    spec.check_values(values)  # every widget in range before the model is loaded
    del values["seed"]
    family, image_conditioning = values.pop("family"), values.pop("image_conditioning")
    switch_at_block = values.pop("switch_at_block")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if torch.is_tensor(samples) and samples.dim() == 5:  # the block layout too, before the model is loaded
        spec.run_settings(values, family, None, samples.shape[2])
    causal, adapter, patcher = causal_model_of(model, seed)
    check_actions(causal.config, actions)  # Matrix-Game 2.0's actions: refused before anything runs elsewhere
    noise_mask = latent.get("noise_mask")  # Wan22ImageToVideoLatent's start image
    inputs = build_sampler_inputs(causal.config, latent["samples"], positive, negative, switch_positive,
                                  image_conditioning, adapter, noise_mask=noise_mask,
                                  switch_at_block=switch_at_block if switch_positive is not None else None)
    settings, notes = spec.run_settings(values, family, causal.config, inputs.latent.shape[2])
    if vace_control is not None or restyle is not None:  # streamed inputs, sized like the video (nodes/control_nodes.py)
        width, height = 8 * inputs.latent.shape[4], 8 * inputs.latent.shape[3]
        if vace_control is not None:
            inputs = dataclasses.replace(inputs, vace=inputs.vace + (vace_control.build(width, height,
                                                                                        inputs.from_raw),))
        if restyle is not None:
            settings = dataclasses.replace(settings, steps=restyle.steps(settings.steps), warp=True)
            inputs = dataclasses.replace(inputs, restyle=restyle.build(width, height, inputs.from_raw))
    for note in notes:
        log.warning("Causal Wan Sampler: %s", note)
        if not note.startswith("family "):
            bridge.progress_text(note, unique_id)
    switches = []
    if inputs.switch_text is not None:
        switches.append(PromptSwitch(int(switch_at_block), inputs.switch_text))
    return causal, inputs, settings, switches, patcher


def causal_model_of(model, seed: int = 0):
    """``(CausalWanModel, conditioning adapter, ModelPatcher or None)`` for whatever sits on the MODEL socket.

    A ComfyUI MODEL is loaded by its model management first, then its diffusion model is adopted (weights
    shared) and its latent format / ``extra_conds`` map the conditioning; our own model (outside ComfyUI)
    uses Wan 2.1's statistics."""
    if getattr(model, "is_clipwan_causal_model", False):
        return model, WanLatentAdapter(), None
    if bridge.is_model_patcher(model):
        bridge.load_models_gpu([model])
        causal = CausalWanModel.adopt(model.model.diffusion_model, compute_dtype=bridge.inference_dtype(model),
                                      device=model.load_device)
        return causal, bridge.ComfyModelAdapter(model, seed), model
    raise ValueError(f"model ({type(model).__name__}) is not a Wan 2.1 model: connect Load Diffusion Model "
                     f"(a Wan 2.1 file) or Load Causal Wan Model.")


class _RunReporter(SamplerHooks):
    """The loop's observer for the node: the progress bar advances per denoising step; each finished block's
    frames go to the page's frame player (or, with no page listening, onto the progress bar as a preview).
    The previewer is made once per run (ComfyUI's ``taesd`` previewer loads its decoder from disk)."""

    def __init__(self, patcher, unique_id, total_steps: int, to_raw=None):
        self.node = unique_id
        self.tiny = _tiny_live_decoder() if to_raw is not None else None
        self.to_raw = to_raw
        self.done = 0
        self.progress = bridge.Progress(max(1, total_steps), node_id=unique_id)
        self.comfy_previewer = bridge.latent_previewer(patcher) if patcher is not None else None
        self.previewer = LatentPreviewer()
        self.stream = bridge.prompt_server() is not None

    def _frames_rgb(self, x0):
        """PIL images of the block's frames (first video in the batch)."""
        if self.tiny is not None:  # taew2_1 in models/vae_approx: decoded frames (4 per latent frame)
            try:
                from ..wan.vae.latent import frames_to_pil

                pixels = self.tiny.decode(self.to_raw(x0[:1]))  # [1, 3, F, H, W] in [-1, 1]
                frames = ((pixels[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
                return frames_to_pil(frames.cpu().numpy())
            except Exception as exc:  # never fail a sampling run over its preview
                log.warning("tiny decoder preview failed, using latent previews: %s", exc)
                self.tiny = None
        if self.comfy_previewer is not None:
            try:
                return [self.comfy_previewer.decode_latent_to_preview(x0[:1, :, f:f + 1])
                        for f in range(x0.shape[2])]
            except Exception:
                self.comfy_previewer = None
        from ..wan.vae.latent import frames_to_pil

        return frames_to_pil(self.previewer.frames(x0[0]))

    def on_step(self, block, step, total_steps):
        self.done += 1
        self.progress.update_absolute(self.done)

    def on_block(self, result):
        images = self._frames_rgb(result.x0)
        if self.stream:  # the frame player is the sampler's one preview: no second picture under it
            payload = {"node": self.node, "block": result.index, "total_blocks": result.total,
                       "frame_start": int(result.start_frame), "frames": [_jpeg_base64(im) for im in images]}
            bridge.send_ui_event(UI_EVENT, payload)
        else:
            self.progress.update_absolute(self.done, images[-1])


def _tiny_live_decoder():
    """The TAEHV streaming decoder when ``taew2_1`` (or ``lighttaew2_1``) is in models/vae_approx, else None."""
    from ..wan.vae.taehv import FILE_PREFIXES, TAEHV

    path = bridge.tiny_decoder_file(FILE_PREFIXES)
    if path is None:
        return None
    try:
        return TAEHV.from_file(path, device=bridge.torch_device()).stream_decoder()
    except (OSError, ValueError) as exc:
        log.warning("models/vae_approx/%s is not usable for live frames: %s", path.rsplit("/", 1)[-1], exc)
        return None


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
