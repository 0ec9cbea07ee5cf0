"""Block-causal self-attention KV cache with an attention sink and a local window.

Attention rule (the same one the masked reference in the tests spells out): a query in the block of latent
frames ``[s, e)`` sees key frame ``f`` iff ``f < e`` and, with a window of ``L`` frames, ``f < sink`` or
``f >= e - (L - sink)`` — the first ``sink`` frames forever plus the most recent frames, ``L`` frames in
all including the block itself. ``L = 0`` means no window (every earlier frame). The sink is the first
``sink`` frames *in the cache*: frames ``0..sink-1``, unless a prompt switch re-filled the cache (LongLive
without ``global_sink``), after which the first re-encoded frames are the sink, as in LongLive's buffer.

Layout per layer: one buffer ``[B, capacity·S, heads, head_dim]`` (S tokens per frame) holding the committed
frames (sink first, then the recent ones, oldest first) followed by scratch room for the block being
denoised. Denoising steps write the block's K/V into the scratch slots and attend over
``[committed | block]``; only the clean pass at t=0 *commits* the block (advances the frame count), so an
interrupted block leaves the committed frames untouched. Keys are stored after RoPE at their absolute frame
positions, so evicting frames never changes the positions of the ones kept. Capacity is fixed (``L`` frames
with a window, the whole video without), so memory is flat however long the video runs.

Three family rules change the cache, each one function/option here: Reward Forcing's two,
  * ``positions="slots"`` (Reward Forcing): keys are stored without RoPE and rotated at read time to their
    *slot* position in the buffer (sink at 0.., the recent frames after it, the block last), so a long video
    always looks like the first ``L`` frames. The DiT ropes the queries at the absolute frame; attention
    only depends on query-key distances, so the keys are placed at ``slot + (start_frame - slot of the
    block)`` (the same distances as Reward Forcing's relative positions).
  * ``sink_ema`` (Reward Forcing's "EMA sink", ``incremental_update``): when frames are evicted, see
    ``ema_sink_update``.

and Rolling Forcing's (``rolling=True``, used by ``wan/sampling/rolling.py``) changes what is read, not what is stored:
  * a *window pass* (``begin_window``) denoises several blocks jointly; it is read like a block but never
    committed and evicts nothing. It sees the sink and the recent frames ``f >= e - (L - sink)``, with the
    sink's keys moved (a rotation of their RoPE frame angle) to sit right before the oldest recent frame it
    sees (or before the window when it sees none): Rolling Forcing's anchor (its authors store it un-roped
    and rope it "as the past frame" at each read; rotating the stored key by the frame offset is the same);
  * a *commit pass* (``begin_block`` + ``commit``) reads a plain window of the last ``L`` frames including
    its block, ``f >= e - L``, the sink only while it is among them; eviction keeps those ``L`` frames.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..model.rope import apply_rope, rope_cos_sin

POSITION_MODES = ("absolute", "slots")


def ema_sink_update(sink_k, sink_v, evicted_k, evicted_v, alpha: float):
    """Reward Forcing's sink update at an eviction (its ``CausalWanSelfAttention``, ``compression_alpha``
    0.999): when exactly as many tokens are evicted as the sink holds, ``sink <- α·sink + (1-α)·evicted``
    (frame by frame, keys without RoPE); otherwise the first ``min(evicted, sink)`` sink tokens are replaced
    by the first evicted ones. Returns the new sink K and V."""
    if evicted_k.shape[1] == sink_k.shape[1]:
        return alpha * sink_k + (1 - alpha) * evicted_k, alpha * sink_v + (1 - alpha) * evicted_v
    m = min(evicted_k.shape[1], sink_k.shape[1])
    sink_k, sink_v = sink_k.clone(), sink_v.clone()
    sink_k[:, :m], sink_v[:, :m] = evicted_k[:, :m], evicted_v[:, :m]
    return sink_k, sink_v


def _frame_rotation(head_dim: int, first_position: int, frames: int, tokens_per_frame: int, device):
    """cos/sin per token rotating only the frame axis of RoPE to positions ``first_position..`` (the height
    and width pairs get angle 0): keys stored without RoPE are placed at a frame position with it."""
    cos, sin = rope_cos_sin(head_dim, first_position, frames, 1, 1, device)
    return cos.repeat_interleave(tokens_per_frame, 0), sin.repeat_interleave(tokens_per_frame, 0)


class KVCache:
    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, tokens_per_frame: int,
                 capacity_frames: int, sink_frames: int = 0, window_frames: int = 0,
                 dtype: torch.dtype = torch.float32, device=None, positions: str = "absolute",
                 sink_ema: Optional[float] = None, rolling: bool = False):
        if positions not in POSITION_MODES:
            raise ValueError(f"positions '{positions}' is not one of {POSITION_MODES}.")
        if sink_ema is not None and positions != "slots":
            raise ValueError("sink_ema (Reward Forcing's EMA sink) needs positions='slots': the sink mixes keys "
                             "stored without RoPE.")
        if rolling and (positions != "absolute" or sink_ema is not None):
            raise ValueError("rolling (Rolling Forcing's reads) needs positions='absolute' and no sink_ema: it "
                             "moves the sink's absolute-position keys next to the recent frames.")
        self.positions = positions
        self.sink_ema = sink_ema
        self.rolling = rolling
        self._window_pass = False
        self.num_layers = num_layers
        self.shape = (batch, capacity_frames * tokens_per_frame, heads, head_dim)
        self.tokens_per_frame = tokens_per_frame
        self.capacity_frames = capacity_frames
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.dtype = dtype
        self.device = device
        self.k: List[Optional[torch.Tensor]] = [None] * num_layers
        self.v: List[Optional[torch.Tensor]] = [None] * num_layers
        self.frames: List[int] = []  # absolute indices of the committed frames, in buffer order
        self._pending = 0  # frames of the block being denoised (scratch slots after the committed ones)
        self._pending_start = 0

    # --- bookkeeping --------------------------------------------------------------------------------
    def reset(self) -> None:
        self.frames = []
        self._pending = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def begin_block(self, start_frame: int, num_frames: int) -> None:
        """Make room for a block of ``num_frames`` starting at ``start_frame`` (evicting frames the window no
        longer shows: they would be masked out for this block and every later one)."""
        if self.frames and start_frame <= self.frames[-1]:
            raise RuntimeError(f"KV cache holds frames up to {self.frames[-1]} but the next block starts at "
                               f"frame {start_frame}; blocks must be committed in order.")
        end = start_frame + num_frames
        self._window_pass = False
        if self.window_frames:
            # rolling: the commit pass reads the last L frames, so those are kept (plus the sink)
            first_recent = end - self.window_frames if self.rolling else \
                end - (self.window_frames - self.sink_frames)
            # the sink is the first `sink` cached frames (frames 0.. unless a re-cache refilled the cache)
            sink = self.frames[:self.sink_frames]
            keep = sink + [f for f in self.frames[self.sink_frames:] if f >= first_recent]
            if len(keep) != len(self.frames):
                self._evict(keep)
        if len(self.frames) + num_frames > self.capacity_frames:
            raise RuntimeError(f"KV cache capacity {self.capacity_frames} frames exceeded "
                               f"({len(self.frames)} cached + {num_frames} new).")
        self._pending = num_frames
        self._pending_start = start_frame

    def begin_window(self, start_frame: int, num_frames: int) -> None:
        """Rolling Forcing's joint pass over ``num_frames`` frames from ``start_frame`` (``rolling`` caches only):
        read like a block, never committed, nothing evicted (the commit pass of its first block comes next)."""
        if not self.rolling:
            raise RuntimeError("begin_window is Rolling Forcing's joint pass: build the KVCache with rolling=True.")
        if self.frames and start_frame <= self.frames[-1]:
            raise RuntimeError(f"KV cache holds frames up to {self.frames[-1]} but the window starts at frame "
                               f"{start_frame}.")
        if len(self.frames) + num_frames > self.capacity_frames:
            raise RuntimeError(f"KV cache capacity {self.capacity_frames} frames exceeded "
                               f"({len(self.frames)} cached + a window of {num_frames}).")
        self._pending = num_frames
        self._pending_start = start_frame
        self._window_pass = True

    def _evict(self, keep: List[int]) -> None:
        s = self.tokens_per_frame
        pos = {f: i for i, f in enumerate(self.frames)}
        src = [pos[f] for f in keep]
        if self.sink_ema is not None and self.sink_frames:
            self._update_sink([pos[f] for f in self.frames[self.sink_frames:] if f not in set(keep)])
        # the sink frames are a prefix already in place; the recent frames are one contiguous run to move left
        n_in_place = next((j for j, i in enumerate(src) if i != j), len(src))
        if n_in_place < len(src):
            i0, run = src[n_in_place], len(src) - n_in_place
            assert src[n_in_place:] == list(range(i0, i0 + run)), "recent cache frames must be contiguous"
            for buf in self.k + self.v:
                if buf is not None:  # clone: source and destination ranges may overlap
                    buf[:, n_in_place * s:(n_in_place + run) * s] = buf[:, i0 * s:(i0 + run) * s].clone()
        self.frames = keep

    def _update_sink(self, evicted_slots: List[int]) -> None:
        s, n = self.tokens_per_frame, self.sink_frames * self.tokens_per_frame
        a, b = evicted_slots[0] * s, (evicted_slots[-1] + 1) * s  # the evicted frames are one run after the sink
        for kb, vb in zip(self.k, self.v):
            if kb is not None:
                kb[:, :n], vb[:, :n] = ema_sink_update(kb[:, :n], vb[:, :n], kb[:, a:b].clone(), vb[:, a:b].clone(),
                                                       float(self.sink_ema))

    def keep_first(self, num_frames: int) -> None:
        """Drop every committed frame but the first ``num_frames`` (in buffer order: the sink)."""
        self.frames = self.frames[:num_frames]
        self._pending = 0

    def commit(self) -> None:
        """The clean pass wrote the block's K/V: keep it for the following blocks."""
        if self._window_pass:
            raise RuntimeError("a rolling window pass is never committed; begin_block() the block to commit.")
        self.frames.extend(range(self._pending_start, self._pending_start + self._pending))
        self._pending = 0

    # --- the hook the DiT calls in every layer ---------------------------------------------------------
    def hook(self, start_frame: int):
        """``kv_hook`` for ``model.transformer``: writes the block's K/V (absolute frame ``start_frame``) into
        the scratch slots and returns K/V over ``[committed | block]``."""
        if start_frame != self._pending_start:
            raise RuntimeError(f"KV cache: block at frame {start_frame} was not announced by begin_block().")
        n_old = len(self.frames) * self.tokens_per_frame
        slots = self.positions == "slots"
        if slots:
            head_dim, tok = self.shape[3], self.tokens_per_frame
            dev = self.device if self.device is not None else "cpu"
            # unrope the block (roped by the DiT at its absolute frames), rope the buffer at slot positions
            un_cos, un_sin = _frame_rotation(head_dim, start_frame, self._pending, tok, dev)
            in_slots = len(self.frames) + self._pending
            cos, sin = _frame_rotation(head_dim, start_frame - len(self.frames), in_slots, tok, dev)
        first_read, sink_turn = self._rolling_view(start_frame) if self.rolling else (0, None)

        def kv_hook(layer: int, k: torch.Tensor, v: torch.Tensor):
            if self.k[layer] is None:
                self.k[layer] = torch.zeros(self.shape, dtype=self.dtype, device=k.device)
                self.v[layer] = torch.zeros(self.shape, dtype=self.dtype, device=k.device)
            n_new = k.shape[1]
            if n_new != self._pending * self.tokens_per_frame:
                raise RuntimeError("KV cache: block size does not match begin_block().")
            kb, vb = self.k[layer], self.v[layer]
            kb[:, n_old:n_old + n_new] = apply_rope(k, un_cos, -un_sin) if slots else k
            vb[:, n_old:n_old + n_new] = v
            if slots:
                return apply_rope(kb[:, :n_old + n_new], cos, sin), vb[:, :n_old + n_new]
            if sink_turn is not None:  # rolling window pass: the sink moved next to the frames read after it
                cos_s, sin_s, ns = sink_turn
                return (torch.cat([apply_rope(kb[:, :ns], cos_s, sin_s), kb[:, first_read:n_old + n_new]], 1),
                        torch.cat([vb[:, :ns], vb[:, first_read:n_old + n_new]], 1))
            return kb[:, first_read:n_old + n_new], vb[:, first_read:n_old + n_new]

        return kv_hook

    def _rolling_view(self, start_frame: int):
        """What a rolling pass reads: ``(first token read after the sink, None or (cos, sin, sink tokens))``
        (module docstring: the window pass moves the sink, the commit pass reads the last L frames)."""
        if not self.window_frames:
            return 0, None  # no window: every frame at its own position (the sink is already next to frame `sink`)
        end, s = start_frame + self._pending, self.tokens_per_frame
        if not self._window_pass:
            return s * sum(1 for f in self.frames if f < end - self.window_frames), None
        sink = self.frames[:self.sink_frames]
        recent = [f for f in self.frames[len(sink):] if f >= end - (self.window_frames - self.sink_frames)]
        first = len(self.frames) - len(recent)
        if not sink:
            return s * first, None
        # the anchor sits right before the oldest frame read after it (the window itself if none)
        shift = (recent[0] if recent else start_frame) - len(sink) - sink[0]
        if shift == 0 and first == len(sink):
            return 0, None  # nothing skipped: the sink is already there
        cos, sin = _frame_rotation(self.shape[3], shift, 1, 1, self.device if self.device is not None else "cpu")
        return s * first, (cos, sin, s * len(sink))


def attended_frames(block_start: int, block_end: int, sink: int, window: int) -> list[int]:
    """Frames a query in ``[block_start, block_end)`` attends to (the rule above), for docs and checks."""
    if not window:
        return list(range(block_end))
    return [f for f in range(block_end) if f < sink or f >= block_end - (window - sink)]
