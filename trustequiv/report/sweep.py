"""What a ``-m`` sweep found, over all its jobs: all-pairs matrices, the candidates' verdicts, the jobs.

``python evaluate.py -m model=a,b,c task=x,y`` runs one job per (task, model) under the sweep dir
(``conf/hydra/default.yaml``). At the end of the sweep :class:`SweepCallback` writes into the sweep dir:

- ``sweep_results.json``: ``matrices`` (``"<task>/<characteristic>/<statistic>"`` -> every model of that task,
  from every job, against every other: references, candidates and noise-floor replicas alike, as paper B
  compares compressed models with each other), ``verdict`` (``"<task>/<candidate>"`` -> the verdict object of
  its job's results.json), ``jobs`` and ``failed`` (jobs without results.json: listed, never fatal);
- ``sweep_verdict.csv``: one row per candidate (task, candidate, overall, one column per characteristic);
- ``sweep_report.html``: one self-contained page (:mod:`trustequiv.report.sweep_html`).

``python -m trustequiv.report.sweep <sweep dir>`` builds them again (e.g. after a job failed, which stops
Hydra's sweep before its end). The models' outputs come from each job's run dir
(:mod:`trustequiv.report.saved_outputs`); characteristics are rebuilt by name from the shipped
``conf/characteristic/<name>.yaml`` with the job's settings: a ``_target_`` written in a run dir is never
imported.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import io
import json
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from trustequiv.cache import atomic_write_text
from trustequiv.characteristic import Characteristic
from trustequiv.conf_tree import CONF_DIR
from trustequiv.report.saved_outputs import load_run_outputs
from trustequiv.report.sweep_html import sweep_report_html
from trustequiv.report.tables import verdict_rows
from trustequiv.user_errors import EXIT_STATUS, MissingFileError, one_line

log = logging.getLogger(__name__)

RESULTS = "sweep_results.json"
VERDICT_CSV = "sweep_verdict.csv"
REPORT = "sweep_report.html"
#: keys of a candidate's verdict object that are not a characteristic's verdict
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# ------------------------------------------------------------------------------------------- matrices
def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def pair_matrices(
    outputs: Mapping[str, Any], characteristics: Sequence[Any], notes: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every model against every other on each characteristic's pair statistics.

    Args:
        outputs: model name -> its :class:`~trustequiv.outputs.ModelOutputs` on one task split, in the order
            the matrices list them.
        characteristics: :class:`~trustequiv.characteristic.Characteristic` objects; those whose
            ``pair_statistics`` returns nothing give no matrix.
        notes: if given, why a characteristic or a pair gave no value is appended (one sentence each).

    Returns:
        ``"<characteristic>/<statistic>" -> {"models": [...], "values": [[...]], "alike": "higher"|"lower"}``
        where ``values[i][j]`` is the statistic with ``models[i]`` in the reference's place and ``models[j]``
        in the candidate's (:meth:`~trustequiv.characteristic.PairStatistic.estimate`), so symmetric
        statistics give a symmetric matrix; the diagonal is a model against itself. ``None`` where the
        statistic is not finite or cannot be computed for that pair.
    """
    names = list(outputs)
    k = len(names)
    matrices: dict[str, dict[str, Any]] = {}
    said: set[str] = set()

    def note(text: str) -> None:
        if notes is not None and text not in said:
            said.add(text)
            notes.append(text)

    for char in characteristics:
        if getattr(char, "needs_ood", False):
            note(f"{char.name}: needs out-of-distribution outputs, which run dirs do not keep; no matrix")
            continue
        usable = [not (char.needs_scores and not outputs[n].has_scores) for n in names]
        for n, ok in zip(names, usable, strict=True):
            if not ok:
                note(f"{char.name}: {n} carries no per-example scores; left out")
        for i in range(k):
            for j in range(k):
                if not (usable[i] and usable[j]):
                    continue
                try:
                    stats = char.pair_statistics(outputs[names[i]], outputs[names[j]])
                except Exception as err:  # one pair that cannot be compared must not cost the others
                    log.debug("pair statistics of %s failed", char.name, exc_info=True)
                    note(f"{char.name}: {names[i]} vs {names[j]}: {type(err).__name__}: {err}")
                    continue
                for stat in stats:
                    entry = matrices.setdefault(
                        f"{char.name}/{stat.name}",
                        {
                            "models": list(names),
                            "values": [[None] * k for _ in range(k)],
                            "alike": stat.alike,
                        },
                    )
                    entry["values"][i][j] = _finite(stat.estimate())
    return matrices


# ------------------------------------------------------------------------------------------- characteristics
def rebuild_characteristics(
    settings: Mapping[str, Any], conf_dir: Path | None = None, notes: list[str] | None = None
) -> list[Any]:
    """The characteristics a job ran, rebuilt from its config's ``characteristic`` node by name only.

    Each name is looked up in ``<conf_dir>/characteristic/<name>.yaml`` (default: the shipped config tree),
    whose ``_target_`` class is built with the job's settings (keys starting with ``_`` and ``splits`` left
    out, nested values passed as plain data). A name not shipped, or a job whose ``_target_`` differs from the
    shipped one, is skipped with a note: the class is never taken from the run dir.
    """

    conf_dir = Path(conf_dir) if conf_dir is not None else CONF_DIR
    built = []
    for name, node in settings.items():
        path = conf_dir / "characteristic" / f"{name}.yaml"
        if not _NAME.fullmatch(str(name)) or not path.is_file():
            _append(notes, f"characteristic {name!r}: not a shipped config (conf/characteristic); no matrix")
            continue
        target = OmegaConf.load(path).get("_target_")
        node = dict(node) if isinstance(node, Mapping) else {}
        if node.get("_target_", target) != target:
            _append(
                notes,
                f"characteristic {name}: the job used {node['_target_']}, not the shipped {target}; "
                "no matrix (classes named in run dirs are never imported)",
            )
            continue
        kwargs = {k: v for k, v in node.items() if not str(k).startswith("_") and k != "splits"}
        try:
            obj = hydra.utils.get_class(str(target))(**kwargs)
        except Exception as err:  # settings this version no longer takes: the other characteristics go on
            _append(
                notes, f"characteristic {name}: cannot be rebuilt ({type(err).__name__}: {err}); no matrix"
            )
            continue
        if isinstance(obj, Characteristic):
            built.append(obj)
    return built


def _append(notes: list[str] | None, text: str) -> None:
    if notes is not None and text not in notes:
        notes.append(text)


# ------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One job dir of a sweep.

    Attributes:
        dir: its path; num: Hydra's job number (None if unknown); results: its results.json (None: absent or
        unreadable); config: its resolved config (results.json's, else ``.hydra/config.yaml``'s);
        error: why it has no results (its log's ``error:`` line when there is one).
    """

    dir: Path
    num: int | None
    results: dict[str, Any] | None
    config: dict[str, Any]
    error: str | None = None
    models: list[str] = field(default_factory=list)

    @property
    def task(self) -> str | None:
        if self.results and self.results.get("task"):
            return str(self.results["task"])
        name = (self.config.get("task") or {}).get("name")
        return None if name is None else str(name)


def _load_yaml(path: Path) -> DictConfig | None:
    try:
        cfg = OmegaConf.load(path)  # yaml.SafeLoader underneath: no object is built
    except Exception:
        return None
    return cfg if isinstance(cfg, DictConfig) else None


def _plain_config(cfg: DictConfig) -> dict[str, Any]:
    """``.hydra/config.yaml`` as plain data, each top-level node resolved where it can be (``${hydra:...}``
    cannot be outside the job); a node that does not resolve keeps its literal values only."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}
    for key in raw:
        try:
            value = cfg[key]
            out[str(key)] = (
                OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
            )
        except Exception:  # an interpolation only the job could resolve
            out[str(key)] = _drop_interpolations(raw[key])
    return out


def _drop_interpolations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_interpolations(v) for k, v in value.items() if not _is_interpolation(v)}
    if isinstance(value, list):
        return [_drop_interpolations(v) for v in value]
    return value


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _job_num(job_dir: Path) -> int | None:
    hydra_cfg = _load_yaml(job_dir / ".hydra" / "hydra.yaml")
    num = OmegaConf.select(hydra_cfg, "hydra.job.num", default=None) if hydra_cfg is not None else None
    if isinstance(num, int):
        return num
    digits = re.match(r"\d+", job_dir.name)
    return int(digits.group()) if digits else None


def _error_line(job_dir: Path) -> str | None:
    """The last ``error: ...`` line a job logged (trustequiv.user_errors writes it to the run's log file)."""
    found = None
    for path in sorted(job_dir.glob("*.log")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            at = line.find("error: ")
            if at >= 0:
                found = line[at:].strip()
    return found


def find_jobs(sweep_dir: Path) -> list[Job]:
    """The job dirs under ``sweep_dir`` (those holding ``.hydra/config.yaml`` or ``results.json``), by job
    number."""
    sweep_dir = Path(sweep_dir)
    dirs = {p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml")}
    dirs |= {p.parent for p in sweep_dir.glob("**/results.json")}
    jobs = []
    for job_dir in dirs:
        results, error = None, None
        path = job_dir / "results.json"
        if path.is_file():
            try:
                results = json.loads(path.read_text())
                if not isinstance(results, dict):
                    raise ValueError(f"expected a JSON object, found {type(results).__name__}")
            except (OSError, ValueError) as err:
                results, error = None, f"results.json unreadable ({type(err).__name__}: {err})"
        else:
            error = _error_line(job_dir) or "no results.json: the job failed or has not finished"
        config = (results or {}).get("config")
        if not isinstance(config, dict):
            raw = _load_yaml(job_dir / ".hydra" / "config.yaml")
            config = _plain_config(raw) if raw is not None else {}
        jobs.append(Job(job_dir, _job_num(job_dir), results, config, error))
    jobs.sort(key=lambda j: (j.num is None, j.num if j.num is not None else 0, str(j.dir)))
    return jobs


# ------------------------------------------------------------------------------------------- the sweep
def _sanitize(value: Any) -> Any:
    """JSON-safe: non-finite floats as None."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Mapping):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    return value


def _task_outputs(jobs: Sequence[Job], notes: list[str]) -> dict[str, Any]:
    """Every model's outputs over the jobs of one task: references first, then in order of appearance; a model
    two jobs saved differently (e.g. another limit_examples) is taken from the first, with a note."""

    refs, others = {}, {}
    for job in jobs:
        try:
            loaded = load_run_outputs(job.dir)
        except Exception as err:
            notes.append(
                f"{job.dir.name}: outputs unreadable ({one_line(err) or f'{type(err).__name__}: {err}'})"
            )
            continue
        job.models = list(loaded)
        if job.results is not None and not loaded:
            notes.append(
                f"{job.dir.name}: no model outputs saved in its run dir; its models are not in the matrices"
            )
        reference = (job.results or {}).get("reference")
        for name, out in loaded.items():
            seen = refs.get(name, others.get(name))
            if seen is None:
                (refs if name == reference else others)[name] = out
            elif not (torch.equal(seen.example_ids, out.example_ids) and _same_scores(seen, out)):
                notes.append(
                    f"{name}: {job.dir.name} holds other outputs than an earlier job; the earlier kept"
                )
    return {**refs, **{n: o for n, o in others.items() if n not in refs}}


def _same_scores(a: Any, b: Any) -> bool:

    if a.logits is None or b.logits is None:
        return a.logits is None and b.logits is None
    return a.logits.shape == b.logits.shape and bool(torch.allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5))


def _task_characteristics(jobs: Sequence[Job], conf_dir: Path | None, notes: list[str]) -> list[Any]:
    """The characteristics of one task's jobs, each with the settings of the first job that ran it."""
    settings: dict[str, Any] = {}
    for job in jobs:
        for name, node in (job.config.get("characteristic") or {}).items():
            if name not in settings:
                settings[name] = node
            elif node != settings[name]:
                _append(
                    notes, f"characteristic {name}: jobs ran it with other settings; the first job's are used"
                )
    return rebuild_characteristics(settings, conf_dir, notes)


def collect(sweep_dir: Path, conf_dir: Path | None = None) -> dict[str, Any]:
    """The sweep's results (what ``sweep_results.json`` holds); writes nothing.

    Raises:
        trustequiv.user_errors.MissingFileError: ``sweep_dir`` does not exist or holds no job.
    """

    sweep_dir = Path(sweep_dir)
    fix = "pass the dir of a `python evaluate.py -m ...` sweep (<paths.log_dir>/evaluate/multiruns/<run id>)"
    if not sweep_dir.is_dir():
        raise MissingFileError(f"sweep dir {sweep_dir} does not exist", fix)
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise MissingFileError(
            f"{sweep_dir} holds no sweep job (no <job>/.hydra/config.yaml or results.json)", fix
        )
    notes: list[str] = []
    tasks = list(dict.fromkeys(j.task for j in jobs if j.task is not None and j.results is not None))
    matrices: dict[str, Any] = {}
    for task in tasks:
        task_jobs = [j for j in jobs if j.task == task and j.results is not None]
        outputs = _task_outputs(task_jobs, notes)
        if len(outputs) < 2:
            continue
        chars = _task_characteristics(task_jobs, conf_dir, notes)
        task_notes: list[str] = []
        found = pair_matrices(outputs, chars, task_notes)
        matrices.update({f"{task}/{key}": m for key, m in found.items()})
        notes.extend(f"{task}: {n}" for n in task_notes)
    verdict: dict[str, Any] = {}
    for job in jobs:
        judged_here = (job.results or {}).get("verdict")
        for candidate, judged in (judged_here if isinstance(judged_here, Mapping) else {}).items():
            key = f"{job.task}/{candidate}"
            if key in verdict:
                notes.append(f"{key}: judged in more than one job; {job.dir.name}'s verdict kept")
            verdict[key] = judged
    listed = [
        {
            "dir": str(j.dir.relative_to(sweep_dir)),
            "num": j.num,
            "task": j.task,
            "reference": (j.results or {}).get("reference") or (j.config.get("reference") or {}).get("name"),
            "candidates": (j.results or {}).get("candidates") or [],
            "status": "ok" if j.results is not None else "failed",
            "models": j.models,
            "error": j.error,
        }
        for j in jobs
    ]
    return _sanitize(
        {
            "sweep_dir": str(sweep_dir),
            "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "tasks": tasks,
            "jobs": listed,
            "failed": [j["dir"] for j in listed if j["status"] != "ok"],
            "matrices": matrices,
            "verdict": verdict,
            "notes": notes,
        }
    )


def verdict_csv(verdict: Mapping[str, Mapping[str, Any]]) -> str:
    """:func:`verdict_rows` as CSV (a nested value as JSON)."""
    rows = verdict_rows(verdict)
    cols = list(rows[0]) if rows else ["task", "candidate", "overall"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow(
            [
                "" if row[c] is None else json.dumps(row[c]) if isinstance(row[c], dict | list) else row[c]
                for c in cols
            ]
        )
    return buf.getvalue()


def build_sweep(sweep_dir: Path, conf_dir: Path | None = None) -> dict[str, Any]:
    """Write ``sweep_results.json``, ``sweep_verdict.csv`` and ``sweep_report.html`` into ``sweep_dir`` and
    return the results (see :func:`collect`).

    Raises:
        trustequiv.user_errors.MissingFileError: ``sweep_dir`` does not exist or holds no job.
    """
    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir, conf_dir)  # first: a wrong dir is told before torch is imported

    atomic_write_text(json.dumps(results, indent=2, allow_nan=False), sweep_dir / RESULTS)
    atomic_write_text(verdict_csv(results["verdict"]), sweep_dir / VERDICT_CSV)
    atomic_write_text(sweep_report_html(results), sweep_dir / REPORT)
    log.info(
        "sweep: %d jobs (%d failed), %d matrices, %d verdicts -> %s",
        len(results["jobs"]),
        len(results["failed"]),
        len(results["matrices"]),
        len(results["verdict"]),
        sweep_dir / REPORT,
    )
    return results


# ------------------------------------------------------------------------------------------- Hydra
class SweepCallback(Callback):
    """Builds the sweep's results into ``hydra.sweep.dir`` when an evaluate sweep ends
    (``conf/hydra/default.yaml``: ``callbacks.sweep``).

    Hydra skips ``on_multirun_end`` when a job failed (its sweeper raises first; a job's one-line error exits
    at once), so the results are then built when the process exits, over the jobs that got that far.
    """

    def __init__(self) -> None:
        self._pending: Path | None = None

    @staticmethod
    def _evaluate_sweep(config: DictConfig) -> Path | None:
        # train.py sweeps share the hydra config but have no characteristics to aggregate
        if "characteristic" not in config:
            return None
        return Path(str(config.hydra.sweep.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = self._evaluate_sweep(config)
        if self._pending is not None:
            atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self._evaluate_sweep(config)
        self._pending = None
        if sweep_dir is not None:
            self._build(sweep_dir)
            print(sweep_dir)  # the last line, as a single run prints its run dir: for scripts

    def _at_exit(self) -> None:
        sweep_dir, self._pending = self._pending, None
        if sweep_dir is not None and sweep_dir.is_dir():
            log.warning("the sweep stopped before its end; aggregating the jobs it ran into %s", sweep_dir)
            self._build(sweep_dir)

    @staticmethod
    def _build(sweep_dir: Path) -> None:

        try:
            build_sweep(sweep_dir)
        except Exception as err:  # the jobs are done: a failed summary must not turn the sweep into a failure
            line = one_line(err)
            if line is None:
                log.exception("building the sweep results in %s failed", sweep_dir)
            else:
                log.error("sweep results not built: %s", line)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trustequiv.report.sweep <sweep dir>``: build the sweep's results again; prints the report
    path."""

    parser = argparse.ArgumentParser(
        prog="python -m trustequiv.report.sweep",
        description="Build sweep_results.json, sweep_verdict.csv and sweep_report.html of a -m sweep.",
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="the sweep dir (<paths.log_dir>/evaluate/multiruns/<id>)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = build_sweep(args.sweep_dir)
    except Exception as err:
        line = one_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_STATUS
    print(
        f"{len(results['jobs'])} jobs ({len(results['failed'])} without results), "
        f"{len(results['matrices'])} matrices, {len(results['verdict'])} verdicts"
    )
    print(args.sweep_dir / REPORT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
