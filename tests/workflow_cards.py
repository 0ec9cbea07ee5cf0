"""Template cards: the thumbnail ComfyUI's template browser shows for each example workflow.

The browser (frontend 1.49 and 1.58 alike) lists a custom node pack's templates by file name: the card's title
is the file's stem and its picture ``example_workflows/<stem>.jpg`` (always ``.jpg``); nothing inside the
workflow is read for the card. So the picture carries what the card would otherwise not say: the workflow's
title (also stored in the workflow as ``extra.info.title``) over a small drawing of what it makes — the start
image and the video's blocks, the file it streams to, the export to the NPU, the labels it ranks — and a
one-line caption. Drawn with PIL from the graph descriptions (``tests/workflow_specs.py``: ``title``, ``card``),
written by ``python tests/workflow_format.py``; tests/test_template_cards.py checks them.
"""

from __future__ import annotations

import io
import textwrap

from PIL import Image, ImageDraw, ImageFont

SIZE = (400, 240)
MAX_BYTES = 40_000
JPEG_QUALITY = 85
BACKGROUND = (26, 28, 34)
ACCENT = (98, 196, 160)
TEXT = (236, 236, 240)
MUTED = (160, 164, 176)
BLOCK_TINTS = ((66, 120, 200), (200, 140, 60), (150, 90, 190), (70, 160, 120))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font: the same picture on every machine
    except (TypeError, OSError):
        return ImageFont.load_default()


def _scene(draw: ImageDraw.ImageDraw, box, t: float, faded: bool = False) -> None:
    """One frame of the examples' prompt ("a red fox trotting through fresh snow"): sky, snow, the fox at
    position ``t`` in [0, 1] across the frame."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    horizon = y0 + int(h * 0.55)
    for i in range(horizon - y0):
        k = i / max(1, horizon - y0)
        colour = (int(120 + 80 * k), int(160 + 60 * k), int(215 + 25 * k))
        draw.line([(x0, y0 + i), (x1 - 1, y0 + i)], fill=colour)
    draw.rectangle([x0, horizon, x1 - 1, y1 - 1], fill=(235, 240, 246))
    for tx in (0.15, 0.8):  # two pines on the horizon
        cx = x0 + int(w * tx)
        draw.polygon([(cx, horizon - int(h * 0.3)), (cx - 5, horizon + 1), (cx + 5, horizon + 1)], fill=(46, 92, 70))
    fx = x0 + int(w * (0.12 + 0.62 * t))
    fy = horizon + int(h * 0.12)
    draw.ellipse([fx, fy, fx + int(w * 0.24), fy + int(h * 0.16)], fill=(214, 92, 38))  # body
    draw.ellipse([fx + int(w * 0.2), fy - int(h * 0.06), fx + int(w * 0.32), fy + int(h * 0.08)],
                 fill=(224, 104, 44))  # head
    draw.line([(fx, fy + int(h * 0.05)), (fx - int(w * 0.12), fy - int(h * 0.04))], fill=(214, 92, 38), width=3)
    if faded:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(26, 28, 34), width=0)


def _strip(img: Image.Image, top: int, blocks, image_first: bool, stream: bool = False) -> None:
    """The video as a film strip: the start image, then the generated frames grouped by block (bracket and
    label under each block); ``stream``: the last frame is still being decoded and the strip ends in the file."""
    draw = ImageDraw.Draw(img)
    frames = sum(blocks)
    gap, group_gap, badge = 4, 8, (54 if stream else 0)
    room = SIZE[0] - 24 - badge - (len(blocks) - 1) * group_gap
    fw = min(40, room // frames - gap)  # frames narrow to fit a longer video
    fh = 30
    width = frames * (fw + gap) + (len(blocks) - 1) * group_gap + badge
    x = (SIZE[0] - width) // 2
    small = _font(11)
    index = 0
    for b, n in enumerate(blocks):
        start = x
        for _ in range(n):
            box = (x, top, x + fw, top + fh)
            _scene(draw, box, index / max(1, frames - 1))
            last = stream and index == frames - 1
            if last:  # being decoded: half drawn
                overlay = Image.new("RGB", (fw, fh // 2), BACKGROUND)
                img.paste(overlay, (x, top + fh // 2))
            is_image = index == 0  # the start image: its own block, or clamped into the first one
            outline = (250, 250, 250) if is_image else BLOCK_TINTS[b % len(BLOCK_TINTS)]
            draw.rectangle(box, outline=outline, width=2)
            x += fw + gap
            index += 1
        end = x - gap
        label = "image" if image_first and b == 0 else f"block {b + (0 if image_first else 1)}"
        colour = MUTED if image_first and b == 0 else BLOCK_TINTS[b % len(BLOCK_TINTS)]
        draw.line([(start, top + fh + 5), (end, top + fh + 5)], fill=colour, width=2)
        width_label = draw.textlength(label, font=small)
        draw.text(((start + end - width_label) / 2, top + fh + 8), label, font=small, fill=colour)
        x += group_gap
    if stream:
        bx = x - group_gap + 6
        draw.rounded_rectangle([bx, top + 3, bx + 46, top + fh - 3], radius=5, fill=ACCENT)
        draw.polygon([(bx + 7, top + 9), (bx + 7, top + fh - 9), (bx + 16, top + fh // 2)], fill=BACKGROUND)
        draw.text((bx + 19, top + 8), "MP4", font=small, fill=BACKGROUND)


def _pills(draw, top: int, names, arrow_to: str) -> None:
    small = _font(11)
    widths = [draw.textlength(n, font=small) + 14 for n in names + [arrow_to]]
    total = sum(widths) + 8 * (len(names) - 1) + 26
    x = (SIZE[0] - total) / 2
    for name, w in zip(names, widths):
        draw.rounded_rectangle([x, top, x + w, top + 18], radius=8, outline=MUTED, width=1)
        draw.text((x + 7, top + 3), name, font=small, fill=MUTED)
        x += w + 8
    x -= 8
    draw.line([(x + 4, top + 9), (x + 18, top + 9)], fill=ACCENT, width=2)
    draw.polygon([(x + 18, top + 5), (x + 24, top + 9), (x + 18, top + 13)], fill=ACCENT)
    x += 26
    draw.rounded_rectangle([x, top, x + widths[-1], top + 18], radius=8, fill=ACCENT)
    draw.text((x + 7, top + 3), arrow_to, font=small, fill=BACKGROUND)


def _export(img: Image.Image, top: int) -> None:
    draw = ImageDraw.Draw(img)
    small = _font(12)
    boxes = [("CLIP ViT-H/14", (60, 110, 170)), ("ONNX + Pulsar2", (120, 90, 170)), ("AX650N NPU", ACCENT)]
    x = 22
    for i, (name, colour) in enumerate(boxes):
        w = draw.textlength(name, font=small) + 20
        if i == 2:  # a chip with pins
            for p in range(5):
                px = x + 8 + p * (w - 16) / 4
                draw.line([(px, top - 6), (px, top + 50)], fill=MUTED, width=2)
        draw.rounded_rectangle([x, top, x + w, top + 44], radius=6, fill=colour)
        draw.text((x + 10, top + 15), name, font=small, fill=TEXT if i < 2 else BACKGROUND)
        x += w
        if i < 2:
            draw.line([(x + 4, top + 22), (x + 20, top + 22)], fill=TEXT, width=2)
            draw.polygon([(x + 20, top + 17), (x + 27, top + 22), (x + 20, top + 27)], fill=TEXT)
            x += 32


def _zero_shot(img: Image.Image, top: int) -> None:
    draw = ImageDraw.Draw(img)
    small = _font(12)
    _scene(draw, (40, top, 140, top + 72), 0.4)
    draw.rectangle((40, top, 140, top + 72), outline=(250, 250, 250), width=2)
    for i, (label, score) in enumerate((("fox", 0.55), ("dog", 0.25), ("cat", 0.12), ("landscape", 0.08))):
        y = top + 4 + i * 17
        draw.text((160, y), label, font=small, fill=MUTED)
        draw.rounded_rectangle([240, y + 2, 240 + int(130 * score / 0.55), y + 12], radius=3,
                               fill=ACCENT if i == 0 else (90, 96, 110))


def render_card(title: str, card: dict) -> Image.Image:
    """The thumbnail of a workflow: ``title`` on top, a drawing of ``card["kind"]`` ("video", "stream",
    "custom", "export", "zero_shot"), ``card["caption"]`` under it."""
    img = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, SIZE[0], 4], fill=ACCENT)
    draw.text((14, 12), "ClipWan", font=_font(12), fill=ACCENT)
    big = _font(21)
    lines = textwrap.wrap(title, width=34)[:2]
    for i, line in enumerate(lines):
        draw.text((14, 30 + 25 * i), line, font=big, fill=TEXT)
    kind = card["kind"]
    blocks = list(card.get("blocks", (1, 3, 3)))
    image_first = card.get("image_first", True)
    if kind in ("video", "stream"):
        _strip(img, 112, blocks, image_first, stream=kind == "stream")
    elif kind == "custom":
        _pills(draw, 92, ["NOISE", "GUIDER", "SIGMAS"], "causal loop")
        _strip(img, 124, blocks, image_first)
    elif kind == "export":
        _export(img, 112)
    elif kind == "zero_shot":
        _zero_shot(img, 100)
    else:
        raise ValueError(f"card kind {kind!r}: use video, stream, custom, export or zero_shot")
    caption, font = card.get("caption", ""), _font(12)
    if draw.textlength(caption, font=font) > SIZE[0] - 28:
        raise ValueError(f"caption {caption!r} is wider than the card; shorten it")
    draw.text((14, SIZE[1] - 24), caption, font=font, fill=MUTED)
    return img


def card_bytes(title: str, card: dict) -> bytes:
    buf = io.BytesIO()
    render_card(title, card).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    data = buf.getvalue()
    if len(data) > MAX_BYTES:
        raise ValueError(f"card for {title!r} is {len(data)} bytes; the template browser's thumbnails stay "
                         f"under {MAX_BYTES}")
    return data
