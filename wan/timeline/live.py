"""Live prompt changes while a causal loop runs: requests come from any thread (an HTTP handler, a UI), the text
is encoded on a worker thread (not the sampling thread), and the loop takes the newest ready change at its next
block boundary (``TextSchedule.take``), which inserts it into the timeline at that block — so the timeline saved
after the run replays the run exactly.

Timing of every request is kept (``events``): when it was asked, when its embedding was ready, the block it was
applied at and when that block's first frame was out (``mark_block_done``) — what ``bench live`` reports.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

import torch

from .model import Prompt, Segment, TRANSITIONS


class LiveControl:
    """``encoder(text) -> [1, L, D]`` encodes typed prompts (None: only embeddings are accepted).
    ``request(...)`` returns the request's id at once; encoding runs on one worker thread (``threaded=False``
    encodes in the caller, for hosts where the encoder must not run beside the sampler)."""

    def __init__(self, encoder: Optional[Callable[[str], torch.Tensor]] = None, threaded: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.encoder = encoder
        # the run's scene-cut prefix, set by a multi-shot loop (wan/sampling/multishot.py); None: the run has no
        # multi-shot mode and a live scene cut is refused
        self.cut_prefix: Optional[str] = None
        self.clock = clock
        self._lock = threading.Lock()
        self._ready: List[Segment] = []  # encoded, waiting for a block boundary (oldest first)
        self._ids = itertools.count(1)
        self.events: Dict[int, dict] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipwan-live-encode") if threaded else None
        self.closed = False

    # --- from any thread ---------------------------------------------------------------------------------
    def request(self, text: str = "", embedding: Optional[torch.Tensor] = None, transition: str = "switch",
                blend_blocks: int = 0, interpolation: str = "linear") -> int:
        if self.closed:
            raise RuntimeError("this run has finished; start a new run to change its prompt.")
        text = (text or "").strip()
        if embedding is None and not text:
            raise ValueError("a live prompt needs its text (or an embedding).")
        if embedding is None and self.encoder is None:
            raise ValueError("this run has no text encoder for live prompts: connect a Prompt Timeline from Text node "
                             "(it holds the CLIP) to the sampler's timeline input, or send an embedding.")
        if transition not in TRANSITIONS:
            raise ValueError(f"transition '{transition}' is not one of {list(TRANSITIONS)}.")
        if transition == "cut" and self.cut_prefix is None:
            raise ValueError("this run has no multi-shot mode (LongLive 2.0's scene cuts): send transition 'switch' or "
                             "'blend', or run family LongLive 2.0 (multi_shot_sink on) to cut live.")
        if transition == "cut" and self.cut_prefix and embedding is not None:
            raise ValueError(f"a live scene cut is encoded as {self.cut_prefix!r} + its text: send the text, not an "
                             f"embedding.")
        segment = Segment([Prompt(text or "(embedding)", 1.0, embedding)], block=0, transition=transition,
                          blend_blocks=int(blend_blocks), interpolation=interpolation).check("live prompt")
        segment.block = None
        rid = next(self._ids)
        segment.source = f"live #{rid}"
        with self._lock:
            self.events[rid] = {"id": rid, "text": text, "requested": self.clock(), "encoded": None, "block": None,
                                "applied": None, "first_frame": None, "state": "encoding"}
        if embedding is not None:
            self._ready_now(rid, segment)
        elif self._pool is None:
            self._encode(rid, segment)
        else:
            self._pool.submit(self._encode, rid, segment)
        return rid

    def _encode(self, rid: int, segment: Segment) -> None:
        try:
            segment.prompts[0].embedding = self.encoder(segment.prompts[0].text)
            if segment.transition == "cut" and self.cut_prefix:  # the cut block's text, off the sampling thread too
                segment.cut_embedding(self.cut_prefix, self.encoder)
        except Exception as exc:  # the run goes on with its prompt; the error is reported on the request
            with self._lock:
                self.events[rid].update(state="failed", error=str(exc))
            return
        self._ready_now(rid, segment)

    def _ready_now(self, rid: int, segment: Segment) -> None:
        with self._lock:
            self.events[rid].update(encoded=self.clock(), state="pending")
            self._ready.append(segment)

    def status(self) -> list:
        with self._lock:
            return [dict(e) for e in self.events.values()]

    # --- from the sampling thread --------------------------------------------------------------------------
    def take_ready(self, block: int) -> Optional[Segment]:
        """The newest encoded request (older ones still waiting are superseded: the newest prompt wins)."""
        with self._lock:
            if not self._ready:
                return None
            newest, older = self._ready[-1], self._ready[:-1]
            self._ready = []
            for s in older:
                self.events[_rid(s)].update(state="superseded")
            self.events[_rid(newest)].update(state="applied", block=block, applied=self.clock())
        return newest

    def mark_block_done(self, block: int) -> None:
        """The first frame sampled with the change applied at ``block`` is out (called after each block)."""
        now = self.clock()
        with self._lock:
            for e in self.events.values():
                if e["block"] == block and e["first_frame"] is None:
                    e["first_frame"] = now

    def wait_encoded(self, timeout: float = 60.0) -> None:
        """Block until every request is encoded (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if all(e["state"] != "encoding" for e in self.events.values()):
                    return
            time.sleep(0.005)
        raise TimeoutError("live prompt encoding did not finish in time")

    def close(self) -> None:
        self.closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _rid(segment: Segment) -> int:
    return int(segment.source.split("#", 1)[1])
