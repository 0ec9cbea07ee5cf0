"""The per-run state of Matrix-Game 2.0's action modules in the block-causal loop: the action tensors per pixel
frame and the two K/V caches (mouse: one per spatial position; keyboard: one per video) beside the video's.

Cache rule, as the authors run it (``ActionModule.forward`` with ``kv_cache_mouse`` / ``kv_cache_keyboard``):
each forward of a block (every denoising step and the clean pass at t=0) writes the block's action K/V at the
block's frames and attends the last ``local_window`` latent frames including the block, the same window as the
video's self-attention; the clean pass's K/V are the ones later blocks see. That is ``KVCache``'s rule with
one token per frame, so the same class holds them (begin the block, write scratch slots, commit at t=0).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..conditioning.actions import ActionTimeline, block_pixel_frames
from ..model.actions import ActionConfig, apply_actions, pixel_windows
from .cache import KVCache
from ..vae.latent import latent_frames_to_pixel_length


def check_actions(config, actions: Optional[ActionTimeline]) -> None:
    """Refuse actions for a model without action modules (before anything runs)."""
    if actions is not None and config.actions is None:
        raise ValueError(f"actions were given but the model has no action module ({config.describe()}); "
                         f"actions drive Matrix-Game 2.0 checkpoints (base_distill.safetensors, gta_drive, "
                         f"templerun). Disconnect the actions input or load a Matrix-Game model.")


class ActionRun:
    """Action tensors of one run and their caches; ``hook(start, n)`` is the DiT's ``action_hook`` for a
    forward of the block ``[start, start+n)``, ``commit()`` keeps the block after its clean pass."""

    def __init__(self, config, timeline: Optional[ActionTimeline], latent_frames: int, batch: int,
                 tokens_per_frame: int, settings, device, dtype):
        acfg: ActionConfig = config.actions
        self.cfg = acfg
        mode = acfg.mode
        timeline = timeline if timeline is not None else ActionTimeline()  # no timeline: idle
        mode = timeline.resolve_mode(mode)
        kb, ms = timeline.tensors(mode, latent_frames_to_pixel_length(latent_frames), int(settings.frames_per_block))
        self.keyboard = kb[None].repeat(batch, 1, 1).to(device)
        self.mouse = None if ms is None else ms[None].repeat(batch, 1, 1).to(device)
        capacity = int(settings.local_window) or latent_frames
        sink, window = int(settings.sink_size), int(settings.local_window)

        def cache(b):
            return KVCache(config.num_layers, b, acfg.heads, acfg.head_dim, 1, capacity, sink, window,
                           dtype, device)

        self.caches = [cache(batch)] if acfg.keyboard_dim else []
        self.keyboard_cache = self.caches[0] if acfg.keyboard_dim else None
        self.mouse_cache = cache(batch * tokens_per_frame) if acfg.mouse_dim else None
        if self.mouse_cache is not None:
            self.caches.append(self.mouse_cache)
        self.timeline = timeline
        self.mode = mode
        self._live_block = -1
        if timeline.live is not None:
            timeline.live.mode = mode  # keys sent from now on are checked against this model's keys

    def _take_live_keys(self, start: int, frames: int) -> None:
        """At a block's first forward: the keys sent live (if any) become the block's actions, on the pixel
        frames the authors' streaming replaces for it (``block_pixel_frames``)."""
        live = self.timeline.live
        if live is None or start == self._live_block:
            return
        self._live_block = start
        row = live.row(self.mode)
        if row is None:
            return
        first, last = block_pixel_frames(start, frames)
        n = min(last + 1, self.keyboard.shape[1]) - first
        if n > 0:
            self.set_frames(first, row[0].expand(n, -1), None if row[1] is None else row[1].expand(n, -1))

    def hook(self, start: int, frames: int):
        self._take_live_keys(start, frames)
        for c in self.caches:
            c.begin_block(start, frames)  # the same block again (next step) changes nothing
        pw = self.cfg.pixel_window
        kb = pixel_windows(self.keyboard, start, frames, pw) if self.cfg.keyboard_dim else None
        ms = pixel_windows(self.mouse, start, frames, pw) if self.mouse is not None else None
        kb_hook = None if self.keyboard_cache is None else self.keyboard_cache.hook(start)
        ms_hook = None if self.mouse_cache is None else self.mouse_cache.hook(start)

        def action_hook(layer: int, module, tokens: torch.Tensor, n: int) -> torch.Tensor:
            return apply_actions(module, self.cfg, tokens, n, start, kb, ms,
                                 mouse_kv=None if ms_hook is None else (lambda k, v: ms_hook(layer, k, v)),
                                 keyboard_kv=None if kb_hook is None else (lambda k, v: kb_hook(layer, k, v)))

        return action_hook

    def commit(self) -> None:
        for c in self.caches:
            c.commit()

    def set_frames(self, first: int, keyboard: torch.Tensor, mouse: Optional[torch.Tensor] = None) -> None:
        """Overwrite the actions from pixel frame ``first`` on (a live route: keys pressed while streaming);
        frames already generated are not changed by it."""
        n = keyboard.shape[0]
        self.keyboard[:, first:first + n] = keyboard.to(self.keyboard)
        if mouse is not None and self.mouse is not None:
            self.mouse[:, first:first + n] = mouse.to(self.mouse)
