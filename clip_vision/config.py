"""Vision-tower hyper-parameters: the presets we know, and detection from a state dict's shapes.

Nothing here is assumed from a file name: width, depth, patch and image size come from tensor shapes.
What shapes cannot tell (head count, activation) comes from the preset of the detected size, and can be
overridden by metadata that travels with the weights (an HF ``config.json``, safetensors metadata).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

# OpenAI CLIP normalisation; OpenCLIP's LAION models and Wan use the same constants.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    name: str
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    act: str = "gelu"  # "gelu" (exact erf) | "quick_gelu" (x·sigmoid(1.702x))
    eps: float = 1e-5
    proj_dim: Optional[int] = None
    mean: Sequence[float] = OPENAI_MEAN
    std: Sequence[float] = OPENAI_STD

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def replace(self, **changes) -> "VisionConfig":
        return dataclasses.replace(self, **changes)

    def __post_init__(self):
        if self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"VisionConfig.act must be 'gelu' or 'quick_gelu', got {self.act!r}")
        if self.width % self.heads:
            raise ValueError(f"VisionConfig: width {self.width} is not divisible by heads {self.heads}")


def _preset(name, image, patch, width, layers, heads, act, proj, mlp=None):
    return VisionConfig(name=name, image_size=image, patch_size=patch, width=width, layers=layers, heads=heads,
                        mlp_dim=mlp or 4 * width, act=act, eps=1e-5, proj_dim=proj)


# OpenAI-trained ViT-B/L use QuickGELU; LAION OpenCLIP ViT-H/bigG (and Wan's copy of ViT-H) use exact GELU.
CONFIGS: dict[str, VisionConfig] = {
    c.name: c
    for c in (
        _preset("ViT-H/14", 224, 14, 1280, 32, 16, "gelu", 1024),
        _preset("ViT-L/14", 224, 14, 1024, 24, 16, "quick_gelu", 768),
        _preset("ViT-L/14-336", 336, 14, 1024, 24, 16, "quick_gelu", 768),
        _preset("ViT-B/32", 224, 32, 768, 12, 12, "quick_gelu", 512),
        _preset("ViT-B/16", 224, 16, 768, 12, 12, "quick_gelu", 512),
        _preset("ViT-bigG/14", 224, 14, 1664, 48, 16, "gelu", 1280, mlp=8192),
    )
}

# Canonical (HF/ComfyUI) names whose shapes carry the hyper-parameters.
PATCH_KEY = "vision_model.embeddings.patch_embedding.weight"
POSITION_KEY = "vision_model.embeddings.position_embedding.weight"
FC1_KEY = "vision_model.encoder.layers.0.mlp.fc1.weight"
PROJ_KEY = "visual_projection.weight"
LAYER_PREFIX = "vision_model.encoder.layers."

# HF config.json field → VisionConfig field, for overrides shipped beside the weights.
_HF_FIELDS = {"hidden_act": "act", "num_attention_heads": "heads", "layer_norm_eps": "eps",
              "image_mean": "mean", "image_std": "std"}


def count_layers(keys) -> int:
    """Number of encoder blocks named ``vision_model.encoder.layers.N.*`` (N = 0..count-1)."""
    found = set()
    for key in keys:
        if key.startswith(LAYER_PREFIX):
            index = key[len(LAYER_PREFIX):].split(".", 1)[0]
            if index.isdigit():
                found.add(int(index))
    return max(found) + 1 if found else 0


def config_from_shapes(shapes: Mapping[str, Sequence[int]], overrides: Optional[Mapping] = None) -> VisionConfig:
    """Build a VisionConfig from the canonical key → shape map (see ``detect_config``)."""
    missing = [k for k in (PATCH_KEY, POSITION_KEY, FC1_KEY) if k not in shapes]
    if missing:
        raise ValueError(f"cannot detect the CLIP vision size: keys {missing} are missing")
    width, _, patch, _ = shapes[PATCH_KEY]
    positions = shapes[POSITION_KEY][0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"position embedding has {positions} rows; expected a square grid + 1 CLS token")
    image_size = grid * patch
    layers = count_layers(shapes)
    mlp_dim = shapes[FC1_KEY][0]
    proj_dim = shapes[PROJ_KEY][0] if PROJ_KEY in shapes else None
    preset = next((c for c in CONFIGS.values()
                   if (c.width, c.patch_size, c.image_size) == (width, patch, image_size)), None)
    if preset is None:  # an unknown size: keep what the shapes say, 64-wide heads as most ViTs
        same_width = next((c for c in CONFIGS.values() if c.width == width), None)
        preset = VisionConfig(name=f"ViT-{width}w/{patch}", image_size=image_size, patch_size=patch, width=width,
                              layers=layers, heads=same_width.heads if same_width else max(1, width // 64),
                              mlp_dim=mlp_dim, act=same_width.act if same_width else "gelu")
    config = preset.replace(image_size=image_size, patch_size=patch, width=width, layers=layers,
                            mlp_dim=mlp_dim, proj_dim=proj_dim)
    return apply_overrides(config, overrides)


def apply_overrides(config: VisionConfig, overrides: Optional[Mapping]) -> VisionConfig:
    """Apply HF-style (``hidden_act``…) or our own (``act``…) fields; shape fields are never overridden."""
    if not overrides:
        return config
    if isinstance(overrides.get("vision_config"), Mapping):  # a full CLIPModel config.json
        overrides = overrides["vision_config"]
    changes = {}
    for key, value in overrides.items():
        field = _HF_FIELDS.get(key, key)
        if field in ("act", "heads", "eps", "mean", "std") and value is not None:
            if field == "act":
                value = {"gelu": "gelu", "quick_gelu": "quick_gelu"}.get(value)
                if value is None:
                    raise ValueError(f"unsupported activation {overrides[key]!r} (supported: gelu, quick_gelu)")
            changes[field] = tuple(value) if field in ("mean", "std") else value
    return config.replace(**changes)


def detect_config(state_dict: Mapping, overrides: Optional[Mapping] = None) -> VisionConfig:
    """Detect the VisionConfig of a CLIP vision state dict in any supported layout (see ``layouts``)."""
    from .layouts import plan_conversion

    plan = plan_conversion(list(state_dict.keys()))
    shapes = {step.dst: step.shape(tuple(state_dict[step.src].shape)) for step in plan.steps}
    return config_from_shapes(shapes, overrides)
