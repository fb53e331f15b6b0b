"""``sweep_report.html``: a sweep's results (:func:`trustequiv.report.sweep.collect`) as one self-contained
page:
inline CSS, the verdicts first, then the jobs, then each all-pairs matrix as an embedded PNG heatmap."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trustequiv.report.figures import matrix_heatmap
from trustequiv.report.tables import verdict_rows

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.failed td { background: #fde8e8; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; }
.muted { color: #666; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return html.escape(str(value))


def _table(rows: Sequence[Mapping[str, Any]], row_class: Sequence[str] | None = None) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for n, r in enumerate(rows):
        cls = f' class="{row_class[n]}"' if row_class and row_class[n] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def heatmap_png(matrix: Mapping[str, Any], title: str) -> str:
    """A matrix entry (``{"models", "values"}``, None as NaN) as a base64 PNG
    (:func:`trustequiv.report.figures.matrix_heatmap`)."""

    values = np.array(
        [[np.nan if v is None else float(v) for v in row] for row in matrix["values"]], dtype=float
    )
    fig = matrix_heatmap(values, list(matrix["models"]), title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def sweep_report_html(results: Mapping[str, Any]) -> str:
    """The page for a sweep's results (the dict :func:`trustequiv.report.sweep.collect` returns)."""

    jobs = results.get("jobs", [])
    failed = results.get("failed", [])
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>trustequiv sweep</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>trustequiv sweep: {html.escape(', '.join(results.get('tasks', [])) or 'no results')}</h1>",
        f"<p class='muted'>{html.escape(str(results.get('sweep_dir', '')))} &middot; built "
        f"{html.escape(str(results.get('built', '')))} &middot; {len(jobs)} jobs, {len(failed)} without "
        "results</p>",
        "<h2>Verdicts</h2>",
    ]
    rows = verdict_rows(results.get("verdict", {}))
    parts.append(_table(rows) or "<p class='muted'>No verdict: the jobs' results.json carry none.</p>")

    parts.append("<h2>Jobs</h2>")
    job_rows = [
        {
            "job": j.get("dir"),
            "task": j.get("task"),
            "reference": j.get("reference"),
            "candidates": j.get("candidates"),
            "status": j.get("status"),
            "error": j.get("error") if j.get("status") != "ok" else None,
        }
        for j in jobs
    ]
    parts.append(_table(job_rows, ["failed" if j.get("status") != "ok" else "" for j in jobs]))

    matrices = results.get("matrices", {})
    parts.append("<h2>All-pairs matrices</h2>")
    if not matrices:
        parts.append(
            "<p class='muted'>No matrix: no characteristic of these jobs gives pair statistics, or fewer "
            "than two models' outputs were saved.</p>"
        )
    else:
        parts.append(
            "<p class='muted'>Row model in the reference's place, column model in the candidate's; "
            "the colour scale spans [0, 1].</p><div class='figs'>"
        )
        for key, matrix in matrices.items():
            alike = matrix.get("alike")
            caption = f"{key}" + (f" ({alike} is more alike)" if alike else "")
            png = heatmap_png(matrix, key)
            parts.append(
                f"<figure><img alt='{html.escape(key)}' src='data:image/png;base64,{png}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")

    notes = results.get("notes", [])
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
