"""Live prompt changes while a causal loop runs: requests come from any thread (an HTTP handler, a UI), the text
is encoded on a worker thread (not the sampling thread), and the loop takes the newest ready change at its next
block boundary (``TextSchedule.take``), which inserts it into the timeline at that block — so the timeline saved
after the run replays the run exactly.

On a CPU host the encoder and the sampler share the cores. The worker thread can run at the lowest OS
priority on request (``priority="background"``; Linux: the thread's nice value, which the intra-op threads it starts
inherit): the scheduler gives the sampler the cores and the encoder the gaps, so blocks keep their pace, at the
cost of a later block for the change — and a machine kept fully busy by other work can hold the change back, which
is why ``normal`` (encode at once, sharing the cores) is the default. ``bench live`` measures both.

Timing of every request is kept (``events``): when it was asked, when its embedding was ready, the block it was
applied at and when that block's first frame was out (``mark_block_done``) — what ``bench live`` reports.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

import torch

from .controls import IMAGE_ROUTES
from .model import Prompt, Segment, TRANSITIONS


# name -> nice value of the encoding thread (Linux; elsewhere the thread runs at normal priority)
ENCODER_PRIORITIES = {"normal": 0, "background": 19}
DEFAULT_ENCODER_PRIORITY = "normal"


def _set_thread_priority(priority: str) -> None:
    """Runs first on the worker thread. Only Linux has per-thread nice values (``setpriority`` on a thread id);
    on macOS the same call would address a process, so other platforms keep normal priority."""
    nice = ENCODER_PRIORITIES[priority]
    if nice and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:  # a sandbox may forbid it: the thread keeps normal priority
            pass


class LiveControl:
    """``encoder(text) -> [1, L, D]`` encodes typed prompts (None: only embeddings are accepted).
    ``request(...)`` returns the request's id at once; encoding runs on one worker thread (``threaded=False``
    encodes in the caller, for hosts where the encoder must not run beside the sampler). ``priority``: one of
    ``ENCODER_PRIORITIES`` for the worker thread."""

    def __init__(self, encoder: Optional[Callable[[str], torch.Tensor]] = None, threaded: bool = True,
                 clock: Callable[[], float] = time.perf_counter, priority: str = DEFAULT_ENCODER_PRIORITY):
        if priority not in ENCODER_PRIORITIES:
            raise ValueError(f"encoder priority '{priority}' is not one of {list(ENCODER_PRIORITIES)}.")
        self.encoder = encoder
        self.priority = priority
        # the run's scene-cut prefix, set by a multi-shot loop (wan/sampling/multishot.py); None: the run has no
        # multi-shot mode and a live scene cut is refused
        self.cut_prefix: Optional[str] = None
        self.clock = clock
        self._lock = threading.Lock()
        self._ready: List[Segment] = []  # encoded, waiting for a block boundary (oldest first)
        self._ids = itertools.count(1)
        self.events: Dict[int, dict] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipwan-live-encode",
                                        initializer=_set_thread_priority, initargs=(priority,)) if threaded else None
        self.closed = False
        # image and LoRA changes (wan/timeline/controls.py): image -> (clip_fea or None, latent or None), run off
        # the sampling thread like the text; ``expect`` is what the running loop reads (LoopControls.describe)
        self.image_encoder: Optional[Callable] = None
        self.expect: Optional[dict] = None
        self._ready_controls: list = []

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


    # --- image and LoRA changes ----------------------------------------------------------------------------
    def request_image(self, image: Optional[torch.Tensor] = None, clip_fea: Optional[torch.Tensor] = None,
                      latent: Optional[torch.Tensor] = None, blend_blocks: int = 0, route: str = "both",
                      label: str = "") -> int:
        """A new reference image from the next block boundary: ``image`` (IMAGE ``[1, H, W, 3]`` in 0..1, encoded
        on the worker thread by ``image_encoder``) or its ready ``clip_fea`` / ``latent``. ``route``: "both",
        "clip" (the CLIP reference only) or "start" (the start-image latent only); ``blend_blocks`` > 0 moves the
        CLIP features over that many blocks (the CLIP reference only)."""
        from .controls import ImageChange

        if self.closed:
            raise RuntimeError("this run has finished; start a new run to change its image.")
        if route not in IMAGE_ROUTES:
            raise ValueError(f"route '{route}' is not one of {list(IMAGE_ROUTES)}.")
        if image is None and clip_fea is None and latent is None:
            raise ValueError("a live image change needs the image (or its CLIP features / latent).")
        if image is not None and self.image_encoder is None:
            raise ValueError("this run cannot encode images: its stream has no VAE/CLIP vision for them (connect a "
                             "clip_vision to the Prompt Timeline node for CLIP references); or send ready features.")
        expect = self.expect or {}
        if int(blend_blocks) > 0:
            route = "clip"
        if route == "both" and expect and not expect.get("clip"):
            route = "start"  # a text-to-video model reads the start image only
        if route == "clip" and expect and not expect.get("clip"):
            raise ValueError("this run's model reads no CLIP reference (text-to-video); send the image with route "
                             "'start' (a new start image) instead.")
        if image is not None and (image.dim() != 4 or image.shape[0] != 1 or image.shape[-1] != 3):
            raise ValueError(f"the image is {list(image.shape)}; send one RGB image (IMAGE [1, height, width, 3]).")
        change = ImageChange(block=1, clip_fea=clip_fea, latent=latent, blend_blocks=int(blend_blocks), label=label)
        if image is None:
            change = _image_route(change, route)
            change.check("live image")
        rid = next(self._ids)
        change.source = f"live #{rid}"
        with self._lock:
            self.events[rid] = {"id": rid, "kind": "image", "text": label or "image", "requested": self.clock(),
                                "encoded": None, "block": None, "applied": None, "first_frame": None,
                                "state": "encoding"}
        if image is None:
            self._control_ready(rid, change)
        elif self._pool is None:
            self._encode_image(rid, change, image, route)
        else:
            self._pool.submit(self._encode_image, rid, change, image, route)
        return rid

    def _encode_image(self, rid: int, change, image: torch.Tensor, route: str) -> None:
        try:
            change.clip_fea, change.latent = self.image_encoder(image, route)
            change = _image_route(change, route)
            change.check(change.source)
        except Exception as exc:  # the run goes on with its image; the error is reported on the request
            with self._lock:
                self.events[rid].update(state="failed", error=str(exc))
            return
        self._control_ready(rid, change)

    def request_lora(self, strength: float, name: str = "") -> int:
        """A LoRA strength from the next block boundary (the model's merged LoRA ``name``, "" = its only one)."""
        from .controls import LoraChange

        if self.closed:
            raise RuntimeError("this run has finished; start a new run to change its LoRA.")
        rid = next(self._ids)
        change = LoraChange(block=1, strength=strength, name=str(name or ""), source=f"live #{rid}").check()
        with self._lock:
            label = " ".join(filter(None, ("LoRA", change.name, f"x{change.strength:g}")))
            self.events[rid] = {"id": rid, "kind": "lora", "text": label,
                                "requested": self.clock(), "encoded": None, "block": None, "applied": None,
                                "first_frame": None, "state": "encoding"}
        self._control_ready(rid, change)
        return rid

    def _control_ready(self, rid: int, change) -> None:
        with self._lock:
            self.events[rid].update(encoded=self.clock(), state="pending")
            self._ready_controls.append(change)

    def take_controls(self, block: int, check=None) -> list:
        """The ready image / LoRA changes for the boundary before ``block``: the newest image and the newest
        strength per LoRA (older ones superseded); one the run refuses (``check``) is marked failed, the run goes
        on."""
        with self._lock:
            ready, self._ready_controls = self._ready_controls, []
        newest: dict = {}
        for change in ready:
            key = ("image",) if not hasattr(change, "strength") else ("lora", change.name)
            if key in newest:
                self._mark(newest[key], state="superseded")
            newest[key] = change
        taken = []
        for change in newest.values():
            change.block = block
            try:
                if check is not None:
                    check(change)
            except ValueError as exc:
                self._mark(change, state="failed", error=str(exc))
                continue
            self._mark(change, state="applied", block=block, applied=self.clock())
            taken.append(change)
        return taken

    def _mark(self, change, **values) -> None:
        with self._lock:
            self.events[_rid(change)].update(**values)


def _image_route(change, route: str):
    """Keep only the parts ``route`` asks for ("clip": CLIP features, "start": the latent)."""
    if route == "clip":
        change.latent = None
    elif route == "start":
        change.clip_fea = None
    return change


def _rid(segment: Segment) -> int:
    return int(segment.source.split("#", 1)[1])
