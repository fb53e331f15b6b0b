"""Weights & Biases through Lightning's WandbLogger: offline unless a key is present, never a prompt."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_mode(requested: str | None) -> str:
    """``auto`` -> ``online`` when ``WANDB_API_KEY`` is set, else ``offline``. Others pass through."""
    mode = (requested or "auto").lower()
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {requested!r}")
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode == "online" and not os.environ.get("WANDB_API_KEY") and not _has_netrc_key():
        log.warning(
            "W&B online was asked for but no API key is set: logging offline (run `wandb sync` later)"
        )
        mode = "offline"
    return mode


def _has_netrc_key() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def make_wandb_logger(
    logger_cfg: Mapping[str, Any] | None,
    *,
    save_dir: str | Path,
    name: str,
    job_type: str,
    config: Mapping[str, Any],
):
    """A ``WandbLogger`` or None (``logger=none`` or mode ``disabled``). Runs are grouped by task."""
    w = dict((logger_cfg or {}).get("wandb") or {})
    if not w:
        return None
    mode = wandb_mode(w.get("mode"))
    if mode == "disabled":
        return None
    os.environ["WANDB_MODE"] = mode
    from lightning.pytorch.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=w.get("project", "trustequiv"),
        entity=w.get("entity"),
        group=w.get("group"),
        tags=list(w.get("tags") or []),
        name=name,
        job_type=job_type,
        save_dir=str(save_dir),
        offline=mode == "offline",
        config=dict(config),
    )


def log_evaluation(
    logger,
    metrics: Mapping[str, float],
    figures: Mapping[str, Path],
    tables: Mapping[str, list[dict[str, Any]]],
) -> None:
    """Summary metrics, figure images and tables into the logger's run, then finish it."""
    if logger is None:
        return
    import wandb

    run = logger.experiment
    run.summary.update(dict(metrics))
    payload: dict[str, Any] = {f"figures/{k}": wandb.Image(str(p)) for k, p in figures.items()}
    for name, rows in tables.items():
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            payload[f"tables/{name}"] = wandb.Table(
                columns=cols, data=[[r.get(c) for c in cols] for r in rows]
            )
    if payload:
        run.log(payload)
    run.finish()
