"""CLIP vision towers (Wan 2.1's ViT-H/14 and friends) in pure PyTorch: configs, layouts, model, loader.

No ComfyUI import here: nodes in ``nodes/clip_nodes.py`` wrap this package.
"""

from .config import CONFIGS, OPENAI_MEAN, OPENAI_STD, VisionConfig, config_from_shapes, detect_config
from .layouts import LAYOUTS, Plan, Step, convert_state_dict, plan_conversion
from .loader import (DTYPE_NAMES, ClipVisionModel, ClipVisionOutput, default_clip_vision, load_clip_vision,
                     num_parameters, resolve_dtype)
from .model import VisionHidden, VisionTransformer, build_empty as build_empty_model, internal_to_canonical
from .preprocess import CROP_MODES, normalize_crop, preprocess_images

__all__ = [
    "CONFIGS", "OPENAI_MEAN", "OPENAI_STD", "VisionConfig", "config_from_shapes", "detect_config",
    "LAYOUTS", "Plan", "Step", "convert_state_dict", "plan_conversion",
    "DTYPE_NAMES", "ClipVisionModel", "ClipVisionOutput", "default_clip_vision", "load_clip_vision",
    "num_parameters", "resolve_dtype", "VisionHidden", "VisionTransformer", "build_empty_model",
    "internal_to_canonical",
    "CROP_MODES", "normalize_crop", "preprocess_images",
]

from .wan_features import MULTI_IMAGE_MODES, combine_images  # noqa: E402

__all__ += ["MULTI_IMAGE_MODES", "combine_images"]
