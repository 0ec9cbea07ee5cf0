"""Prompt timelines: several prompts over a causal video, switched with the family's rule or blended (Scope's
embedding blender), read from the files people have, and changed live while a stream runs.

``model`` (Timeline, Segment, the per-block TextSchedule the loop consumes), ``blend`` (mixes and transitions),
``files`` (text, Scope JSON, LongLive/MemFlow JSONL, the pack's sidecar), ``live`` (LiveControl).
"""

from .files import load, parse_interactive, parse_scope, parse_text, save
from .live import LiveControl
from .model import Prompt, Segment, TextChange, TextSchedule, Timeline

__all__ = ["LiveControl", "Prompt", "Segment", "TextChange", "TextSchedule", "Timeline", "load", "parse_interactive",
           "parse_scope", "parse_text", "save"]
