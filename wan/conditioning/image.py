"""Image-to-video conditioning tensors, with ComfyUI's conventions (``WanImageToVideo``):

* the empty latent ``[B, 16, (length-1)//4 + 1, height//8, width//8]``;
* ``concat_latent_image``: the raw VAE latent of ``[start frames, then grey 0.5 frames]``;
* ``concat_mask`` ``[1, 1, T_lat, h, w]``: **0 = known frame, 1 = to generate**;
* ``clip_vision_output``: anything with ``penultimate_hidden_states`` ``[B, 257, 1280]``.

and their translation into the sampler's three routes (see ``wan/sampling/loop.py``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..sampling.budget import check_fits, check_latent_fits
from ..vae.latent import LATENT_CHANNELS, WAN22, pixel_length_to_latent_frames

MASK_CHANNELS = 4  # Wan i2v: one mask channel per pixel frame folded into a latent frame


class ImageRoutes:
    """The one rule for which image routes a model reads, from its weights' config: (1) ``clip`` — CLIP vision
    features through its ``img_emb`` (Wan i2v, Matrix-Game 2.0); (2) ``concat`` — the start image's latent and
    mask concatenated to every block's channels (Wan i2v); (3) ``first_frames`` — the start image's clean latent
    frames written into the cache (or clamped, Wan 2.2) when there are no concat channels (t2v causal models).
    ``wan/conditioning/inputs.py`` maps a conditioning through it, the loop checks its inputs with it, the CLI
    says which route runs."""

    def __init__(self, config):
        self.clip = bool(config.has_img_emb)
        self.concat = bool(config.concat_channels)
        self.first_frames = not self.concat


def clip_features(clip_vision_output) -> Optional[torch.Tensor]:
    """``penultimate_hidden_states`` of a ClipVisionOutput (ours or ComfyUI's; attribute or item)."""
    if clip_vision_output is None:
        return None
    if isinstance(clip_vision_output, torch.Tensor):
        return clip_vision_output
    feats = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if feats is None:
        try:
            feats = clip_vision_output["penultimate_hidden_states"]
        except (KeyError, TypeError, IndexError):
            feats = None
    if feats is None:
        raise ValueError(f"clip_vision_output ({type(clip_vision_output).__name__}) has no "
                         f"'penultimate_hidden_states'; connect the output of a CLIP Vision Encode node.")
    return feats


def resize_center_crop(images_bchw: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resize after a centred crop to the target aspect ratio (ComfyUI's "center" crop rule)."""
    _, _, h, w = images_bchw.shape
    if w * height > h * width:  # too wide: crop width
        new_w = round(h * width / height)
        x0 = (w - new_w) // 2
        images_bchw = images_bchw[:, :, :, x0:x0 + new_w]
    elif w * height < h * width:
        new_h = round(w * height / width)
        y0 = (h - new_h) // 2
        images_bchw = images_bchw[:, :, y0:y0 + new_h]
    return F.interpolate(images_bchw, size=(height, width), mode="bilinear", align_corners=False)


def i2v_latents(width: int, height: int, length: int, batch_size: int, start_image: Optional[torch.Tensor],
                vae_encode: Optional[Callable[[torch.Tensor], torch.Tensor]],
                resize: Callable = resize_center_crop):
    """Returns ``(empty_latent, concat_latent_image or None, concat_mask or None)``.

    ``start_image`` is a ComfyUI IMAGE ``[N, H, W, 3]`` in 0..1; ``vae_encode`` maps ``[frames, H, W, 3]``
    pixels to a raw latent ``[1, 16, T_lat, H/8, W/8]`` (ComfyUI's ``VAE.encode``).
    """
    if width % 16 or height % 16:
        raise ValueError(f"width {width} and height {height} must be multiples of 16 (Wan latents are 1/8 of "
                         f"the image and are patched 2x2).")
    frames = pixel_length_to_latent_frames(length)
    check_latent_fits((batch_size, LATENT_CHANNELS, frames, height // 8, width // 8), "the conditioning latent")
    if start_image is not None:  # the start image padded to the whole length with grey is encoded by the VAE
        check_fits(f"the {length} pixel frames of {width}x{height} the VAE encodes (float32)",
                   4 * length * height * width * 3, None, "Use a shorter length or a smaller width/height.")
    latent = torch.zeros(batch_size, LATENT_CHANNELS, frames, height // 8, width // 8)
    if start_image is None:
        return latent, None, None
    if vae_encode is None:
        raise ValueError("a start_image needs a VAE to encode it: connect the Wan 2.1 VAE (wan_2.1_vae).")
    if start_image.dim() != 4 or start_image.shape[-1] < 3:
        raise ValueError(f"start_image has shape {list(start_image.shape)}; expected an IMAGE [frames, height, "
                         f"width, 3].")
    start = start_image[:length, :, :, :3].float()
    start = resize(start.movedim(-1, 1), width, height).movedim(1, -1)
    pixels = torch.full((length, height, width, 3), 0.5, dtype=start.dtype)
    pixels[: start.shape[0]] = start
    concat_latent = vae_encode(pixels)
    mask = torch.ones(1, 1, frames, height // 8, width // 8)
    mask[:, :, : pixel_length_to_latent_frames(start.shape[0])] = 0.0
    return latent, concat_latent, mask


def ti2v_latents(width: int, height: int, length: int, batch_size: int, start_image: Optional[torch.Tensor],
                 vae_encode: Optional[Callable[[torch.Tensor], torch.Tensor]],
                 resize: Callable = resize_center_crop):
    """Wan 2.2 TI2V (ComfyUI's ``Wan22ImageToVideoLatent`` convention): returns ``(samples, noise_mask)``.

    ``samples`` is the raw 48-channel latent ``[B, 48, T, H/16, W/16]``, zeros except its first frames, which
    hold the start image's VAE latent (only the image is encoded, no grey padding: TI2V sees it as clean
    leading frames, not as a concat condition); ``noise_mask [B, 1, T, h, w]`` is 0 on those frames, 1 on
    the frames to generate (None without a start image).
    """
    fmt = WAN22
    step = fmt.spatial * 2
    if width % step or height % step:
        raise ValueError(f"width {width} and height {height} must be multiples of {step} for Wan 2.2 (its VAE "
                         f"latents are 1/{fmt.spatial} of the image and are patched 2x2).")
    frames = pixel_length_to_latent_frames(length)
    h, w = height // fmt.spatial, width // fmt.spatial
    check_latent_fits((batch_size, fmt.channels, frames, h, w), "the conditioning latent")
    latent = torch.zeros(1, fmt.channels, frames, h, w)
    if start_image is None:
        return latent.repeat(batch_size, 1, 1, 1, 1), None
    if vae_encode is None:
        raise ValueError("a start_image needs a VAE to encode it: connect the Wan 2.2 VAE (wan2.2_vae).")
    if start_image.dim() != 4 or start_image.shape[-1] < 3:
        raise ValueError(f"start_image has shape {list(start_image.shape)}; expected an IMAGE [frames, height, "
                         f"width, 3].")
    start = resize(start_image[:length, :, :, :3].float().movedim(-1, 1), width, height).movedim(1, -1)
    encoded = vae_encode(start)
    if encoded.shape[1] != fmt.channels or tuple(encoded.shape[3:]) != (h, w):
        raise ValueError(f"the VAE encoded the start image to {list(encoded.shape)}; a Wan 2.2 VAE gives "
                         f"[1, {fmt.channels}, T, {h}, {w}] at {width}x{height}. Connect the Wan 2.2 VAE "
                         f"(wan2.2_vae), not the Wan 2.1 one.")
    known = min(encoded.shape[2], frames)
    latent[:, :, :known] = encoded[:, :, :known].float()
    mask = torch.ones(1, 1, frames, h, w)
    mask[:, :, :known] = 0.0
    return latent.repeat(batch_size, 1, 1, 1, 1), mask.repeat(batch_size, 1, 1, 1, 1)


def set_values(conditioning: list, values: dict) -> list:
    """ComfyUI CONDITIONING ``[[tensor, dict], ...]`` with ``values`` added to every dict (tensors shared)."""
    return [[t, {**d, **values}] for t, d in conditioning]


def _mask_at(mask: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
    if mask.dim() == 4:
        mask = mask.unsqueeze(1)
    mask = mask.float().mean(1, keepdim=True)
    if tuple(mask.shape[2:]) != (frames, h, w):
        mask = F.interpolate(mask, size=(frames, h, w), mode="nearest")
    return mask


def concat_condition(image_latent: torch.Tensor, concat_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Route (2): ``[B, 20, T, h, w]`` = ``cat(known-mask ×4, normalised image latent)`` (Wan's ``y``);
    ``concat_mask`` uses ComfyUI's convention (0 = known) and is inverted here (Wan: 1 = known).
    Without a mask the first latent frame is the known one (Wan's own i2v mask)."""
    b, c, frames, h, w = image_latent.shape
    if c != LATENT_CHANNELS:
        raise ValueError(f"concat_latent_image has {c} channels; expected a Wan 2.1 VAE latent with 16.")
    if concat_mask is None:
        known = torch.zeros(1, 1, frames, h, w)
        known[:, :, 0] = 1.0
    else:
        known = 1.0 - _mask_at(concat_mask, frames, h, w)
    known = known.to(image_latent).expand(b, MASK_CHANNELS, frames, h, w)
    return torch.cat([known, image_latent], dim=1)


def known_prefix_frames(concat_mask: Optional[torch.Tensor], frames: int, h: int, w: int) -> int:
    """Route (3): how many leading latent frames the mask marks as known (0 = known)."""
    if concat_mask is None:
        return 1
    known = (_mask_at(concat_mask, frames, h, w) < 0.5).flatten(3).all(-1).all(1).all(0)  # [T]
    count = int(known.long().cumprod(0).sum())
    if bool(known[count:].any()):
        raise ValueError(f"concat_mask marks latent frames {known.nonzero().flatten().tolist()} as known; a "
                         f"text-to-video causal model can only continue from known *first* frames (a start image), "
                         f"not from later ones (e.g. a last frame). Use an i2v (in_dim 36) model for that.")
    return count
