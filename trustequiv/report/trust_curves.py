"""Trust curves: the ``trust/`` metrics :class:`trustequiv.train.trust_callbacks.TrustCallback` logged, per
epoch, as an
image (read back from a Lightning CSVLogger's metrics.csv)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from trustequiv.train.trust_callbacks import PREFIX

#: entries that accompany a metric rather than being one (intervals, nulls, p-values, counts).
_COMPANIONS = ("_ci_low", "_ci_high", "_null_mean", "_null_q95", "_p", "_chance", "_var")
_COUNTS = ("n_examples", "n_runs", "correct_to_wrong", "wrong_to_correct", "mcnemar_p")


def read_trust_curves(metrics_csv: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``"trust/<characteristic>/<metric>" -> [(epoch, value), ...]`` from a CSVLogger's metrics.csv, in
    epoch order (rows without the metric are skipped).

    Raises:
        FileNotFoundError: no such file. ValueError: it has no ``trust/`` column or no ``epoch`` column.
    """
    with Path(metrics_csv).open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith(f"{PREFIX}/")]
        if not columns or "epoch" not in (reader.fieldnames or []):
            raise ValueError(
                f"{metrics_csv} has no trust/ metrics per epoch - fine-tune a compressed candidate with "
                "callbacks.trust.enabled=true and logger=csv"
            )
        curves: dict[str, list[tuple[int, float]]] = {c: [] for c in columns}
        for row in reader:
            for c in columns:
                if row.get(c) not in (None, "") and row.get("epoch") not in (None, ""):
                    curves[c].append((int(float(row["epoch"])), float(row[c])))
    return {c: sorted(points) for c, points in curves.items() if points}


def _plotted(name: str) -> bool:
    metric = name.rsplit("/", 1)[-1]
    return not metric.endswith(_COMPANIONS) and metric not in _COUNTS


def plot_trust_curves(
    metrics_csv: str | Path, out_png: str | Path, metrics: Sequence[str] | None = None
) -> Path:
    """Plot the trust metrics per epoch: one panel per characteristic, a line per metric, its 95% interval
    as a band where ``<metric>_ci_low`` / ``_ci_high`` were logged. Saved as a PNG at ``out_png``.

    Args:
        metrics: the ``trust/...`` keys to plot; None: every metric but the companions (intervals, nulls,
            p-values, counts).

    Raises:
        ValueError: as :func:`read_trust_curves`, or none of ``metrics`` was logged.
    """

    curves = read_trust_curves(metrics_csv)
    wanted = [m for m in (metrics or [c for c in curves if _plotted(c)]) if m in curves]
    if not wanted:
        raise ValueError(
            f"{metrics_csv}: none of {list(metrics or [])} was logged - use some of {list(curves)}"
        )
    groups: dict[str, list[str]] = {}
    for name in wanted:
        groups.setdefault(name.split("/")[1], []).append(name)
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (char, names) in zip(axes, groups.items(), strict=False):
        for name in names:
            epochs, values = zip(*curves[name], strict=True)
            (line,) = ax.plot(epochs, values, marker="o", label=name.rsplit("/", 1)[-1])
            low, high = dict(curves.get(f"{name}_ci_low", [])), dict(curves.get(f"{name}_ci_high", []))
            band = [e for e in epochs if e in low and e in high]
            if band:
                ax.fill_between(
                    band, [low[e] for e in band], [high[e] for e in band], color=line.get_color(), alpha=0.15
                )
        ax.set_title(char)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="small")
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    fig.suptitle("Trust against the reference while training (shaded: 95% CI)")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def write_trust_curves(metrics_csv: str | Path, out_dir: str | Path) -> Path | None:
    """``<out_dir>/trust_curves.png`` from a fine-tuning's CSV log when it logged trust metrics; None (and
    nothing written) when it logged none (no reference was known, or ``callbacks.trust.enabled=false``)."""
    try:
        return plot_trust_curves(metrics_csv, Path(out_dir) / "trust_curves.png")
    except (OSError, ValueError):
        return None
