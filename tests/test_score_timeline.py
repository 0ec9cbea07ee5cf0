"""``comfyui-clipwan score VIDEO --timeline FILE`` reads every timeline file the pack reads (plain text with
blocks / latent frames / seconds and mixes, Daydream Scope JSON, LongLive/MemFlow interactive JSONL with switch
frames, the sidecar ``.timeline.json`` a stream writes beside its video, and the score's own 'FRAME: prompt'
lines) and scores each frame against the prompt playing at it: the CSV equals an independent open_clip
computation whose per-frame prompts are worked out here from the definitions (Wan VAE: latent frame k >= 1 is
video frames 4k-3 .. 4k; a segment at a latent frame or a time takes effect at the first block starting at or
after that latent frame; a mix counts as its highest-weighted prompt). Errors name the file, the line and the
fix."""

import json

import open_clip
import pytest
import safetensors.torch
import torch
from test_clip_scores import PROMPTS, assert_rows, expected_scores, frames_for, oracle_pixels
from test_clip_scores import openclip_model  # noqa: F401 (the fixture)

from comfyui_clipwan.cli import main
from comfyui_clipwan.clip_vision.scores import read_csv
from comfyui_clipwan.wan.sampling.loop import block_layout
from comfyui_clipwan.wan.timeline import files
from comfyui_clipwan.wan.video.writer import VideoWriter, read_video_frames

FRAMES = 25  # 7 latent frames at 16 fps
P0, P1, P2 = PROMPTS


@pytest.fixture(scope="module")
def scored(tmp_path_factory, openclip_model):
    """The video, the CLIP file and the oracle: open_clip embeddings of every decoded frame and of the prompts."""
    root = tmp_path_factory.mktemp("score_timeline")
    clip = root / "oc.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_model.state_dict().items()}, str(clip))
    (root / "config.json").write_text('{"text_config": {"hidden_act": "gelu", "num_attention_heads": 1}}')
    video = root / "v.mp4"
    with VideoWriter(str(video), fps=16) as w:
        w.write(frames_for(FRAMES, seed=11))
    decoded = torch.from_numpy(read_video_frames(str(video))).float() / 255
    with torch.no_grad():
        img = openclip_model.encode_image(oracle_pixels(decoded))
        txt = openclip_model.encode_text(open_clip.get_tokenizer("ViT-B-32")(list(PROMPTS)))
    return root, clip, video, img, txt


def starts_to_prompts(starts):
    """Per video frame, the index into PROMPTS of the last start at or before it."""
    out = []
    for f in range(FRAMES):
        out.append([p for s, p in starts if s <= f][-1])
    return out


CASES = {  # name: (file name, content, extra flags, [(video frame, prompt index)] worked out by hand)
    # blocks of 2 latent frames: block 2 = latent frame 4 = video frame 4*4-3 = 13
    "text blocks": ("t.txt", f"0: {P0}\n2: {P1}\n", ["--frames-per-block", "2"], [(0, 0), (13, 1)]),
    # independent first frame: block 2 = latent 1 + 2 = 3 = video frame 9
    "text blocks, first frame alone": ("t.txt", f"0: {P0}\n2: {P1}\n",
                                       ["--frames-per-block", "2", "--independent-first-frame"], [(0, 0), (9, 1)]),
    # Self-Forcing: blocks of 3 after a 1-frame block; block 1 = latent 1 = video frame 1, block 2 = latent 4 = 13
    "text blocks, family": ("t.txt", f"0: {P0}\n2: {P1}\n", ["--family", "Self-Forcing"], [(0, 0), (13, 1)]),
    # no block size: a latent frame counts from its own first video frame (f3 -> 9), seconds at 16 fps (0.5 s -> 8)
    "text latent frames and seconds": ("t.txt", f"f0: {P0}\n0.5s: {P1}\nf4: {P2}\n", [],
                                       [(0, 0), (8, 1), (13, 2)]),
    # with blocks of 2: 0.5 s = video frame 8, in latent frame 2, a block start -> video frame 5; f3 -> block at
    # latent 4 -> 13
    "text latent frames and seconds, blocks": ("t.txt", f"f0: {P0}\n0.5s: {P1}\nf3: {P2}\n",
                                               ["--frames-per-block", "2"], [(0, 0), (5, 1), (13, 2)]),
    # a mix: its highest-weighted prompt
    "text mix": ("t.txt", f"f0: {P0}\nf3: {P1} :: 0.3 | {P2} :: 0.7\n", [], [(0, 0), (9, 2)]),
    # Scope: seconds (1.0 s at 16 fps = video frame 16); a blend counts from its start
    "scope": ("timeline-x.json", json.dumps({"prompts": [
        {"startTime": 0, "endTime": 1, "prompts": [{"text": P0, "weight": 100}]},
        {"startTime": 1, "endTime": 2, "prompts": [{"text": P1, "weight": 30}, {"text": P2, "weight": 70}],
         "transitionSteps": 2}]}, indent=1), [], [(0, 0), (16, 2)]),
    # LongLive / MemFlow: switch at latent frame 3 = video frame 9
    "interactive": ("prompts.jsonl", json.dumps({"prompts": [P0, P1]}) + "\n", ["--switch-frames", "3"],
                    [(0, 0), (9, 1)]),
    # the score's own form: video frames
    "frame lines": ("t.txt", f"0: {P0}\n10: {P1}\n", [], [(0, 0), (10, 1)]),
    # a timeline that starts later: --prompt plays before it
    "prompt before the timeline": ("t.txt", f"f2: {P1}\n", ["--prompt", P0], [(0, 0), (5, 1)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_score_timeline_file_equals_open_clip(scored, tmp_path, case, capsys):
    _, clip, video, img, txt = scored
    name, content, flags, starts = CASES[case]
    (tmp_path / name).write_text(content)
    out = tmp_path / "s"
    assert main(["score", str(video), "--timeline", str(tmp_path / name), "--clip", str(clip), "--out", str(out),
                 *flags]) == 0, capsys.readouterr().err
    rows = read_csv(str(out) + ".csv")
    per_frame = starts_to_prompts(starts)
    assert_rows(rows, *expected_scores(img, txt[per_frame], img[:1]))


def test_score_reads_the_stream_sidecar_with_its_block_layout(scored, tmp_path):
    _, clip, video, img, txt = scored
    timeline = files.parse_text(f"0: {P0}\n1 blend 2: {P2}\n", "typed")
    layout = block_layout(7, 3, independent_first_frame=True)  # latent 0 | 1-3 | 4-6: block 1 = video frame 1
    sidecar = files.save(timeline, str(tmp_path / "v.timeline.json"), layout)
    assert json.loads(open(sidecar).read())["block_layout"] == {"frames_per_block": 3, "first_block": 1}
    assert main(["score", str(video), "--timeline", sidecar, "--clip", str(clip), "--out", str(tmp_path / "s")]) == 0
    rows = read_csv(str(tmp_path / "s.csv"))
    assert_rows(rows, *expected_scores(img, txt[starts_to_prompts([(0, 0), (1, 2)])], img[:1]))
    # the per-block means follow the same layout: frame 0 | 1-12 | 13-24
    assert [r.block for r in rows] == [0] + [1] * 12 + [2] * 12


def test_block_rule_of_layouts():
    from comfyui_clipwan.wan.timeline.video_prompts import BlockRule

    for n, independent in ((3, False), (3, True), (1, False), (4, True)):
        layout = block_layout(1 + 4 * n, n, independent, shorter_last_block=True)
        rule = BlockRule.from_layout(layout)
        assert rule == BlockRule.of(n, independent)
        assert rule.layout(1 + 4 * n) == layout
        for b, (start, size) in enumerate(layout):  # every video frame of a block is labelled with it
            first = 0 if start == 0 else 4 * start - 3
            last = 4 * (start + size - 1) if start + size - 1 > 0 else 0
            assert {rule.block_of_pixel(f) for f in range(first, last + 1)} == {b}


ERRORS = {  # name: (file name, content, flags, the message's parts: file, line, fix)
    "blocks without a block size": ("t.txt", f"0: {P0}\n4 blend 2: {P1}\n", [],
                                    ["t.txt, line 1", "block 0", "--frames-per-block N", "--family NAME"]),
    "old sidecar without its layout": ("v.timeline.json", json.dumps(files.to_dict(
        files.parse_text(f"0: {P0}\n2: {P1}\n", "typed"))), [], ["typed, line 1", "--frames-per-block"]),
    "interactive without switch frames": ("p.jsonl", json.dumps({"prompts": [P0, P1]}) + "\n", [],
                                          ["p.jsonl, line 1", "--switch-frames"]),
    "bad line": ("t.txt", f"f0: {P0}\nat two seconds: {P1}\n", [], ["t.txt, line 2", "START: prompt"]),
    "starts after frame 0": ("t.txt", f"f2: {P1}\n", [], ["t.txt", "video frame 5", "--prompt"]),
    "bad flag": ("t.txt", f"0: {P0}\n", ["--independent-first-frame"], ["--independent-first-frame needs"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_score_timeline_errors_name_the_file_line_and_fix(scored, tmp_path, case, capsys):
    _, clip, video, _, _ = scored
    name, content, flags, parts = ERRORS[case]
    (tmp_path / name).write_text(content)
    assert main(["score", str(video), "--timeline", str(tmp_path / name), "--clip", str(clip), *flags]) == 2
    err = capsys.readouterr().err
    for part in parts:
        assert part in err, (part, err)
    assert not (tmp_path / "v.clip_scores.csv").exists()
