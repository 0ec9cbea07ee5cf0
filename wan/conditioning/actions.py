"""Action timelines for Matrix-Game 2.0: keys and mouse deltas per pixel frame, typed as text or read from the
authors' tensors.

Text, one segment per line (``#`` starts a comment)::

    0-11: W                 # pixel frames 0..11 (inclusive): forward
    12-23: W + mouse(0.1, 0)
    block 2-3: D + L        # latent blocks 2..3 (the pixel frames the authors' streaming sets for a block)
    40-: idle               # from frame 40 to the end

Keys by mode, the authors' key maps (``pipeline/causal_inference.py get_current_action``):
  * universal (4 keys + mouse): W forward, S back, A left, D right;
  * gta_drive (2 keys + mouse): W forward, S back; A / D steer (mouse yaw -/+0.1, as their prompt maps them);
  * templerun (7 keys, no mouse): W jump, S slide, Z turn left, C turn right, A left side, D right side;
    a frame with no key is their "no move" key (index 0).
Camera keys (universal / gta_drive) as in their interface: I up, K down, J left, L right (mouse 0.1);
``mouse(pitch, yaw)`` gives the two values directly (up and right positive, their order). Frames no segment
covers are idle. Later lines win where segments overlap.

The authors' own action format is the ``{"keyboard_condition": [N, K], "mouse_condition": [N, 2]}`` dict of
their ``utils/conditions.py``: ``load_actions`` reads it from ``.json`` or ``.safetensors`` (no pickles).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from typing import Optional

import torch

from ..model.actions import MODES
from ..vae.latent import TIME_RATIO

CAM_VALUE = 0.1  # the authors' interface: one camera key press = 0.1
KEYS = {
    "universal": {"W": 0, "S": 1, "A": 2, "D": 3},
    "gta_drive": {"W": 0, "S": 1},
    "templerun": {"W": 1, "S": 2, "Z": 3, "C": 4, "A": 5, "D": 6},
}
CAMERA = {"I": (CAM_VALUE, 0.0), "K": (-CAM_VALUE, 0.0), "J": (0.0, -CAM_VALUE), "L": (0.0, CAM_VALUE)}
STEER = {"A": (0.0, -CAM_VALUE), "D": (0.0, CAM_VALUE)}  # gta_drive: A/D are mouse yaw
IDLE_WORDS = ("IDLE", "NONE", "Q", "-")
AUTO = "auto"
ACTION_MODES = (AUTO,) + tuple(MODES)

_LINE = re.compile(r"^\s*(block\s+)?(\d+)\s*(?:-\s*(\d*))?\s*:\s*(.*)$", re.IGNORECASE)
_MOUSE = re.compile(r"^MOUSE\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)$")


@dataclasses.dataclass(frozen=True)
class Segment:
    first: int  # pixel frame (or block with ``blocks``), inclusive
    last: Optional[int]  # inclusive; None = to the end
    tokens: tuple  # upper-case key names, camera keys, ("MOUSE", pitch, yaw) entries
    blocks: bool = False
    line: int = 0


class LiveActions:
    """Keys sent while a stream plays (the authors' real-time interfaces: one key set and one camera move per
    block). ``send("W + L")`` replaces what the next blocks use, from the next block that starts on; the
    timeline's own segments hold until the first key set arrives. Thread-safe (an HTTP route writes it)."""

    def __init__(self, mode: str = AUTO):
        self._lock = threading.Lock()
        self._keys: Optional[str] = None
        self.sent = 0
        self.mode = mode  # the running model's mode once a run has started (ActionRun sets it)

    def send(self, keys: str) -> None:
        """Raises ValueError (naming the key and the mode's keys) for keys the mode has not."""
        seg = Segment(0, None, _tokens(str(keys), 0), line=0)
        mode = self.mode
        if mode in MODES:
            _row(seg, mode, *MODES[mode])  # refuse a key the model has not, at the call
        with self._lock:
            self._keys = str(keys)
            self.sent += 1

    def row(self, mode: str) -> Optional[tuple]:
        """``(keyboard [K], mouse [2] or None)`` of the keys last sent, or None if none were."""
        with self._lock:
            keys = self._keys
        if keys is None:
            return None
        keyboard, mouse = _row(Segment(0, None, _tokens(keys, 0)), mode, *MODES[mode])
        return keyboard, mouse if MODES[mode][1] else None


@dataclasses.dataclass
class ActionTimeline:
    """What the CLIPWAN_ACTIONS socket carries: segments (from text) or tensors (from the authors' format).

    ``mode`` is "auto" (taken from the model) or one of the authors' modes; ``tensors(mode, frames, ...)`` gives
    ``keyboard [N, K]`` and ``mouse [N, 2]`` (None without a mouse) for ``N`` pixel frames."""

    segments: tuple = ()
    mode: str = AUTO
    keyboard: Optional[torch.Tensor] = None  # the authors' tensors, when loaded from their format
    mouse: Optional[torch.Tensor] = None
    source: str = "text"
    live: Optional[LiveActions] = None  # keys sent while streaming (nodes/action_nodes.py's HTTP route)

    def resolve_mode(self, model_mode: str) -> str:
        if self.mode not in (AUTO, model_mode):
            raise ValueError(f"the action timeline is for '{self.mode}' but the model's action module is "
                             f"'{model_mode}' ({_mode_text(model_mode)}); set the timeline's mode to "
                             f"'{model_mode}' (or auto) or load the Matrix-Game checkpoint for '{self.mode}'.")
        return model_mode

    def tensors(self, mode: str, pixel_frames: int, frames_per_block: int = 3) -> tuple:
        if mode not in MODES:
            raise ValueError(f"action mode '{mode}' is not one of {list(MODES)} (the model's action module "
                             f"does not match a released Matrix-Game 2.0 layout).")
        keys, has_mouse = MODES[mode]
        if self.keyboard is not None:
            return self._given(mode, keys, has_mouse, pixel_frames)
        kb = torch.zeros(pixel_frames, keys)
        ms = torch.zeros(pixel_frames, 2) if has_mouse else None
        if mode == "templerun":
            kb[:, 0] = 1.0  # their "no move" key
        for seg in self.segments:
            first, last = _pixel_range(seg, pixel_frames, frames_per_block)
            if first >= pixel_frames:
                continue
            row_kb, row_ms = _row(seg, mode, keys, has_mouse)
            kb[first:last + 1] = row_kb
            if ms is not None:
                ms[first:last + 1] = row_ms
        return kb, ms

    def _given(self, mode, keys, has_mouse, pixel_frames):
        kb, ms = self.keyboard, self.mouse
        if kb.shape[-1] != keys or (ms is None) == has_mouse:
            found = f"{kb.shape[-1]} keys, {'a' if ms is not None else 'no'} mouse"
            raise ValueError(f"{self.source}: the actions have {found} but the model's action module is "
                             f"'{mode}' ({_mode_text(mode)}).")
        if kb.shape[0] < pixel_frames:
            raise ValueError(f"{self.source}: {kb.shape[0]} frames of actions for a video of {pixel_frames} "
                             f"pixel frames; give at least {pixel_frames} rows.")
        return kb[:pixel_frames].float(), None if ms is None else ms[:pixel_frames].float()

    def describe(self) -> str:
        if self.keyboard is not None:
            return f"actions from {self.source} ({self.keyboard.shape[0]} frames)"
        return f"action timeline ({len(self.segments)} segment(s), mode {self.mode})"


def _mode_text(mode: str) -> str:
    keys, mouse = MODES[mode]
    return f"{keys} keys{' + mouse' if mouse else ', no mouse'}"


def block_pixel_frames(start: int, frames: int) -> tuple:
    """Pixel frames (first, last; inclusive) the authors' streaming sets for the latent block
    ``[start, start + frames)``: ``0 .. 4(n-1)`` for the first, ``4(s-1)+1 .. 4(e-1)`` after (their
    ``cond_current`` with ``replace``)."""
    return (0 if start == 0 else TIME_RATIO * (start - 1) + 1), TIME_RATIO * (start + frames - 1)


def block_pixel_range(block: int, frames_per_block: int) -> tuple:
    """``block_pixel_frames`` of block number ``block`` in blocks of ``frames_per_block``."""
    return block_pixel_frames(block * frames_per_block, frames_per_block)


def _pixel_range(seg: Segment, pixel_frames: int, frames_per_block: int) -> tuple:
    if not seg.blocks:
        last = pixel_frames - 1 if seg.last is None else min(seg.last, pixel_frames - 1)
        return seg.first, last
    first = block_pixel_range(seg.first, frames_per_block)[0]
    last = pixel_frames - 1 if seg.last is None else block_pixel_range(seg.last, frames_per_block)[1]
    return first, min(last, pixel_frames - 1)


def _row(seg: Segment, mode: str, keys: int, has_mouse: bool) -> tuple:
    kb, ms = torch.zeros(keys), torch.zeros(2)
    table = KEYS[mode]
    pressed = False
    for tok in seg.tokens:
        if isinstance(tok, tuple):
            ms += torch.tensor(tok[1:])
        elif tok in table:
            kb[table[tok]] = 1.0
            pressed = True
        elif mode == "gta_drive" and tok in STEER:
            ms += torch.tensor(STEER[tok])
        elif tok in CAMERA and has_mouse:
            ms += torch.tensor(CAMERA[tok])
        elif tok not in IDLE_WORDS:
            known = sorted(table) + (sorted(CAMERA) if has_mouse else []) + \
                (sorted(STEER) if mode == "gta_drive" else [])
            raise ValueError(f"action timeline line {seg.line}: '{tok}' is not a {mode} key; use "
                             f"{', '.join(dict.fromkeys(known))}{', mouse(pitch, yaw)' if has_mouse else ''} or idle.")
        if isinstance(tok, tuple) and not has_mouse:
            raise ValueError(f"action timeline line {seg.line}: mouse(...) given but '{mode}' has no mouse input.")
    if mode == "templerun" and not pressed:
        kb[0] = 1.0
    return kb, ms


def parse_timeline(text: str, mode: str = AUTO) -> ActionTimeline:
    """Parse the text format above; errors name the line and the fix."""
    if mode not in ACTION_MODES:
        raise ValueError(f"action mode '{mode}' is not one of {list(ACTION_MODES)}.")
    segments = []
    for no, raw in enumerate(str(text or "").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"action timeline line {no}: '{raw.strip()}' is not 'FRAMES: KEYS' (e.g. '0-11: W', "
                             f"'12-: W + mouse(0.1, 0)', 'block 2: D').")
        first = int(m.group(2))
        last = None if m.group(3) == "" else int(m.group(3)) if m.group(3) is not None else first
        if last is not None and last < first:
            raise ValueError(f"action timeline line {no}: range {first}-{last} ends before it starts.")
        segments.append(Segment(first, last, _tokens(m.group(4), no), bool(m.group(1)), no))
    timeline = ActionTimeline(tuple(segments), mode)
    for m in ([mode] if mode != AUTO else []):  # check the keys now when the mode is known
        timeline.tensors(m, 1)
        for seg in segments:
            _row(seg, m, *MODES[m])
    return timeline


def _tokens(body: str, no: int) -> tuple:
    out = []
    for part in re.split(r"[+\s]+(?![^()]*\))", body.strip()):
        part = part.strip().upper().replace(" ", "")
        if not part:
            continue
        m = _MOUSE.match(part)
        if part.startswith("MOUSE") and not m:
            raise ValueError(f"action timeline line {no}: '{part}' should be mouse(pitch, yaw), e.g. mouse(0.1, 0).")
        out.append(("MOUSE", float(m.group(1)), float(m.group(2))) if m else part)
    if not out:
        raise ValueError(f"action timeline line {no}: no keys after ':' (write 'idle' for no action).")
    return tuple(out)


def load_actions(path: str, mode: str = AUTO) -> ActionTimeline:
    """An action file: the text format (any other extension), or the authors' tensors as ``.json`` /
    ``.safetensors`` with ``keyboard_condition [N, K]`` and optionally ``mouse_condition [N, 2]``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"action file '{path}' does not exist.")
    name = os.path.basename(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        data = load_file(path)
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = {k: torch.tensor(v, dtype=torch.float32) for k, v in json.load(f).items()}
    else:
        with open(path, encoding="utf-8") as f:
            return dataclasses.replace(parse_timeline(f.read(), mode), source=name)
    if "keyboard_condition" not in data:
        raise ValueError(f"{name}: no 'keyboard_condition' entry (the authors' format: keyboard_condition "
                         f"[frames, keys] and mouse_condition [frames, 2]); found {sorted(data)}.")
    kb, ms = data["keyboard_condition"].float(), data.get("mouse_condition")
    kb = kb[0] if kb.dim() == 3 else kb
    ms = None if ms is None else (ms[0] if ms.dim() == 3 else ms).float()
    if kb.dim() != 2 or (ms is not None and (ms.dim() != 2 or ms.shape[-1] != 2 or ms.shape[0] != kb.shape[0])):
        raise ValueError(f"{name}: keyboard_condition {list(kb.shape)} / mouse_condition "
                         f"{None if ms is None else list(ms.shape)}: expected [frames, keys] and [frames, 2].")
    return ActionTimeline((), mode, kb, ms, name)
