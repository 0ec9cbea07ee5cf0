"""Running a block-causal loop: the loop shape picked from the settings, and the whole-video convenience.

The loop shapes (``loop.py`` the plain block loop; ``memflow.py``, ``rolling.py``, ``recompute.py`` its
subclasses) import nothing from here, so this is the one module that knows all four; ``endless.py`` (no last block)
and ``multishot.py`` (LongLive 2.0's scene cuts) wrap the block loop.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..model.causal import CausalWanModel
from .loop import (LOOP_SHAPES, CausalLoop, CausalSettings, NoiseSource, PromptSwitch, SamplerHooks, TimingHooks,
                   check_loop_fits, combine_hooks)
from .endless import EndlessLoop
from .memflow import MemoryLoop
from .multishot import check_multi_shot, multi_shot_loop, multi_shot_on
from .presets import check_family_fits
from .recompute import RecomputeLoop
from .rolling import RollingLoop

_LOOPS = {
    "block": CausalLoop,
    "memory": MemoryLoop,  # MemFlow's memory bank
    "rolling": RollingLoop,  # Rolling Forcing: blocks at staggered noise levels denoised jointly
    "recompute": RecomputeLoop,  # Krea Realtime: the cache rebuilt from a few clean context frames per block
}


def loop_class(shape: str):
    """The loop class of a loop shape (``CausalSettings.loop``). Each shape that is not the plain block loop
    lives in a module of its own and subclasses ``CausalLoop`` (same arguments, hooks, noise and results)."""
    try:
        return _LOOPS[shape]
    except KeyError:
        raise ValueError(f"loop shape '{shape}' is not one of {list(LOOP_SHAPES)}.") from None


def iter_causal_blocks(model: CausalWanModel, latent: torch.Tensor, text: torch.Tensor, *, endless: bool = False,
                       **kwargs) -> CausalLoop:
    """Validate and set up a block-causal run (errors raise here), return it as an iterable of
    ``BlockResult`` (see ``CausalLoop`` for the arguments); the loop shape comes from ``settings.loop``.
    ``endless``: no last block, ``latent`` is the first segment (``EndlessLoop``, wan/sampling/endless.py)."""
    settings = kwargs.get("settings") or CausalSettings()
    if settings.family:
        check_family_fits(settings.family, model.config)
    try:
        check_multi_shot(settings, kwargs.get("timeline"))  # a scene cut where no multi-shot mode is on: refused
        cls = EndlessLoop if endless else loop_class(settings.loop)
        loop = (multi_shot_loop(cls) if multi_shot_on(settings) else cls)(model, latent, text, **kwargs)
    except ValueError as exc:
        if not settings.family:
            raise
        # a family rule the settings break: say which family, on which model
        raise ValueError(f"family '{settings.family}' on the model {model.config.describe()}: {exc}") from None
    check_loop_fits(loop)
    return loop


class _LegacyBlockCallback(SamplerHooks):
    def __init__(self, fn):
        self.fn = fn

    def on_block(self, r):
        self.fn(r.index, r.total, r.x0, r.start_frame)


def sample_causal(model: CausalWanModel, latent: torch.Tensor, text: torch.Tensor, *, seed: int = 0,
                  settings: Optional[CausalSettings] = None, negative_text: Optional[torch.Tensor] = None,
                  clip_fea: Optional[torch.Tensor] = None, concat: Optional[torch.Tensor] = None,
                  first_frames: Optional[torch.Tensor] = None, prompt_switches: Sequence[PromptSwitch] = (),
                  on_block: Optional[Callable] = None, check_interrupt: Optional[Callable[[], None]] = None,
                  stats: Optional[dict] = None, noise: Optional[NoiseSource] = None,
                  hooks: Optional[SamplerHooks] = None, actions=None, vace=None, restyle=None,
                  timeline=None) -> torch.Tensor:
    """Sample a whole video latent block by block (``CausalLoop`` for the arguments) and return the clean
    latent, float32, same shape as ``latent``.

    ``on_block(index, total, x0_block, start_frame)`` is called as soon as a block is final (before its
    cache pass); ``hooks`` observe forwards and steps; ``stats`` (a dict) receives ``forward_s`` (time in DiT
    forwards), ``cache_bytes`` and ``cache_frames``. ``check_interrupt()`` may raise to stop (nothing is
    returned then). ``actions``: a Matrix-Game 2.0 ``ActionTimeline`` (wan/conditioning/actions.py). ``vace``: a
    ``VaceControl`` (or a list: their hints add up) for a Wan2.1-VACE model; ``restyle``: a ``Restyle``
    (video-to-video: each block starts from the input's frames at the first step). ``timeline``
    (``wan.timeline.Timeline``, encoded) replaces ``prompt_switches`` with any number of prompts, mixes and blends
    (live changes too, through its ``LiveControl``)."""
    timing = TimingHooks(model.device) if stats is not None else None
    all_hooks = combine_hooks(hooks, timing, None if on_block is None else _LegacyBlockCallback(on_block))
    loop = iter_causal_blocks(model, latent, text, seed=seed, settings=settings, negative_text=negative_text,
                              clip_fea=clip_fea, concat=concat, first_frames=first_frames,
                              prompt_switches=prompt_switches, noise=noise, hooks=all_hooks,
                              check_interrupt=check_interrupt, actions=actions, vace=vace, restyle=restyle,
                              timeline=timeline)
    out = torch.zeros(latent.shape, dtype=torch.float32, device=model.device)
    for r in loop:
        out[:, :, r.start_frame:r.start_frame + r.num_frames] = r.x0
    if stats is not None:
        stats["forward_s"] = stats.get("forward_s", 0.0) + timing.forward_s
        stats["cache_bytes"] = loop.cache_nbytes
        stats["cache_frames"] = loop.cache_frames
    return out
