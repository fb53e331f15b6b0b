"""What an evaluate run leaves in its run dir: results.json, predictions, figures, report.md, report.html,
a table."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from trustequiv.cache import atomic_open, atomic_write_text
from trustequiv.characteristic import headline_columns, pair_name
from trustequiv.outputs import CharacteristicResult, ModelOutputs
from trustequiv.plain import plain
from trustequiv.report.html import flipped_examples, write_html_report
from trustequiv.report.tables import format_cell, headline_rows, markdown_table
from trustequiv.verdict.verdict import verdict_table

if TYPE_CHECKING:  # type names only: report/ sits below run/ (tests/core/test_layout.py)
    from trustequiv.run.comparison import Comparison
    from trustequiv.run.plan import Plan
    from trustequiv.run.runner import ModelRunner


def write_predictions(outputs: ModelOutputs, path: Path, columns: Mapping[str, str] | None = None) -> None:
    """``example_id, gold_label, predicted_label, p_<class>...`` one row per example (labels as names), then
    ``columns`` (CSV header -> key of ``outputs.columns``, e.g. QA's ``predicted_answer``); outputs without
    scores (an error set) get ``correct`` instead of the prediction and probabilities.

    Floats are written exactly (the shortest text that reads back as the same double): the file read back
    (source ``predictions``) gives the run's probabilities, so its statistics and a noise floor built from it
    are the run's (6 decimals moved them by ~1e-7, and equal-mass ECE bins with them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = outputs.label_names
    extra = {h: k for h, k in (columns or {}).items() if k in outputs.columns}
    scored = outputs.has_scores
    probs = outputs.probs.tolist() if scored else None  # float64 softmax of the logits, as metrics see them
    preds = outputs.predictions.tolist() if scored else None
    with atomic_open(path, "w", newline="") as fh:  # a killed run leaves no half file (kill -9 too)
        w = csv.writer(fh)
        head = ["predicted_label", *[f"p_{n}" for n in names]] if scored else ["correct"]
        w.writerow(["example_id", "gold_label", *head, *extra])
        for i, eid in enumerate(outputs.example_ids.tolist()):
            gold = int(outputs.labels[i])
            row = [eid, names[gold] if gold >= 0 else ""]
            if scored:
                row += [names[preds[i]], *[repr(p) for p in probs[i]]]
            else:
                row.append(int(outputs.correct[i]))
            for key in extra.values():
                v = outputs.columns[key][i]
                row.append(repr(float(v)) if isinstance(v, float) else (int(v) if isinstance(v, bool) else v))
            w.writerow(row)


def save_figures(figures: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    """Save matplotlib figures as PNG (150 dpi) and close them; returns name -> path."""

    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures.items():
        p = directory / f"{name}.png"
        with atomic_open(p, "wb") as fh:
            fig.savefig(fh, format="png", dpi=150, bbox_inches="tight")
        plt.close(fig)
        paths[name] = p
    return paths


def write_per_example(per_example: Mapping[str, Mapping[str, Sequence]], directory: Path) -> None:
    """Each per-example export as ``<name>.csv``."""
    for name, cols in per_example.items():
        directory.mkdir(parents=True, exist_ok=True)
        keys = list(cols)
        n = len(cols[keys[0]]) if keys else 0
        with atomic_open(directory / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(keys)
            for i in range(n):
                w.writerow([plain(cols[k][i]) for k in keys])


def pair_findings(metrics: Mapping[str, float], pair: str, min_effect: float = 0.005) -> list[str]:
    """Plain-language findings for one reference-vs-candidate pair, generic over characteristics.

    Every ``<char>/<pair>/<metric>_diff`` whose ``_ci_low``/``_ci_high`` interval excludes 0 and whose size is
    at least ``min_effect`` (absolute units of the metric: a tiny but certain change is not a finding) is
    listed; error overlap and flips are quoted when the ``errors`` characteristic ran.
    """
    out = []
    for key, value in metrics.items():
        char, _, rest = key.partition(f"/{pair}/")
        if not rest.endswith("_diff") or not _:
            continue
        lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        if lo is None or hi is None or any(math.isnan(x) for x in (lo, hi, value)):
            continue
        if (lo > 0 or hi < 0) and abs(value) >= min_effect:
            out.append(f"{rest[:-5]} ({char}) differs: {value:+.4f} (95% CI {lo:+.4f} to {hi:+.4f})")
    jac = next((v for k, v in metrics.items() if k.endswith(f"/{pair}/error_jaccard")), None)
    flip = next((v for k, v in metrics.items() if k.endswith(f"/{pair}/flip_rate")), None)
    if jac is not None and flip is not None:
        out.append(
            f"error-set Jaccard {jac:.3f}, flip rate {flip:.3f}: the models err on different examples"
            if jac < 0.5
            else f"error-set Jaccard {jac:.3f}, flip rate {flip:.3f}"
        )
    return out


def write_results(path: Path, metrics: Mapping[str, float], **context: Any) -> None:
    """results.json: flat ``metrics`` plus context (resolved config, model identities, timings)."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    atomic_write_text(json.dumps({"metrics": clean, **context}, indent=2, default=str), path)


def write_report(
    path: Path,
    *,
    title: str,
    summary: Sequence[str],
    headline: Mapping[str, list[dict[str, Any]]],
    results: Mapping[str, CharacteristicResult],
    figure_paths: Mapping[str, Path],
    findings: Mapping[str, list[str]] | None = None,
) -> None:
    """A Markdown report: headline tables, then each characteristic's notes, figures and tables."""
    out = [f"# {title}", "", *summary, ""]
    if findings:
        out += ["## Findings", ""]
        for pair, lines in findings.items():
            out.append(
                f"- **{pair}**: "
                + (
                    "; ".join(lines)
                    if lines
                    else "no difference both >= min_effect and with a 95% CI excluding 0"
                )
            )
        out.append("")
    for name, rows in headline.items():
        out += [f"## {name}", "", markdown_table(rows), ""]
    for char_name, res in results.items():
        out += [f"## {char_name}", ""]
        out += [f"- {n}" for n in res.notes]
        out.append("")
        for fig_name in res.figures:
            key = f"{char_name}_{fig_name}"
            if key in figure_paths:
                out += [f"![{fig_name}]({figure_paths[key].relative_to(path.parent)})", ""]
        for table_name, rows in res.tables.items():
            if len(rows) <= 40:
                out += [f"### {table_name}", "", markdown_table(rows), ""]
    atomic_write_text("\n".join(out), path)


def print_headline(headline: Mapping[str, list[dict[str, Any]]]) -> None:
    """Rich tables of the headline numbers on the terminal."""

    # Off a terminal rich assumes 80 columns and would cut metric names.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    for title, rows in headline.items():
        if not rows:
            continue
        cols = list(dict.fromkeys(k for r in rows for k in r))
        table = Table(title=title)
        for c in cols:
            table.add_column(c or "model", justify="left" if not c else "right")
        for r in rows:
            table.add_row(*[format_cell(r.get(c, ""), c) for c in cols])
        console.print(table)


def _floor_origin(plan: Plan, name: str) -> str:
    """Where a noise-floor model came from, in words (results.json ``noise_floor.sources``)."""
    source = (getattr(plan.floor, "sources", None) or {}).get(name) or {}
    origin = source.get("from", "seed")
    if origin == "seed":
        return "the reference fine-tuned here with another training seed"
    return f"a replica's {'predictions' if origin == 'predictions' else 'checkpoint'} made elsewhere"


def _write_split_files(
    out_dir: Path, plan: Plan, runners: Sequence[ModelRunner], comparison: Comparison
) -> dict[str, Path]:
    """Each result's figures (``figures/<split>/``) and per-example exports (``per_example/<split>/``), then
    every model's predictions (``predictions/`` for the main split, ``predictions/<split>/`` for the others);
    returns ``"<label>_<figure>"`` -> PNG path."""
    figure_paths: dict[str, Path] = {}
    for label, res in comparison.results.items():
        split = comparison.result_split[label]
        name = label.rpartition("/")[2]
        figs = save_figures({f"{name}_{k}": f for k, f in res.figures.items()}, out_dir / "figures" / split)
        figure_paths.update({f"{label}_{k}": p for k, p in zip(res.figures, figs.values(), strict=True)})
        write_per_example(res.per_example, out_dir / "per_example" / split)
    for split in comparison.splits:
        pred_dir = (
            out_dir / "predictions" if split == comparison.splits[0] else out_dir / "predictions" / split
        )
        for runner in runners:
            write_predictions(runner.outputs[split], pred_dir / f"{runner.name}.csv", plan.kind.csv_columns)
    return figure_paths


def _roles(
    plan: Plan, runners: Sequence[ModelRunner]
) -> tuple[ModelRunner, list[ModelRunner], list[ModelRunner]]:
    """``(reference, candidates, replicas)``: the first runner, the others that are not the noise floor's
    replicas, and those replicas."""
    reference = runners[0]
    replicas = [r for r in runners if r.name in {m.name for m in plan.floor.models}]
    candidates = [r for r in runners[1:] if r not in replicas]
    return reference, candidates, replicas


def _headline(
    plan: Plan,
    runners: Sequence[ModelRunner],
    comparison: Comparison,
    verdict: Mapping[str, Any] | None,
) -> dict[str, list[dict[str, Any]]]:
    """The headline tables: the verdict (when given), the models on the main split, the reference vs the
    candidates, and the noise floor's pairs (when there are replicas)."""
    reference, candidates, replicas = _roles(plan, runners)
    model_names = [r.name for r in runners]
    pair_names = [pair_name(reference.name, c.name) for c in candidates]
    floor_pairs = [pair_name(reference.name, r.name) for r in replicas]
    model_cols, pair_cols = headline_columns(plan.characteristics)
    main = comparison.splits[0]
    headline = {
        f"models on {plan.task_cfg['name']}/{main}": headline_rows(
            comparison.metrics, model_names, model_cols
        ),
        f"{reference.name} vs candidates": headline_rows(comparison.metrics, pair_names, pair_cols),
    }
    if floor_pairs:
        headline[f"noise floor: {reference.name} vs itself, other seeds"] = headline_rows(
            comparison.metrics, floor_pairs, pair_cols
        )
    if verdict:
        headline = {"verdict": verdict_table(verdict), **headline}
    return headline


def _notes(comparison: Comparison, runners: Sequence[ModelRunner]) -> dict[str, list[str]]:
    """results.json ``notes``: each result's notes, the skipped characteristics and each model's warnings."""
    notes = {label: res.notes for label, res in comparison.results.items() if res.notes}
    notes.update({f"{name}/skipped": [reason] for name, reason in comparison.skipped.items()})
    notes.update({f"{r.name}/warnings": r.warnings for r in runners if r.warnings})
    return notes


def _summary(plan: Plan, runners: Sequence[ModelRunner], comparison: Comparison, seconds: float) -> list[str]:
    """report.md's opening lines: splits and sizes, wall time, where each model came from, the noise
    floor's notes, the skipped characteristics and the models' warnings."""
    reference, candidates, replicas = _roles(plan, runners)
    n = {s: len(runners[0].outputs[s]) for s in comparison.splits}
    where = {r.name: r.identity.get("checkpoint") or r.identity.get("path") for r in runners}
    return [
        f"Splits: {', '.join(f'{s} ({n[s]} examples)' for s in comparison.splits)}. Wall time {seconds} s.",
        f"Reference: `{where[reference.name]}`.",
        *[f"Candidate {c.name}: `{where[c.name]}`." for c in candidates],
        *[f"Noise floor {r.name} ({_floor_origin(plan, r.name)}): `{where[r.name]}`." for r in replicas],
        *[f"Note: {note}." for note in plan.floor.notes],
        *[f"Skipped {name}: {reason}." for name, reason in comparison.skipped.items()],
        *[f"**Warning**: {w}" for r in runners for w in r.warnings],
    ]


def report_run(
    out_dir: Path,
    *,
    plan: Plan,
    runners: Sequence[ModelRunner],
    comparison: Comparison,
    config: Mapping[str, Any],
    seconds: float,
    min_effect: float,
    verdict: Mapping[str, Any] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Path]]:
    """The report step: figures, per-example exports, predictions, results.json, report.md and report.html
    in ``out_dir``; returns the headline tables (printed on the terminal by the caller) and the figure paths.

    Args:
        plan: the run's :class:`trustequiv.run.plan.Plan`; runners: its model runners (reference first);
        comparison: the :class:`trustequiv.run.comparison.Comparison`; config: the resolved config (secrets
        removed); seconds: wall time; min_effect: the findings' smallest reported difference; verdict:
        :func:`trustequiv.verdict.verdict.judge`'s result (results.json ``"verdict"``, the report's first
        table).
    """

    figure_paths = _write_split_files(out_dir, plan, runners, comparison)
    reference, candidates, _ = _roles(plan, runners)
    headline = _headline(plan, runners, comparison, verdict)
    cached = {k: v for r in runners for k, v in r.cached.items()}
    write_results(
        out_dir / "results.json",
        comparison.metrics,
        task=plan.task_cfg["name"],
        splits=comparison.splits,
        reference=reference.name,
        candidates=[c.name for c in candidates],
        models={r.name: r.identity for r in runners},
        noise_floor=plan.floor.as_dict(),
        verdict=dict(verdict or {}),
        cached=cached,
        seconds=seconds,
        notes=_notes(comparison, runners),
        config=config,
    )
    title = (
        f"trustequiv: {reference.name} vs {', '.join(c.name for c in candidates)} on {plan.task_cfg['name']}"
    )
    pair_names = [pair_name(reference.name, c.name) for c in candidates]
    write_report(
        out_dir / "report.md",
        title=title,
        summary=_summary(plan, runners, comparison, seconds),
        headline=headline,
        results=comparison.results,
        figure_paths=figure_paths,
        findings={p: pair_findings(comparison.metrics, p, min_effect) for p in pair_names},
    )
    _write_html(out_dir, plan, runners, figure_paths, title)
    return headline, figure_paths


def _write_html(
    out_dir: Path, plan: Plan, runners: Sequence[ModelRunner], figure_paths: Mapping[str, Path], title: str
) -> None:
    """report.html from results.json as written (verdict and noise floor included when present), with the
    flipped examples of each candidate on the main split (noise-floor replicas left out)."""

    results = json.loads((out_dir / "results.json").read_text())
    replicas = set((results.get("noise_floor") or {}).get("models") or [])
    main, reference = plan.main_split, runners[0].outputs[plan.main_split]
    flips = {
        r.name: flipped_examples(
            reference,
            r.outputs[main],
            plan.splits[main],
            reference.label_names,
            columns=plan.kind.csv_columns,
        )
        for r in runners[1:]
        if r.name not in replicas
    }
    headline = {c.name: (c.headline_model, c.headline_pair) for c in plan.characteristics}
    write_html_report(out_dir / "report.html", results, figure_paths, flips, title, headline=headline)
