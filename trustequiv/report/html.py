"""report.html: one self-contained page per run (inline CSS, figures as data URIs, no script, nothing
fetched from the net): the verdict card, each characteristic's headline tables with 95% intervals and its
figures, then the examples whose correctness flipped between the reference and each candidate.

Every text on the page goes through Jinja2's autoescaping (dataset texts may hold ``<script>``)."""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from trustequiv.cache import atomic_write_text
from trustequiv.characteristic import pair_name
from trustequiv.outputs import ModelOutputs, align
from trustequiv.report.tables import format_cell, headline_rows

#: decision -> (CSS class, symbol): the symbol and the words carry the decision without colour.
DECISIONS = {
    "equivalent": ("eq", "\u2714"),
    "not_equivalent": ("ne", "\u2718"),
    "inconclusive": ("inc", "?"),
    "not_judged": ("nj", "\u2013"),
}
DIRECTIONS = {
    "correct_to_wrong": "reference right, candidate wrong",
    "wrong_to_correct": "reference wrong, candidate right",
}
_CI = ("_ci_low", "_ci_high")


def flipped_examples(
    reference: ModelOutputs,
    candidate: ModelOutputs,
    data: Any,
    label_names: Sequence[str],
    limit: int = 50,
    columns: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The examples whose correctness differs between ``reference`` and ``candidate``.

    Args:
        data: the split the outputs were computed on, a ``datasets.Dataset`` with ``id`` and text columns
            (``text_a``, [``text_b``]; any other string column, e.g. a QA question, is shown too).
        label_names: class names, indexed by the outputs' labels and predictions.
        limit: at most this many rows per direction, the candidate's most confident first.
        columns: extra per-row values to show for both models, CSV header -> key of ``outputs.columns``
            (the task kind's ``csv_columns``, e.g. QA's predicted answer); keys absent are ignored.

    Returns:
        dicts with ``example_id``, ``direction`` (``"correct_to_wrong"``: the candidate lost it, or
        ``"wrong_to_correct"``), ``direction_total`` (flips in that direction before the cap), ``texts``
        (column -> text), ``gold``, ``reference_prediction``, ``candidate_prediction`` (label names),
        ``reference_confidence``, ``candidate_confidence`` (probability of the predicted class) and
        ``extra`` (header -> (reference value, candidate value)); predictions and confidences are None for
        outputs without scores (an error set).

    Raises:
        ValueError: the outputs do not align (see :func:`trustequiv.outputs.align`), or an example id is
            not in ``data``.
    """
    ref, cand = align(reference, candidate)
    (c_ref, u_ref), (c_cand, u_cand) = ref.correct_rows(), cand.correct_rows()
    flipped = (c_ref != c_cand) & u_ref & u_cand
    ids = ref.example_ids.cpu().numpy()
    position = {int(i): k for k, i in enumerate(data["id"])}
    missing = [int(i) for i in ids[flipped] if int(i) not in position]
    if missing:
        raise ValueError(
            f"example ids {missing[:5]} of {reference.name} are not in the data given - pass the split the "
            "outputs were computed on"
        )
    text_cols = [
        c
        for c, f in data.features.items()
        if c not in ("id", "label") and getattr(f, "dtype", None) in ("string", "large_string")
    ]
    extra = {h: k for h, k in (columns or {}).items() if k in ref.columns and k in cand.columns}

    def scores(out: ModelOutputs) -> tuple[list[Any], list[Any]]:
        if not out.has_scores:
            return [None] * len(out), [None] * len(out)
        probs = out.probs.cpu().numpy()
        pred = probs.argmax(axis=1)
        return [label_names[p] for p in pred], probs.max(axis=1).tolist()

    (pred_ref, conf_ref), (pred_cand, conf_cand) = scores(ref), scores(cand)
    labels = ref.labels.cpu().numpy()
    rows = []
    for direction, mask in (("correct_to_wrong", c_ref & ~c_cand), ("wrong_to_correct", ~c_ref & c_cand)):
        picked = np.flatnonzero(mask & flipped).tolist()
        picked.sort(key=lambda k: (-(conf_cand[k] if conf_cand[k] is not None else 0.0), int(ids[k])))
        chosen = picked[:limit]
        texts = data.select([position[int(ids[k])] for k in chosen]) if chosen else None
        for j, k in enumerate(chosen):
            rows.append(
                {
                    "example_id": int(ids[k]),
                    "direction": direction,
                    "direction_total": len(picked),
                    "texts": {c: texts[j][c] for c in text_cols},
                    "gold": label_names[labels[k]] if labels[k] >= 0 else None,
                    "reference_prediction": pred_ref[k],
                    "candidate_prediction": pred_cand[k],
                    "reference_confidence": conf_ref[k],
                    "candidate_confidence": conf_cand[k],
                    "extra": {h: (ref.columns[key][k], cand.columns[key][k]) for h, key in extra.items()},
                }
            )
    return rows


def _num(v: Any, column: str = "") -> str:
    return "n/a" if v is None else format_cell(float(v) if isinstance(v, int | float) else v, column)


def _cell(v: Any) -> str:
    return _num(v) if isinstance(v, float) else str(v)


def _interval(low: Any, high: Any, column: str = "") -> str:
    return "" if low is None and high is None else f"[{_num(low, column)}, {_num(high, column)}]"


def _decision(value: Any) -> dict[str, str]:
    css, symbol = DECISIONS.get(str(value), ("unk", "\u2022"))
    return {"css": css, "symbol": symbol, "text": str(value).replace("_", " ")}


def _tested(s: Mapping[str, Any]) -> str:
    """The quantity the decision tested with its interval, e.g. ``shortfall 0.0120 [0.0050, 0.0190] (95%)``
    (``tested``: ``shortfall``, ``signed`` or ``statistic``; see :func:`trustequiv.verdict.verdict.judge`)."""
    tested = s.get("tested")
    if not tested:
        return ""
    value = s.get({"statistic": "estimate"}.get(tested, tested))
    level = s.get("level")
    level = f" ({level:.0%})" if isinstance(level, int | float) else ""
    return f"{tested} {_num(value)} {_interval(s.get('low'), s.get('high'))}{level}"


def _verdict_statistic(name: str, s: Mapping[str, Any]) -> dict[str, Any]:
    absolute = s.get("mode") == "absolute"
    # the estimate's own interval; an entry without a tested quantity gives it as low/high
    low, high = (
        (s.get("estimate_low"), s.get("estimate_high")) if s.get("tested") else (s.get("low"), s.get("high"))
    )
    return {
        "name": name,
        "mode": " · ".join(
            str(v).replace("_", " ") for v in (s.get("mode"), None if absolute else s.get("resampling")) if v
        ),
        "alike": s.get("alike", ""),
        "estimate": _num(s.get("estimate")),
        "ci": _interval(low, high),
        "floor": "\u2014" if absolute else _num(s.get("floor")),
        "floor_ci": "" if absolute else _interval(s.get("floor_low"), s.get("floor_high")),
        "test": _tested(s) or ("" if s.get("shortfall") is None else f"shortfall {_num(s['shortfall'])}"),
        "margin": _num(s.get("margin")),
        "n": "" if s.get("n_examples") is None else s["n_examples"],
        "decision": _decision(s.get("decision") or "not_judged"),
        "why_not_judged": s.get("why_not_judged") or "",
    }


def _verdict_cards(verdict: Mapping[str, Any]) -> list[dict[str, Any]]:
    cards = []
    for candidate, entry in verdict.items():
        chars = [(k, _decision(v)) for k, v in entry.items() if k not in ("overall", "statistics", "notes")]
        cards.append(
            {
                "candidate": candidate,
                "overall": _decision(entry.get("overall")),
                "characteristics": chars,
                "statistics": [_verdict_statistic(k, s) for k, s in (entry.get("statistics") or {}).items()],
                "notes": list(entry.get("notes") or []),
            }
        )
    return cards


def _labels(metrics: Mapping[str, Any], splits: Sequence[str]) -> list[str]:
    """The ``[<split>/]<characteristic>`` prefixes of the metric keys, in order."""
    other = set(splits[1:])
    out: dict[str, None] = {}
    for key in metrics:
        parts = key.split("/")
        out["/".join(parts[:2]) if parts[0] in other and len(parts) > 3 else parts[0]] = None
    return list(out)


def _table(
    metrics: Mapping[str, Any],
    scopes: Sequence[str],
    wanted: Sequence[str],
    label: str,
    tags: Mapping[str, str],
    heading: str,
) -> dict[str, Any] | None:
    """A headline table of ``label`` with cells ``estimate [low, high]`` (the interval where results carry
    ``<metric>_ci_low/high``), one row per scope that has any; None when no scope has one."""
    prefix = f"{label}/"
    if not wanted:  # a characteristic that declares no headline: every metric it reports for these scopes
        wanted = list(
            dict.fromkeys(
                k.rpartition("/")[2]
                for k in metrics
                if k.startswith(prefix)
                and k[len(prefix) :].partition("/")[0] in scopes
                and not k.endswith(_CI)
                and k.count("/") == prefix.count("/") + 1
            )
        )
    values = headline_rows(metrics, scopes, wanted, prefix)
    bounds = headline_rows(metrics, scopes, [f"{m}{s}" for m in wanted for s in _CI], prefix)
    rows = []
    for row, ci in zip(values, bounds, strict=True):
        if len(row) == 1:  # no metric of this characteristic for this scope
            continue
        scope = row[""]
        cells = [
            (_num(row[m], m), _interval(ci.get(f"{m}_ci_low"), ci.get(f"{m}_ci_high"), m))
            if m in row
            else ("", "")
            for m in wanted
        ]
        rows.append({"scope": scope, "tag": tags.get(scope, ""), "cells": cells})
    scope = "model" if heading.startswith("per model") else "pair"
    if not rows:
        return None
    has_ci = any(ci for r in rows for _, ci in r["cells"])
    return {"heading": heading, "scope": scope, "columns": list(wanted), "rows": rows, "has_ci": has_ci}


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def _sections(
    results: Mapping[str, Any],
    figures: Mapping[str, Path],
    headline: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None,
) -> list[dict[str, Any]]:
    metrics = results.get("metrics") or {}
    splits = list(results.get("splits") or [])
    reference = results.get("reference", "")
    models = list(results.get("models") or [reference, *(results.get("candidates") or [])])
    replicas = set((results.get("noise_floor") or {}).get("models") or [])
    tags = {m: "noise-floor replica" for m in replicas}
    tags[reference] = "reference"
    pairs = [pair_name(reference, m) for m in models if m != reference]
    tags.update({pair_name(reference, m): "noise-floor replica" for m in replicas})
    labels = _labels(metrics, splits)
    figure_labels = sorted(labels, key=len, reverse=True)
    grouped: dict[str, list[tuple[str, str]]] = {label: [] for label in labels}
    for key, path in figures.items():
        label = next((lab for lab in figure_labels if key.startswith(f"{lab}_")), None)
        if label is None:  # a characteristic that reported figures but no metric
            label = key.rpartition("_")[0] or key
            if label not in grouped:
                grouped[label] = []
                labels.append(label)
        grouped[label].append((key[len(label) + 1 :] or key, _data_uri(path)))
    notes = results.get("notes") or {}
    sections = []
    for label in labels:
        split, _, char = label.rpartition("/")
        split = split or (splits[0] if splits else "the main split")
        model_cols, pair_cols = (headline or {}).get(char, ((), ()))
        sections.append(
            {
                "label": label,
                "anchor": "c-" + label.replace("/", "-"),
                "notes": list(notes.get(label) or []),
                "tables": [
                    t
                    for t in (
                        _table(metrics, models, model_cols, label, tags, f"per model on {split}"),
                        _table(metrics, pairs, pair_cols, label, tags, f"reference vs candidates on {split}"),
                    )
                    if t
                ],
                "figures": grouped.get(label, []),
            }
        )
    return sections


def _flip_row(r: Mapping[str, Any], text_cols: Sequence[str], extra_cols: Sequence[str]) -> dict[str, Any]:
    """One flipped example as display strings."""

    def pred(which: str) -> str:
        p = r.get(f"{which}_prediction")
        return "(correctness only)" if p is None else str(p)

    extra = r.get("extra") or {}
    return {
        "id": r["example_id"],
        "texts": [(r.get("texts") or {}).get(c, "") for c in text_cols],
        "gold": "(unlabelled)" if r.get("gold") is None else str(r["gold"]),
        "ref": pred("reference"),
        "ref_conf": _num(r.get("reference_confidence")),
        "cand": pred("candidate"),
        "cand_conf": _num(r.get("candidate_confidence")),
        "extra": [" / ".join(_cell(v) for v in extra.get(c, ("", ""))) for c in extra_cols],
    }


def _flip_groups(flips: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    groups = []
    for candidate, rows in flips.items():
        text_cols = list(dict.fromkeys(c for r in rows for c in r.get("texts", {})))
        extra_cols = list(dict.fromkeys(c for r in rows for c in r.get("extra", {})))
        directions = []
        for direction, meaning in DIRECTIONS.items():
            picked = [r for r in rows if r["direction"] == direction]
            total = picked[0]["direction_total"] if picked else 0
            shown = f" (showing {len(picked)})" if len(picked) < total else ""
            directions.append(
                {
                    "summary": f"{meaning}: {total} example{'' if total == 1 else 's'}{shown}",
                    "rows": [_flip_row(r, text_cols, extra_cols) for r in picked],
                }
            )
        header = [
            "id",
            *text_cols,
            "gold",
            "reference prediction (confidence)",
            "candidate prediction (confidence)",
            *[f"{c} (reference / candidate)" for c in extra_cols],
        ]
        groups.append({"candidate": candidate, "header": header, "directions": directions})
    return groups


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a;
       max-width: 1440px; margin: 0 auto; padding: 1.5em; background: #fafbfc; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-bottom: .3em; }
.meta { color: #57606a; } .meta li { margin: .1em 0; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .5em 0 1em; background: #fff; }
th, td { border: 1px solid #d0d7de; padding: .3em .55em; vertical-align: top; text-align: left; }
th { background: #f0f3f6; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.ci { color: #57606a; font-size: .9em; }
.wrap { overflow-x: auto; }
.card { border: 1px solid #d0d7de; border-radius: 8px; background: #fff; padding: .8em 1.1em; margin: 1em 0; }
.card h3 { margin-top: .2em; }
.badge { display: inline-block; border-radius: 1em; padding: .05em .7em; font-weight: 600; border: 1px solid;
         white-space: nowrap; }
.badge.big { font-size: 1.15em; }
.eq { background: #dafbe1; color: #116329; border-color: #4ac26b; }
.ne { background: #ffebe9; color: #a40e26; border-color: #ff8182; }
.inc { background: #fff8c5; color: #7d4e00; border-color: #d4a72c; }
.nj { background: #f6f8fa; color: #57606a; border-color: #d0d7de; }
.unk { background: #eaeef2; color: #24292f; border-color: #afb8c1; }
.chars > span { margin-right: .8em; }
.tag { font-size: .8em; color: #57606a; font-style: italic; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 560px; width: 100%; border: 1px solid #d0d7de; background: #fff; }
figcaption { color: #57606a; font-size: .9em; }
details { margin: .5em 0; } summary { cursor: pointer; font-weight: 600; }
.txt { max-height: 9em; overflow: auto; white-space: pre-wrap; word-break: break-word; min-width: 14em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<ul class="meta">
{% for line in summary %}<li>{{ line }}</li>
{% endfor %}</ul>
<nav><a href="#verdict">Verdict</a>
{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.label }}</a>
{% endfor %}<a href="#flips">Flipped examples</a></nav>
{% macro badge(d, big=False) -%}
<span class="badge{{ ' big' if big }} {{ d.css }}">{{ d.symbol }} {{ d.text }}</span>
{%- endmacro %}

<section id="verdict">
<h2>Verdict</h2>
{% if not cards %}
<p class="card">{{ badge(none_decision) }} The verdict was not computed for this run (verdict disabled);
the tables below give the estimates and their 95% intervals.</p>
{% endif %}
{% for c in cards or [] %}
<div class="card">
<h3>{{ c.candidate }}: {{ badge(c.overall, big=True) }}</h3>
<p class="chars">{% for name, d in c.characteristics %}<span>{{ name }}: {{ badge(d) }}</span>
{% endfor %}</p>
{% if c.statistics %}
<div class="wrap"><table>
<tr><th>statistic</th><th>mode</th><th>more alike</th><th>estimate [interval]</th>
<th>noise floor [interval]</th><th>tested [interval]</th><th>margin</th><th>n</th><th>decision</th></tr>
{% for s in c.statistics %}
<tr><td>{{ s.name }}</td><td>{{ s.mode }}</td><td>{{ s.alike }}</td>
<td class="num">{{ s.estimate }} <span class="ci">{{ s.ci }}</span></td>
<td class="num">{{ s.floor }} <span class="ci">{{ s.floor_ci }}</span></td>
<td class="num">{{ s.test }}</td><td class="num">{{ s.margin }}</td><td class="num">{{ s.n }}</td>
<td{% if s.why_not_judged %} title="{{ s.why_not_judged }}"{% endif %}>{{ badge(s.decision) }}</td></tr>
{% endfor %}
</table></div>
{% endif %}
{% if c.notes %}<ul>{% for n in c.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</div>
{% endfor %}
</section>

{% for s in sections %}
<section id="{{ s.anchor }}">
<h2>{{ s.label }}</h2>
{% if s.notes %}<ul>{% for n in s.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% for t in s.tables %}
<h3>{{ t.heading }}</h3>
<div class="wrap"><table>
<tr><th>{{ t.scope }}</th>{% for col in t.columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for r in t.rows %}
<tr><td>{{ r.scope }}{% if r.tag %} <span class="tag">({{ r.tag }})</span>{% endif %}</td>
{% for value, ci in r.cells %}
<td class="num">{{ value }}{% if ci %} <span class="ci">{{ ci }}</span>{% endif %}</td>
{% endfor %}</tr>
{% endfor %}
</table></div>
{% endfor %}
{% if s.tables|selectattr("has_ci")|list %}
<p class="ci">Bracketed: the 95% interval, where reported.</p>
{% endif %}
{% for name, uri in s.figures %}
<figure><img src="{{ uri }}" alt="{{ s.label }}: {{ name }}"><figcaption>{{ name }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}

<section id="flips">
<h2>Flipped examples</h2>
<p>Examples of {{ main_split }} that one model answers correctly and the other does not, the candidate's
most confident first (at most {{ limit }} per direction).</p>
{% if not flips %}<p>No candidate to compare.</p>{% endif %}
{% for g in flips %}
<h3>{{ g.candidate }}</h3>
{% for d in g.directions %}
<details>
<summary>{{ d.summary }}</summary>
{% if d.rows %}
<div class="wrap"><table>
<tr>{% for h in g.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for r in d.rows %}
<tr><td class="num">{{ r.id }}</td>
{% for text in r.texts %}<td><div class="txt">{{ text }}</div></td>{% endfor %}
<td>{{ r.gold }}</td>
<td>{{ r.ref }} <span class="ci">{{ r.ref_conf }}</span></td>
<td>{{ r.cand }} <span class="ci">{{ r.cand_conf }}</span></td>
{% for value in r.extra %}<td>{{ value }}</td>{% endfor %}</tr>
{% endfor %}
</table></div>
{% endif %}
</details>
{% endfor %}
{% endfor %}
</section>
</body>
</html>
"""


def _summary(results: Mapping[str, Any]) -> list[str]:
    out = []
    if results.get("task"):
        out.append(f"Task {results['task']}, splits {', '.join(results.get('splits') or [])}.")
    if results.get("reference"):
        out.append(f"Reference: {results['reference']}.")
    if results.get("candidates"):
        out.append(f"Candidates: {', '.join(results['candidates'])}.")
    floor = results.get("noise_floor") or {}
    if floor.get("models"):
        out.append(f"Noise floor from the reference's replicas: {', '.join(floor['models'])}.")
    out += [f"Noise floor: {note}" for note in floor.get("notes") or []]
    if results.get("seconds") is not None:
        out.append(f"Wall time {results['seconds']} s.")
    for key, lines in (results.get("notes") or {}).items():
        if key.endswith(("/skipped", "/warnings")):
            out += [f"{key}: {line}" for line in lines]
    return out


def render_html(
    results: Mapping[str, Any],
    figures: Mapping[str, Path],
    flips: Mapping[str, list[dict[str, Any]]],
    title: str,
    *,
    headline: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
    limit: int = 50,
) -> str:
    """The page as a string.

    Args:
        results: the content of results.json (``metrics``, ``splits``, ``reference``, ``candidates``,
            ``models``, ``notes``; optional ``verdict`` as :func:`trustequiv.verdict.verdict.judge` returns
            it, absent
            or empty when the verdict is disabled, and ``noise_floor`` with its replicas' ``models``).
        figures: ``"[<split>/]<characteristic>_<figure>"`` -> PNG path (as :func:`report_run` saves them);
            each is embedded as a base64 data URI.
        flips: candidate -> rows of :func:`flipped_examples`.
        headline: characteristic name -> (per-model, pair) headline metric names; a characteristic absent
            here shows every metric it reports.
        limit: the cap the flips were taken with (stated on the page).
    """
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    verdict = results.get("verdict")
    splits = list(results.get("splits") or [])
    return env.from_string(_TEMPLATE).render(
        title=title,
        summary=_summary(results),
        cards=_verdict_cards(verdict or {}),
        none_decision=_decision("no verdict"),
        sections=_sections(results, figures, headline),
        flips=_flip_groups(flips),
        main_split=splits[0] if splits else "the main split",
        limit=limit,
    )


def write_html_report(
    path: Path,
    results: Mapping[str, Any],
    figures: Mapping[str, Path],
    flips: Mapping[str, list[dict[str, Any]]],
    title: str,
    **kwargs: Any,
) -> None:
    """Write :func:`render_html` to ``path`` (UTF-8); ``kwargs`` go to it."""

    atomic_write_text(render_html(results, figures, flips, title, **kwargs), path)
