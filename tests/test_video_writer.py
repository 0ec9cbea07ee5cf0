"""Video files written frame block by frame block (PyAV): H.264/MP4 and VP9/WebM, read back and compared;
an interrupted write leaves a valid shorter file; bad paths/formats give clear errors."""

import os

import numpy as np
import pytest
import torch

from comfyui_clipwan.wan.video.writer import VideoWriter, format_for_path, read_video_frames


def _frames(n, h=32, w=48, seed=0):
    # smooth content (codecs are lossy; gradients survive, noise would not)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = []
    for i in range(n):
        phase = i / max(n, 1)
        out.append(np.stack([xx, yy, (xx + yy + phase) % 1.0], -1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


@pytest.mark.parametrize("name", ["out.mp4", "out.webm"])
def test_blocks_append_and_read_back(tmp_path, name):
    frames = _frames(9)
    path = tmp_path / name
    with VideoWriter(str(path), fps=16) as w:
        w.write(frames[:1])
        w.write(frames[1:5])
        w.write((frames[5:] * 255).round().to(torch.uint8))  # uint8 blocks too
    back = read_video_frames(str(path))
    assert back.shape == (9, 32, 48, 3)
    err = np.abs(back.astype(np.float32) / 255 - frames.numpy()).mean()
    assert err < 0.03, err
    assert not any(p.name.endswith(".partial" + path.suffix) for p in tmp_path.iterdir())


def test_interrupted_write_leaves_valid_shorter_file(tmp_path):
    path = tmp_path / "run.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(str(path), fps=16) as w:
            w.write(_frames(5))
            raise KeyboardInterrupt
    assert read_video_frames(str(path)).shape[0] == 5


def test_odd_size_is_padded(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(str(path)) as w:
        w.write(_frames(2, 31, 47))
    assert read_video_frames(str(path)).shape == (2, 32, 48, 3)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"format 'avi' is not supported; use a .mp4 \(H.264\) or .webm \(VP9\)"):
        format_for_path("clip.avi")
    assert format_for_path("x", "vp9") == "webm" and format_for_path("a.MP4") == "mp4"
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        VideoWriter(str(tmp_path / "missing" / "a.mp4"))
    os.mkdir(tmp_path / "dir.mp4")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        VideoWriter(str(tmp_path / "dir.mp4"))
    w = VideoWriter(str(tmp_path / "a.mp4"))
    w.write(_frames(1))
    with pytest.raises(ValueError, match="frame size 24x16 differs from the video's 48x32"):
        w.write(_frames(1, 16, 24))
    with pytest.raises(ValueError, match=r"frames have shape \[2, 3\]"):
        w.write(np.zeros((2, 3)))
    w.close()
    assert VideoWriter(str(tmp_path / "b.mp4")).close() is None  # nothing written, no file
    assert not (tmp_path / "b.mp4").exists()
