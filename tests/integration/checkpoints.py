"""Small generated checkpoints for the integration suite, with the real key names and layouts.

- ``clip_vision/clip_vision_h.safetensors``: ViT-H/14 at full depth (32 layers) in ComfyUI's
  ``clip_vision_h`` (Hugging Face) naming, fp16 like the file users download. Full depth because core's
  CLIPVisionLoader recognises ViT-H by its 31st layer.
- ``clip_vision/clip_vision_h_4layers.safetensors``: the same architecture reduced to 4 layers, for the
  workflows that only use the pack's loader (fast).
- ``diffusion_models/wan_tiny_i2v.safetensors`` / ``wan_tiny_t2v.safetensors``: Wan 2.1 DiT with Wan's key
  names, dim 128 (ComfyUI derives 1 head), 2 layers; i2v has ``img_emb`` and in_dim 36.
- ``diffusion_models/matrix_game_tiny.safetensors``: Matrix-Game 2.0's layout (no text embedding, CLIP-only
  cross-attention, universal action modules in block 0: keys W S A D + mouse), ``model.`` prefix as released.
- ``vae/wan_2.1_vae_tiny.safetensors``: ComfyUI's own Wan 2.1 VAE class at base width 8 (ComfyUI reads the
  width from ``decoder.head.0.gamma``), random init.
- ``loras/lora.pt``: a LongLive-format LoRA (``{generator_lora, critic_lora, step}``, PEFT keys, rank 4) for
  every Linear inside the tiny i2v DiT's blocks.
- ``loras/lora_tiny_t2v.safetensors``: a flat PEFT LoRA of the t2v file (a style LoRA on a t2v family: the
  live-image template's LoRA)
- ``input/clipwan_test.png``: a 64×64 RGB gradient.

The CLIP and Wan weights come from the pack's own seeded builders; the VAE from ComfyUI's class (what core's
VAELoader loads; the pack's streaming decoder then adopts that loaded VAE).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

CLIP_FULL = "clip_vision_h.safetensors"
CLIP_SMALL = "clip_vision_h_4layers.safetensors"
WAN_I2V = "wan_tiny_i2v.safetensors"
WAN_T2V = "wan_tiny_t2v.safetensors"
MATRIX_GAME = "matrix_game_tiny.safetensors"
VAE = "wan_2.1_vae_tiny.safetensors"
LORA = "lora.pt"
LORA_T2V = "lora_tiny_t2v.safetensors"  # a flat PEFT LoRA of the t2v test model (a style LoRA on a t2v family)
IMAGE = "clipwan_test.png"
TINY_WAN = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=2)


def clip_vision_state_dict(layers=None, dtype=torch.float16) -> dict:
    from comfyui_clipwan.clip_vision.loader import default_clip_vision
    from comfyui_clipwan.clip_vision.model import internal_to_canonical

    model = default_clip_vision("ViT-H/14", seed=0, layers=layers)
    return {k: v.to(dtype).contiguous() for k, v in internal_to_canonical(model.model).items()}


def wan_state_dict(i2v: bool, seed: int = 0) -> dict:
    from comfyui_clipwan.wan.model.config import WanConfig
    from comfyui_clipwan.wan.model.dit import WanDiT, init_random

    cfg = WanConfig(**TINY_WAN, in_dim=36 if i2v else 16, has_img_emb=i2v)
    model = init_random(WanDiT(cfg), seed=seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def matrix_game_state_dict(seed: int = 0) -> dict:
    from comfyui_clipwan.wan.model.actions import ActionConfig
    from comfyui_clipwan.wan.model.config import WanConfig
    from comfyui_clipwan.wan.model.dit import WanDiT, init_random

    actions = ActionConfig(blocks=(0,), dim=TINY_WAN["dim"], keyboard_dim=4, mouse_dim=2, hidden_size=16,
                           keyboard_hidden=64, mouse_hidden=64)
    cfg = WanConfig(**TINY_WAN, in_dim=36, has_img_emb=True, image_context_only=True, actions=actions)
    model = init_random(WanDiT(cfg), seed=seed)
    return {"model." + k: v.contiguous() for k, v in model.state_dict().items()}


def wan_vae_state_dict(comfy_dir: pathlib.Path, dim: int = 8) -> dict:
    from .inprocess import import_comfy

    import_comfy(comfy_dir)
    from comfy.ldm.wan.vae import WanVAE  # ComfyUI's class, so the keys are what its VAELoader detects

    vae = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    # ComfyUI builds its layers without weight init (they expect a checkpoint), so initialise here:
    # unit norm gains, zero biases, fan-in scaled conv weights (keeps activations finite and varied).
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in vae.state_dict().items():
        if k.endswith("gamma"):
            sd[k] = torch.ones(v.shape)
        elif k.endswith("bias") or v.dim() < 2:
            sd[k] = torch.zeros(v.shape)
        else:
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) * fan_in ** -0.5
    return sd


def longlive_lora(sd: dict, rank: int = 4, seed: int = 2) -> dict:
    """LongLive's trainer format over every 2-D weight inside the blocks of a Wan state dict ``sd``."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key in sorted(sd):
        if key.startswith("blocks.") and key.endswith(".weight") and sd[key].dim() == 2:
            module = key[: -len(".weight")]
            lora[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, sd[key].shape[1], generator=g) * 0.05
            lora[f"base_model.model.{module}.lora_B.weight"] = torch.randn(sd[key].shape[0], rank, generator=g) * 0.05
    return {"generator_lora": lora, "critic_lora": {}, "step": 1}


def test_image(size: int = 64) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([x, y, 1 - x * y], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def populate(base: pathlib.Path) -> None:
    comfy_dir = pathlib.Path(os.environ["COMFYUI_DIR"]).resolve()
    models = base / "models"
    for sub in ("clip_vision", "diffusion_models", "vae", "text_encoders", "loras"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    save_file(clip_vision_state_dict(layers=None), models / "clip_vision" / CLIP_FULL)
    save_file(clip_vision_state_dict(layers=4), models / "clip_vision" / CLIP_SMALL)
    save_file(wan_state_dict(i2v=True), models / "diffusion_models" / WAN_I2V)
    save_file(wan_state_dict(i2v=False), models / "diffusion_models" / WAN_T2V)
    save_file(matrix_game_state_dict(), models / "diffusion_models" / MATRIX_GAME)
    torch.save(longlive_lora(wan_state_dict(i2v=True)), str(models / "loras" / LORA))
    save_file(longlive_lora(wan_state_dict(i2v=False))["generator_lora"], models / "loras" / LORA_T2V)
    save_file(wan_vae_state_dict(comfy_dir), models / "vae" / VAE)
    test_image().save(base / "input" / IMAGE)
    test_image().save(base / "input" / "example.png")  # ComfyUI ships input/example.png; the examples name it
    # Test-only node standing in for the 5.7B-parameter UMT5 text encoder (see test_nodes_source).
    (base / "custom_nodes" / "clipwan_test_text.py").write_text(TEST_TEXT_NODE)


# A custom node file written into the temporary ComfyUI only: CLIPTextEncode's place in the example
# workflows (the real UMT5-XXL cannot be generated at test size: ComfyUI's Wan text encoder config is fixed).
TEST_TEXT_NODE = '''
import hashlib
import torch


class ClipWanTestText:
    """Seeded random [1, 512, 4096] text embedding (zero-padded after 12 tokens), keyed by the text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed)
        cond = torch.zeros(1, 512, 4096)
        cond[:, :12] = torch.randn(1, 12, 4096, generator=g) * 0.1
        return ([[cond, {}]],)


class ClipWanTestLoadedModels:
    """What ComfyUI's model management holds right now (class names of the loaded models), run after
    ``after`` when connected; re-runs on every queue."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nonce": ("INT", {"default": 0})}, "optional": {"after": ("LATENT",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def report(self, nonce, after=None):
        import comfy.model_management as mm

        names = []
        for loaded in mm.current_loaded_models:
            patcher = loaded.model
            inner = getattr(patcher, "model", None) if patcher is not None else None
            names.append(type(inner).__name__)
        return {"ui": {"loaded": names}}


class _TestClip:
    """A CLIP with ComfyUI's interface (tokenize / encode_from_tokens_scheduled) giving ClipWanTestText's tensors."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return ClipWanTestText().encode(tokens)[0]


class ClipWanTestClip:
    """CLIPLoader's place where a pack node takes the CLIP itself (Prompt Timeline from Text)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        return (_TestClip(),)


NODE_CLASS_MAPPINGS = {"ClipWanTestText": ClipWanTestText, "ClipWanTestLoadedModels": ClipWanTestLoadedModels,
                       "ClipWanTestClip": ClipWanTestClip}
'''
