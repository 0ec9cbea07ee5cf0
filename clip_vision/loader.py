"""``ClipVisionModel`` (what a CLIP_VISION socket carries), its output, and the loaders.

Weights go straight into the target dtype: the module is built on the meta device and each tensor is
read, converted and cast one at a time, then assigned (``load_state_dict(assign=True)``), so the peak
memory of a load is about one model in the target dtype.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Mapping, Optional, Union

import torch

from .checkpoint import config_overrides, open_checkpoint
from ..dtypes import resolve_dtype as _resolve_dtype
from .config import CONFIGS, VisionConfig, config_from_shapes
from .layouts import convert_state_dict, plan_conversion
from .model import VisionTransformer, build_empty, canonical_to_internal, internal_names, internal_to_canonical
from .preprocess import preprocess_images

DTYPE_NAMES = ("fp32", "fp16", "bf16")


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """fp32 / fp16 / bf16 (or the torch dtype); the pack's one dtype vocabulary (dtypes.py)."""
    return _resolve_dtype(dtype)


class ClipVisionOutput:
    """Same fields as ComfyUI's ``comfy.clip_vision.Output``; attribute and item access (``o["k"]``)."""

    def __init__(self, last_hidden_state=None, penultimate_hidden_states=None, image_embeds=None,
                 mm_projected=None, image_sizes=None):
        self.last_hidden_state = last_hidden_state
        self.penultimate_hidden_states = penultimate_hidden_states
        self.image_embeds = image_embeds
        self.mm_projected = mm_projected
        self.image_sizes = image_sizes if image_sizes is not None else []

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)

    def __contains__(self, key):
        return hasattr(self, key)

    def __repr__(self):
        shapes = {k: (list(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()
                  if k != "image_sizes"}
        return f"ClipVisionOutput({shapes})"


class ClipVisionModel:
    """A loaded CLIP vision tower; ``encode_image`` has ComfyUI core's call signature."""

    def __init__(self, model: VisionTransformer, source: str, layout: str):
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.layout = layout
        self.version = 0  # bumped when the weights change (load_sd): feature caches key on (identity, version)

    @property
    def config(self) -> VisionConfig:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.patch_embedding.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        # CPUs have no fast fp16 GEMM: fp16 weights are computed in fp32 there (as ComfyUI core does).
        if self.device.type == "cpu" and self.dtype == torch.float16:
            return torch.float32
        return self.dtype

    def __repr__(self):
        c = self.config
        return (f"ClipVisionModel({c.name}, width {c.width}, {c.layers} layers, {self.dtype}, {self.device}, "
                f"layout {self.layout}, source {self.source})")

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor, penultimate_only: bool = False):
        """Run the tower on preprocessed pixel values; returns ``VisionHidden`` on the model's device."""
        return self.model(pixel_values.to(self.device, self.compute_dtype), penultimate_only=penultimate_only)

    def encode_image(self, image: torch.Tensor, crop=True, penultimate_only: bool = False) -> ClipVisionOutput:
        """ComfyUI IMAGE [B,H,W,C] → ClipVisionOutput (float32, CPU), like core's ``encode_image``.

        ``crop``: True/"center" = ComfyUI's clip_preprocess; False/"none" = Wan's squash (see preprocess).
        """
        pixels = preprocess_images(image, self.config, crop)
        hidden = self.encode(pixels, penultimate_only)
        out = lambda t: None if t is None else t.float().cpu()  # noqa: E731
        for name in ("last_hidden_state", "penultimate_hidden_states", "image_embeds"):
            _check_finite_output(getattr(hidden, name), name, self)
        size = torch.Size([3, self.config.image_size, self.config.image_size])
        return ClipVisionOutput(last_hidden_state=out(hidden.last_hidden_state),
                                penultimate_hidden_states=out(hidden.penultimate_hidden_states),
                                image_embeds=out(hidden.image_embeds), mm_projected=None,
                                image_sizes=[size] * pixels.shape[0])

    def state_dict_hf(self) -> dict:
        """Weights under canonical HF/ComfyUI names (loads in ComfyUI with ``load_clipvision_from_sd``)."""
        return internal_to_canonical(self.model)

    def get_sd(self) -> dict:
        return self.state_dict_hf()

    def load_sd(self, sd: Mapping[str, torch.Tensor]):
        """Replace the weights from a state dict in any supported layout; returns ``(missing, unexpected)``."""
        canonical, layout = convert_state_dict(sd)
        shapes = {k: tuple(v.shape) for k, v in canonical.items()}
        found = config_from_shapes(shapes)
        mine = self.config
        if (found.width, found.layers, found.patch_size, found.image_size, found.proj_dim) != \
                (mine.width, mine.layers, mine.patch_size, mine.image_size, mine.proj_dim):
            raise ValueError(f"load_sd: the weights are {found.name} (width {found.width}, {found.layers} layers, "
                             f"projection {found.proj_dim}) but this model is {mine.name} (width {mine.width}, "
                             f"{mine.layers} layers, projection {mine.proj_dim})")
        # Fresh tensors (canonical_to_internal never aliases the caller's), cast on the fly; a model built on
        # the meta device (no weights yet) gets CPU tensors.
        device = torch.device("cpu") if self.device.type == "meta" else self.device
        internal = canonical_to_internal(canonical, mine, dtype=self.dtype, device=device)
        _assign(self.model, internal, "load_sd")
        used = set(plan_conversion(sd.keys()).source_keys)
        self.layout = layout
        self.version += 1
        return [], [k for k in sd.keys() if k not in used]


def _check_finite_output(tensor, name: str, model: "ClipVisionModel") -> None:
    """A NaN feature would surface minutes later as a NaN video: refuse it here, naming the output."""
    if tensor is not None and not torch.isfinite(tensor).all():
        raise ValueError(f"CLIP vision ({model.source}): the output '{name}' contains NaN or Inf values; the "
                         f"activations overflowed in {str(model.dtype).replace('torch.', '')} (load the model in "
                         f"bf16 or fp32) or the weights are damaged")


class _LazyCanonical(Mapping):
    """Canonical tensors read from a checkpoint on demand; a source is dropped once all its uses are done."""

    def __init__(self, reader, plan):
        self._reader = reader
        self._steps = {s.dst: s for s in plan.steps}
        self._uses = collections.Counter(s.src for s in plan.steps)
        self._cache: dict = {}

    def __getitem__(self, dst):
        step = self._steps[dst]
        if step.src not in self._cache:
            self._cache[step.src] = self._reader.get(step.src)
        return step.apply(self._cache[step.src])

    def __iter__(self):
        return iter(self._steps)

    def __len__(self):
        return len(self._steps)

    def release(self, dst):
        src = self._steps[dst].src
        self._uses[src] -= 1
        if self._uses[src] == 0:
            self._cache.pop(src, None)
            self._reader.release(src)


def _resolve_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use device 'cpu'")
    return device


def _assign(model: VisionTransformer, internal: dict, source: str) -> None:
    try:
        model.load_state_dict(internal, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: the weights do not fit the detected {model.config.name} shape: {exc}") from None
    model.requires_grad_(False)


def load_clip_vision(path: Union[str, os.PathLike], dtype=torch.float32, device="cpu") -> ClipVisionModel:
    """Load a CLIP vision tower from a Wan .pth, an OpenCLIP or an HF/ComfyUI file (any wrapper prefix)."""
    path = os.fspath(path)
    dtype = resolve_dtype(dtype)
    device = _resolve_device(device)
    reader = open_checkpoint(path)
    plan = plan_conversion(reader.keys, source=f"'{path}'")
    shapes = {s.dst: s.shape(reader.shape(s.src)) for s in plan.steps}
    width = shapes["vision_model.embeddings.patch_embedding.weight"][0]
    config = config_from_shapes(shapes, config_overrides(path, reader, width))
    lazy = _LazyCanonical(reader, plan)
    internal = canonical_to_internal(lazy, config, dtype=dtype, device=device, release=lazy.release)
    model = build_empty(config)
    _assign(model, internal, f"'{path}'")
    return ClipVisionModel(model, source=path, layout=plan.layout)


def _init_std(name: str, config: VisionConfig) -> Optional[float]:
    """OpenCLIP's init scales (None = LayerNorm: weight 1, bias 0); gives realistic activation sizes."""
    w = config.width
    if "layer_norm" in name or "layrnorm" in name:
        return None
    if name.endswith(".bias"):
        return 0.0
    if name in ("class_embedding", "position_embedding", "visual_projection.weight"):
        return w ** -0.5
    if ".fc1." in name:
        return (2 * w) ** -0.5
    if ".out_proj." in name or ".fc2." in name:
        return w ** -0.5 * (2 * max(config.layers, 1)) ** -0.5
    return w ** -0.5  # qkv, patch embedding


def default_clip_vision(name: str = "ViT-H/14", seed: int = 0, layers: Optional[int] = None,
                        dtype=torch.float32, device="cpu") -> ClipVisionModel:
    """The embedded default: a seeded random-init model of the real architecture (NOT pretrained).

    Deterministic for a given (name, seed, layers) whatever the dtype/device; ``layers`` reduces depth.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown CLIP vision preset {name!r}; choose one of {sorted(CONFIGS)}")
    dtype = resolve_dtype(dtype)
    device = _resolve_device(device)
    config = CONFIGS[name] if layers is None else CONFIGS[name].replace(layers=int(layers))
    gen = torch.Generator().manual_seed(int(seed))
    model = build_empty(config)
    internal = {}
    for pname, param in model.named_parameters():
        std = _init_std(pname, config)
        if std is None:
            t = torch.ones(param.shape) if pname.endswith("weight") else torch.zeros(param.shape)
        elif std == 0.0:
            t = torch.zeros(param.shape)
        else:
            t = torch.randn(param.shape, generator=gen).mul_(std)
        internal[pname] = t.to(device=device, dtype=dtype)
    _assign(model, internal, "default model")
    depth = "" if layers is None else f", reduced to {config.layers} layers"
    source = f"embedded default: seeded random-init {name} (seed {seed}{depth}), not pretrained"
    return ClipVisionModel(model, source=source, layout="default")


def num_parameters(config: VisionConfig) -> int:
    """Parameter count of a config (for memory estimates and docs)."""
    model = build_empty(config)
    return sum(math.prod(p.shape) for p in model.parameters())


__all__ = ["ClipVisionModel", "ClipVisionOutput", "load_clip_vision", "default_clip_vision", "resolve_dtype",
           "DTYPE_NAMES", "num_parameters", "internal_names"]
