"""VACE control for the causal loop: what each block's hints are computed from.

A ``VaceControl`` holds one VACE conditioning — the reference frames (encoded once, kept for the whole run,
never part of the denoised latent) and the control frames (a whole tensor, e.g. from ComfyUI's
``WanVaceToVideo``, or a ``ControlSource`` read block by block from a video of any length) — and gives the
loop the VACE context of one block: ``[reference frames | the block's control frames]`` with ``vace_in_dim``
channels (inactive latent 16 | reactive latent 16 | folded mask 64), in the model's (normalised) latent space.

ComfyUI's ``WanVaceToVideo`` puts ``vace_frames`` (raw latents ``[B, 32, R+T, h, w]``: the reference frames
first, if any), ``vace_mask`` (``[1, 64, R+T, h, w]``, zero on the reference frames) and ``vace_strength`` on the
conditioning, and returns a latent of ``R+T`` frames with ``trim_latent = R``. ``vace_from_conditioning`` reads
those keys as they are: the reference frames are recognised by their zero mask and their reactive half being
``process_out(0)`` (how the node builds them), so the causal loop denoises only the ``T`` video frames.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Protocol

import torch

LATENT = 16  # Wan 2.1 latent channels (the inactive and reactive halves)
MASK = 64  # 8x8 pixel mask folded into channels


class ControlSource(Protocol):
    """Control frames read on demand: ``read(start, n) -> [B, vace_in_dim, n, h, w]`` (inactive | reactive |
    mask, normalised) for latent frames ``start .. start + n - 1``; asked for in increasing ``start``."""

    def read(self, start: int, n: int) -> torch.Tensor: ...


@dataclasses.dataclass
class VaceControl:
    """One VACE conditioning. ``control`` a tensor ``[B|1, 96, T, h, w]`` or a ``ControlSource``; ``reference``
    ``[B|1, 96, R, h, w]`` (both in the model's latent space, mask channels included); ``strength`` the context
    scale (Wan's ``vace_context_scale``, ComfyUI's ``vace_strength``)."""

    control: object = None
    reference: Optional[torch.Tensor] = None
    strength: float = 1.0

    def block(self, start: int, n: int) -> torch.Tensor:
        """The VACE context of latent frames ``start .. start + n - 1``: the reference frames, then the block's
        control frames (Scope's ``vace_encode_frames``: references first along the frame axis)."""
        parts = [] if self.reference is None else [self.reference.float()]
        if self.control is not None:
            parts.append(read_control(self.control, start, n))
        if not parts:
            raise ValueError("VACE control has neither control frames nor a reference image.")
        if len(parts) == 2 and parts[0].shape[0] != parts[1].shape[0]:
            batch = max(p.shape[0] for p in parts)
            parts = [p.expand(batch, *p.shape[1:]) for p in parts]
        return torch.cat(parts, dim=2)

    def check(self, latent_shape, vace_in_dim: int) -> None:
        """Clear errors before sampling: channels, grid and length against the latent ``[B, 16, T, h, w]``."""
        b, _, frames, h, w = latent_shape
        tensors = [("reference", self.reference)]
        if torch.is_tensor(self.control):
            tensors.append(("control", self.control))
        elif self.control is not None and not hasattr(self.control, "read"):
            raise TypeError(f"VACE control is a {type(self.control).__name__}; give a tensor [B, {vace_in_dim}, T, "
                            f"h, w] or a source with read(start, n).")
        for name, t in tensors:
            if t is None:
                continue
            if t.dim() != 5 or t.shape[1] != vace_in_dim or tuple(t.shape[3:]) != (h, w) or t.shape[0] not in (1, b):
                raise ValueError(f"VACE {name} has shape {list(t.shape)}; the model takes [{b}, {vace_in_dim}, "
                                 f"frames, {h}, {w}] for this latent (same width/height as the video).")
        if torch.is_tensor(self.control) and self.control.shape[2] < frames:
            raise ValueError(f"the VACE control video covers {self.control.shape[2]} latent frames but the video has "
                             f"{frames}: give a control video at least as long as the video (length "
                             f"{4 * (frames - 1) + 1} frames), or shorten the video.")
        if self.control is None and self.reference is None:
            raise ValueError("VACE control has neither control frames nor a reference image.")


def read_control(control, start: int, n: int) -> torch.Tensor:
    if torch.is_tensor(control):
        return control[:, :, start:start + n].float()
    out = control.read(start, n)
    if out is None or out.shape[2] != n:
        got = 0 if out is None else out.shape[2]
        raise ValueError(f"the control video ended: {got} of {n} latent frames read at latent frame {start}; give a "
                         f"control video at least as long as the video you generate (4 frames per latent frame "
                         f"after the first).")
    return out.float()


class VideoControl:
    """A control video read and encoded block by block (a ``ControlSource``): each pixel frame ``c`` in [0, 1]
    becomes WanVaceToVideo's ``inactive = (c - 0.5)(1 - m) + 0.5`` and ``reactive = (c - 0.5) m + 0.5`` (mask ``m``
    = 1: everything is controlled, as that node's default), each half through its own streaming VAE encoder
    (Scope keeps the two caches apart too), normalised, with the mask's 64 channels (ones) after them."""

    def __init__(self, frames, vae, from_raw: Callable):
        self.frames = iter(frames)
        self.inactive, self.reactive = vae.stream_encoder(), vae.stream_encoder()
        self.from_raw = from_raw
        self.next_latent = 0

    def read(self, start: int, n: int) -> Optional[torch.Tensor]:
        from ..video.source import latent_frame_pixels  # here: wan.video imports the loop, which imports this

        out = []
        for wanted, pixels in latent_frame_pixels(self, start, n):
            halves = [self.from_raw(enc.encode(pixels * 0 if enc is self.inactive else pixels * 2 - 1))
                      for enc in (self.inactive, self.reactive)]
            if wanted:
                mask = torch.ones(halves[0].shape[0], MASK, *halves[0].shape[2:])
                out.append(torch.cat(halves + [mask.to(halves[0])], dim=1))
        return torch.cat(out, dim=2) if out else None


def as_controls(vace) -> List[VaceControl]:
    if vace is None:
        return []
    return [vace] if isinstance(vace, VaceControl) else list(vace)


# --------------------------------------------------------------------------------------------------
# ComfyUI's WanVaceToVideo conditioning -> VaceControl
# --------------------------------------------------------------------------------------------------
VACE_KEYS = ("vace_frames", "vace_mask", "vace_strength")


def reference_frame_count(frames: torch.Tensor, mask: torch.Tensor, latent_in: Callable) -> int:
    """Leading reference frames of a ``WanVaceToVideo`` context: mask all zero and the reactive half equal to
    the latent of zeros (``process_out(0)``), as that node builds them; a control frame is never both."""
    count = 0
    for f in range(frames.shape[2]):
        reactive = latent_in(frames[:, LATENT:2 * LATENT, f:f + 1].float())
        if torch.count_nonzero(mask[:, :, f]) or reactive.abs().max() > 1e-4:
            break
        count += 1
    return count


def vace_from_conditioning(extra: dict, latent_frames: int, latent_in: Callable) -> tuple:
    """``(controls, reference_frames)`` from an entry's ``vace_frames`` / ``vace_mask`` / ``vace_strength`` (lists,
    one item per chained WanVaceToVideo); ``reference_frames`` = the latent's leading frames that hold references
    (the causal loop leaves them out: references live in the conditioning only)."""
    frames_list = extra.get("vace_frames")
    if frames_list is None:
        return [], 0
    if torch.is_tensor(frames_list):
        frames_list = [frames_list]
    masks = extra.get("vace_mask") or [None] * len(frames_list)
    if torch.is_tensor(masks):
        masks = [masks]
    strengths = extra.get("vace_strength") or [1.0] * len(frames_list)
    controls, refs = [], set()
    for frames, mask, strength in zip(frames_list, masks, strengths):
        if frames.dim() != 5 or frames.shape[1] != 2 * LATENT:
            raise ValueError(f"vace_frames has shape {list(frames.shape)}; WanVaceToVideo gives [B, {2 * LATENT}, "
                             f"frames, h, w] (inactive | reactive latents).")
        if mask is None:  # ComfyUI's default: everything is to be generated
            mask = torch.ones(1, MASK, *frames.shape[2:], dtype=frames.dtype)
        if mask.dim() != 5 or mask.shape[1] != MASK or mask.shape[2:] != frames.shape[2:]:
            raise ValueError(f"vace_mask has shape {list(mask.shape)}; expected [1, {MASK}, "
                             f"{', '.join(map(str, frames.shape[2:]))}] to match vace_frames.")
        if frames.shape[2] != latent_frames:
            raise ValueError(f"vace_frames covers {frames.shape[2]} latent frames but the latent has {latent_frames}: "
                             f"use the latent of the same WanVaceToVideo node.")
        normalised = torch.cat([latent_in(frames[:, :LATENT].float()), latent_in(frames[:, LATENT:].float()),
                                mask.float().expand(frames.shape[0], -1, -1, -1, -1)], dim=1)
        r = reference_frame_count(frames, mask, latent_in)
        refs.add(r)
        controls.append(VaceControl(control=normalised[:, :, r:], reference=normalised[:, :, :r] if r else None,
                                    strength=float(strength)))
    if len(refs) > 1:
        raise ValueError(f"chained WanVaceToVideo conditionings have different numbers of reference frames "
                         f"({sorted(refs)}); give every one the same reference_image setting.")
    return controls, refs.pop()
