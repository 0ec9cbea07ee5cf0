"""What both causal nodes (Causal Wan Sampler, Causal Wan Stream Video) and the loop SAMPLER share: their sockets
around the settings' widgets, the widgets and sockets -> a set-up run (``prepare_run``), the MODEL socket adopted
as our model, and the run's reporter (progress per step, frames to the page's player).

The node modules import these from here (one place), never each other's private helpers.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging

import torch

from . import comfy_bridge as bridge
from ..wan.conditioning.inputs import WanLatentAdapter, build_sampler_inputs
from ..wan.model.causal import CausalWanModel
from ..wan.sampling import settings_spec as spec
from ..wan.sampling.action_cache import check_actions
from ..wan.sampling.loop import PromptSwitch, SamplerHooks
from ..wan.vae.latent import LatentPreviewer

log = logging.getLogger("comfyui_clipwan")

UI_EVENT = "clipwan.causal_frames"
PREVIEW_MAX_SIDE = 256


# the causal families by the names users search for (the loader loads them, the sampler and the stream node run
# them); "vace" finds the two causal nodes, which take VACE-style control
FAMILY_ALIASES = ["krea", "krea realtime", "memflow", "rolling forcing", "rolling", "reward forcing", "reward",
                  "causal forcing", "causal forcing++"]


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


class RunReporter(SamplerHooks):
    """The loop's observer for the node: the progress bar advances per denoising step; each finished block's
    frames go to the page's frame player (or, with no page listening, onto the progress bar as a preview).
    The previewer is made once per run (ComfyUI's ``taesd`` previewer loads its decoder from disk)."""

    def __init__(self, patcher, unique_id, total_steps: int, to_raw=None):
        self.node = unique_id
        self.tiny = tiny_live_decoder() if to_raw is not None else None
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
                       "frame_start": int(result.start_frame), "frames": [jpeg_base64(im) for im in images]}
            bridge.send_ui_event(UI_EVENT, payload)
        else:
            self.progress.update_absolute(self.done, images[-1])


def tiny_live_decoder():
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


def jpeg_base64(image) -> str:
    image = image.convert("RGB")
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")
