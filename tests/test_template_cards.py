"""Template cards: every example workflow has a title (``extra.info.title``) and a thumbnail next to it
(``<name>.jpg``, what ComfyUI's template browser shows for a custom pack's template: frontends 1.49 and 1.58 take
the card's title from the file name and its picture from ``<name>.jpg``) that is small and is the card of that
title (tests/workflow_cards.py draws it; ``python tests/workflow_format.py`` writes it)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

import workflow_format as wf
from workflow_cards import MAX_BYTES, SIZE, card_bytes, render_card
from workflow_specs import WORKFLOWS

UI_FILES = sorted(wf.WORKFLOW_DIR.glob("*.json"))


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_every_template_has_a_spec_and_a_unique_title():
    assert sorted(p.stem for p in UI_FILES) == sorted(WORKFLOWS)
    titles = [json.loads(p.read_text())["extra"]["info"]["title"] for p in UI_FILES]
    assert all(5 <= len(t) <= 70 for t in titles), titles
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_thumbnail_is_small_and_is_the_card_of_the_title(path):
    spec = WORKFLOWS[path.stem]
    assert json.loads(path.read_text())["extra"]["info"]["title"] == spec["title"]
    thumb = path.with_suffix(".jpg")
    data = thumb.read_bytes()
    assert len(data) <= MAX_BYTES, f"{thumb.name}: {len(data)} bytes"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == SIZE
        committed = _pixels(im)
    # drawn and encoded again: the same picture (a little slack for another JPEG library's rounding)
    fresh = _pixels(Image.open(io.BytesIO(card_bytes(spec["title"], spec["card"]))))
    assert np.abs(committed - fresh).mean() < 0.5, "thumbnail is stale: run python tests/workflow_format.py"
    # the comparison can fail: the nearest other card (same drawing, another title) is ~6.5 off on average
    for name, other in WORKFLOWS.items():
        if name != path.stem:
            assert np.abs(committed - _pixels(render_card(other["title"], other["card"]))).mean() > 3.0, name


def test_card_refuses_what_would_not_fit():
    with pytest.raises(ValueError, match="wider than the card"):
        card_bytes("A title", {"kind": "video", "caption": "x" * 200})
    with pytest.raises(ValueError, match="card kind"):
        render_card("A title", {"kind": "poster"})
