"""Tables shared by report.md, report.html and the console: cells formatted one way, headline rows picked
from the flat metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# keys of a candidate's verdict that are not characteristics
VERDICT_META = ("overall", "statistics", "notes")


_COUNTS = ("n_", "correct_to_wrong", "wrong_to_correct")


def format_cell(v: Any, column: str = "") -> str:
    """A table cell: counts as integers, other floats to 4 decimals, NaN as ``nan``."""
    if isinstance(v, float) and column.startswith(_COUNTS) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_cell(r.get(c, ""), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def headline_rows(
    metrics: Mapping[str, float], scopes: Sequence[str], wanted: Sequence[str], prefix: str = ""
) -> list[dict[str, Any]]:
    """One row per scope (model or pair) with the wanted metric names, found under any characteristic."""
    rows = []
    for scope in scopes:
        row: dict[str, Any] = {"": scope}
        for m in wanted:
            for key, v in metrics.items():
                if key.startswith(prefix) and key.endswith(f"/{scope}/{m}"):
                    row[m] = v
                    break
        rows.append(row)
    return rows


def verdict_rows(verdict: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``"<task>/<candidate>"``: task, candidate, overall, then each characteristic's verdict."""
    chars = list(
        dict.fromkeys(c for judged in verdict.values() for c in (judged or {}) if c not in VERDICT_META)
    )
    rows = []
    for key, judged in verdict.items():
        task, _, candidate = key.partition("/")
        judged = judged or {}
        rows.append({"task": task, "candidate": candidate, "overall": judged.get("overall")})
        rows[-1].update({c: judged.get(c) for c in chars})
    return rows
