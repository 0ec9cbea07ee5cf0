"""Timeline files: the ones people already have, and the pack's own (the sidecar written beside a video).

* **Plain text** (typed in the node, or a ``.txt``): one segment per line, ``START[ TRANSITION]: PROMPT``.
  ``START`` is a block (``4``), a time in seconds (``2.5s``) or a latent frame (``f40``); ``TRANSITION`` is
  ``switch`` (default), ``blend N [linear|slerp]`` or ``cut`` (a scene cut: LongLive 2.0's multi-shot mode); a
  prompt mix is ``text :: weight | text :: weight``. Blank lines and lines starting with ``#`` are skipped::

      0: a red fox walks through snow
      4: the fox jumps over a log
      8 blend 3 slerp: a wolf :: 0.7 | a fox :: 0.3
      12 cut: a lighthouse on a cliff at dusk

  Image and LoRA lines (``wan/timeline/controls.py``): ``B image[ clip|start][ blend N]: fox.png`` (a new reference
  image from block B, encoded by the run's VAE / CLIP vision), ``B lora[ NAME]: 0.5`` (a LoRA strength).

* **Daydream Scope timeline JSON** (``timeline-*.json``): ``prompts[]`` of ``{startTime, endTime, prompts: [{text,
  weight}], transitionSteps?, temporalInterpolationMethod?}`` (seconds; weights like 100, normalised); its
  ``transitionSteps > 0`` is a blend over that many blocks.
* **LongLive / MemFlow interactive prompt files** (``interactive_example.jsonl``, MemFlow's
  ``interactive_benchmark.jsonl``): one video per line, ``{"prompts": [p0, p1, ...]}``; the switch frames
  (latent frames, their config's ``switch_frame_indices`` such as ``40, 80, 120, 160, 200``) are given beside it.
* **LongLive 2.0's per-block prompt file** (what its ``inference.py`` saves beside a video as ``*_prompts.txt``, the
  ``text_prompts`` its pipeline runs): lines ``[0,1,2] prompt``, block indices of each run of equal prompts. A block
  after the first whose prompt starts with the scene-cut prefix (``The scene transitions. ``) is a scene cut, as its
  pipeline detects them; its multi-shot prompt folders (one caption per shot) become that list with
  ``longlive_shot_prompts``.
* **The pack's own JSON** (``{"clipwan_timeline": 1, "fps", "segments": [...]}``), with the embeddings in a
  ``.safetensors`` beside it when saved with them: replaying it needs no text encoder and repeats a run exactly.
  Saved with the run's layout it also holds ``"block_layout": {"frames_per_block", "first_block"}`` (latent
  frames), so a reader without the run maps its blocks to video frames (``video_prompts``, CLIP-T).

Errors name the file, the line and the fix.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

from .controls import Controls, controls_from_dict, controls_tensors, controls_to_dict, parse_control_line
from .model import Prompt, Segment, Timeline
from .video_prompts import BlockRule

FORMAT_VERSION = 1
_LINE = re.compile(r"^\s*(?P<start>f?\d+(?:\.\d+)?s?)(?:\s+(?P<rule>switch|blend|cut)(?:\s+(?P<n>\d+))?"
                   r"(?:\s+(?P<method>linear|slerp))?)?\s*:\s*(?P<text>.*)$")
TEXT_HELP = ("write 'START: prompt' with START a block (4), seconds (2.5s) or a latent frame (f40), optionally "
             "'START blend N [linear|slerp]: prompt' or 'START cut: prompt' (a scene cut), and a mix as "
             "'text :: weight | text :: weight'")


def _fail(where: str, problem: str, fix: str):
    raise ValueError(f"{where}: {problem}; {fix}.")


def _number(text: str, where: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        _fail(where, f"{what} '{text}' is not a number", "write a number such as 0.5")


def parse_text(text: str, source: str = "timeline text", fps: Optional[float] = None) -> Timeline:
    segments, controls = [], Controls()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}, line {number}"
        change = parse_control_line(line, where)  # 'B image: fox.png' / 'B lora: 0.5' (wan/timeline/controls.py)
        if change is not None:
            controls.insert(change)
            continue
        m = _LINE.match(line)
        if not m:
            _fail(where, f"'{line.strip()[:60]}' is not a timeline line", TEXT_HELP)
        start, prompts = m["start"], []
        for part in m["text"].split(" | "):
            body, sep, weight = part.rpartition("::")
            body, weight = (body, _number(weight.strip(), where, "weight")) if sep else (part, 1.0)
            if not body.strip():
                _fail(where, "a prompt is empty", "write the prompt after the colon")
            prompts.append(Prompt(body.strip(), weight))
        if m["rule"] == "blend" and not m["n"]:
            _fail(where, "'blend' without the number of blocks", "write e.g. '8 blend 4: ...'")
        if m["rule"] != "blend" and (m["n"] or m["method"]):
            _fail(where, f"'{m['rule']}' takes no number of blocks or interpolation",
                  f"write e.g. '8 {m['rule']}: ...'")
        seg = Segment(prompts, transition=m["rule"] or "switch", blend_blocks=int(m["n"] or 0),
                      interpolation=m["method"] or "linear", source=where)
        if start.startswith("f"):
            if start.endswith("s") or "." in start:
                _fail(where, f"latent frame '{start}' must be a whole number", "write e.g. f40")
            seg.frame = int(start[1:])
        elif start.endswith("s"):
            seg.seconds = float(start[:-1])
        elif "." in start:
            _fail(where, f"block '{start}' must be a whole number", "write seconds with an s, e.g. 2.5s")
        else:
            seg.block = int(start)
        segments.append(_checked(seg, where))
    if not segments:
        raise ValueError(f"{source}: no prompt lines; {TEXT_HELP}.")
    timeline = Timeline(segments, fps=fps, source=source)
    timeline.controls = controls
    return timeline


def _checked(seg: Segment, where: str) -> Segment:
    try:
        return seg.check()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _key_lines(raw: str, key: str) -> list:
    """Line numbers of the occurrences of ``"key":`` in a JSON text, in order (the k-th entry's line)."""
    return [raw.count("\n", 0, m.start()) + 1 for m in re.finditer(r'"%s"\s*:' % re.escape(key), raw)]


def _json(raw: str, source: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}, line {exc.lineno}: not valid JSON ({exc.msg}); fix the syntax there.") from None


def parse_scope(data: dict, source: str = "Scope timeline", raw: str = "", fps: Optional[float] = None) -> Timeline:
    """Daydream Scope's timeline export (``prompts[]`` with ``startTime``/``endTime`` and weighted ``prompts[]``)."""
    entries = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: no 'prompts' list at the top level; a Scope timeline is {{\"prompts\": "
                         f"[{{\"startTime\": 0, \"endTime\": 5, \"prompts\": [{{\"text\": \"...\", "
                         f"\"weight\": 100}}]}}]}}.")
    lines, text_lines = _key_lines(raw, "startTime"), _key_lines(raw, "text")
    segments, previous, texts_seen = [], -1.0, 0
    for i, entry in enumerate(entries):
        where = f"{source}, prompts[{i}]" + (f" (line {lines[i]})" if i < len(lines) else "")
        if not isinstance(entry, dict) or "startTime" not in entry:
            _fail(where, "the entry has no startTime", "give each entry startTime and endTime in seconds")
        start = _number(str(entry["startTime"]), where, "startTime")
        end = _number(str(entry.get("endTime", start)), where, "endTime")
        if start < previous:
            _fail(where, f"startTime {start} is before the previous entry's ({previous})",
                  "order the entries by startTime")
        if end < start:
            _fail(where, f"endTime {end} is before startTime {start}", "make endTime >= startTime")
        previous = start
        items = entry.get("prompts")
        if not items and entry.get("text"):  # a plain entry with its text beside the times
            items = [{"text": entry["text"], "weight": 100}]
        if not isinstance(items, list) or not items:
            _fail(where, "no prompts[] in the entry", "give prompts: [{\"text\": \"...\", \"weight\": 100}]")
        prompts = []
        for j, item in enumerate(items):
            at = f"{where}.prompts[{j}]"
            if texts_seen < len(text_lines):
                at += f" (line {text_lines[texts_seen]})"
            texts_seen += 1
            if not isinstance(item, dict) or not str(item.get("text", "")).strip():
                _fail(at, "the prompt has no text", "give {\"text\": \"...\", \"weight\": 100}")
            prompts.append(Prompt(str(item["text"]), _number(str(item.get("weight", 100)), at, "weight")))
        steps = int(_number(str(entry.get("transitionSteps", 0) or 0), where, "transitionSteps"))
        seg = Segment(prompts, seconds=start, transition="blend" if steps > 0 else "switch", blend_blocks=max(steps, 0),
                      interpolation=str(entry.get("temporalInterpolationMethod", "linear")), source=where)
        segments.append(_checked(seg, where))
    return Timeline(segments, fps=fps, source=source)


def parse_interactive(raw: str, switch_frames: Optional[Sequence[int]], line: int = 1,
                      source: str = "interactive prompts") -> Timeline:
    """LongLive's / MemFlow's interactive prompt file (JSONL, one ``{"prompts": [...]}`` per video): video
    ``line`` (1-based), its i-th prompt from latent frame ``switch_frames[i-1]`` on (their
    ``switch_frame_indices``)."""
    rows = [(n, text) for n, text in enumerate(raw.splitlines(), 1) if text.strip()]
    if not rows:
        raise ValueError(f"{source}: the file is empty; one line per video: {{\"prompts\": [\"...\", \"...\"]}}.")
    if not 1 <= line <= len(rows):
        raise ValueError(f"{source}: line {line} asked for, the file has {len(rows)} video(s); choose 1..{len(rows)}.")
    number, text = rows[line - 1]
    where = f"{source}, line {number}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}); each line is {{\"prompts\": [...]}}.") from None
    prompts = row.get("prompts") if isinstance(row, dict) else None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        _fail(where, "no 'prompts' list of texts", "write {\"prompts\": [\"first prompt\", \"second prompt\"]}")
    frames = row.get("switch_frame_indices", switch_frames)
    if isinstance(frames, str):
        frames = [int(x) for x in frames.split(",") if x.strip()]
    frames = list(frames or [])
    if len(frames) != len(prompts) - 1:
        _fail(where, f"{len(prompts)} prompts need {len(prompts) - 1} switch frame(s), got {len(frames)} ({frames})",
              "give the latent frames where each later prompt starts (their switch_frame_indices; CLI: "
              "--switch-frames 40,80,...)")
    if any(b <= a for a, b in zip([0] + frames, frames)):
        _fail(where, f"switch frames {frames} are not increasing from 1", "list them in increasing order")
    segments = [Segment([Prompt(p.strip())], frame=f, source=f"{where}, prompt {i + 1}")
                for i, (p, f) in enumerate(zip(prompts, [0] + frames))]
    return Timeline(segments, source=where)


# --- LongLive 2.0's multi-shot prompts ----------------------------------------------------------------------------
_BLOCKS_LINE = re.compile(r"^\s*\[(?P<blocks>\d+(?:\s*,\s*\d+)*)\]\s?(?P<text>.*?)\s*$")


def _longlive_prefix(prefix: Optional[str]) -> str:
    if prefix is not None:
        return prefix
    from ..sampling.presets import LONGLIVE2_SCENE_CUT_PREFIX

    return LONGLIVE2_SCENE_CUT_PREFIX


def block_prompts_timeline(prompts: Sequence[str], source: str = "block prompts", cut_prefix: Optional[str] = None,
                           where: Optional[Sequence[str]] = None) -> Timeline:
    """LongLive 2.0's per-block prompt list (its pipeline's ``text_prompts``) as a timeline: a block after the first
    whose prompt starts with ``cut_prefix`` (default LongLive's "The scene transitions. ") is a scene cut with the
    rest of the prompt (its pipeline's ``_is_shot_boundary``), any other change of prompt a per-block switch. Run with
    the same ``scene_cut_prefix``, every block is conditioned on exactly the text it had in the list."""
    prefix, segments, current = _longlive_prefix(cut_prefix), [], None
    for block, text in enumerate(prompts):
        at = where[block] if where else f"{source}, block {block}"
        if block > 0 and prefix and text.startswith(prefix):
            current = text[len(prefix):].strip()
            segments.append(_checked(Segment([Prompt(current)], block=block, transition="cut", source=at), at))
        elif text != current:
            current = text
            segments.append(_checked(Segment([Prompt(text)], block=block, source=at), at))
    if not segments:
        raise ValueError(f"{source}: no prompts.")
    return Timeline(segments, source=source)


def is_block_prompts(raw: str) -> bool:
    lines = [line for line in raw.splitlines() if line.strip()]
    return bool(lines) and all(_BLOCKS_LINE.match(line) for line in lines)


def parse_block_prompts(raw: str, source: str = "LongLive prompts", cut_prefix: Optional[str] = None) -> Timeline:
    """LongLive 2.0's saved per-block prompts (``inference.py``'s ``save_prompts_to_txt``: ``[0,1,2] prompt`` lines,
    each run of equal prompts once) -> ``block_prompts_timeline``."""
    by_block, where = {}, {}
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{source}, line {number}"
        m = _BLOCKS_LINE.match(line)
        if not m:
            _fail(at, f"'{line.strip()[:60]}' is not a '[blocks] prompt' line", "write e.g. '[0,1,2] a red fox'")
        for b in (int(x) for x in m["blocks"].split(",")):
            if b in by_block:
                _fail(at, f"block {b} already has a prompt ({where[b]})", "list each block once")
            by_block[b], where[b] = m["text"], at
    missing = sorted(set(range(max(by_block) + 1)) - set(by_block))
    if missing:
        _fail(source, f"block(s) {missing[:8]} have no prompt", "give every block from 0 on a prompt")
    return block_prompts_timeline([by_block[b] for b in range(len(by_block))], source, cut_prefix,
                                  [where[b] for b in range(len(by_block))])


def longlive_shot_prompts(captions: Sequence[str], blocks: int, durations: Optional[Sequence[int]] = None,
                          cut_prefix: Optional[str] = None) -> list:
    """LongLive 2.0's per-block prompts of a multi-shot video (``utils/dataset.py``: ``MultiTextConcatDataset``,
    ``ImagePromptDataset``): shot ``i`` lasts ``durations[i]`` blocks (their ``shot_durations.txt``; none: the blocks
    spread evenly, the first shots one longer), clamped to ``blocks`` in all (the last shot takes what is left); the
    first block of every shot after the first gets ``cut_prefix + caption``. Always exactly ``blocks`` prompts."""
    prefix = _longlive_prefix(cut_prefix)
    if not captions or blocks < 1:
        raise ValueError(f"a multi-shot prompt list needs at least one caption and one block (got {len(captions)} "
                         f"caption(s), {blocks} block(s)).")
    if durations is None:
        base, extra = divmod(blocks, len(captions))
        durations = [base + (1 if i < extra else 0) for i in range(len(captions))]
    clamped, left = [], blocks
    for d in list(durations)[:len(captions)]:
        if left <= 0:
            break
        clamped.append(min(int(d), left))
        left -= clamped[-1]
    if left > 0 and clamped:
        clamped[-1] += left
    prompts = []
    for shot, (caption, duration) in enumerate(zip(captions, clamped)):
        prompts += [prefix + caption if shot > 0 and k == 0 and prefix else caption for k in range(duration)]
    prompts = prompts[:blocks]
    return prompts + [prompts[-1] if prompts else ""] * (blocks - len(prompts))


def load_longlive_shots(folder: str, blocks: Optional[int], cut_prefix: Optional[str] = None) -> Timeline:
    """A LongLive 2.0 multi-shot caption folder (``caption/<video>/``: one ``{"caption": ...}`` JSON per shot, read in
    the numeric order of their names, ``global.json`` skipped, and an optional ``shot_durations.txt`` of blocks per
    shot), for a run of ``blocks`` blocks."""
    if blocks is None:
        raise ValueError(f"{folder}: a LongLive multi-shot caption folder spreads its shots over the run's blocks; "
                         f"give the number of blocks (the CLI does: --length / --frames-per-block).")
    names = sorted((n for n in os.listdir(folder) if n.endswith(".json") and n != "global.json"),
                   key=lambda n: (n[:-5].isdigit(), int(n[:-5]) if n[:-5].isdigit() else 0, n[:-5]))
    if not names:
        raise ValueError(f"{folder}: no caption .json files; a LongLive multi-shot folder holds one "
                         f"{{\"caption\": \"...\"}} file per shot (000001.json, 000002.json, ...).")
    captions = []
    for name in names:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            data = _json(f.read(), os.path.join(folder, name))
        captions.append(str(data.get("caption", "")) if isinstance(data, dict) else "")
    durations = None
    path = os.path.join(folder, "shot_durations.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            parts = f.read().replace(",", " ").split()
        if not all(p.isdigit() for p in parts):
            _fail(path, f"'{' '.join(parts)[:60]}' is not a list of block counts", "write e.g. '4, 6, 2'")
        durations = [int(p) for p in parts] or None
    prompts = longlive_shot_prompts(captions, int(blocks), durations, cut_prefix)
    return block_prompts_timeline(prompts, os.path.basename(os.path.normpath(folder)), cut_prefix)


# --- the pack's own format --------------------------------------------------------------------------------------
def to_dict(timeline: Timeline, layout: Optional[Sequence] = None) -> dict:
    """The timeline as the pack's JSON; with ``layout`` every segment also records the block it took effect at (what
    a replay uses: the run is then repeated whatever the fps)."""
    segments = []
    for i, s in enumerate(timeline.segments):
        d = {"prompts": [{"text": p.text, "weight": p.weight, "key": f"segment{i}.prompt{j}",
                          **({"cut": [{"prefix": prefix, "key": f"segment{i}.prompt{j}.cut{k}"}
                                      for k, prefix in enumerate(p.cut_embeddings)]} if p.cut_embeddings else {})}
                         for j, p in enumerate(s.prompts)],
             "transition": s.transition, "source": s.source}
        if s.transition == "blend":
            d.update(blend_blocks=int(s.blend_blocks), interpolation=s.interpolation)
        if len(s.prompts) > 1:
            d["mix"] = s.mix
        for key in ("frame", "seconds"):
            if getattr(s, key) is not None:
                d[key] = getattr(s, key)
        block = s.block if s.block is not None else (timeline.start_block(s, layout) if layout is not None else None)
        if block is not None:
            d["block"] = int(block)
        segments.append(d)
    data = {"clipwan_timeline": FORMAT_VERSION, "fps": timeline.fps, "source": timeline.source,
            "segments": segments}
    if timeline.controls:  # image / LoRA changes (wan/timeline/controls.py)
        data["controls"] = controls_to_dict(timeline.controls)
    rule = BlockRule.from_layout(layout) if layout is not None else getattr(timeline, "block_rule", None)
    if rule is not None:  # the run's block sizes: blocks -> video frames for a reader without the run (CLIP-T)
        data["block_layout"] = rule.to_dict()
    return data


def from_dict(data: dict, source: str = "timeline", embeddings: Optional[dict] = None) -> Timeline:
    if data.get("clipwan_timeline") != FORMAT_VERSION:
        raise ValueError(f"{source}: 'clipwan_timeline' is {data.get('clipwan_timeline')!r}; this reader takes "
                         f"version {FORMAT_VERSION}.")
    segments = []
    for i, d in enumerate(data.get("segments") or []):
        where = f"{source}, segments[{i}]"
        prompts = [Prompt(str(p.get("text", "")), float(p.get("weight", 1.0)), (embeddings or {}).get(p.get("key", "")),
                          {c["prefix"]: (embeddings or {})[c["key"]] for c in p.get("cut") or []
                           if c.get("key") in (embeddings or {})})
                   for p in d.get("prompts") or []]
        block = d.get("block")
        seg = Segment(prompts, block=block, frame=None if block is not None else d.get("frame"),
                      seconds=None if block is not None or d.get("frame") is not None else d.get("seconds"),
                      transition=d.get("transition", "switch"), blend_blocks=int(d.get("blend_blocks", 0)),
                      interpolation=d.get("interpolation", "linear"), mix=d.get("mix", "linear"),
                      source=d.get("source") or where)
        segments.append(_checked(seg, where))
    if not segments:
        raise ValueError(f"{source}: no segments.")
    timeline = Timeline(segments, fps=data.get("fps"), source=data.get("source") or source)
    timeline.controls = controls_from_dict(data.get("controls"), embeddings, source)
    timeline.block_rule = BlockRule.from_dict(data.get("block_layout"))
    return timeline


def embeddings_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".safetensors"


def save(timeline: Timeline, path: str, layout: Optional[Sequence] = None, embeddings: bool = True) -> str:
    """Write the pack's JSON (and, with ``embeddings``, every encoded prompt in a ``.safetensors`` beside it)."""
    data = to_dict(timeline, layout)
    tensors = {}
    if embeddings:
        for i, s in enumerate(timeline.segments):
            for j, p in enumerate(s.prompts):
                if p.embedding is not None:
                    tensors[f"segment{i}.prompt{j}"] = p.embedding.detach().float().cpu().clone()
                for k, cut in enumerate(p.cut_embeddings.values()):
                    tensors[f"segment{i}.prompt{j}.cut{k}"] = cut.detach().float().cpu().clone()
        tensors.update(controls_tensors(timeline.controls))
    if tensors:
        from safetensors.torch import save_file

        save_file(tensors, embeddings_path(path))
        data["embeddings"] = os.path.basename(embeddings_path(path))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    return path


def load(path: str, switch_frames: Optional[Sequence[int]] = None, line: int = 1,
         fps: Optional[float] = None, blocks: Optional[int] = None, cut_prefix: Optional[str] = None) -> Timeline:
    """Any timeline file, by its content: the pack's JSON, Scope's JSON, an interactive JSONL, LongLive 2.0's per-block
    prompts, or plain text; a folder is a LongLive 2.0 multi-shot caption folder (``blocks``: the run's block count).
    ``cut_prefix``: the scene-cut prefix LongLive's files mark cuts with (default its own)."""
    if os.path.isdir(path):
        timeline = load_longlive_shots(path, blocks, cut_prefix)
        timeline.fps = fps
        return timeline
    if not os.path.isfile(path):
        raise FileNotFoundError(f"timeline file '{path}' does not exist.")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    return parse_any(raw, os.path.basename(path), switch_frames, line, fps, os.path.dirname(path),
                     jsonl=path.endswith(".jsonl"), cut_prefix=cut_prefix)


def parse_any(raw: str, name: str = "timeline text", switch_frames: Optional[Sequence[int]] = None, line: int = 1,
              fps: Optional[float] = None, folder: str = "", jsonl: bool = False,
              cut_prefix: Optional[str] = None) -> Timeline:
    """A timeline from its text, whichever of the formats it is (typed or pasted into the node, or read by ``load``)."""
    stripped = raw.lstrip()
    if is_block_prompts(raw):
        timeline = parse_block_prompts(raw, name, cut_prefix)
        timeline.fps = fps
        return timeline
    if jsonl or (stripped.startswith("{") and "\n{" in stripped.strip() and
                 '"startTime"' not in raw and '"clipwan_timeline"' not in raw):
        return parse_interactive(raw, switch_frames, line, source=name)
    if stripped.startswith("{"):
        data = _json(raw, name)
        if isinstance(data, dict) and "clipwan_timeline" in data:
            tensors = None
            if data.get("embeddings"):
                from ...weights import read_weights

                tensors = read_weights(os.path.join(folder, data["embeddings"]), "timeline embeddings")
            timeline = from_dict(data, name, tensors)
            timeline.fps = timeline.fps if fps is None else fps
            return timeline
        if isinstance(data, dict) and isinstance(data.get("prompts"), list) and data["prompts"] and \
                isinstance(data["prompts"][0], str):  # one interactive line saved as a .json
            return parse_interactive(raw.replace("\n", " "), switch_frames, 1, source=name)
        return parse_scope(data, name, raw, fps=fps)
    return parse_text(raw, name, fps=fps)
