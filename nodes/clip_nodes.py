"""CLIP vision nodes: load Wan's ViT-H/14 from any layout, and encode images into Wan i2v features.

Thin wrappers over ``clip_vision`` (pure PyTorch); ComfyUI is reached only through ``comfy_bridge``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import threading

import torch

from ..clip_vision import (MULTI_IMAGE_MODES, ClipVisionOutput, combine_images,
                           load_clip_vision)
from ..wan.model.features import check_clip_features
from . import comfy_bridge

DTYPE_CHOICES = ("default", "fp32", "fp16", "bf16")
DEVICE_CHOICES = ("default", "cpu", "gpu")
CROP_CHOICES = ("center", "none")


def _resolve_device(choice: str):
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "gpu":
        device = comfy_bridge.gpu_device()
        if device is None:
            raise ValueError("LoadCLIPVisionH14: device 'gpu' was chosen but no GPU is available; choose 'cpu' "
                             "or 'default'")
        return device
    return torch.device(comfy_bridge.text_encoder_device())


class LoadCLIPVisionH14:
    DESCRIPTION = ("Loads a CLIP vision tower of any size (ViT-H/14 for Wan 2.1 image-to-video, ViT-L/14, ViT-B, "
                   "bigG, …) from any common file: ComfyUI's "
                   "clip_vision_h.safetensors, Wan's original models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth "
                   "(text tower skipped), OpenCLIP or Hugging Face checkpoints. The size (ViT-H/14, ViT-L/14, …) is "
                   "detected from the weights. The output also works with ComfyUI's CLIP Vision Encode.")
    RETURN_TYPES = ("CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    OUTPUT_TOOLTIPS = ("The CLIP vision model; also works with ComfyUI's CLIP Vision Encode.",)
    SEARCH_ALIASES = ["clip vision", "vit-h", "vit-l", "open clip", "wan clip", "load clip vision", "clipwan"]
    FUNCTION = "load"
    CATEGORY = "ClipWan/loaders"

    @classmethod
    def INPUT_TYPES(cls):
        names = comfy_bridge.list_model_files("clip_vision")
        tip = "File in models/clip_vision (Wan .pth, OpenCLIP, Hugging Face or ComfyUI safetensors)."
        name_input = (names, {"tooltip": tip}) if comfy_bridge.in_comfyui() else \
            ("STRING", {"default": "clip_vision_h.safetensors", "tooltip": tip + " Outside ComfyUI: any path."})
        return {"required": {
            "clip_name": name_input,
            "dtype": (list(DTYPE_CHOICES), {"default": "default", "tooltip": (
                "Weight precision. default = fp16 weights like ComfyUI core (half the memory); on a CPU they are "
                "computed in fp32, so the features equal core's. fp32 = exact reference numbers, 2.5 GB for "
                "ViT-H. bf16 = fast on recent GPUs/CPUs with bf16 units, least precise.")}),
            "device": (list(DEVICE_CHOICES), {"default": "default", "tooltip": (
                "Where the model runs. default = where ComfyUI runs text/vision encoders; gpu = the main GPU; "
                "cpu = keep it off the GPU (slower, saves VRAM for the video model).")}),
        }}

    def load(self, clip_name, dtype="default", device="default"):
        path = comfy_bridge.resolve_model_path(clip_name, "clip_vision")
        torch_dtype = "fp16" if dtype == "default" else dtype
        load_device = _resolve_device(device)
        if not comfy_bridge.in_comfyui():
            return (load_clip_vision(path, dtype=torch_dtype, device=load_device),)
        # Inside ComfyUI: weights wait on the offload device; model management moves them to load_device for
        # each encode and may offload them again when the video model needs the memory (as core's CLIP vision)
        offload = load_device if load_device.type == "cpu" else comfy_bridge.text_encoder_offload_device()
        model = load_clip_vision(path, dtype=torch_dtype, device=offload)
        return (ManagedClipVision(model, comfy_bridge.managed_module(model.model, load_device, offload)),)


class ManagedClipVision:
    """Our CLIP vision model plus the ComfyUI ModelPatcher that manages its memory (``patcher``, as core's
    ``ClipVisionModel`` has); everything else is the wrapped model's."""

    def __init__(self, model, patcher):
        self.model_ref = model
        self.patcher = patcher

    def __getattr__(self, name):
        if name in ("model_ref", "patcher"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.model_ref, name)

    def encode_image(self, image, crop=True, penultimate_only: bool = False):
        comfy_bridge.load_model_gpu(self.patcher)
        return self.model_ref.encode_image(image, crop=crop, penultimate_only=penultimate_only)

    def __repr__(self):
        return f"Managed{self.model_ref!r}"


class FeatureCache:
    """Bounded LRU of encoded features, so re-queuing a prompt does not re-encode the same images.

    Key: model identity (+ its weight version) + image content hash + crop + multi_image mode. A model is
    identified by a never-reused serial number stamped on it (not ``id()``, which a later model may reuse), so
    entries do not keep models alive. Bounded by entry count and by bytes (long videos give big features).
    """

    _serials = itertools.count(1)

    def __init__(self, max_entries: int = 8, max_bytes: int = 1 << 30):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def model_key(model) -> tuple:
        serial = getattr(model, "_clipwan_cache_serial", None)
        if serial is None:
            serial = next(FeatureCache._serials)
            try:
                setattr(model, "_clipwan_cache_serial", serial)
            except AttributeError:  # an object that takes no attributes: never cache across calls
                return ("uncacheable", next(FeatureCache._serials))
        return (serial, getattr(model, "version", 0))

    @staticmethod
    def image_key(image: torch.Tensor) -> tuple:
        data = image.detach().to("cpu").contiguous()
        digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"",
                                 digest_size=16).hexdigest()
        return (tuple(data.shape), str(data.dtype), digest)

    def get_or_compute(self, key, compute):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        value = compute()
        with self._lock:
            self.misses += 1
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (len(self._entries) > self.max_entries or self.nbytes > self.max_bytes):
                self._entries.popitem(last=False)
        return value

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for out in self._entries.values()
                   for t in (out.last_hidden_state, out.penultimate_hidden_states, out.image_embeds)
                   if isinstance(t, torch.Tensor))

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        return len(self._entries)


FEATURE_CACHE = FeatureCache()


def _describe(model) -> str:
    return str(getattr(model, "source", None) or f"the connected {type(model).__name__}")


def _encode(model, image, crop: str) -> ClipVisionOutput:
    """Encode with our model or ComfyUI core's ClipVisionModel (crop=True/False there)."""
    if hasattr(model, "layout") and hasattr(model, "config"):  # ours: exact Wan squash for "none"
        return model.encode_image(image, crop=crop)
    core = model.encode_image(image, crop=(crop == "center"))
    return ClipVisionOutput(last_hidden_state=getattr(core, "last_hidden_state", None),
                            penultimate_hidden_states=core["penultimate_hidden_states"],
                            image_embeds=getattr(core, "image_embeds", None),
                            image_sizes=list(getattr(core, "image_sizes", []) or []))


def _to_comfy_output(out: ClipVisionOutput):
    """A ``comfy.clip_vision.Output`` inside ComfyUI (core consumers expect that class), else ours."""
    comfy_out = comfy_bridge.new_clip_vision_output()
    if comfy_out is None:
        return ClipVisionOutput(out.last_hidden_state, out.penultimate_hidden_states, out.image_embeds,
                                out.mm_projected, list(out.image_sizes))
    for field in ("last_hidden_state", "penultimate_hidden_states", "image_embeds", "mm_projected"):
        comfy_out[field] = getattr(out, field)
    comfy_out["image_sizes"] = list(out.image_sizes)
    return comfy_out


class CLIPVisionEncodeWan:
    DESCRIPTION = ("Encodes images into the CLIP features Wan 2.1 image-to-video conditions on (penultimate "
                   "hidden states [B,257,1280] of ViT-H/14). Works with this pack's loader or ComfyUI's Load CLIP "
                   "Vision. Checks the features fit Wan and caches them so re-queuing does not re-encode.")
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    RETURN_NAMES = ("clip_vision_output",)
    OUTPUT_TOOLTIPS = ("CLIP features of the image(s) (penultimate hidden states for Wan i2v, image embeds, "
                       "last hidden state).",)
    SEARCH_ALIASES = ["clip vision encode", "image features", "wan i2v", "clipwan"]
    FUNCTION = "encode"
    CATEGORY = "ClipWan/conditioning"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "A ViT-H/14 CLIP vision model (this pack's loader or "
                                                       "ComfyUI's Load CLIP Vision)."}),
            "image": ("IMAGE", {"tooltip": "One or more images (a batch); RGBA and grayscale are accepted."}),
            "crop": (list(CROP_CHOICES), {"default": "center", "tooltip": (
                "center = same as ComfyUI's CLIPVisionEncode / WanImageToVideo workflows (short side to 224, centre "
                "crop, 8-bit rounding). none = Wan's original pipeline (squash the whole image to 224×224, no "
                "crop) — matches the official Wan repo's features.")}),
            "multi_image": (list(MULTI_IMAGE_MODES), {"default": "per_image", "tooltip": (
                "How a batch of several images conditions Wan. per_image = one feature set per image "
                "[B,257,1280]; average = one blended reference [1,257,1280]; concat = all images' tokens side by "
                "side [1,B·257,1280], as ComfyUI's first/last-frame node does.")}),
        }}

    def encode(self, clip_vision, image, crop="center", multi_image="per_image"):
        if crop not in CROP_CHOICES:
            raise ValueError(f"CLIPVisionEncodeWan: crop must be one of {list(CROP_CHOICES)}, got {crop!r}")
        if multi_image not in MULTI_IMAGE_MODES:
            raise ValueError(f"CLIPVisionEncodeWan: multi_image must be one of {list(MULTI_IMAGE_MODES)}, "
                             f"got {multi_image!r}")
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"CLIPVisionEncodeWan: image must be a ComfyUI IMAGE tensor, got {type(image).__name__}")

        def compute():
            out = _encode(clip_vision, image, crop)
            check_clip_features(out.penultimate_hidden_states, _describe(clip_vision))
            return combine_images(out, multi_image)

        key = (FeatureCache.model_key(clip_vision), FeatureCache.image_key(image), crop, multi_image)
        return (_to_comfy_output(FEATURE_CACHE.get_or_compute(key, compute)),)


NODE_CLASS_MAPPINGS = {
    "LoadCLIPVisionH14": LoadCLIPVisionH14,
    "CLIPVisionEncodeWan": CLIPVisionEncodeWan,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadCLIPVisionH14": "Load CLIP Vision, any size (ClipWan)",
    "CLIPVisionEncodeWan": "CLIP Vision Encode for Wan (ClipWan)",
}
