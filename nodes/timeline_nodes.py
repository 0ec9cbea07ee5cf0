"""Prompt timelines in ComfyUI: two nodes that build a CLIPWAN_TIMELINE (from several CONDITIONINGs, or from text
with a CLIP that encodes each prompt once), the live registry of running streams, and the HTTP routes that change a
running stream's prompt:

* ``POST /clipwan/live/{node_id}/prompt`` with JSON ``{"text": "...", "transition": "switch"|"blend"|"cut",
  "blend_blocks": N, "interpolation": "linear"|"slerp"}`` -> ``{"id": ..., "node": ...}`` (404: no stream of that
  node is running; 400: a bad request, the message says why). The text is encoded off the sampling thread with the
  timeline's CLIP and applied at the next block boundary with the family's switch rule (or blended).
* ``GET /clipwan/live`` -> the running streams and their requests (state, block applied at).

``node_id`` is the stream node's id in the graph (the frame player knows it); the latest run of that node answers.
The logic is in ``wan/timeline``; these are the thin ComfyUI parts.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, Optional

from ..wan.timeline import LiveControl, Prompt, Segment, Timeline
from ..wan.timeline.live import DEFAULT_ENCODER_PRIORITY
from ..wan.timeline.blend import INTERPOLATIONS
from ..wan.timeline.controls import controls_comment
from ..wan.timeline.files import parse_any
from ..wan.timeline.model import TRANSITIONS

log = logging.getLogger("comfyui_clipwan")

TIMELINE_TYPE = "CLIPWAN_TIMELINE"
LIVE_PATH = "/clipwan/live"
MAX_CONDITIONINGS = 6
TEXT_EXAMPLE = ("0: a red fox walks through deep snow\n4: the fox jumps over a fallen log\n"
                "8 blend 3: a wolf howls at the moon")


def conditioning_text(conditioning, name: str):
    if not conditioning:
        raise ValueError(f"{name} is empty; connect a CLIP Text Encode (Wan umt5) output.")
    return conditioning[0][0]


def clip_encoder(clip):
    """``text -> [1, L, 4096]`` through a ComfyUI CLIP (what CLIP Text Encode does)."""
    def encode(text: str):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]

    return encode


class CausalWanTimelineFromConditionings:
    DESCRIPTION = ("A prompt timeline from several CONDITIONINGs: conditioning_1 from block 0, each further one from "
                   "its start block, all changes with one transition (switch = the family's switch rule, blend = the "
                   "text embedding moves to the new prompt over blend_blocks blocks). Connect it to the timeline input "
                   "of Causal Wan Sampler or Causal Wan Stream Video.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (TIMELINE_TYPE,)
    RETURN_NAMES = ("timeline",)
    OUTPUT_TOOLTIPS = ("The prompt timeline (the causal nodes' timeline input).",)
    SEARCH_ALIASES = ["prompt timeline", "prompt schedule", "prompt travel", "multi prompt", "longlive interactive",
                      "clipwan"]
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        optional = {}
        for i in range(2, MAX_CONDITIONINGS + 1):
            optional[f"conditioning_{i}"] = ("CONDITIONING", {"tooltip": f"Prompt {i} (from start_block_{i} on)."})
            optional[f"start_block_{i}"] = ("INT", {"default": 4 * (i - 1), "min": 1, "max": 100000,
                                                    "tooltip": f"The block from which conditioning_{i} is used."})
        return {"required": {
            "conditioning_1": ("CONDITIONING", {"tooltip": "The first prompt (from block 0)."}),
            "transition": (list(TRANSITIONS), {"default": "switch", "tooltip": (
                "switch: the family's own switch rule at the start block (LongLive's re-cache, MemFlow's bank ...); "
                "blend: the text embedding moves to the new prompt over blend_blocks blocks (Scope's blender); "
                "cut: a scene cut, LongLive 2.0's multi-shot sink (the causal node's scene_cut_prefix must be empty "
                "here: a conditioning has no text to prefix).")}),
            "blend_blocks": ("INT", {"default": 3, "min": 1, "max": 1000,
                                     "tooltip": "Blocks a blend takes (transition blend)."}),
            "interpolation": (list(INTERPOLATIONS), {"default": "linear", "tooltip": "How a blend moves: linear or "
                                                                                     "slerp (per token)."}),
        }, "optional": optional}

    def build(self, conditioning_1, transition="switch", blend_blocks=3, interpolation="linear", **more):
        segments = [Segment([Prompt("conditioning 1", 1.0, conditioning_text(conditioning_1, "conditioning_1"))],
                            block=0, source="conditioning_1")]
        for i in range(2, MAX_CONDITIONINGS + 1):
            cond = more.get(f"conditioning_{i}")
            if cond is None:
                continue
            segments.append(Segment([Prompt(f"conditioning {i}", 1.0, conditioning_text(cond, f"conditioning_{i}"))],
                                    block=int(more.get(f"start_block_{i}", 4 * (i - 1))), transition=transition,
                                    blend_blocks=int(blend_blocks), interpolation=interpolation,
                                    source=f"conditioning_{i}"))
        blocks = [s.block for s in segments]
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"two conditionings start at the same block ({blocks}); give each its own start_block.")
        return (Timeline(sorted(segments, key=lambda s: s.block), source="conditionings"),)


class CausalWanTimelineFromText:
    DESCRIPTION = ("A prompt timeline typed as text, each prompt encoded once with the CLIP (Wan's umt5): one line "
                   "per change, 'START: prompt' with START a block (4), seconds (2.5s) or a latent frame (f40), "
                   "'START blend N [slerp]: prompt' for a smooth change, 'a :: 0.7 | b :: 0.3' for a mix. A Daydream "
                   "Scope timeline JSON or a LongLive/MemFlow interactive prompt line pasted here works too. The CLIP "
                   "also encodes prompts sent live to a running Causal Wan Stream Video.")
    CATEGORY = "ClipWan/conditioning"
    RETURN_TYPES = (TIMELINE_TYPE,)
    RETURN_NAMES = ("timeline",)
    OUTPUT_TOOLTIPS = ("The prompt timeline, encoded (the causal nodes' timeline input).",)
    SEARCH_ALIASES = ["prompt timeline", "prompt schedule", "scope timeline", "longlive interactive", "live prompt",
                      "clipwan"]
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "Wan's umt5-xxl text encoder (Load CLIP, type wan)."}),
            "text": ("STRING", {"multiline": True, "default": TEXT_EXAMPLE, "tooltip": (
                "One line per prompt: 'START: prompt' (START = block, 2.5s or f40), 'START blend N [linear|slerp]: "
                "prompt', 'START cut: prompt' (a scene cut: LongLive 2.0's multi-shot mode), mixes 'a :: 0.7 | b :: "
                "0.3'; or a pasted Scope timeline JSON / interactive JSONL line / LongLive 2.0 per-block prompt "
                "file.")}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 240.0, "step": 1.0,
                              "tooltip": "Output frames per second, for starts in seconds (Wan: 16)."}),
        }, "optional": {
            "switch_frames": ("STRING", {"default": "", "tooltip": (
                "For a pasted LongLive/MemFlow interactive line: the latent frames where each later prompt starts "
                "(their switch_frame_indices, e.g. 40, 80, 120).")}),
            "clip_vision": ("CLIP_VISION", {"tooltip": (
                "CLIP vision (clip_vision_h): encodes reference images sent live to a running stream (POST "
                "/clipwan/live/{node}/image) for i2v models' CLIP route.")}),
        }}

    def build(self, clip, text, fps=16.0, switch_frames="", clip_vision=None):
        frames = [int(x) for x in str(switch_frames).replace(" ", "").split(",") if x]
        timeline = parse_any(text, "timeline text", switch_frames=frames or None, fps=float(fps))
        encoder = clip_encoder(clip)
        timeline.encode(encoder)
        timeline.encoder = encoder
        timeline.controls.clip_vision = clip_vision  # live images (nodes/timeline_control_nodes.py)
        return (timeline,)


# --- live runs ------------------------------------------------------------------------------------------------------
_RUNS: Dict[str, LiveControl] = {}
_RUNS_LOCK = threading.Lock()


def run_timeline(timeline: Optional[Timeline], node_id, fps: Optional[float] = None,
                 encode_priority: str = DEFAULT_ENCODER_PRIORITY) -> Optional[Timeline]:
    """The timeline a run uses: a copy (live changes must not touch ComfyUI's cached node output), with the output
    fps and, for a stream, a ``LiveControl`` registered under the node's id for the HTTP route (its encoding
    thread at ``encode_priority``)."""
    if timeline is None:
        return None
    run = timeline.copy()
    if run.fps is None and fps is not None:
        run.fps = float(fps)
    if node_id is not None:
        run.live = LiveControl(run.encoder, priority=encode_priority)
        with _RUNS_LOCK:
            _RUNS[str(node_id)] = run.live
    return run


def end_run(timeline: Optional[Timeline], node_id) -> None:
    if timeline is None or timeline.live is None:
        return
    timeline.live.close()
    with _RUNS_LOCK:
        if _RUNS.get(str(node_id)) is timeline.live:
            del _RUNS[str(node_id)]


def live_run(node_id) -> LiveControl:
    """The live control of the stream running as ``node_id`` (LookupError: none is)."""
    with _RUNS_LOCK:
        live = _RUNS.get(str(node_id))
    if live is None:
        raise LookupError(f"no Causal Wan Stream Video with a timeline is running as node {node_id}; start one (with a "
                          f"Prompt Timeline node on its timeline input) first.")
    return live


def live_request(node_id, body: dict) -> dict:
    """What the POST route does (also callable without a server)."""
    live = live_run(node_id)
    if not isinstance(body, dict) or not str(body.get("text", "")).strip():
        raise ValueError('send JSON {"text": "the new prompt"} (optional: "transition": "switch"|"blend"|"cut", '
                         '"blend_blocks": N, "interpolation": "linear"|"slerp").')
    rid = live.request(str(body["text"]), transition=str(body.get("transition", "switch")),
                       blend_blocks=int(body.get("blend_blocks", 0) or (3 if body.get("transition") == "blend" else 0)),
                       interpolation=str(body.get("interpolation", "linear")))
    return {"id": rid, "node": str(node_id)}


def live_status() -> dict:
    with _RUNS_LOCK:
        runs = dict(_RUNS)
    return {"runs": [{"node": k, "requests": v.status()} for k, v in runs.items()]}


def schedule_label(schedule) -> Optional[str]:
    """"prompt 3 from block 12: ..." for the frame player: the latest prompt the loop changed to (a blend counts from
    its first block); None before the first change."""
    later = [(b, i) for b, i, _ in (schedule.applied if schedule is not None else []) if b > 0]
    if not later:
        return None
    index = later[-1][1]
    start = min(b for b, i in later if i == index)
    number = 1 + len(dict.fromkeys(i for _, i in later))
    return f"prompt {number} from block {start}: {schedule.timeline.segments[index].label[:80]}"


def record_timeline(timeline: Optional[Timeline], layout, writers) -> None:
    """The run's timeline (live changes included) beside each video as ``<video>.timeline.json`` (+ its embeddings in
    ``<video>.timeline.safetensors``: replaying needs no text encoder) and in the video's ``comment`` tag."""
    if timeline is None:
        return
    import json

    from ..wan.timeline import files

    for writer in writers:
        base = os.path.splitext(writer.path)[0]
        try:
            files.save(timeline, base + ".timeline.json", layout)
        except OSError as exc:  # never lose the video over its sidecar
            log.warning("could not write the timeline beside %s: %s", writer.path, exc)
        writer.metadata["comment"] = json.dumps({"clipwan_timeline": os.path.basename(base) + ".timeline.json",
                                                 "prompts": [[b, timeline.segments[i].label] for b, i in
                                                             timeline.resolved(layout)],
                                                 **controls_comment(timeline.controls)}, ensure_ascii=False)


async def _post_prompt(request):
    from aiohttp import web

    try:
        body = await request.json()
    except Exception:
        body = None
    try:
        return web.json_response(live_request(request.match_info["node_id"], body))
    except LookupError as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except (ValueError, RuntimeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def _get_status(request):
    from aiohttp import web

    return web.json_response(live_status())


def register_routes(server) -> None:
    """Called by nodes/__init__.py inside ComfyUI: POST /clipwan/live/{node_id}/prompt, GET /clipwan/live."""
    server.routes.post(LIVE_PATH + "/{node_id}/prompt")(_post_prompt)
    server.routes.get(LIVE_PATH)(_get_status)


NODE_CLASS_MAPPINGS = {"CausalWanTimelineFromConditionings": CausalWanTimelineFromConditionings,
                       "CausalWanTimelineFromText": CausalWanTimelineFromText}
NODE_DISPLAY_NAME_MAPPINGS = {"CausalWanTimelineFromConditionings": "Prompt Timeline from Conditionings (ClipWan)",
                              "CausalWanTimelineFromText": "Prompt Timeline from Text (ClipWan)"}
