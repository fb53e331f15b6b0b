"""Figures shared by characteristics (matplotlib, pyplot-free so they are safe in any thread)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def matrix_heatmap(mat: np.ndarray, names: list[str], title: str) -> Figure:
    """Annotated heatmap of a symmetric [0, 1] matrix (pyplot-free Figure)."""
    k = len(names)
    side = 1.2 + 0.9 * k
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=names)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig
