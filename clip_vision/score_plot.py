"""The CLIP-score chart (matplotlib, Agg backend: no display needed): a line per score over the frames, each
prompt switch marked by a dashed line labelled with its prompt. The figure is opaque in one of two themes
(``dark`` for ComfyUI's default look, ``light`` for documents), and the line colours are the Okabe-Ito
colour-blind-safe palette, which reads on both."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

THEMES = {
    "dark": {"face": "#202020", "axes": "#262626", "text": "#e6e6e6", "grid": "#4a4a4a", "switch": "#bbbbbb"},
    "light": {"face": "#ffffff", "axes": "#ffffff", "text": "#222222", "grid": "#d0d0d0", "switch": "#555555"},
}
COLORS = {"clip_t": "#E69F00", "clip_i": "#56B4E9", "consistency": "#009E73"}  # Okabe-Ito
LABELS = {"clip_t": "CLIP-T (frame vs prompt)", "clip_i": "CLIP-I (frame vs reference)",
          "consistency": "consistency (frame vs previous)"}


def _figure(rows: Sequence, segments: Sequence = (), theme: str = "dark", title: Optional[str] = None,
            size=(8.0, 3.6), dpi: int = 100):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if theme not in THEMES:
        raise ValueError(f"theme must be one of {list(THEMES)}, got {theme!r}")
    t = THEMES[theme]
    fig = Figure(figsize=size, dpi=dpi, facecolor=t["face"])
    ax = fig.add_subplot(1, 1, 1, facecolor=t["axes"])
    frames = [r.frame for r in rows]
    for name, color in COLORS.items():
        values = [getattr(r, name) for r in rows]
        if any(v is not None for v in values):
            ax.plot(frames, [np.nan if v is None else v for v in values], color=color, lw=1.8, marker="o",
                    ms=2.5, label=LABELS[name])
    top = ax.get_ylim()[1]
    for start, prompt in list(segments)[1:]:
        ax.axvline(start, color=t["switch"], ls="--", lw=1)
        label = prompt if len(prompt) <= 28 else prompt[:27] + "…"
        ax.text(start, top, f" {label}", color=t["switch"], fontsize=7, va="top", ha="left", rotation=0)
    if segments:
        first = segments[0][1]
        ax.text(0, top, f" {first if len(first) <= 28 else first[:27] + '…'}", color=t["switch"], fontsize=7,
                va="top", ha="left")
    ax.set_xlabel("frame", color=t["text"])
    ax.set_ylabel("score (100 × cosine)", color=t["text"])
    ax.set_title(title or "CLIP scores", color=t["text"], fontsize=10)
    ax.tick_params(colors=t["text"])
    for spine in ax.spines.values():
        spine.set_color(t["grid"])
    ax.grid(True, color=t["grid"], lw=0.5)
    if rows:
        # below the axes, so it never hides a line
        legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7, frameon=False)
        for text in legend.get_texts():
            text.set_color(t["text"])
    fig.tight_layout()
    return fig


def plot_png(path: str, rows: Sequence, segments: Sequence = (), theme: str = "light",
             title: Optional[str] = None) -> str:
    """Write the chart as a PNG; returns the path."""
    fig = _figure(rows, segments, theme, title)
    fig.savefig(path, facecolor=fig.get_facecolor())
    return path


def plot_image(rows: Sequence, segments: Sequence = (), theme: str = "dark", title: Optional[str] = None) -> torch.Tensor:
    """The chart as a ComfyUI IMAGE ``[1, H, W, 3]`` float32 in 0..1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _figure(rows, segments, theme, title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0).unsqueeze(0)
