"""The timeline files people have, read from the authors' own trees: every Daydream Scope example timeline
(``UPSTREAM_SCOPE_DIR`` = daydreamlive/scope), LongLive's ``example/interactive_example.jsonl``
(``UPSTREAM_LONGLIVE_DIR``, branch v1.0) and MemFlow's ``prompts/interactive_benchmark.jsonl``
(``UPSTREAM_MEMFLOW_DIR``) with their configs' ``switch_frame_indices`` (40, 80, 120, 160, 200). Each skips without
its checkout; nothing beyond the pack's own dependencies is needed (the files are only read)."""

import glob
import json
import os

import pytest

from comfyui_clipwan.wan.sampling.loop import block_layout
from comfyui_clipwan.wan.timeline import load

SWITCH_FRAMES = [40, 80, 120, 160, 200]  # configs/*interactive_inference.yaml of both trees


def _tree(var):
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is not set (point it at the authors' tree to read its timeline files)")
    return path


def test_every_scope_example_timeline_reads():
    root = _tree("UPSTREAM_SCOPE_DIR")
    files = sorted(glob.glob(os.path.join(root, "src/scope/core/pipelines/*/docs/examples/timeline-*.json")))
    assert files, f"no timeline-*.json under {root}"
    layout = block_layout(3 * 400, 3)
    for path in files:
        data = json.load(open(path))
        timeline = load(path, fps=16)
        assert len(timeline) == len(data["prompts"]), path
        starts = [timeline.start_block(s, layout) for s in timeline.segments]
        assert starts[0] == 0 and starts == sorted(starts), (path, starts)
        for seg, entry in zip(timeline.segments, data["prompts"]):
            assert [p.text for p in seg.prompts] == [p["text"] for p in entry["prompts"]]
            assert seg.transition == ("blend" if entry.get("transitionSteps", 0) > 0 else "switch")


@pytest.mark.parametrize("var, rel", [("UPSTREAM_LONGLIVE_DIR", "example/interactive_example.jsonl"),
                                      ("UPSTREAM_MEMFLOW_DIR", "prompts/interactive_benchmark.jsonl")])
def test_interactive_prompt_files_read(var, rel):
    path = os.path.join(_tree(var), rel)
    lines = [json.loads(x) for x in open(path) if x.strip()]
    layout = block_layout(240, 3)  # their num_output_frames: 240 latent frames
    for n, row in enumerate(lines, 1):
        timeline = load(path, switch_frames=SWITCH_FRAMES, line=n)
        assert [s.prompts[0].text for s in timeline.segments] == [p.strip() for p in row["prompts"]]
        # their rule: a prompt starts at the first block whose start frame is >= its switch frame (40 -> 42)
        assert [timeline.start_block(s, layout) for s in timeline.segments] == [0, 14, 27, 40, 54, 67]
