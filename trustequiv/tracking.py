"""Weights & Biases: one run per evaluate (or train) job, its summary keyed by role so the runs of a sweep
share their keys; never a prompt, and a W&B failure never loses a run's results.

Summary keys (:func:`role_metrics`, :func:`verdict_metrics`); ``[<split>/]`` prefixes non-main splits:

- ``reference/[<split>/]<characteristic>/<metric>``: the reference's own metrics;
- ``candidate/...``: the (first) candidate's own; ``pair/...``: reference vs that candidate;
- ``replica/...``: the noise-floor replicas' own (``<reference>+seed<k>``), ``floor/...``: reference vs
  replica (the noise floor itself), each the mean over the replicas (NaN-aware), so a run's keys do not
  depend on its seeds;
- ``verdict/overall``, ``verdict/<characteristic>``: the verdict's decisions as strings, and
  ``verdict_code/...`` as numbers for parallel-coordinates plots (equivalent 1, inconclusive 0,
  not_equivalent -1);
- with several candidates, each candidate's keys again under ``candidates/<name>/`` (``candidate/``,
  ``pair/``, ``verdict/``, ``verdict_code/`` inside); the plain role keys are the first candidate's.

Figures and tables go to the run's history with the model names in their keys replaced by role words
(``figures/distribution_scatter_pair_<set>``; a replica's ``replica_seed<k>``/``floor_seed<k>``; candidates
after the first keep their names);
fine-tunings done for the run log as ``train/<model>/<metric>`` (:func:`model_logger`), charts only (no
summary entry, which would carry a model name). The run config holds ``candidate``, ``compressor``,
``reference``, ``task`` and ``characteristics`` as top-level keys, the full resolved config under
``config``.

Mode (:func:`wandb_mode`): ``logger.wandb.mode`` other than ``auto`` > ``WANDB_MODE`` > online when
``WANDB_API_KEY`` is set (or ``~/.netrc`` has a key) > offline.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from trustequiv.cache import distributed_rank
from trustequiv.characteristic import pair_name
from trustequiv.user_errors import ConfigError

__all__ = [
    "DECISION_CODES",
    "finish_run",
    "log_evaluation",
    "model_logger",
    "role_metrics",
    "run_config",
    "start_run",
    "verdict_metrics",
    "wandb_mode",
]

#: numeric codes of the verdict's decisions (``verdict_code/...``)
DECISION_CODES = {"equivalent": 1, "inconclusive": 0, "not_equivalent": -1}
#: WANDB_MODE values wandb accepts, as the mode they mean
_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
_MODES = ("auto", "online", "offline", "disabled")
#: verdict entries that are not decisions
_VERDICT_DETAILS = ("statistics", "notes")


def wandb_mode(requested: str | None) -> str:
    """The mode a run logs in: ``requested`` (``logger.wandb.mode``) unless ``auto``; then ``WANDB_MODE``
    when set; then ``online`` when an API key is present (``WANDB_API_KEY`` or ``~/.netrc``), else
    ``offline``.
    ``online`` without any key falls back to ``offline`` with a warning (``wandb sync`` uploads it later).

    Raises:
        ConfigError: ``requested`` or ``WANDB_MODE`` is not a mode.
    """
    mode = (requested or "auto").lower()
    if mode not in _MODES:
        raise ConfigError(
            f"logger.wandb.mode={requested!r} is not a W&B mode", f"use one of {', '.join(_MODES)}"
        )
    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if env and env not in _ENV_MODES:
            raise ConfigError(
                f"WANDB_MODE={env!r} is not a W&B mode",
                f"set it to one of {', '.join(_ENV_MODES)} or unset it",
            )
        mode = _ENV_MODES.get(env) or ("online" if _has_key() else "offline")
    if mode == "online" and not _has_key():
        _say(
            "online was asked for but no API key is set; logging offline", "`wandb login`, then `wandb sync`"
        )
        mode = "offline"
    return mode


def _has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _say(what: str, fix: str) -> None:
    """One line ``W&B: <what> - fix: <fix>`` on stderr, the API key never in it."""
    line = " ".join(f"W&B: {what} - fix: {fix}".split())
    key = os.environ.get("WANDB_API_KEY")
    if key:
        line = line.replace(key, "<redacted>")
    print(line, file=sys.stderr, flush=True)


def _labels(
    reference: str, candidates: Sequence[str], floor: Sequence[str], *, per_replica: bool
) -> dict[str, str]:
    """Model and pair names -> their role words: ``reference``, ``candidate`` (the first candidate),
    ``pair`` (reference vs it), ``replica`` and ``floor`` (a noise-floor replica, and reference vs it); with
    ``per_replica``, ``replica_seed<k>`` and ``floor_seed<k>`` (from the replica's name
    ``<reference>+seed<k>``)."""
    labels = {reference: "reference"}
    if candidates:
        labels.update({candidates[0]: "candidate", pair_name(reference, candidates[0]): "pair"})
    for name in floor:
        tag = f"_{name.removeprefix(reference + '+')}" if per_replica else ""
        labels.update({name: f"replica{tag}", pair_name(reference, name): f"floor{tag}"})
    return labels


def _scopes(reference: str, candidates: Sequence[str], floor: Sequence[str]) -> dict[str, list[str]]:
    """Scope (model or pair name) -> the key prefixes its metrics go to; ``[]`` for a pair of two models
    other than the reference (no role: left to results.json)."""
    scopes: dict[str, list[str]] = {}
    models = [reference, *candidates, *floor]
    for a in models:
        for b in models:
            if a != b:
                scopes[pair_name(a, b)] = []
    for name, label in _labels(reference, candidates, floor, per_replica=False).items():
        scopes[name] = [label]
    if len(candidates) > 1:
        for name in candidates:
            scopes[name] = [*scopes.get(name, []), f"candidates/{name}/candidate"]
            pair = pair_name(reference, name)
            scopes[pair] = [*scopes.get(pair, []), f"candidates/{name}/pair"]
    return scopes


def _find_scope(parts: list[str], scopes: Mapping[str, list[str]]) -> tuple[int, int] | None:
    """``(i, j)``: ``parts[i:j]`` joined is the first scope in the key (model names may hold a ``/``)."""
    for i in range(len(parts)):
        for j in range(len(parts), i, -1):
            if "/".join(parts[i:j]) in scopes:
                return i, j
    return None


def role_metrics(
    metrics: Mapping[str, float | None],
    reference: str,
    candidates: Sequence[str],
    floor: Sequence[str] = (),
) -> dict[str, float]:
    """The run's metrics keyed by role instead of model name (the scheme in the module docstring).

    Args:
        metrics: flat ``"[<split>/]<characteristic>/<scope>/<metric>"`` (``<scope>`` a model name, a pair
            name ``<a>_vs_<b>``, or inside the metric path, e.g. ``errors/matrix/<pair>/error_jaccard``);
            None is read as NaN.
        reference, candidates, floor: the model names (floor: the noise-floor replicas).

    Returns:
        ``"<role>/[<split>/]<characteristic>/<metric>": float``; keys of the replicas are the NaN-aware mean
        over the replicas (NaN when all are NaN). Metrics of a pair of two non-reference models (the errors
        matrix's candidate-vs-replica cells) have no role and are left out; metrics that name no model keep
        their key under ``run/``.
    """
    scopes = _scopes(reference, candidates, floor)
    floor_roles = {"replica", "floor"}
    out: dict[str, float] = {}
    pooled: dict[str, list[float]] = {}
    for key, value in metrics.items():
        number = math.nan if value is None else float(value)
        parts = key.split("/")
        found = _find_scope(parts, scopes)
        if found is None:
            out[f"run/{key}"] = number
            continue
        i, j = found
        rest = "/".join(parts[:i] + parts[j:])
        for role in scopes["/".join(parts[i:j])]:
            if role in floor_roles:
                pooled.setdefault(f"{role}/{rest}", []).append(number)
            else:
                out[f"{role}/{rest}"] = number
    for key, values in pooled.items():
        finite = [v for v in values if not math.isnan(v)]
        out[key] = math.fsum(finite) / len(finite) if finite else math.nan
    return out


def verdict_metrics(verdict: Mapping[str, Any] | None, candidates: Sequence[str]) -> dict[str, str | int]:
    """``verdict/overall``, ``verdict/<characteristic>`` (decision strings) and ``verdict_code/...``
    (:data:`DECISION_CODES`; none for a value that is not a decision) of the first candidate, and of every
    candidate under ``candidates/<name>/`` when there are several.

    Args:
        verdict: results.json's ``verdict``, ``{"<candidate>": {"overall": d, "<characteristic>": d,
            "statistics": ..., "notes": ...}}``; None or missing candidates give no keys.
    """
    out: dict[str, str | int] = {}
    for i, name in enumerate(candidates):
        entry = (verdict or {}).get(name) or {}
        prefixes = ([""] if i == 0 else []) + ([f"candidates/{name}/"] if len(candidates) > 1 else [])
        for key, decision in entry.items():
            if key in _VERDICT_DETAILS or not isinstance(decision, str):
                continue
            for prefix in prefixes:
                out[f"{prefix}verdict/{key}"] = decision
                if decision in DECISION_CODES:
                    out[f"{prefix}verdict_code/{key}"] = DECISION_CODES[decision]
    return out


def _role_name(name: str, labels: Mapping[str, str]) -> str:
    """``name`` (a figure or table key) with the model and pair names in it replaced by role words, longest
    first (a candidate ``<ref>+x`` before the reference ``<ref>``)."""
    for model in sorted(labels, key=len, reverse=True):
        name = name.replace(model, labels[model])
    return name


def _compressor_name(config: Mapping[str, Any]) -> str:
    listed = config.get("candidates")
    node = (listed[0] or {}).get("compressor") if listed else config.get("compressor")
    return str(node.get("name", "unnamed")) if isinstance(node, Mapping) else str(node or "none")


def run_config(
    config: Mapping[str, Any],
    *,
    reference: str,
    candidates: Sequence[str],
    characteristics: Sequence[str],
) -> dict[str, Any]:
    """An evaluate run's W&B config: ``candidate`` (the first), ``compressor`` (its compressor's name or
    ``none``), ``reference``, ``task`` and ``characteristics`` (comma-joined) as top-level keys for the runs
    table and parallel-coordinates plots, ``candidates`` when there are several, and the full resolved
    ``config`` (secrets already removed by :func:`trustequiv.config.to_container`)."""
    out: dict[str, Any] = {
        "candidate": candidates[0] if candidates else None,
        "compressor": _compressor_name(config),
        "reference": reference,
        "task": (config.get("task") or {}).get("name"),
        "characteristics": ",".join(characteristics),
    }
    if len(candidates) > 1:
        out["candidates"] = list(candidates)
    out["config"] = dict(config)
    return out


def start_run(
    logger_cfg: Mapping[str, Any] | None,
    *,
    save_dir: str | Path,
    name: str,
    job_type: str,
    config: Mapping[str, Any],
) -> WandbLogger | None:
    """Start the job's W&B run now and return a Lightning ``WandbLogger`` on it; None for ``logger=none``,
    mode ``disabled``, a DDP rank other than 0, or when the run cannot start (one ``W&B: ... - fix: ...``
    line; the job goes on without W&B). Runs are grouped by ``logger.wandb.group`` (the task).

    Raises:
        ConfigError: a bad mode (:func:`wandb_mode`), before any work is done.
    """
    w = dict((logger_cfg or {}).get("wandb") or {})
    if not w:
        return None
    mode = wandb_mode(w.get("mode"))
    if mode == "disabled" or distributed_rank() > 0:
        return None
    try:  # imported here: W&B failing to import or start must not stop the evaluation
        import wandb

        Path(save_dir).mkdir(parents=True, exist_ok=True)
        # The mode goes to init, not to the environment: the next job of a sweep reads it afresh.
        run = wandb.init(
            project=w.get("project") or "trustequiv",
            entity=w.get("entity"),
            group=w.get("group"),
            tags=list(w.get("tags") or []),
            name=name,
            job_type=job_type,
            dir=str(save_dir),
            mode=mode,
            config=dict(config),
            reinit="create_new",  # never reuse a run left open by a failed job of the same process
        )
        # Fine-tuning curves are charts only: a summary entry would be named after the model (and a run
        # that trained nothing would lack the step's).
        run.define_metric("trainer/global_step", summary="none")
        run.define_metric("train/*", step_metric="trainer/global_step", step_sync=True, summary="none")
    except Exception as err:  # any W&B failure: the job itself goes on
        _say(
            f"could not start the {mode} run ({type(err).__name__}: {err}); going on without W&B",
            "check logger.wandb.project/entity and the API key, or log offline with WANDB_MODE=offline",
        )
        return None
    return WandbLogger(experiment=run, save_dir=str(save_dir), project=run.project)


class _ModelLogger(WandbLogger):
    """The run's logger as one fine-tuning sees it: metrics ``train/<model>/<metric>``, hyperparameters
    under the config key ``train/<model>``, so several fine-tunings in one run do not overwrite each other."""

    LOGGER_JOIN_CHAR = "/"  # Lightning joins prefix and key with "-" by default

    def __init__(self, run_logger: WandbLogger, model: str):
        super().__init__(
            experiment=run_logger.experiment,
            save_dir=run_logger.save_dir,
            project=run_logger.name,
            prefix=f"train/{model}",
        )

    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        super().log_hyperparams({self._prefix: params})


def model_logger(logger: Any, model: str) -> Any:
    """The logger a fine-tuning of ``model`` is given (``fine_tune(logger=...)``): a W&B logger's view that
    prefixes its keys with ``train/<model>/``; another Lightning logger unchanged; ``False`` for None."""
    if logger is None or logger is False:
        return False
    if isinstance(logger, WandbLogger):
        return _ModelLogger(logger, model)
    return logger


def _artifact_name(task: str, candidates: Sequence[str]) -> str:
    # W&B artifact names: letters, digits, '-', '_', '.'
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join([task, *candidates]))[:128]


def log_evaluation(
    logger: WandbLogger | None,
    out_dir: str | Path,
    *,
    reference: str,
    candidates: Sequence[str],
    floor: Sequence[str] = (),
    figures: Mapping[str, Path] | None = None,
    tables: Mapping[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Finish an evaluate run: the role-keyed summary (metrics and verdict read from ``out_dir``'s
    results.json), figures and tables (keys in role words), and an Artifact of type ``evaluation`` named
    ``<task>-<candidates>`` holding results.json, report.html and predictions/. A W&B failure prints one
    ``W&B: ... - fix: ...`` line and returns (the results are already on disk)."""
    if logger is None:
        return
    out_dir = Path(out_dir)
    failed = False
    try:  # imported here: W&B failing to import or start must not stop the evaluation
        import wandb

        run = logger.experiment
        results = json.loads((out_dir / "results.json").read_text())
        summary: dict[str, Any] = role_metrics(results.get("metrics") or {}, reference, candidates, floor)
        summary.update(verdict_metrics(results.get("verdict"), candidates))
        run.summary.update(summary)
        labels = _labels(reference, candidates, floor, per_replica=True)
        payload: dict[str, Any] = {
            f"figures/{_role_name(k, labels)}": wandb.Image(str(p)) for k, p in (figures or {}).items()
        }
        for key, rows in (tables or {}).items():
            if rows:
                cols = list(dict.fromkeys(c for r in rows for c in r))
                payload[f"tables/{_role_name(key, labels)}"] = wandb.Table(
                    columns=cols, data=[[r.get(c) for c in cols] for r in rows]
                )
        if payload:
            run.log(payload)
        art = wandb.Artifact(
            _artifact_name(str(results.get("task", "run")), candidates),
            type="evaluation",
            metadata={"reference": reference, "candidates": list(candidates), "task": results.get("task")},
        )
        art.add_file(str(out_dir / "results.json"))
        if (out_dir / "report.html").exists():
            art.add_file(str(out_dir / "report.html"))
        if (out_dir / "predictions").is_dir():
            art.add_dir(str(out_dir / "predictions"), name="predictions")
        run.log_artifact(art)
    except Exception as err:  # the results are on disk whatever W&B does
        _say(
            f"logging the evaluation failed ({type(err).__name__}: {err}); results are in {out_dir}",
            "upload later with `wandb sync` or log offline with WANDB_MODE=offline",
        )
        failed = True
    finish_run(logger, quiet=failed)


def finish_run(logger: WandbLogger | None, *, quiet: bool = False) -> None:
    """Close the logger's run (uploads what is left when online); a failure prints one line (none when
    ``quiet``: the caller has said what went wrong) and returns."""
    if logger is None:
        return
    try:
        logger.experiment.finish()
    except Exception as err:
        if not quiet:
            _say(
                f"closing the run failed ({type(err).__name__}: {err}); results are on disk",
                "upload later with `wandb sync <run dir>/wandb/<run>`",
            )


def make_csv_logger(logger_cfg: Mapping[str, Any] | None, *, save_dir: str | Path, name: str | None = None):
    """A Lightning ``CSVLogger`` when ``logger_cfg`` has a ``csv`` block (conf/logger/csv.yaml), else None.

    Its file is ``<save_dir>/<name>/version_<n>/metrics.csv`` (``logger.log_dir``): one row per logging
    step, a column per metric (``epoch``, ``step``, ``train/loss``, ``val/acc``, ``trust/...``).

    Args:
        save_dir: where it writes unless the block sets ``save_dir`` (the run directory).
        name: the subfolder unless the block sets ``name``.
    """
    c = dict((logger_cfg or {}).get("csv") or {})
    if not c and "csv" not in (logger_cfg or {}):
        return None

    return CSVLogger(save_dir=str(c.get("save_dir") or save_dir), name=str(c.get("name") or name or "csv"))
