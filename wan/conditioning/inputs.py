"""ComfyUI conditioning -> the causal sampler's inputs: the one mapping, used by the sampler node and the CLI.

A CONDITIONING is ``[[text_tensor, {key: value}], ...]`` (ComfyUI's format; the CLI builds the same). The
sampler needs normalised tensors per image route (see ``wan/sampling/loop.py``): ``clip_fea``, ``concat`` (i2v
models) or ``first_frames`` (t2v causal models continuing from a start image), plus the text contexts.

Two things differ between "inside ComfyUI" and "plain PyTorch" — how a raw VAE latent is normalised and how
the image entries become model inputs. They come in through a small adapter object:

* ``WanLatentAdapter`` (here, no ComfyUI): Wan 2.1's statistics and this package's own concat builder;
* ``nodes/comfy_bridge.ComfyModelAdapter``: the MODEL's ``process_latent_in/out`` and its ``extra_conds``
  (the very tensors core samplers feed the model).

Entries the sampler does not use are reported, never silently dropped: ``SamplerInputs.ignored`` lists them
and ``build_sampler_inputs`` logs them once.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Protocol

import torch

from . import image as cond
from .control import VACE_KEYS, vace_from_conditioning
from ..model.config import WanConfig
from ..vae.latent import check_latent, denormalize, normalize

log = logging.getLogger("comfyui_clipwan")

IMAGE_KEYS = ("clip_vision_output", "concat_latent_image", "concat_mask")
# Keys core text encoders put on every entry that carry nothing a Wan DiT reads (umt5 has no pooled output).
INERT_KEYS = ("pooled_output",)


class ConditioningAdapter(Protocol):
    def latent_in(self, raw: torch.Tensor) -> torch.Tensor: ...

    def latent_out(self, z: torch.Tensor) -> torch.Tensor: ...

    def image_inputs(self, text: torch.Tensor, extra: dict, latent: torch.Tensor) -> dict:
        """``{"clip_fea": tensor|None, "concat": tensor|None}`` from an entry's image keys."""
        ...


class WanLatentAdapter:
    """Plain PyTorch: Wan 2.1 latent statistics, conditioning read directly."""

    def latent_in(self, raw):
        return normalize(raw.float())

    def latent_out(self, z):
        return denormalize(z)

    def image_inputs(self, text, extra, latent):
        image = extra.get("concat_latent_image")
        concat = None
        if image is not None:
            concat = cond.concat_condition(self.latent_in(image), extra.get("concat_mask"))
        return {"clip_fea": cond.clip_features(extra.get("clip_vision_output")), "concat": concat}


@dataclasses.dataclass
class SamplerInputs:
    latent: torch.Tensor  # normalised; zeros = "from pure noise"
    text: torch.Tensor
    negative_text: Optional[torch.Tensor] = None
    switch_text: Optional[torch.Tensor] = None
    clip_fea: Optional[torch.Tensor] = None
    concat: Optional[torch.Tensor] = None
    first_frames: Optional[torch.Tensor] = None
    ignored: tuple = ()  # human-readable descriptions of what the conditioning held and the sampler skips
    to_raw: Callable[[torch.Tensor], torch.Tensor] = denormalize
    from_raw: Callable[[torch.Tensor], torch.Tensor] = normalize  # the inverse of to_raw
    # VACE (ComfyUI's WanVaceToVideo): one VaceControl per chained node, and the raw latent frames of the
    # reference image(s) the node put in front of the latent; the loop denoises without them and the sampler puts
    # them back in front of its output, so the graph's TrimVideoLatent(trim_latent) removes them as for KSampler
    vace: tuple = ()
    reference_raw: Optional[torch.Tensor] = None
    restyle: object = None  # video-to-video input (wan/conditioning/restyle.py), from the restyle socket

    @property
    def image_routes(self) -> list:
        return [name for name, t in (("clip", self.clip_fea), ("concat", self.concat),
                                     ("first_frames", self.first_frames)) if t is not None]


def conditioning(text: torch.Tensor, **values) -> list:
    """A one-entry CONDITIONING (what the CLI builds from its tensors)."""
    return [[text, {k: v for k, v in values.items() if v is not None}]]


def _ignored_parts(name: str, conditioning_list: list, used_keys: tuple) -> list:
    out = []
    if len(conditioning_list) > 1:
        out.append(f"{name}: entries 2..{len(conditioning_list)} of {len(conditioning_list)} (combined "
                   f"conditionings; the causal sampler uses the first entry only)")
    extra = conditioning_list[0][1] or {}
    unused = sorted(k for k, v in extra.items() if k not in used_keys and k not in INERT_KEYS and v is not None)
    if unused:
        out.append(f"{name}: key(s) {', '.join(unused)} (not read by the causal sampler)")
    return out


def _check_same_grid(image: torch.Tensor, samples: torch.Tensor) -> None:
    if tuple(image.shape[2:]) != tuple(samples.shape[2:]):
        raise ValueError(f"concat_latent_image {list(image.shape)} does not match the latent "
                         f"{list(samples.shape)}: use the latent from the same Wan I2V Conditioning node "
                         f"(same width, height and length).")


def check_image_latent(image: torch.Tensor, config: WanConfig, what: str = "concat_latent_image") -> None:
    """A start-image latent must be of the model's generation (16 channels for Wan 2.1, 48 for Wan 2.2)."""
    if isinstance(image, torch.Tensor) and image.dim() == 5 and image.shape[1] != config.out_dim:
        made_by = {16: "a Wan 2.1 VAE (wan_2.1_vae)", 48: "a Wan 2.2 VAE (wan2.2_vae)"}
        raise ValueError(f"{what} {list(image.shape)} has {image.shape[1]} channels, made by "
                         f"{made_by.get(image.shape[1], 'a non-Wan VAE')}, but the model {config.describe()} takes "
                         f"{config.out_dim}-channel latents: encode the start image with "
                         f"{made_by.get(config.out_dim, 'its VAE')} (Wan 2.2: Wan22ImageToVideoLatent).")


def _text_of(name: str, conditioning_list) -> Optional[torch.Tensor]:
    if conditioning_list is None:
        return None
    if not conditioning_list:
        raise ValueError(f"{name} conditioning is empty; connect a CLIP Text Encode (Wan umt5) output.")
    return conditioning_list[0][0]


def build_sampler_inputs(config: WanConfig, samples: torch.Tensor, positive: list, negative: Optional[list] = None,
                         switch_positive: Optional[list] = None, image_conditioning: bool = True,
                         adapter: Optional[ConditioningAdapter] = None, switch_at_block: Optional[int] = None,
                         noise_mask: Optional[torch.Tensor] = None,
                         report: Optional[Callable[[str], None]] = None) -> SamplerInputs:
    """Map a raw LATENT's samples and CONDITIONINGs to the sampler's inputs for a model of ``config``.

    ``switch_at_block`` (when given) is checked against ``switch_positive``: a connected switch prompt with
    block 0 is an error, not a silent no-op. ``noise_mask`` is the LATENT's (Wan 2.2 TI2V start image, core
    ``Wan22ImageToVideoLatent``). ``report`` receives the list of ignored entries (default: log).
    """
    adapter = adapter or WanLatentAdapter()
    check_latent(samples, channels=config.out_dim)
    if not positive:
        raise ValueError("positive conditioning is empty; connect a CLIP Text Encode (Wan umt5) output.")
    if switch_positive is not None and switch_at_block is not None and int(switch_at_block) < 1:
        raise ValueError("switch_positive is connected but switch_at_block is 0: set the block index (1 or more) "
                         "from which switch_positive replaces positive, or disconnect switch_positive.")
    samples = samples.float()
    z = adapter.latent_in(samples) if torch.count_nonzero(samples) else samples
    text, extra = positive[0][0], dict(positive[0][1] or {})
    used = IMAGE_KEYS + (VACE_KEYS if config.has_vace else ())
    ignored = _ignored_parts("positive", positive, used)
    for name, other in (("negative", negative), ("switch_positive", switch_positive)):
        if other:  # their image keys are the positive's copies (Wan I2V Conditioning sets both): not "ignored"
            ignored += _ignored_parts(name, other, used)
    vace, refs = vace_from_conditioning(extra, samples.shape[2], adapter.latent_in) if config.has_vace else ([], 0)
    reference_raw = None
    if refs:  # references live in the conditioning only (Scope's causal VACE): not in the denoised latent
        reference_raw = extra["vace_frames"][0][:, :16, :refs].float()
        samples, z = samples[:, :, refs:], z[:, :, refs:]
    if not image_conditioning and any(extra.get(k) is not None for k in IMAGE_KEYS):
        ignored.append("positive: image conditioning (image_conditioning is off)")
    if not image_conditioning:
        extra = {k: v for k, v in extra.items() if k not in IMAGE_KEYS}

    image = extra.get("concat_latent_image")
    if image is not None:
        check_image_latent(image, config)
        _check_same_grid(image, samples)
    # a model without concat channels takes the image latent as first frames (below), not as a concat input
    reads = cond.ImageRoutes(config)
    image_extra = extra if reads.concat else {k: v for k, v in extra.items()
                                                         if k not in ("concat_latent_image", "concat_mask")}
    routes = adapter.image_inputs(text, image_extra, z) if image_conditioning else {}
    clip_fea = routes.get("clip_fea")
    concat = first_frames = None
    if reads.concat:
        concat = routes.get("concat")
    elif image is not None:  # t2v causal model: the known first latent frames go into the KV cache
        k = cond.known_prefix_frames(extra.get("concat_mask"), *image.shape[2:])
        first_frames = adapter.latent_in(image.float())[:, :, :k] if k else None
    if noise_mask is not None and image_conditioning and first_frames is None and reads.first_frames:
        # Wan 2.2 TI2V: the LATENT's leading frames hold the start image's raw latent, its noise_mask is 0
        # there; they become the clean first frames (clamped by the loop), noise everywhere else.
        k = cond.known_prefix_frames(noise_mask, *samples.shape[2:])
        if k:
            first_frames = adapter.latent_in(samples[:, :, :k])
            z = torch.zeros_like(samples)
    if clip_fea is not None and not reads.clip:
        ignored.append(f"positive: clip_vision_output (the model {config.describe()} has no image embedding; use "
                       f"an i2v Wan model to condition on CLIP features)")
        clip_fea = None
    if ignored:
        (report or (lambda msg: log.warning(msg)))("CausalWanSampler ignores: " + "; ".join(ignored))
    return SamplerInputs(latent=z, text=text, negative_text=_text_of("negative", negative),
                         switch_text=_text_of("switch_positive", switch_positive), clip_fea=clip_fea,
                         concat=concat, first_frames=first_frames, ignored=tuple(ignored),
                         to_raw=adapter.latent_out, from_raw=adapter.latent_in, vace=tuple(vace),
                         reference_raw=reference_raw)
