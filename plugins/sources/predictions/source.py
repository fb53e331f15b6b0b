"""Model source ``predictions``: a model known only by its per-example outputs, made elsewhere (issue 10, 2c).

``model=predictions model.path=<file>`` (as reference: ``model@reference=predictions reference.path=<file>``).
The source has no model: no scorer, no gradients; characteristics that need one are skipped by the pipeline,
and those that need scores are skipped for an error set.

Config (``conf/model/predictions.yaml``):

- ``name``: the model's name in results (default: the file's stem); letters, digits and ``_ . + -``.
- ``path``: the outputs on the evaluated task's split(s), one of
    - a **predictions CSV** (``.csv``), the project's ``predictions/<model>.csv``
      (:func:`trustequiv.report.run_report.write_predictions`): ``example_id``, ``gold_label`` (a label name,
      empty
      = unlabelled), ``predicted_label`` (ignored: argmax of the probabilities), ``p_<class>`` per class
      (probabilities, any column order; classes matched by name to the task's ``label_names``), and the task
      kind's extra columns (``TaskKind.csv_columns``, e.g. extractive QA's ``predicted_answer``, ``exact``,
      ``f1``) which go to ``ModelOutputs.columns``. Logits are read as ``log p`` in float64, so softmax gives
      back p to ~1e-16: a run's own CSV (written exactly) read back gives that run's statistics, and a noise
      floor from it the floor the run had. A p of 0 (below the file's rounding) is read as ``prob_floor``.
      ``correct`` is read from a ``correct`` column (0/1) when present, else from ``exact`` (extractive QA's
      exact match). A CSV with ``correct`` and no ``p_`` columns (what write_predictions writes for an error
      set) has no scores.
    - an **error set** (``.json``): a JSON list of the ids of the examples answered wrongly, as paper B
      released them; every other example of the split is correct; no scores (``logits`` None).
- ``embeddings`` (optional): pooled embeddings ``(N, D)``: a ``.safetensors`` file with tensors
  ``example_id`` (int64 ``(N,)``) and ``embeddings`` (float ``(N, D)``), or a ``.npy`` array whose row ids
  are in ``embedding_ids`` (a ``.npy`` of ints, a ``.json`` list, or a text file with one id per line),
  by default the companion ``<embeddings without .npy>.ids.txt``.
- ``ood``: ``{"<task>/<split>": <file> or {path, embeddings, embedding_ids}}``: outputs on each
  out-of-distribution set (keys as in ``task.ood``: ``qa/subjqa/test`` and ``subjqa/test`` both match); an
  entry for a split of the evaluated task replaces ``path`` there.
- ``ids``: how the files' ids are read: ``auto`` (integers when every id is one, else question ids),
  ``id`` (the task's int ``id``) or ``qid`` (the split's ``qid`` column, e.g. SQuAD question ids, mapped
  to int ids as the SQuAD loader numbers them).
- ``prob_floor``: the probability a ``0`` is read as (default 1e-7), so ``log p`` stays finite.

Relative paths are read from the directory the command runs in. Each evaluated set must be covered: a
predictions file or embeddings file lacking some of its ids is an error (naming how many and the file); rows
for other examples are ignored. An error set listing ids that are not examples of the split is an error (it
was made on other data), ids outside a ``limit_examples`` sample are not. Gold labels in a predictions file
must agree with the split's.

Reading and checking the files themselves, and matching their ids to a split's, is :mod:`.files`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugins.sources.predictions.files import (
    FileSet,
    IdMap,
    ReadFile,
    first_few,
    read_embeddings,
    read_error_set,
    read_predictions_csv,
    sha256_file,
)
from trustequiv.data.task_kind import task_kind
from trustequiv.models.source import ModelSource, RunContext
from trustequiv.outputs import ModelOutputs

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
KEYS = frozenset({"source", "name", "path", "embeddings", "embedding_ids", "ood", "ids", "prob_floor"})
ID_MODES = ("auto", "id", "qid")


class PredictionsSource(ModelSource):
    """Outputs read from files (see the module docstring).

    Args:
        model_cfg: the model node (``name``, ``path``, ``embeddings``, ``embedding_ids``, ``ood``, ``ids``,
            ``prob_floor``). compressor_cfg: must be None or empty (nothing to compress).

    Raises:
        ValueError: no ``path``, an invalid name, a compressor, an unknown ``ids`` mode, a bad
            ``prob_floor`` or ``ood`` entry.
    """

    kind = "predictions"
    provides = frozenset()
    #: the outputs are final: the task kind's postprocessing (QA's no-answer threshold) must not run again.
    final_outputs = True

    def __init__(self, model_cfg: Mapping[str, Any], compressor_cfg: Mapping[str, Any] | None = None):
        cfg = dict(model_cfg)
        path = cfg.get("path")
        if not path:
            raise ValueError(
                f"model {cfg.get('name') or '?'} (source predictions): set model.path=<predictions .csv or "
                "error-set .json>"
            )
        self.main = FileSet(
            Path(str(path)).expanduser(),
            _opt_path(cfg.get("embeddings")),
            _opt_path(cfg.get("embedding_ids")),
        )
        self.name = str(cfg.get("name") or self.main.path.stem)
        if not _NAME.match(self.name):
            raise ValueError(
                f"model name {self.name!r} (source predictions): use letters, digits and _ . + - only "
                "(set model.name)"
            )
        if compressor_cfg:
            raise ValueError(
                f"model {self.name}: a predictions source has no model to compress; set its compressor "
                "to null"
            )
        self.ids_mode = str(cfg.get("ids") or "auto")
        if self.ids_mode not in ID_MODES:
            raise ValueError(f"model {self.name}: ids must be one of {list(ID_MODES)}, got {self.ids_mode!r}")
        floor = cfg.get("prob_floor")
        self.prob_floor = 1e-7 if floor is None else float(floor)
        if not 0.0 < self.prob_floor < 1e-3:
            raise ValueError(f"model {self.name}: prob_floor must be in (0, 1e-3), got {self.prob_floor}")
        self.ood = {_ood_key(k): _file_set(self.name, k, v) for k, v in dict(cfg.get("ood") or {}).items()}
        unknown = sorted(set(cfg) - KEYS)
        if unknown:
            log.warning(
                "model %s (source predictions): keys %s are not used (known: %s)",
                self.name,
                unknown,
                sorted(KEYS),
            )
        self._read: dict[Path, ReadFile] = {}
        self._emb: dict[Path, tuple[list[Any], np.ndarray]] = {}
        self.fingerprint = ""

    # ------------------------------------------------------------------------------------------ identity
    def files(self) -> dict[str, Path]:
        """Every file the source reads, by role (``path``, ``embeddings``, ``ood[<task>/<split>].path``)."""
        files = self.main.roles("")
        for (task, split), fs in sorted(self.ood.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            files.update(fs.roles(f"ood[{task + '/' if task else ''}{split}]."))
        return files

    def prepare(self, ctx: RunContext) -> dict[str, Any]:
        """Check every file exists, read the main one, and return the identity: ``path``, ``fingerprint``
        (SHA-256 over the files' SHA-256s and the reading settings), ``metadata`` (format, each file's
        path, size and SHA-256), ``source``.

        Raises:
            FileNotFoundError: a file is missing (names its config key). ValueError: from reading it.
        """
        files = self.files()
        for role, path in files.items():
            if not path.is_file():
                hint = (
                    "the row ids of a .npy: set model.embedding_ids=<file> or write them there, one per line"
                    if role.endswith("embedding_ids")
                    else "relative paths are read from the directory the command runs in"
                )
                raise FileNotFoundError(f"model {self.name}: {role} file not found: {path} ({hint})")
        meta = {
            role: {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for role, p in files.items()
        }
        h = hashlib.sha256()
        for role in sorted(meta):
            h.update(f"{role}\0{meta[role]['sha256']}\n".encode())
        h.update(f"ids={self.ids_mode}\0prob_floor={self.prob_floor!r}".encode())
        self.fingerprint = h.hexdigest()
        read = self._file(self.main.path, _csv_columns(ctx.kind if ctx is not None else None))  # fail early
        return {
            "path": str(self.main.path),
            "fingerprint": self.fingerprint,
            "metadata": {"format": read.kind, "files": meta},
            "source": self.kind,
        }

    # ------------------------------------------------------------------------------------------ outputs
    def outputs(
        self, data, task_cfg: Mapping[str, Any], split: str, ctx: RunContext
    ) -> tuple[ModelOutputs, bool]:
        """``(outputs, False)``: this model's outputs on ``data``'s rows, in ``data``'s order.

        Args:
            data: a split (``datasets.Dataset`` with ``id``, and ``label``/``qid`` where the task has them).
            task_cfg: its task's config (the evaluated task, or an OOD set's). split: its split name.
            ctx: the run context (the task kind's CSV columns, the full split for error-set checks).

        Raises:
            ValueError: no file for this set; the file lacks some of ``data``'s ids (how many, which file);
                its classes differ from the task's label names; its gold labels disagree with ``data``'s;
                an error set lists ids that are not examples of the split.
        """
        files = self._files_for(task_cfg, split, ctx)
        read = self._file(files.path, _csv_columns(_kind_of(task_cfg, ctx)))
        label_names = tuple(str(n) for n in task_cfg["label_names"])
        where = f"{task_cfg['name']}/{split}"
        ids = np.asarray(list(data["id"]), dtype=np.int64)
        n = ids.shape[0]
        data_labels = (
            np.asarray(list(data["label"]), dtype=np.int64) if "label" in data.column_names else None
        )
        logits = correct = None
        columns: dict[str, list[Any]] = {}
        if read.kind == "error_set":
            full = self._full_split(data, task_cfg, split, ctx)
            listed, known = IdMap(full, self.ids_mode).resolve(read.raw_ids, files.path)
            if not known.all():
                bad = [v for v, k in zip(read.raw_ids, known, strict=True) if not k]
                raise ValueError(
                    f"{files.path}: {len(bad)} of {len(read.raw_ids)} ids are not examples of {where} "
                    f"(first: {first_few(bad)}); the error set was made on other data"
                )
            correct = ~np.isin(ids, listed)
            labels = data_labels if data_labels is not None else np.full(n, -1, dtype=np.int64)
        else:
            rows = self._rows(read.raw_ids, data, ids, files.path, where)
            labels = self._labels(read, rows, data_labels, ids, label_names, files.path, where)
            if read.probs is not None:
                order = self._class_order(read.classes, label_names, files.path, task_cfg["name"])
                probs = read.probs[rows][:, order]
                # float64, not the usual float32: float32 log p would move p by ~1e-7 (only a 0 is floored)
                logits = torch.from_numpy(np.log(np.where(probs > 0, probs, self.prob_floor)))
            if read.correct is not None:
                correct = read.correct[rows]
            columns = {k: [v[r] for r in rows.tolist()] for k, v in read.columns.items()}
        embeddings = None
        if files.embeddings is not None:
            embeddings = torch.from_numpy(self._embeddings(files, data, ids, where))
        out = ModelOutputs(
            name=self.name,
            example_ids=torch.from_numpy(ids.copy()),
            logits=logits,
            labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            label_names=label_names,
            embeddings=embeddings,
            correct=None if correct is None else torch.from_numpy(np.asarray(correct, dtype=bool)),
            columns=columns,
            info={"source": self.kind, "file": str(files.path)},
        )
        return out, False

    # ------------------------------------------------------------------------------------------ helpers
    def _file(self, path: Path, column_keys: Mapping[str, str]) -> ReadFile:
        if path not in self._read:
            if not path.is_file():
                raise FileNotFoundError(f"model {self.name}: file not found: {path}")
            if path.suffix == ".csv":
                self._read[path] = read_predictions_csv(path, column_keys)
            elif path.suffix == ".json":
                self._read[path] = read_error_set(path)
            else:
                raise ValueError(
                    f"model {self.name}: {path} is neither a predictions CSV (.csv) nor an error-set JSON "
                    "list (.json)"
                )
        return self._read[path]

    def _files_for(self, task_cfg: Mapping[str, Any], split: str, ctx: RunContext | None) -> FileSet:
        task = str(task_cfg["name"])
        main_task = ctx is None or str(ctx.task_cfg["name"]) == task
        for (t, s), fs in self.ood.items():
            if s == split and (t == task or (t is None and main_task)):
                return fs
        if main_task:
            return self.main
        raise ValueError(
            f"model {self.name}: no predictions for the OOD set {task}/{split}; add "
            f"model.ood={{'{task}/{split}': <file>}} (or drop that set)"
        )

    @staticmethod
    def _full_split(data, task_cfg: Mapping[str, Any], split: str, ctx: RunContext | None):
        """The whole split ``data`` was sampled from (``limit_examples``) when the run holds it, else data."""
        if ctx is None or str(ctx.task_cfg["name"]) != str(task_cfg["name"]):
            return data
        dataset = ctx.dataset()
        return dataset[split] if dataset is not None and split in dataset else data

    def _rows(self, raw_ids: Sequence[Any], data, ids: np.ndarray, path: Path, where: str) -> np.ndarray:
        """``(N,)`` position in ``raw_ids`` (a file's ids) of each of ``data``'s ids.

        Raises:
            ValueError: some of ``data``'s ids are not in the file (how many, which file).
        """
        file_ids, known = IdMap(data, self.ids_mode).resolve(raw_ids, path)
        pos = {int(i): r for r, (i, k) in enumerate(zip(file_ids.tolist(), known.tolist(), strict=True)) if k}
        missing = [int(i) for i in ids.tolist() if int(i) not in pos]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} of {ids.shape[0]} examples of {where} have no row (first ids: "
                f"{first_few(missing)}); the file must cover every evaluated example"
            )
        return np.array([pos[int(i)] for i in ids.tolist()], dtype=np.int64)

    @staticmethod
    def _labels(
        read: ReadFile,
        rows: np.ndarray,
        data_labels: np.ndarray | None,
        ids: np.ndarray,
        label_names: tuple[str, ...],
        path: Path,
        where: str,
    ) -> np.ndarray:
        """The rows' gold labels: the split's, checked against the file's where both are known; the
        file's when the split has none (extractive QA data); -1 when neither has them."""
        if read.gold is None:
            return data_labels if data_labels is not None else np.full(ids.shape[0], -1, dtype=np.int64)
        index = {n: k for k, n in enumerate(label_names)}
        unknown = sorted({g for g in read.gold if g and g not in index})
        if unknown:
            raise ValueError(
                f"{path}: gold labels {unknown} are not label names of {where} {list(label_names)}"
            )
        gold = np.array([index[read.gold[r]] if read.gold[r] else -1 for r in rows.tolist()], dtype=np.int64)
        if data_labels is None:
            return gold
        clash = (gold >= 0) & (data_labels >= 0) & (gold != data_labels)
        if clash.any():
            k = int(np.flatnonzero(clash)[0])
            first = f"id {int(ids[k])}: file {label_names[gold[k]]!r}, data {label_names[data_labels[k]]!r}"
            raise ValueError(
                f"{path}: gold labels of {int(clash.sum())} of {ids.shape[0]} examples disagree with {where} "
                f"(first: {first}); the predictions were made on other data"
            )
        return data_labels

    @staticmethod
    def _class_order(classes: list[str], label_names: tuple[str, ...], path: Path, task: str) -> list[int]:
        if sorted(classes) != sorted(label_names):
            raise ValueError(
                f"{path}: p_ columns name classes {classes} but task {task} has label names "
                f"{list(label_names)}; name each p_<class> column after one of them"
            )
        return [classes.index(n) for n in label_names]

    def _embeddings(self, files: FileSet, data, ids: np.ndarray, where: str) -> np.ndarray:
        """``(N, D)`` float32 rows of the embeddings file for ``data``'s ids."""
        path = files.embeddings
        if path not in self._emb:
            if not path.is_file():
                raise FileNotFoundError(f"model {self.name}: embeddings file not found: {path}")
            self._emb[path] = read_embeddings(path, files.embedding_ids)
        raw, emb = self._emb[path]
        return emb[self._rows(raw, data, ids, path, where)]


def _opt_path(value: Any) -> Path | None:
    return Path(str(value)).expanduser() if value else None


def _ood_key(key: str) -> tuple[str | None, str]:
    """``"qa/subjqa/test"`` -> ``("subjqa", "test")``; ``"test"`` -> ``(None, "test")`` (evaluated task)."""
    parts = str(key).rstrip("?").split("/")
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def _file_set(name: str, key: str, value: Any) -> FileSet:
    if isinstance(value, str | Path):
        return FileSet(Path(str(value)).expanduser())
    if isinstance(value, Mapping) and value.get("path"):
        return FileSet(
            Path(str(value["path"])).expanduser(),
            _opt_path(value.get("embeddings")),
            _opt_path(value.get("embedding_ids")),
        )
    raise ValueError(
        f"model {name}: model.ood[{key!r}] must be a file or {{path, embeddings, embedding_ids}}, "
        f"got {value!r}"
    )


def _csv_columns(kind: Any) -> dict[str, str]:
    """The task kind's extra CSV columns (header -> ``ModelOutputs.columns`` key); none without a kind."""
    return dict(getattr(kind, "csv_columns", None) or {})


def _kind_of(task_cfg: Mapping[str, Any], ctx: RunContext | None):
    """The task kind of ``task_cfg`` (its CSV columns); the run's when it is the evaluated task."""
    if ctx is not None and str(ctx.task_cfg["name"]) == str(task_cfg["name"]):
        return ctx.kind

    return task_kind(task_cfg)
