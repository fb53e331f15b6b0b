"""Lightning loggers besides W&B (:mod:`trustequiv.report.tracking`): ``logger=csv`` writes metrics.csv
files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger


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
