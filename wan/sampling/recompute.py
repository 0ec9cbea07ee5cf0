"""Krea Realtime Video's loop shape (``CausalSettings(loop="recompute")``): the KV cache is rebuilt from a few
clean context frames before every block instead of being carried from block to block.

What the authors' realtime loop does (krea-ai/realtime-video, ``release_server.py`` ``GenerationSession``:
``recompute_kv_cache``, ``get_clean_context_frames``, ``generate_block_internal``; defaults of
``GenerateParams``; ``wan/modules/causal_model.py`` for the attention), in our words. ``C`` =
``kv_cache_num_frames`` (3), ``n`` = frames per block (3):

* **Schedule.** ``num_denoising_steps`` 5: ``linspace(1000, 0, 5)`` = 1000, 750, 500, 250, 0, warped onto the
  shift-5 grid (``timesteps[1000 - k]``, the grid padded with a final 0): t = 1000, 937.5, 833.3, 625 and a last
  step **at t = 0**. Its σ, for the re-noise before it and for x0 after it, is the grid's nearest point (σ ≈
  0.005 at shift 5), so that step is a small correction, not a no-op. The re-noise draws come from one
  generator after the whole video's initial noise (``NoiseSource``). (Its ``configs/*.yaml`` list
  ``1000, 937, 833, 625, 0`` unwarped is what Self-Forcing's offline pipeline would run; the server ignores it.)
* **Before each block** (not before the first one of a t2v run, whose cache is empty): the context is the
  first latent frame plus the last ``C - 1`` generated frames. From the third generated block on
  (``(block - 1)·n >= C``, ``keep_first_frame`` off — the default), the first frame is replaced by the VAE
  re-encoding of one *decoded* pixel frame: the oldest of the last ``1 + (C - 1)·4`` decoded frames, so the
  context reads like the start of a fresh video just before the recent frames. The context is run through
  the DiT at t = 0 in one forward from RoPE position 0, block-causally in blocks of ``n`` frames counted from
  the context's first frame (with ``C <= n`` that is one bidirectional block), and its K/V replace the cache.
* **The block** is denoised at RoPE position ``min(start, C)`` (right after the context, whatever its frame
  in the video: positions never grow), attending the context and itself. There is no clean pass after it:
  the next block's recompute encodes it.
* Cache size ``C + n`` frames (their ``local_attn_size``), so memory is flat.

Here: the context's first frame is the sink (``sink_size`` 1) and ``C = local_window - frames_per_block``
(the preset's window 6 with blocks of 3), so the frames a block attends are the block loop's
``attended_frames`` with sink 1 — what changes is how their K/V are made. The re-encode needs decoded
pixels and a VAE encoder: ``stream_video`` (and the Causal Wan Stream Video node) attach them
(``attach_pixels``); a run without a VAE (``sample_causal``, Causal Wan Sampler) keeps the first latent frame
instead (Krea's ``keep_first_frame`` option) and says so (``fallback_note``).

Daydream Scope's port of the same loop adds ``kv_cache_attention_bias`` (0.3 there): during denoising, the
attention scores of the context frames after the first one get ``+ log(bias)`` (less weight on the recent past,
against error accumulation); the recompute itself is unbiased. ``context_bias`` is that factor (1.0 = off, as
Krea's own server runs).

Generalised with the same rules: any block layout (a start image's frames are context like Krea's
``start_frame`` latents; a shorter last block), CFG (each branch recomputes its own context), prompt switches
(from the switch on, the recompute and the block use the new prompt, as Krea's server does when the prompt
changes; there is nothing else to re-cache).
"""

from __future__ import annotations

import collections
import math
import warnings
from typing import Callable, Iterator, Optional

import torch

from .loop import BlockResult, CausalLoop


def context_mask(frames: int, frames_per_block: int, tokens_per_frame: int, device) -> Optional[torch.Tensor]:
    """The recompute pass's mask over ``frames`` context frames: a query frame sees every key frame up to the end
    of its block, blocks of ``frames_per_block`` counted from the context's first frame (Krea's
    ``_prepare_blockwise_causal_attn_mask``). None when the whole context is one block (no mask needed)."""
    if frames <= frames_per_block:
        return None
    block_end = (torch.arange(frames, device=device) // frames_per_block + 1) * frames_per_block
    sees = torch.arange(frames, device=device)[None, :] < block_end[:, None]  # [query frame, key frame]
    return sees.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def context_bias_mask(context: int, block: int, bias: float, tokens_per_frame: int, dtype, device):
    """Scope's ``kv_cache_attention_bias`` as an additive mask over ``[context | block]`` keys: ``log(bias)`` on the
    context frames after the first one, 0 on the first frame and on the block. None when nothing is biased."""
    if bias == 1.0 or context <= 1:
        return None
    per_frame = torch.zeros(context + block, dtype=dtype, device=device)
    per_frame[1:context] = math.log(bias)
    return per_frame.repeat_interleave(tokens_per_frame).view(1, 1, 1, -1)


class ContextKV:
    """One branch's cache in this loop: the context's K/V per layer, rebuilt before every block."""

    def __init__(self, num_layers: int, dtype):
        self.k: list = [None] * num_layers
        self.v: list = [None] * num_layers
        self.dtype = dtype
        self.frames: list = []  # the video frames the context stands for (the first may be a re-encoding)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def clear(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)
        self.frames = []

    def begin_block(self, start_frame: int, num_frames: int) -> None:
        """The base loop announces each block; nothing to evict here (the context is rebuilt per block)."""

    def writer(self):
        """``kv_hook`` of the recompute pass: its K/V become the cache; attention runs over them (with the mask)."""

        def hook(layer: int, k: torch.Tensor, v: torch.Tensor):
            self.k[layer], self.v[layer] = k.to(self.dtype), v.to(self.dtype)
            return self.k[layer], self.v[layer]

        return hook

    def reader(self):
        """``kv_hook`` of a denoising step: ``[context | block]`` (the block's own K/V are not kept)."""

        def hook(layer: int, k: torch.Tensor, v: torch.Tensor):
            if self.k[layer] is None:
                return k, v
            return torch.cat([self.k[layer], k.to(self.dtype)], 1), torch.cat([self.v[layer], v.to(self.dtype)], 1)

        return hook


class PixelRing:
    """Krea's ``frame_context_cache``: the last ``size`` decoded pixel frames, and the encoder that turns one of
    them back into a latent frame. ``encode(pixels [B, 3, 1, H, W] in [-1, 1]) -> [B, 16, 1, h, w]`` in the
    model's (normalised) latent space."""

    def __init__(self, size: int, encode: Callable[[torch.Tensor], torch.Tensor]):
        self.frames: collections.deque = collections.deque(maxlen=size)
        self.encode = encode

    def push(self, pixels: torch.Tensor) -> None:
        """Decoded pixels ``[B, 3, F, H, W]`` in [-1, 1], as the decoder returned them (not clamped, like Krea's)."""
        for i in range(pixels.shape[2]):
            self.frames.append(pixels[:, :, i:i + 1])

    def oldest_as_latent(self) -> torch.Tensor:
        return self.encode(self.frames[0])


class RecomputeLoop(CausalLoop):
    """Krea Realtime Video's loop (see the module docstring); same arguments, hooks, noise and results as
    ``CausalLoop``. One ``BlockResult`` per block, in order."""

    def __init__(self, model, latent, text, **kwargs):
        super().__init__(model, latent, text, **kwargs)
        s = self.settings
        n, window = int(s.frames_per_block), int(s.local_window)
        refused = [(int(s.sink_size) != 1, f"sink_size {s.sink_size} (the context keeps exactly the first frame: "
                                           f"set sink_size 1)"),
                   (window <= n, f"local_window {window} (it holds the context and one block: Krea runs "
                                 f"local_window 6 = 3 context frames + blocks of 3)"),
                   (s.solver != "renoise", f"solver '{s.solver}' (Krea re-noises: use solver='renoise')"),
                   (self.clamp, "first_frame='clamp' (a start image is context: use first_frame='cache')"),
                   (self.concat is not None, "channel-concat image conditioning (its context frames are not one run "
                                             "of the video; give the start image as first-frame latents)"),
                   (s.positions != "absolute" or s.sink_ema is not None,
                    "positions='slots' / sink_ema (Reward Forcing's cache; this loop rebuilds its cache per block)"),
                   (not float(s.context_bias) > 0, f"context_bias {s.context_bias} (a factor > 0; 1.0 = off, "
                                                   f"Scope uses 0.3)")]
        for bad, what in refused:
            if bad:
                raise ValueError(f"loop 'recompute' does not support {what}.")
        self.context_frames = window - n  # Krea's kv_cache_num_frames
        self.known_blocks = sum(1 for st, m in self.layout if st + m <= self.known)
        self.needs_pixels = self._reencodes(len(self.layout) - 1)  # the last block re-encodes, if any does
        self.ring: Optional[PixelRing] = None
        self._fallback_warned = False

    # --- pixels for the re-encoded first frame -------------------------------------------------------------
    def attach_pixels(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> PixelRing:
        """Give the loop a VAE encoder; returns the ring the consumer pushes each block's decoded pixels into
        before it asks for the next block (``stream_video`` does)."""
        self.ring = PixelRing(1 + (self.context_frames - 1) * 4, encode)
        return self.ring

    @property
    def fallback_note(self) -> Optional[str]:
        """One line when Krea's re-encoded first frame cannot be made in this run (no decoded pixels)."""
        if not self.needs_pixels or self.ring is not None:
            return None
        return ("Krea's loop re-encodes the first context frame from decoded pixels, and this run decodes nothing, "
                "so the first latent frame is kept instead (Krea's keep_first_frame option); the Causal Wan Stream "
                "Video node (or stream_video with a VAE) runs the authors' rule.")

    # --- the parts ----------------------------------------------------------------------------------------
    def _new_cache(self) -> ContextKV:
        return ContextKV(self.cfg.num_layers, self.settings.cache_dtype or self.dtype)

    def _kv_hook(self, kind: str, block: int, branch, start: int):
        return branch.cache.writer() if kind == "recompute" else branch.cache.reader()

    def _rope_start(self, kind: str, start: int) -> int:
        return 0 if kind == "recompute" else self._position

    def _attn_mask(self, kind: str, frames: int):
        s = self.settings
        if kind == "recompute":
            return context_mask(frames, int(s.frames_per_block), self.tokens_per_frame, self.device)
        return context_bias_mask(self._position, frames, float(s.context_bias), self.tokens_per_frame, self.dtype,
                                 self.device)

    def _reencodes(self, bi: int) -> bool:
        """Whether block ``bi``'s first context frame is the re-encoded pixel frame (Krea: generated block ``g``
        with ``(g - 1)·n >= C``, unless ``keep_first_frame``)."""
        generated = bi - self.known_blocks
        return not self.settings.keep_first_frame and generated >= 0 and \
            (generated - 1) * int(self.settings.frames_per_block) >= self.context_frames

    def _first_context_frame(self, bi: int) -> torch.Tensor:
        if not self._reencodes(bi):
            return self._first
        if self.ring is None or not self.ring.frames:
            if not self._fallback_warned and self.fallback_note:
                self._fallback_warned = True
                warnings.warn(self.fallback_note, stacklevel=2)
            return self._first
        return self.ring.oldest_as_latent().float().to(self.device).expand(self.batch, -1, -1, -1, -1)

    @torch.no_grad()
    def _recompute(self, bi: int, start: int) -> None:
        """Rebuild every branch's cache from the context of the block at ``start`` (none at frame 0)."""
        self._position = 0
        for br in self.branches:
            br.cache.clear()
        if start == 0:
            return
        context = torch.cat([self._first_context_frame(bi)] + list(self._recent), 2)
        frames = [0] + list(range(start - len(self._recent), start))
        for br in self.branches:
            self._forward("recompute", bi, context, 0.0, br, 0, head=False)
            br.cache.frames = frames
        self._position = context.shape[2]

    @torch.no_grad()
    def _switch_prompt(self, bi: int, text) -> None:
        """Krea's server: the new prompt conditions the recompute and the block; nothing else to re-cache."""
        self.branches[0].ctx = self._encode(text, bi)

    def _remember(self, start: int, x0: torch.Tensor) -> None:
        """What Krea's recompute re-reads: the first latent frame and the last clean frames after it."""
        if start == 0:
            self._first = x0[:, :, :1]
        for i in range(1 if start == 0 else 0, x0.shape[2]):
            self._recent.append(x0[:, :, i:i + 1])

    def __iter__(self) -> Iterator[BlockResult]:
        self._start_run()
        self._first: Optional[torch.Tensor] = None
        # the last C - 1 clean frames after the first one (Krea's all_latents[:, 1:][:, -(C - 1):])
        self._recent: collections.deque = collections.deque(maxlen=self.context_frames - 1)
        self._position = 0
        total = len(self.layout)
        try:
            for bi, (start, n) in enumerate(self.layout):
                self._prompt_at(bi)  # the recompute below already uses the new prompt
                if start + n > self.known:
                    self._recompute(bi, start)
                x0 = self._denoise(bi, start, n)
                yield self._finish(bi, total, start, x0)  # the consumer decodes it (and pushes the pixels) before the next block's recompute
                self.check_interrupt()
        finally:
            self._end_run()
