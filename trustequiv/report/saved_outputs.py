"""Each model's final outputs on the main split, kept in its run dir, so work across runs (a ``-m`` sweep's
all-pairs matrices, :mod:`trustequiv.report.sweep`) can compare models that different jobs evaluated.

Layout under ``<run dir>/outputs/`` (the :class:`~trustequiv.cache.OutputCache` format, keyed by a hash of the
model's name, so no name ever becomes a path)::

    models.json                                  {"format": 1, "models": {"<model name>": "<key>", ...}}
    outputs/<key[:2]>/<key>.safetensors          ids, logits, labels, [embeddings, correct]
    outputs/<key[:2]>/<key>.json                 label names, the model's name
    extras/<key[:2]>/<key>.json                  columns, info, collected (JSON)

The out-of-distribution outputs (``ModelOutputs.ood``) are not kept. Only safetensors and JSON are read:
nothing is unpickled or built from a name a file holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from trustequiv.cache import OutputCache, atomic_write_text, content_key
from trustequiv.outputs import ModelOutputs
from trustequiv.plain import plain
from trustequiv.user_errors import DataFileError

log = logging.getLogger(__name__)

FORMAT = 1
OUTPUTS_DIR = "outputs"
INDEX = "models.json"
_KEY = re.compile(r"[0-9a-f]{64}")


def _key(name: str) -> str:
    return content_key(run_outputs=name)


def save_run_outputs(out_dir: Path, outputs: Mapping[str, ModelOutputs]) -> None:
    """Write each model's outputs (``name -> ModelOutputs`` of the main split) under ``<out_dir>/outputs``.

    Tensors go to safetensors; ``columns``, ``info`` and ``collected`` to JSON (numpy and torch values as
    lists and numbers); ``ood`` is left out. Writing again replaces the index and the models named.

    Raises:
        trustequiv.cache.CacheNotWritableError: ``out_dir`` cannot be written.
    """
    root = Path(out_dir) / OUTPUTS_DIR
    cache = OutputCache(root)
    index: dict[str, str] = {}
    for name, out in outputs.items():
        key = _key(name)
        cache.save(key, out, {"model": name, "format": FORMAT})
        cache.save_extras(
            key,
            {"columns": plain(out.columns), "info": plain(out.info), "collected": plain(out.collected)},
        )
        index[name] = key
    atomic_write_text(json.dumps({"format": FORMAT, "models": index}, indent=2), root / INDEX)


def _read_index(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        models = data["models"]
        if not isinstance(models, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _KEY.fullmatch(v) for k, v in models.items()
        ):
            raise ValueError("'models' must map model names to 64-hex keys")
    except (ValueError, KeyError, TypeError) as err:
        raise DataFileError(
            f"{path} is not a run-outputs index ({type(err).__name__}: {err})",
            "rerun the job that wrote it (same overrides: its outputs come from the cache)",
        ) from err
    return models


def load_run_outputs(run_dir: Path) -> dict[str, ModelOutputs]:
    """The outputs :func:`save_run_outputs` wrote in ``run_dir``, ``name -> ModelOutputs`` in saved order;
    ``{}`` when the run saved none.

    A model whose files are gone or corrupt is left out (a corrupt file is moved to
    ``<run_dir>/outputs/corrupt/`` with a warning, as the cache does).

    Raises:
        trustequiv.user_errors.DataFileError: the index file is not what :func:`save_run_outputs` writes.
        trustequiv.cache.CacheNotWritableError: ``<run_dir>/outputs`` is read-only (the cache checks it can
            set corrupt files aside).
    """
    root = Path(run_dir) / OUTPUTS_DIR
    if not (root / INDEX).is_file():
        return {}
    index = _read_index(root / INDEX)
    cache = OutputCache(root)
    loaded: dict[str, ModelOutputs] = {}
    for name, key in index.items():
        out = cache.load(key, name)
        if out is None:
            continue
        extras = cache.load_extras(key) or {}
        try:
            out = dataclasses.replace(
                out,
                columns=dict(extras.get("columns") or {}),
                info=dict(extras.get("info") or {}),
                collected=dict(extras.get("collected") or {}),
            )
        except (ValueError, TypeError) as err:  # columns of another length: keep the tensors, drop extras
            log.warning("%s: extras of %s do not fit its outputs (%s); left out", run_dir, name, err)
        loaded[name] = out
    return loaded
