"""Control of the causal video: Causal VACE Control (ClipWan) and Causal Video Restyle (ClipWan).

Both hand the causal nodes an input video that is read frame by frame and encoded block by block while the video is
generated (bounded memory for any length): a VACE control video (and/or a reference image) as ``CLIPWAN_CONTROL``,
and a video to restyle (Krea's video-to-video) as ``CLIPWAN_RESTYLE``. Core's WanVaceToVideo conditioning needs none of
this: connect it as ``positive`` and the causal nodes read its ``vace_frames`` / ``vace_mask`` / ``vace_strength``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..wan.conditioning.control import MASK, VaceControl, VideoControl
from ..wan.conditioning.restyle import Restyle, restyle_steps
from ..wan.video.source import LatentFrames, fit_frame, pixel_frames

CONTROL_TYPE = "CLIPWAN_CONTROL"
RESTYLE_TYPE = "CLIPWAN_RESTYLE"


def _video_of(video, images, what: str):
    if video is not None and images is not None:
        raise ValueError(f"{what}: connect a VIDEO or an IMAGE batch, not both.")
    return video if video is not None else images


def _wan_vae(vae):
    from .stream_nodes import wan_vae_of  # ComfyUI's loaded VAE adopted (weights shared)

    return wan_vae_of(vae)


@dataclasses.dataclass
class ControlSpec:
    """What Causal VACE Control hands on; built into a ``VaceControl`` once the video's size is known."""

    vae: object
    video: object = None
    reference: Optional[torch.Tensor] = None  # IMAGE [1, H, W, 3]
    strength: float = 1.0

    def build(self, width: int, height: int, from_raw) -> VaceControl:
        vae = _wan_vae(self.vae)
        control = None if self.video is None else VideoControl(pixel_frames(self.video, width, height), vae, from_raw)
        reference = None
        if self.reference is not None:  # encoded once (Scope and WanVaceToVideo: latent | latent of zeros | zero mask)
            image = fit_frame(self.reference[0, :, :, :3].permute(2, 0, 1).float(), width, height)
            latent = from_raw(vae.encode(image[None, :, None] * 2 - 1))
            reference = torch.cat([latent, torch.zeros_like(latent), torch.zeros(1, MASK, *latent.shape[2:])], dim=1)
        return VaceControl(control=control, reference=reference, strength=self.strength)


@dataclasses.dataclass
class RestyleSpec:
    vae: object
    video: object
    strength: float = 0.6

    def steps(self, steps_setting) -> list:
        """Krea's list for the strength, as many steps as the sampler's ``steps`` setting has."""
        from ..wan.sampling.scheduler import parse_steps

        return restyle_steps(self.strength, max(2, len(parse_steps(steps_setting))))

    def build(self, width: int, height: int, from_raw) -> Restyle:
        vae = _wan_vae(self.vae)
        return Restyle(LatentFrames(pixel_frames(self.video, width, height), vae.stream_encoder(), from_raw))


class CausalVaceControl:
    DESCRIPTION = ("VACE control for the causal nodes, streamed: the control video (depth, pose, scribble, optical "
                   "flow ... or any video) is read frame by frame and VAE-encoded block by block while the video is "
                   "generated, so an endless control video stays in bounded memory; a reference image is encoded "
                   "once and stays in the conditioning (Daydream Scope's causal VACE). Needs a Wan2.1-VACE model "
                   "(a VACE checkpoint, or a causal base with a VACE module). Core's WanVaceToVideo works too, "
                   "through positive, for videos that fit in memory.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (CONTROL_TYPE,)
    RETURN_NAMES = ("vace_control",)
    OUTPUT_TOOLTIPS = ("Connect to vace_control on Causal Wan Stream Video or Causal Wan Sampler.",)
    SEARCH_ALIASES = ["vace", "control video", "depth control", "pose control", "reference image", "clipwan"]
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "Wan 2.1 VAE (wan_2.1_vae.safetensors): encodes the control frames."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                       "tooltip": "VACE context scale (WanVaceToVideo's strength; 0 = off)."}),
            },
            "optional": {
                "control_video": ("VIDEO", {"tooltip": "Control video, read frame by frame (4 frames per latent "
                                                       "frame after the first, at the generated video's size)."}),
                "control_images": ("IMAGE", {"tooltip": "Control frames as an IMAGE batch (instead of a VIDEO)."}),
                "reference_image": ("IMAGE", {"tooltip": "Reference image (its first frame), encoded once."}),
            },
        }

    def build(self, vae, strength=1.0, control_video=None, control_images=None, reference_image=None):
        video = _video_of(control_video, control_images, "Causal VACE Control")
        if video is None and reference_image is None:
            raise ValueError("Causal VACE Control: connect a control_video (or control_images), a reference_image, or "
                             "both.")
        return (ControlSpec(vae, video, reference_image, float(strength)),)


class CausalVideoRestyle:
    DESCRIPTION = ("Video-to-video for the causal nodes (Krea Realtime's server): the input video is read frame by "
                   "frame, VAE-encoded block by block, noised to the strength and denoised from there with the "
                   "family's loop; the output is aligned frame for frame with the input (1 frame, then 4 per latent "
                   "frame). The sampler's step list becomes Krea's linspace(1000·strength, 0, n) with as many steps "
                   "as its steps setting.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (RESTYLE_TYPE,)
    RETURN_NAMES = ("restyle",)
    OUTPUT_TOOLTIPS = ("Connect to restyle on Causal Wan Stream Video or Causal Wan Sampler.",)
    SEARCH_ALIASES = ["video to video", "v2v", "restyle", "krea", "clipwan"]
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "Wan 2.1 VAE: encodes the input video block by block."}),
                "strength": ("FLOAT", {"default": 0.6, "min": 0.01, "max": 1.0, "step": 0.01,
                                       "tooltip": "How much is regenerated: 1 = ignore the input (text-to-video), "
                                                  "small = close to the input (Krea's denoising strength)."}),
            },
            "optional": {
                "input_video": ("VIDEO", {"tooltip": "The video to restyle, read frame by frame."}),
                "input_images": ("IMAGE", {"tooltip": "The frames to restyle as an IMAGE batch (instead of a VIDEO)."}),
            },
        }

    def build(self, vae, strength=0.6, input_video=None, input_images=None):
        video = _video_of(input_video, input_images, "Causal Video Restyle")
        if video is None:
            raise ValueError("Causal Video Restyle: connect input_video (VIDEO) or input_images (IMAGE).")
        restyle_steps(strength)  # a clear error now, not when sampling starts
        return (RestyleSpec(vae, video, float(strength)),)


NODE_CLASS_MAPPINGS = {"CausalVaceControl": CausalVaceControl, "CausalVideoRestyle": CausalVideoRestyle}
NODE_DISPLAY_NAME_MAPPINGS = {"CausalVaceControl": "Causal VACE Control (ClipWan)",
                              "CausalVideoRestyle": "Causal Video Restyle (ClipWan)"}
