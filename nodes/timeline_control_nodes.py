"""Image and LoRA changes on a prompt timeline in ComfyUI: two small nodes that add them to a CLIPWAN_TIMELINE, and the
live routes that send them to a running Causal Wan Stream Video (beside the prompt route of timeline_nodes.py):

* ``POST /clipwan/live/{node_id}/image`` with JSON ``{"image": base64 PNG/JPEG/WebP (or a data: URL), "route":
  "both"|"clip"|"start", "blend_blocks": N, "name": "fox.png"}`` -> ``{"id", "node"}``. The image is encoded off the
  sampling thread (its CLIP vision features with the timeline's clip_vision, its latent with the stream's VAE at
  the run's size) and applied at the next block boundary (wan/timeline/controls.py says what each route does).
* ``POST /clipwan/live/{node_id}/lora`` with ``{"strength": 0.5, "name": ""}`` -> ``{"id", "node"}``: the strength
  of a LoRA merged by Load Causal Wan Model, from the next block on.

404: no stream of that node is running; 400: a bad request (the message says why and the fix). The requests and
their states are in ``GET /clipwan/live`` with the prompts'.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..wan.timeline.controls import IMAGE_ROUTES, ImageChange, LoraChange, image_encoder
from .timeline_nodes import LIVE_PATH, TIMELINE_TYPE, live_run

# Wan i2v feeds CLIP vision the whole image squashed to 224x224 (ComfyUI's CLIP Vision Encode, crop "none")
CLIP_CROP = False


def attach_image_encoder(timeline, vae_encode, from_raw, latent_shape) -> None:
    """Give a running stream's live control its image encoder (the stream node calls this once per run)."""
    from ..wan.vae.latent import latent_format

    if timeline is None or timeline.live is None or vae_encode is None:
        return
    spatial = latent_format(latent_shape[1]).spatial  # pixels per latent pixel of the model's VAE
    h, w = latent_shape[-2:]
    timeline.live.image_encoder = image_encoder(vae_encode, from_raw, spatial * w, spatial * h,
                                                timeline.controls.clip_vision, CLIP_CROP)


class CausalWanTimelineImage:
    DESCRIPTION = ("Adds a reference-image change to a prompt timeline: from start_block on the video follows the new "
                   "image — route clip: its CLIP vision features (i2v models: the image cross-attention is rebuilt "
                   "once at the change, or blended over blend_blocks blocks); start: the image as a new start frame "
                   "(i2v: the concat channels' known frame; t2v causal models: the block's first frame clamped to "
                   "it); both. "
                   "clip_vision also encodes images sent live to a running Causal Wan Stream Video.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (TIMELINE_TYPE,)
    RETURN_NAMES = ("timeline",)
    OUTPUT_TOOLTIPS = ("The timeline with the image change (the causal nodes' timeline input).",)
    SEARCH_ALIASES = ["image change", "reference image", "new start image", "clip reference", "live image", "clipwan"]
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "timeline": (TIMELINE_TYPE, {"tooltip": "A prompt timeline (Prompt Timeline from Text / Conditionings)."}),
            "image": ("IMAGE", {"tooltip": "The new reference image (its first frame is used)."}),
            "start_block": ("INT", {"default": 4, "min": 1, "max": 100000,
                                    "tooltip": "The block from which the new image conditions the video."}),
            "route": (list(IMAGE_ROUTES), {"default": "both", "tooltip": (
                "clip: the CLIP reference only (i2v models); start: a new start frame only; both: each route the "
                "model reads.")}),
        }, "optional": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP vision (clip_vision_h) for the CLIP route; also encodes "
                                                       "live images."}),
            "vae": ("VAE", {"tooltip": "The Wan VAE, for the start-image route."}),
            "latent": ("LATENT", {"tooltip": "The run's LATENT (e.g. Wan I2V Conditioning's): the image is encoded at "
                                             "its size (width/height are then not used)."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "The run's width (the image is resized and centre-cropped to it)."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "The run's height."}),
            "blend_blocks": ("INT", {"default": 0, "min": 0, "max": 1000, "advanced": True, "tooltip": (
                "0: change at once; N: the CLIP features move linearly to the new image's over N blocks "
                "(route clip).")}),
        }}

    def add(self, timeline, image, start_block, route="both", clip_vision=None, vae=None, latent=None, width=832,
            height=480, blend_blocks=0):
        from ..wan.conditioning.inputs import WanLatentAdapter
        from .stream_nodes import wan_vae_of

        route = "clip" if int(blend_blocks) > 0 else route
        if latent is not None:  # the run's size, from its latent (Wan 2.1: 8 pixels per latent pixel, 2.2: 16)
            from ..wan.vae.latent import latent_format

            samples = latent["samples"]
            spatial = latent_format(samples.shape[1]).spatial
            height, width = spatial * samples.shape[-2], spatial * samples.shape[-1]
        latent_too = route in ("both", "start") and vae is not None
        if (route == "start" and vae is None) or (route == "both" and vae is None and clip_vision is None):
            raise ValueError(f"route '{route}' needs what encodes the image: connect vae (Load VAE, wan_2.1_vae) for "
                             f"a new start image and/or clip_vision (clip_vision_h) for a CLIP reference.")
        encode = image_encoder(wan_vae_of(vae).encode if latent_too else None, WanLatentAdapter().latent_in,
                               int(width), int(height), clip_vision, CLIP_CROP)
        clip_fea, latent = encode(image[:1], route if latent_too else "clip")
        out = timeline.copy()
        out.controls.insert(ImageChange(block=int(start_block), clip_fea=clip_fea, latent=latent,
                                        blend_blocks=int(blend_blocks), label=f"image at block {start_block}",
                                        source=f"image change at block {start_block}"))
        if clip_vision is not None:
            out.controls.clip_vision = clip_vision
        return (out,)


class CausalWanTimelineLoraStrength:
    DESCRIPTION = ("Adds a LoRA strength change to a prompt timeline: from start_block on, the LoRA merged by Load "
                   "Causal Wan Model (lora_name) runs at this strength (set in the weights at the block boundary, put "
                   "back when the run ends). Not for LongLive 1.0 / MemFlow, whose LoRA is the distilled model.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (TIMELINE_TYPE,)
    RETURN_NAMES = ("timeline",)
    OUTPUT_TOOLTIPS = ("The timeline with the LoRA strength change.",)
    SEARCH_ALIASES = ["lora strength", "lora schedule", "live lora", "clipwan"]
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "timeline": (TIMELINE_TYPE, {"tooltip": "A prompt timeline."}),
            "start_block": ("INT", {"default": 4, "min": 1, "max": 100000,
                                    "tooltip": "The block from which the strength applies."}),
            "strength": ("FLOAT", {"default": 0.5, "min": -10.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "The LoRA strength from start_block on (1.0 = as trained)."}),
        }, "optional": {
            "lora_name": ("STRING", {"default": "", "tooltip": "Which merged LoRA (its file name); empty: the only "
                                                               "one."}),
        }}

    def add(self, timeline, start_block, strength, lora_name=""):
        out = timeline.copy()
        out.controls.insert(LoraChange(block=int(start_block), strength=float(strength), name=str(lora_name or ""),
                                       source=f"LoRA strength at block {start_block}"))
        return (out,)


# --- the live routes -------------------------------------------------------------------------------------------------
def live_image_request(node_id, body: dict) -> dict:
    """What ``POST /clipwan/live/{node}/image`` does (also callable without a server)."""
    from ..axera_export.interrogate import RequestError, decode_image

    live = live_run(node_id)
    if not isinstance(body, dict) or "image" not in body:
        raise ValueError('send JSON {"image": "<base64 PNG/JPEG>"} (optional: "route": "both"|"clip"|"start", '
                         '"blend_blocks": N, "name": "fox.png").')
    try:
        pixels = torch.from_numpy(decode_image(body["image"]))
    except RequestError as exc:
        raise ValueError(str(exc)) from None
    rid = live.request_image(pixels[:1], blend_blocks=int(body.get("blend_blocks", 0) or 0),
                             route=str(body.get("route", "both")), label=str(body.get("name", "") or "image"))
    return {"id": rid, "node": str(node_id)}


def live_lora_request(node_id, body: dict) -> dict:
    """What ``POST /clipwan/live/{node}/lora`` does."""
    live = live_run(node_id)
    if not isinstance(body, dict) or "strength" not in body:
        raise ValueError('send JSON {"strength": 0.5} (optional: "name": the LoRA file name).')
    try:
        strength = float(body["strength"])
    except (TypeError, ValueError):
        raise ValueError(f"strength {body['strength']!r} is not a number; send e.g. 0.5.") from None
    return {"id": live.request_lora(strength, str(body.get("name", "") or "")), "node": str(node_id)}


def _handler(fn):
    async def handle(request):
        from aiohttp import web

        try:
            body = await request.json()
        except Exception:
            body = None
        try:
            return web.json_response(fn(request.match_info["node_id"], body))
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except (ValueError, RuntimeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return handle


def register_routes(server) -> None:
    """POST /clipwan/live/{node_id}/image and /lora."""
    server.routes.post(LIVE_PATH + "/{node_id}/image")(_handler(live_image_request))
    server.routes.post(LIVE_PATH + "/{node_id}/lora")(_handler(live_lora_request))


def control_label(loop) -> Optional[str]:
    """"image 2 from block 8: fox.png" / "LoRA x0.5 from block 12" for the frame player (None: no change yet)."""
    controls = getattr(loop, "controls", None)
    return None if controls is None else controls.schedule.label()


NODE_CLASS_MAPPINGS = {"CausalWanTimelineImage": CausalWanTimelineImage,
                       "CausalWanTimelineLoraStrength": CausalWanTimelineLoraStrength}
NODE_DISPLAY_NAME_MAPPINGS = {"CausalWanTimelineImage": "Timeline Image Change (ClipWan)",
                              "CausalWanTimelineLoraStrength": "Timeline LoRA Strength (ClipWan)"}
