"""Rolling Forcing's loop shape (``CausalSettings(loop="rolling")``): a window of blocks at staggered noise
levels denoised jointly, an anchor (attention sink) re-placed next to the recent frames.

What the authors' inference does (TencentARC/RollingForcing, ``pipeline/rolling_forcing_inference.py``
``inference_rolling_forcing``, ``wan/modules/causal_model.py`` ``CausalWanSelfAttention``, run by
``inference.py --use_ema`` with ``configs/rolling_forcing_dmd.yaml`` over ``configs/default_config.yaml``),
in our words; ``W`` = number of denoising steps, ``n`` = frames per block, blocks ``0..G-1``:

* **Schedule.** ``denoising_step_list [1000, 800, 600, 400, 200]``, ``warp_denoising_step: true``, shift 5
  (``model_kwargs.timestep_shift``): 5 warped steps, t = 1000, 952.4, 882.4, 769.2, 555.6 on the shifted
  1000-point grid; σ from the nearest grid point (``wan/sampling/scheduler.py``). ``num_frame_per_block: 3``,
  ``context_noise: 0``, ``independent_first_frame: false``. The README runs ``--num_output_frames 126`` latent
  frames (42 blocks) from the EMA weights (``--use_ema`` -> ``generator_ema``, FSDP prefixes stripped).
* **Rolling window.** ``W`` blocks wide (one per step). There are ``G + W - 1`` windows; window ``w`` holds
  blocks ``max(0, w-W+1) .. min(G-1, w)``, so block ``b`` enters at window ``b`` from its initial noise and
  takes step ``j = w - b`` in window ``w``: the newest block is at t = 1000, the oldest at the last step. One
  DiT forward per window on the window's frames with a per-frame timestep; inside the window every frame
  attends every other (no causal mask). The first ``W - 1`` windows ramp up (fewer blocks, the highest
  levels), the last ``W - 1`` drain (fewer blocks, the lowest levels, no new noise).
* **Re-noise.** After the forward, x0 = x - σ·flow per frame. For each block of the window in order that is
  not at its last step: ``add_noise(x0, randn_like(x0 of the whole window), next t)``, keeping the block's
  slice — one window-sized draw per block from the global generator (``NoiseSource.window_step``); the block's
  next input. The initial noise is one ``[B, F, 16, h, w]`` tensor drawn before the run.
* **Leaving the window.** A block at its last step is final (its x0 is the output). Then the window's
  *first* block is passed again at t = ``context_noise`` = 0 (``updating_cache=True``) to write its clean K/V.
  During ramp-up that first block (block 0) is not final yet; those passes write values that are overwritten
  before anything reads them, so this loop skips them (and the pass after the last block, read by nothing).
* **KV cache.** One buffer of 24 frames (``1560·24`` tokens): slot 0 holds the anchor, the first block, with
  its keys stored *without* RoPE; the other 21 roll (the oldest non-anchor block evicted). A window forward
  writes its first block's noisy K/V into that block's slot (overwritten by the clean pass right after) and
  reads: nothing from the cache while the window starts at frame 0; otherwise the anchor plus the cached frames
  just before the window, at most ``max_attention_size`` = 21 frames in all with the window itself (a full
  window of 15 frames sees 3 of them). The anchor is roped at frames ``p - 3 .. p - 1``, ``p`` the first
  cached frame read (the window's start if none): right before them, not at frame 0 ("roped as the past
  frame"). The clean pass of a block ``[s, e)`` reads the last 21 frames including itself, ``[e - 21, e)``, at
  absolute positions; the anchor only while it is among them (the video's first 21 frames).
* **First frame.** ``independent_first_frame`` is off; its ``initial_latent`` branch (i2v / extension) reads
  ``current_start_frame`` before assigning it, so the authors' start-image path does not run.

Here, with our settings: the anchor is the sink (``sink_size``: 3 = their first block), the 21-frame limit is
``local_window``; ``wan/sampling/cache.py`` (``rolling=True``) reads exactly those sets. Generalised beyond the authors'
config, with the same rules: any block layout (``independent_first_frame``, ``shorter_last_block``), any window and
sink (``0`` = no window: every earlier frame, at its own position), fewer blocks than steps (the authors'
bookkeeping assumes ``G >= W`` and re-draws a block's noise otherwise; here every block still takes its ``W`` steps
once), CFG (each branch has its cache), and a start image: its frames are written into the cache first (the pass at
t = 0, as the other loops do), then the rolling windows run over the blocks after it. Refused with a clear error:
prompt switches (the authors have none; a joint window has no single block where the prompt changes), UniPC, the
first-frame clamp, ``first_block_steps`` and Reward Forcing's slot positions.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .cache import KVCache
from .loop import BlockResult, CausalLoop
from .scheduler import renoise, x0_from_flow


def rolling_windows(blocks: int, steps: int) -> list:
    """``[(first, last), ...]`` block indices (inclusive) of each window: ``blocks + steps - 1`` windows, block
    ``b`` in windows ``b .. b + steps - 1`` (at step ``window - b``)."""
    return [(max(0, w - steps + 1), min(blocks - 1, w)) for w in range(blocks + steps - 1)]


class RollingLoop(CausalLoop):
    """Rolling Forcing's loop (see the module docstring); same arguments, hooks, noise and results as
    ``CausalLoop``. One ``BlockResult`` per block, in order, as soon as the block has taken its last step."""

    def __init__(self, model, latent, text, **kwargs):
        super().__init__(model, latent, text, **kwargs)
        s = self.settings
        refused = [(self.prompt_changes, "prompt switches (Rolling Forcing has none: a window denoises several blocks "
                                   "at once, so no block boundary separates the prompts); remove the switch or "
                                   "use loop='block'"),
                   (s.solver != "renoise", f"solver '{s.solver}' (Rolling Forcing re-noises: use solver='renoise')"),
                   (self.clamp, "first_frame='clamp' (the start image is written into the cache: use "
                                "first_frame='cache')"),
                   (s.first_block_steps is not None, "first_block_steps (every block takes the same steps in the "
                                                     "window: leave it None)"),
                   (s.positions != "absolute" or s.sink_ema is not None,
                    "positions='slots' / sink_ema (Reward Forcing's cache; the rolling anchor uses absolute "
                    "positions)")]
        for bad, what in refused:
            if bad:
                raise ValueError(f"loop 'rolling' does not support {what}.")
        self.generated = [bi for bi, (st, n) in enumerate(self.layout) if st + n > self.known]
        self.window_blocks = len(self.sigmas)
        sizes = [self.layout[bi][1] for bi in self.generated]
        self.widest = max([sum(sizes[i:i + self.window_blocks]) for i in range(len(sizes))] or [0])
        sink, window = int(s.sink_size), int(s.local_window)
        if window and window < sink + self.widest:
            raise ValueError(f"local_window {window} is too small for the rolling loop: the sink ({sink} frames) "
                             f"and a window of {self.window_blocks} blocks ({self.widest} frames) must fit; set "
                             f"local_window >= {sink + self.widest} (Rolling Forcing: 21 with sink 3), or 0 for "
                             f"no window.")
        self.total_steps = len(self.generated) * self.window_blocks

    def cache_capacity(self) -> int:
        # kept: the sink + the last `window` frames (the commit pass reads them) + scratch for a whole window;
        # never more than the video's frames
        s, frames = self.settings, self.latent.shape[2]
        window = int(s.local_window)
        return min(int(s.sink_size) + window + self.widest, frames) if window else frames

    def _new_cache(self) -> KVCache:
        s, cfg = self.settings, self.cfg
        window = int(s.local_window)
        capacity = self.cache_capacity()
        return KVCache(cfg.num_layers, self.batch, cfg.num_heads, cfg.head_dim, self.tokens_per_frame, capacity,
                       int(s.sink_size), window, s.cache_dtype or self.dtype, self.device, rolling=True)

    def _commit(self, bi: int, start: int, x0: torch.Tensor) -> None:
        for br in self.branches:
            br.cache.begin_block(start, x0.shape[2])
        self._cache_pass(bi, start, x0)

    def _entering(self, bi: int) -> torch.Tensor:
        """A block's input when it enters the window: its initial noise (at the first σ: CausalLoop's rule)."""
        start, n = self.layout[bi]
        x = self.initial[:, :, start:start + n]
        if self.sigmas[0] < 1.0:
            x = renoise(self.latent[:, :, start:start + n].float().to(self.device), x, self.sigmas[0])
        return x

    @torch.no_grad()
    def _window(self, w: int, blocks: list, noisy: dict) -> dict:
        """One joint forward over ``blocks`` (window ``w``); updates ``noisy`` for the blocks that go on and
        returns ``{block: x0}`` of the block that took its last step (if any)."""
        start = self.layout[blocks[0]][0]
        x = torch.cat([noisy[bi] for bi in blocks], 2)
        steps = [w - self.generated.index(bi) for bi in blocks]
        t = torch.cat([torch.full((self.batch, self.layout[bi][1]), float(self.timesteps[j]), dtype=torch.float64)
                       for bi, j in zip(blocks, steps)], 1).to(self.device)
        for br in self.branches:
            br.cache.begin_window(start, x.shape[2])
        flows = [self._forward("denoise", blocks[0], x, t, br, start) for br in self.branches]
        flow = flows[0] if len(flows) == 1 else flows[1] + self.guidance * (flows[0] - flows[1])
        final, offset = {}, 0
        for bi, j in zip(blocks, steps):
            n = self.layout[bi][1]
            x0 = x0_from_flow(x[:, :, offset:offset + n], flow[:, :, offset:offset + n], self.sigmas[j])
            self.hooks.on_step(bi, j, self.window_blocks)
            if j + 1 < self.window_blocks:
                fresh = self.noise.window_step(bi, j + 1, tuple(x0.shape), tuple(x.shape), offset, self.device)
                noisy[bi] = renoise(x0, fresh.float(), self.sigmas[j + 1])
            else:
                final[bi] = x0
                del noisy[bi]
            offset += n
        return final

    def __iter__(self) -> Iterator[BlockResult]:
        self._start_run()
        total = len(self.layout)
        for bi, (start, n) in enumerate(self.layout[:len(self.layout) - len(self.generated)]):
            # the start image's blocks: clean latents, only written into the cache
            x0 = self.first_frames[:, :, start:start + n].float().to(self.device).expand(self.batch, -1, -1, -1, -1)
            yield self._finish(bi, total, start, x0)
            self.check_interrupt()
            self._commit(bi, start, x0)
        noisy: dict = {}
        for w, (lo, hi) in enumerate(rolling_windows(len(self.generated), self.window_blocks)):
            self.check_interrupt()
            blocks = self.generated[lo:hi + 1]
            if hi == w:  # a new block enters at t = 1000
                noisy[blocks[-1]] = self._entering(blocks[-1])
            for bi, x0 in self._window(w, blocks, noisy).items():
                start = self.layout[bi][0]
                yield self._finish(bi, total, start, x0)  # final: stream it before its cache pass
                if bi != self.generated[-1]:  # nothing reads the last block's K/V
                    self.check_interrupt()
                    self._commit(bi, start, x0)
