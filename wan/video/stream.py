"""Decoded video, block after block: ``for block in stream_video(...)`` yields the RGB frames of each
causal block as soon as that block is final.

Built on the sampler's block generator (``iter_causal_blocks``): each finished latent block is decoded by a
*streaming* decoder (``wan.vae.wan21.StreamingDecoder`` — the real Wan 2.1 VAE with its causal feature cache —
or the tiny TAEHV decoder in ``wan.vae.taehv``), so the frames equal a decode of the whole latent at the end,
but arrive one block after the first one's sampling instead of after the whole video. Nothing grows with
the video's length: neither the decoded frames (handed out and forgotten) nor the latent (kept only with
``keep_latent=True``).

An app drives it directly::

    for block in stream_video(model, latent, text, vae=vae, seed=0, settings=settings):
        show(block.frames)  # [B, F, H, W, 3] float 0..1, each latent frame's pixels as soon as decoded
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import torch

from ..vae.latent import denormalize, normalize
from ..sampling.run import iter_causal_blocks


@dataclasses.dataclass
class VideoBlock:
    """Decoded frames: ``frames [B, F, H, W, 3]`` float32 in 0..1 (CPU) are pixel frames
    ``frame_start .. frame_start + F - 1`` of the video, decoded from the clean latent frames ``latent``
    (model space) starting at latent frame ``latent_start``; they belong to causal block ``index`` of
    ``total``, and ``block_done`` says this is the block's last piece (by default each latent frame is handed
    out as soon as it is decoded: the video's first latent frame gives 1 frame, every later one 4)."""

    index: int
    total: int
    latent_start: int
    frame_start: int
    frames: torch.Tensor
    latent: torch.Tensor
    block_done: bool = True

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]


def _pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> ``[B, F, H, W, 3]`` in [0, 1] on the CPU."""
    return ((pixels.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu()


def decoder_channels(decoder) -> Optional[int]:
    """Latent channels a streaming decoder reads (Wan 2.1 VAE / taew2_1: 16, Wan 2.2 VAE: 48); None if unknown."""
    vae = getattr(decoder, "vae", None)
    config = getattr(vae, "config", None) or getattr(decoder, "config", None)
    if config is not None and hasattr(config, "z_dim"):
        return int(config.z_dim)
    layers = getattr(getattr(getattr(decoder, "tae", decoder), "module", None), "decoder", None)  # TAEHV
    convs = [m for m in layers if isinstance(m, torch.nn.Conv2d)] if isinstance(layers, torch.nn.Sequential) else []
    return int(convs[0].in_channels) if convs else None


def check_decoder_fits(decoder, model) -> None:
    """The decoder must read the model's latents (16 channels for Wan 2.1, 48 for Wan 2.2)."""
    channels, want = decoder_channels(decoder), model.config.out_dim
    if channels is not None and channels != want:
        name = getattr(getattr(decoder, "vae", None), "name", None) or type(decoder).__name__
        generation = {16: "Wan 2.1", 48: "Wan 2.2"}
        raise ValueError(f"the decoder ({name}) reads {channels}-channel ({generation.get(channels, 'non-Wan')}) "
                         f"latents, but the model {model.config.describe()} makes {want}-channel "
                         f"({generation.get(want, '?')}) latents: use the VAE of the model's generation (Wan 2.1: "
                         f"wan_2.1_vae or taew2_1, Wan 2.2: wan2.2_vae).")


class VideoStream:
    """Iterable of ``VideoBlock``; set up (and validated) at construction, run by iterating once.

    ``decoder``: an object with ``decode(raw_latent_block) -> pixels [B, 3, F, H, W] in [-1, 1]`` that
    keeps its own causal state (``WanVAE.stream_decoder()``, ``TAEHV.stream_decoder()``). ``to_raw`` maps
    the model-space latent to the decoder's raw VAE latent (Wan 2.1's statistics by default; inside ComfyUI
    the MODEL's ``process_latent_out``). ``on_frames(block)`` is called for every block before it is yielded
    (progress bars, live players, file writers). ``per_latent_frame`` (default) hands out each latent frame's
    pixels as soon as they are decoded, off: one piece per causal block. With ``keep_latent`` the whole clean
    latent is collected in ``self.latent`` (memory then grows with length).

    A loop that reads decoded pixels back (Krea's ``loop="recompute"``, ``needs_pixels``) gets them here, with
    ``encode(pixels [B, 3, 1, H, W]) -> raw latent`` (default: the decoder's own Wan VAE, ``decoder.vae``) and
    ``from_raw`` (the inverse of ``to_raw``: Wan 2.1's statistics by default, inside ComfyUI the MODEL's
    ``process_latent_in``)."""

    def __init__(self, model, latent: torch.Tensor, text: torch.Tensor, *, decoder, keep_latent: bool = False,
                 to_raw: Callable[[torch.Tensor], torch.Tensor] = denormalize,
                 on_frames: Optional[Callable[[VideoBlock], None]] = None, per_latent_frame: bool = True,
                 encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 from_raw: Callable[[torch.Tensor], torch.Tensor] = normalize, **loop_kwargs):
        if not hasattr(decoder, "decode"):
            raise TypeError(f"decoder ({type(decoder).__name__}) has no decode(); pass vae.stream_decoder() of a "
                            f"WanVAE or a TAEHV.")
        if keep_latent and loop_kwargs.get("endless"):
            raise ValueError("keep_latent with an endless stream would hold a latent that grows without bound; "
                             "read each block's latent from the stream instead (VideoBlock.latent).")
        check_decoder_fits(decoder, model)  # before the loop: a wrong decoder is found before a block is sampled
        self.loop = iter_causal_blocks(model, latent, text, **loop_kwargs)
        self.ring = None
        if getattr(self.loop, "needs_pixels", False):
            encode = encode or getattr(getattr(decoder, "vae", None), "encode", None)
            if encode is not None:
                self.ring = self.loop.attach_pixels(lambda pixels: from_raw(encode(pixels)))
        self.decoder = decoder
        self.to_raw = to_raw
        self.on_frames = on_frames
        self.keep_latent = keep_latent
        self.per_latent_frame = per_latent_frame
        self.latent: Optional[torch.Tensor] = None
        self.frames_done = 0
        self.blocks_done = 0

    def __len__(self) -> int:
        return len(self.loop)

    def __iter__(self) -> Iterator[VideoBlock]:
        for result in self.loop:
            if self.keep_latent:
                if self.latent is None:
                    shape = list(result.x0.shape)
                    shape[2] = self.loop.latent.shape[2]
                    self.latent = torch.zeros(shape, dtype=torch.float32)
                self.latent[:, :, result.start_frame:result.start_frame + result.num_frames] = result.x0.cpu()
            raw = self.to_raw(result.x0)
            step = 1 if self.per_latent_frame else result.num_frames
            for i in range(0, result.num_frames, step):
                pixels = self.decoder.decode(raw[:, :, i:i + step])
                if self.ring is not None:  # before the loop's next block reads them
                    self.ring.push(pixels)
                block = VideoBlock(result.index, result.total, result.start_frame + i, self.frames_done,
                                   _pixels_to_frames(pixels), result.x0[:, :, i:i + step],
                                   block_done=i + step >= result.num_frames)
                del pixels
                self.frames_done += block.num_frames
                self.blocks_done += int(block.block_done)
                if self.on_frames is not None:
                    self.on_frames(block)
                yield block


def stream_video(model, latent: torch.Tensor, text: torch.Tensor, *, vae=None, decoder=None,
                 keep_latent: bool = False, to_raw: Callable = denormalize,
                 on_frames: Optional[Callable[[VideoBlock], None]] = None, per_latent_frame: bool = True,
                 encode: Optional[Callable] = None, from_raw: Callable = normalize, **loop_kwargs) -> VideoStream:
    """Sample and decode block by block. ``vae``: a ``WanVAE`` (or TAEHV) whose ``stream_decoder()`` is used;
    or pass a ready ``decoder``. Other keyword arguments go to the causal loop (``seed``, ``settings``,
    ``negative_text``, ``clip_fea``, ``concat``, ``first_frames``, ``prompt_switches`` or ``timeline`` (a prompt
    timeline, live changes included: docs/timeline.md), ``hooks``, ``check_interrupt`` ...). Errors in the inputs raise here, before any work."""
    if decoder is None:
        if vae is None:
            raise ValueError("stream_video needs a decoder: pass vae=WanVAE.from_file('wan_2.1_vae.safetensors') "
                             "(or a TAEHV), or decoder=vae.stream_decoder().")
        decoder = vae.stream_decoder()
    return VideoStream(model, latent, text, decoder=decoder, keep_latent=keep_latent, to_raw=to_raw,
                       on_frames=on_frames, per_latent_frame=per_latent_frame, encode=encode, from_raw=from_raw,
                       **loop_kwargs)
