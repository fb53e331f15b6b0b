"""Word heatmaps (PNG via matplotlib, and HTML) and the histogram of per-example alignment."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure

_CMAP = colormaps["RdBu_r"]


def _colors(attr: np.ndarray) -> list[str]:
    scale = float(np.max(np.abs(attr))) if attr.size else 0.0
    norm = Normalize(-scale or -1.0, scale or 1.0)
    return [to_hex(_CMAP(norm(v))) for v in attr]


def heatmap_html(words: Sequence[str], segments: Sequence[int], attr: np.ndarray) -> str:
    """Words as ``<span>``s coloured by attribution (red positive, blue negative, scaled to max |attr|),
    `` ‖ `` between the two texts of a pair."""
    out, prev = [], 0
    for w, s, c, v in zip(words, segments, _colors(np.asarray(attr, dtype=float)), attr, strict=True):
        if s != prev:
            out.append("<b> &#8214; </b>")
            prev = s
        out.append(f'<span style="background:{c}" title="{v:+.4f}">{html.escape(w)}</span>')
    return " ".join(out)


def _draw_words(ax, words: Sequence[str], segments: Sequence[int], attr: np.ndarray, width: int) -> int:
    """Flow words into lines of ``width`` characters; returns the number of lines."""
    colors = _colors(np.asarray(attr, dtype=float))
    x, line, prev = 0, 0, 0
    for w, s, c in zip(words, segments, colors, strict=True):
        if s != prev:
            w_sep = "‖"
            ax.text(x, -line, w_sep, fontsize=9, va="top", family="monospace")
            x += 2
            prev = s
        if x + len(w) > width and x > 0:
            x, line = 0, line + 1
        ax.text(
            x, -line, w, fontsize=9, va="top", family="monospace", bbox={"facecolor": c, "pad": 1, "lw": 0}
        )
        x += len(w) + 1
    return line + 1


def heatmap_figure(
    panels: Sequence[tuple[str, Sequence[str], Sequence[int], np.ndarray]], width: int = 90
) -> Figure:
    """Stacked word heatmaps, one panel per ``(title, words, segments, attributions)`` (reference and
    candidate of each example one after the other)."""
    lines = [max(1, sum(len(w) + 1 for w in p[1]) // width + 1) for p in panels]
    heights = [0.35 * n + 0.45 for n in lines]
    fig = Figure(figsize=(width * 0.085, sum(heights)), layout="constrained")
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, (title, words, segs, attr), n in zip(axes, panels, lines, strict=True):
        used = _draw_words(ax, words, segs, attr, width)
        ax.set_xlim(-0.5, width + 2)
        ax.set_ylim(-max(used, n) - 0.2, 0.6)
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    return fig


def histogram_figure(values: np.ndarray, title: str, xlabel: str) -> Figure:
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    ax.hist(v, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    if v.size:
        ax.axvline(v.mean(), color="k", ls="--", lw=1, label=f"mean {v.mean():.3f}")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=10)
    return fig
