"""Turning the committed API-format examples into prompts the test server can run.

The examples name the files users download (clip_vision_h.safetensors, the Wan VAE, …) and 480p/81-frame
sizes. Here every model file becomes the matching generated test file, sizes shrink to 64×64 and a few
frames, and CLIPLoader + CLIPTextEncode (UMT5-XXL, 5.7B parameters, not generatable at test size) become
the test-only ClipWanTestText node. Everything else — node types, links, the pack's widgets — runs as
committed.
"""

from __future__ import annotations

import copy
import json
import pathlib

from . import checkpoints as ck

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
API_DIR = REPO_ROOT / "example_workflows" / "api"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt")

# Which generated file stands in for the model file a node names.
FILE_FOR_NODE = {
    "CLIPVisionLoader": ck.CLIP_FULL,  # core detects ViT-H by depth: the full-depth file
    "LoadCLIPVisionH14": ck.CLIP_SMALL,
    "UNETLoader": ck.WAN_I2V,
    "LoadCausalWanModel": ck.WAN_I2V,
    "VAELoader": ck.VAE,
    "ExportCLIPToAxmodel": ck.CLIP_SMALL,
    "ApplyCausalWanLoRA": ck.LORA,
}
# t2v-distilled families whose loop takes no channel-concat image (Krea's recompute loop refuses it): the t2v file
FILE_FOR_NAME = {"krea-realtime-video-14b.safetensors": ck.WAN_T2V, "self_forcing_dmd.pt": ck.WAN_T2V,
                 "matrix_game2_base_distill.safetensors": ck.MATRIX_GAME,  # Matrix-Game 2.0: no text, action modules
                 # the live-image template's LoRA on LoadCausalWanModel (t2v family)
                 "Wan21_CausVid_bidirect2_T2V_1_3B_lora_rank32.safetensors": ck.LORA_T2V}
TEST_SIZES = {"width": 64, "height": 64, "length": 21, "batch_size": 1}  # 6 latent frames = 2 blocks of 3
# with independent_first_frame on, blocks of 3 follow a 1-frame block: 7 latent frames = 1 + 2 blocks of 3
LENGTH_AFTER_FIRST_FRAME = 25
# Krea's loop re-encodes a decoded frame from its third generated block on: 10 latent frames = 1 + 3 blocks of 3
LENGTH_KREA = 37


def test_length(prompt: dict) -> int:
    """The pixel length the test server runs ``prompt`` at: one that fits its samplers' block layout."""
    samplers = [node["inputs"] for node in prompt.values()
                if node["class_type"] in ("CausalWanSampler", "CausalWanStreamVideo", "CausalWanLoopSampler")]
    if any(str(s.get("family", "")).startswith("Krea") for s in samplers):
        return LENGTH_KREA
    first = any(s.get("independent_first_frame") is True for s in samplers)
    return LENGTH_AFTER_FIRST_FRAME if first else TEST_SIZES["length"]


def load_examples() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(API_DIR.glob("*.json"))}


def for_test_server(prompt: dict, sizes: dict | None = None) -> dict:
    prompt = copy.deepcopy(prompt)
    sizes = {**TEST_SIZES, "length": test_length(prompt), **(sizes or {})}
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            takes_clip = any(n["class_type"] not in ("CLIPTextEncode", "CLIPLoader") and [node_id, 0] in
                             n["inputs"].values() for n in prompt.values())  # e.g. Prompt Timeline from Text
            if takes_clip:
                prompt[node_id] = {"class_type": "ClipWanTestClip", "inputs": {}}
            else:
                del prompt[node_id]
            continue
        if kind == "CLIPTextEncode":
            node["class_type"] = "ClipWanTestText"
            node["inputs"] = {"text": inputs["text"]}
            continue
        if kind == "LoadImage":
            inputs["image"] = ck.IMAGE
        for name, value in inputs.items():
            if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS) and kind in FILE_FOR_NODE:
                inputs[name] = FILE_FOR_NAME.get(value, FILE_FOR_NODE[kind])
        if kind in ("WanImageToVideo", "WanI2VConditioning", "MatrixGameConditioning"):
            inputs.update({k: v for k, v in sizes.items() if k in inputs or k in ("width", "height", "length")})
    return prompt


def node_ids(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]
