"""Matrix-Game 2.0 nodes: the action timeline (CLIPWAN_ACTIONS, fed to the causal nodes' optional ``actions``
input) and its image conditioning (start image -> concat latent + CLIP features, no text).

Thin wrappers: the timeline lives in ``wan/conditioning/actions.py``, the action modules in ``wan/model/actions.py``.
"""

from __future__ import annotations

import os

import torch

from . import comfy_bridge as bridge
from ..wan.conditioning import image as cond
from ..wan.conditioning.actions import ACTION_MODES, AUTO, LiveActions, load_actions, parse_timeline

ACTIONS_TYPE = "CLIPWAN_ACTIONS"
LIVE_KEYS_PATH = "/clipwan/matrix_game/keys"
# live key holders by the id of the Matrix-Game Actions node that made them (the HTTP route writes them)
LIVE: dict = {}
DEFAULT_TIMELINE = "0-24: W\n25-40: W + L\n41-: D + mouse(0, -0.1)"
# Matrix-Game 2.0 runs at 352x640 (its inference.py resizes and centre-crops the start image to this)
MATRIX_GAME_WIDTH, MATRIX_GAME_HEIGHT = 640, 352


class MatrixGameActions:
    DESCRIPTION = ("Keyboard and mouse actions for Matrix-Game 2.0, per pixel frame or per block, typed as text "
                   "(one line per segment: '0-11: W', '12-: W + mouse(0.1, 0)', 'block 3: D + L'; docs/wan.md "
                   "lists the keys of each mode) or read from an action file (the same text, or the authors' "
                   "keyboard_condition / mouse_condition tensors as .json or .safetensors). Connect it to the "
                   "actions input of Causal Wan Sampler or Causal Wan Stream Video.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (ACTIONS_TYPE,)
    RETURN_NAMES = ("actions",)
    OUTPUT_TOOLTIPS = ("Matrix-Game 2.0 action timeline for the causal sampler's actions input.",)
    SEARCH_ALIASES = ["matrix game", "matrix-game", "world model", "keyboard", "mouse", "actions", "wasd",
                      "clipwan"]
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (list(ACTION_MODES), {
                    "default": AUTO, "tooltip": "auto: the model's action module decides (universal: W S A D + "
                                                "mouse; gta_drive: W S + steering; templerun: 7 keys, no mouse)."}),
                "timeline": ("STRING", {"multiline": True, "default": DEFAULT_TIMELINE, "tooltip": (
                    "FRAMES: KEYS per line; frames are pixel frames (inclusive, 'N-' = to the end) or "
                    "'block A-B' for latent blocks. Keys: W S A D (templerun also Z C), camera I K J L, "
                    "mouse(pitch, yaw), idle. Frames no line covers are idle.")}),
            },
            "optional": {
                "action_file": ("STRING", {"default": "", "tooltip": (
                    "Instead of the text: a file in ComfyUI's input folder (or an absolute path) with the text "
                    "format, or the authors' keyboard_condition / mouse_condition tensors (.json, .safetensors).")}),
                "live": ("BOOLEAN", {"default": False, "tooltip": (
                    f"Also take keys sent while the stream plays: POST {LIVE_KEYS_PATH} with "
                    "{\"node\": <this node's id>, \"keys\": \"W + L\"}; from the next block on they replace the "
                    "timeline (docs/wan.md).")}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def build(self, mode=AUTO, timeline=DEFAULT_TIMELINE, action_file="", live=False, unique_id=None):
        if action_file and action_file.strip():
            out = load_actions(_input_path(action_file.strip()), mode)
        else:
            out = parse_timeline(timeline, mode)
        if live:
            out.live = LIVE.setdefault(str(unique_id), LiveActions(mode))
        return (out,)


def _input_path(name: str) -> str:
    if os.path.isabs(name) or not bridge.in_comfyui():
        return name
    import folder_paths  # ComfyUI's; only inside ComfyUI

    return os.path.join(folder_paths.get_input_directory(), name)


class MatrixGameConditioning:
    DESCRIPTION = ("Image conditioning for Matrix-Game 2.0 (no text): the start image resized and centre-cropped "
                   "to the video size and VAE-encoded as the concat latent (mask on frame 0), plus its CLIP "
                   "vision output (ViT-H/14, encode with crop 'none' as the authors do). Gives the positive "
                   "conditioning and the empty latent for Causal Wan Sampler / Causal Wan Stream Video.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = ("CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "latent")
    OUTPUT_TOOLTIPS = ("Conditioning with the CLIP features and the concat latent (Matrix-Game has no text).",
                       "Empty video latent of the requested size.")
    SEARCH_ALIASES = ["matrix game", "matrix-game", "image to world", "world model", "clipwan"]
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (Matrix-Game ships Wan2.1_VAE.pth)."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {
                    "tooltip": "CLIP ViT-H/14 output of the start image (CLIP Vision Encode, crop none)."}),
                "start_image": ("IMAGE", {"tooltip": "The first frame of the world."}),
                "width": ("INT", {"default": MATRIX_GAME_WIDTH, "min": 16, "max": 16384, "step": 16,
                                  "tooltip": "Video width (Matrix-Game 2.0 was trained at 640)."}),
                "height": ("INT", {"default": MATRIX_GAME_HEIGHT, "min": 16, "max": 16384, "step": 16,
                                   "tooltip": "Video height (Matrix-Game 2.0 was trained at 352)."}),
                "length": ("INT", {"default": 57, "min": 1, "max": 16384, "step": 4,
                                   "tooltip": "Pixel frames (1 + 4k); blocks of 3 latent frames: 9, 21, 33 ... "
                                              "57 (15 latent frames, the authors' config), 597 (150)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Videos per batch."}),
            },
        }

    def encode(self, vae, clip_vision_output, start_image, width=MATRIX_GAME_WIDTH, height=MATRIX_GAME_HEIGHT,
               length=57, batch_size=1):
        def resize(images_bchw, w, h):
            out = bridge.comfy_resize_center(images_bchw, w, h)
            return cond.resize_center_crop(images_bchw, w, h) if out is None else out

        latent, concat_latent, mask = cond.i2v_latents(width, height, length, batch_size, start_image[:1],
                                                       lambda pixels: vae.encode(pixels[:, :, :, :3]), resize)
        # no text: a placeholder the model never reads (its cross-attention attends the CLIP tokens only)
        positive = [[torch.zeros(1, 1, 4096), {"concat_latent_image": concat_latent, "concat_mask": mask,
                                                "clip_vision_output": clip_vision_output}]]
        return positive, {"samples": latent.to(bridge.intermediate_device())}


async def _live_keys_handler(request):
    """POST {"node": id, "keys": "W + L"} -> {"node", "keys", "sent"}; 404 for a node with no live timeline,
    400 for keys its model has not (the message lists the keys)."""
    from aiohttp import web

    try:
        body = await request.json()
        node, keys = str(body["node"]), str(body["keys"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected JSON {"node": "<Matrix-Game Actions node id>", '
                                           '"keys": "W + L"}'}, status=400)
    live = LIVE.get(node)
    if live is None:
        return web.json_response({"error": f"no Matrix-Game Actions node {node} with live on has run; turn "
                                           f"its live input on and queue the prompt first",
                                  "live_nodes": sorted(LIVE)}, status=404)
    try:
        live.send(keys)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"node": node, "keys": keys, "sent": live.sent})


def register_routes(server) -> None:
    """Called by nodes/__init__.py inside ComfyUI: POST /clipwan/matrix_game/keys (also under /api)."""
    server.routes.post(LIVE_KEYS_PATH)(_live_keys_handler)


NODE_CLASS_MAPPINGS = {
    "MatrixGameActions": MatrixGameActions,
    "MatrixGameConditioning": MatrixGameConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MatrixGameActions": "Matrix-Game Actions (ClipWan)",
    "MatrixGameConditioning": "Matrix-Game Conditioning (ClipWan)",
}
