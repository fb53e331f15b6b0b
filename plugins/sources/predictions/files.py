"""The files of the ``predictions`` source: reading and checking a predictions CSV, an error set, an
embeddings file and its row ids, and mapping the ids they hold to a split's ids.

The formats are described in :mod:`.source`'s docstring (the source as a whole).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

_INT = re.compile(r"^-?\d+$")
#: Column types of known extra CSV columns (the rest stay strings: answer texts may look like numbers).
COLUMN_TYPES = {"exact": int, "f1": float, "correct": int}
#: How far a row of p_ columns may sum from 1 (a file rounded to 6 decimals is off by at most C * 5e-7).
SUM_TOLERANCE = 1e-3
#: Ids quoted in an error message.
SHOWN = 5


@dataclass(frozen=True)
class FileSet:
    """The files of one evaluated set: outputs (CSV or error set) and optional embeddings with their ids."""

    path: Path
    embeddings: Path | None = None
    embedding_ids: Path | None = None

    def roles(self, prefix: str) -> dict[str, Path]:
        """``role -> path`` of the files present (the ids companion only where the embeddings need it)."""
        files = {f"{prefix}path": self.path}
        if self.embeddings is not None:
            files[f"{prefix}embeddings"] = self.embeddings
            ids = self.embedding_ids or _companion_ids(self.embeddings)
            if ids is not None:
                files[f"{prefix}embedding_ids"] = ids
        return files


@dataclass
class ReadFile:
    """One outputs file as read, ids not yet matched to a split.

    Attributes:
        kind: ``"csv"`` or ``"error_set"``. raw_ids: the ids as written (``(n,)`` strings for a CSV).
        classes: the ``p_<class>`` names in file order (CSV with scores), else None.
        probs: ``(n, C)`` float64 in ``classes`` order, or None. gold: ``(n,)`` gold label names
            (``""`` = unlabelled), or None. correct: ``(n,)`` bool, or None.
        columns: extra columns by ``ModelOutputs.columns`` key, ``(n,)`` each.
    """

    kind: str
    raw_ids: list[Any]
    classes: list[str] | None = None
    probs: np.ndarray | None = None
    gold: list[str] | None = None
    correct: np.ndarray | None = None
    columns: dict[str, list[Any]] = field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _companion_ids(embeddings: Path) -> Path | None:
    """The default ids file of a ``.npy`` embeddings file (``x.npy`` -> ``x.ids.txt``); None otherwise."""
    return embeddings.with_suffix(".ids.txt") if embeddings.suffix == ".npy" else None


def _parse(value: str, kind: type, path: Path, column: str, row: int) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise ValueError(f"{path}: row {row + 2}, column {column!r}: {value!r} is not a number") from None


def read_predictions_csv(path: Path, column_keys: Mapping[str, str]) -> ReadFile:
    """Read a predictions CSV (see :mod:`.source`'s docstring).

    Args:
        path: the file. column_keys: extra CSV header -> ``ModelOutputs.columns`` key (the task kind's
            ``csv_columns``).

    Raises:
        ValueError: no ``example_id`` column, neither ``p_<class>`` nor ``correct`` columns, probabilities
            outside [0, 1] or rows not summing to 1, a duplicate id, a non-numeric number.
    """
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if "example_id" not in header:
        raise ValueError(
            f"{path}: no example_id column (header: {header}); expected the predictions CSV format"
        )
    classes = [h[2:] for h in header if h.startswith("p_")]
    if not classes and "correct" not in header:
        raise ValueError(
            f"{path}: no p_<class> columns (probabilities) and no correct column; expected the predictions "
            "CSV format (example_id, gold_label, predicted_label, p_<class>...)"
        )
    raw_ids = [r["example_id"] for r in rows]
    seen: set[str] = set()
    for i in raw_ids:
        if i in seen:
            raise ValueError(f"{path}: example id {i} appears more than once")
        seen.add(i)
    out = ReadFile(kind="csv", raw_ids=raw_ids)
    if "gold_label" in header:
        out.gold = [(r["gold_label"] or "").strip() for r in rows]
    if classes:
        probs = np.array(
            [[_parse(r[f"p_{c}"], float, path, f"p_{c}", k) for c in classes] for k, r in enumerate(rows)],
            dtype=np.float64,
        ).reshape(len(rows), len(classes))
        bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1)
        bad |= np.abs(probs.sum(axis=1) - 1.0) > SUM_TOLERANCE
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: {int(bad.sum())} rows of p_ columns are not probabilities summing to 1 (first: id "
                f"{raw_ids[k]}, sum {probs[k].sum():.6g}); write softmax probabilities, not logits"
            )
        out.classes, out.probs = classes, probs
    for header_name, key in column_keys.items():
        if header_name in header:
            kind = COLUMN_TYPES.get(key, str)
            out.columns[key] = [
                r[header_name] if kind is str else _parse(r[header_name], kind, path, header_name, k)
                for k, r in enumerate(rows)
            ]
    if "correct" in header:
        out.correct = (
            np.array([_parse(r["correct"], int, path, "correct", k) for k, r in enumerate(rows)]) != 0
        )
    elif "exact" in out.columns:  # extractive QA: an error is exact match 0
        out.correct = np.asarray(out.columns["exact"]) != 0
    return out


def read_error_set(path: Path) -> ReadFile:
    """Read an error set: a JSON list of the ids of the examples answered wrongly.

    Raises:
        ValueError: the JSON is not a list of strings/integers.
    """
    ids = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(ids, list) or not all(
        isinstance(i, str | int) and not isinstance(i, bool) for i in ids
    ):
        raise ValueError(f"{path}: an error set must be a JSON list of example ids (strings or integers)")
    return ReadFile(kind="error_set", raw_ids=ids)


def read_id_file(path: Path) -> list[Any]:
    """Row ids of an embeddings file: a ``.npy`` of ints, a ``.json`` list, or text with one id per line.

    Raises:
        FileNotFoundError: the file is missing. ValueError: not a 1-D list of ids.
    """
    if not path.exists():
        raise FileNotFoundError(f"embedding ids file not found: {path}")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{path}: embedding ids must be a 1-D integer array, got {arr.dtype} {arr.shape}"
            )
        return arr.tolist()
    if path.suffix == ".json":
        ids = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ids, list):
            raise ValueError(f"{path}: embedding ids must be a JSON list")
        return ids
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_embeddings(path: Path, ids_path: Path | None) -> tuple[list[Any], np.ndarray]:
    """``(row ids, (N, D) float32)`` of an embeddings file (see :mod:`.source`'s docstring).

    Raises:
        ValueError: an unsupported suffix, missing tensors, not 2-D, ids and rows of different lengths, or a
            ``.npy`` without ids. FileNotFoundError: the ids file is missing.
    """
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        if "example_id" not in tensors or "embeddings" not in tensors:
            raise ValueError(
                f"{path}: needs tensors 'example_id' (N,) and 'embeddings' (N, D), has {sorted(tensors)}"
            )
        ids, emb = tensors["example_id"].reshape(-1).tolist(), tensors["embeddings"]
    elif path.suffix == ".npy":
        emb = np.load(path, allow_pickle=False)
        ids_path = ids_path or _companion_ids(path)
        if not ids_path.exists() and ids_path == _companion_ids(path):
            raise ValueError(
                f"{path}: the ids of its rows are unknown: set model.embedding_ids=<file> or write them to "
                f"{ids_path} (one id per line)"
            )
        ids = read_id_file(ids_path)
    else:
        raise ValueError(f"{path}: embeddings must be a .npy or .safetensors file")
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"{path}: embeddings must be (N, D) with N = {len(ids)} ids, got {emb.shape}")
    return ids, np.asarray(emb, dtype=np.float32)


def first_few(values: Sequence[Any]) -> str:
    """The first ``SHOWN`` values, comma-separated, for an error message (``...`` when there are more)."""
    shown = ", ".join(str(v) for v in list(values)[:SHOWN])
    return shown + (", ..." if len(values) > SHOWN else "")


class IdMap:
    """Maps ids as written in a file to a split's int ``id``: directly, or through its ``qid`` column.

    Args:
        data: the split (``datasets.Dataset`` with ``id`` and, optionally, ``qid``). mode: ``auto``, ``id``
            or ``qid`` (see :mod:`.source`'s docstring).
    """

    def __init__(self, data, mode: str = "auto") -> None:
        self.ids = np.asarray(list(data["id"]), dtype=np.int64)
        self.known = set(self.ids.tolist())
        self.by_qid = (
            {str(q): int(i) for q, i in zip(data["qid"], self.ids.tolist(), strict=True)}
            if "qid" in data.column_names
            else None
        )
        self.mode = mode

    def resolve(self, raw: Sequence[Any], where: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (n,) int64, known (n,) bool)``: the split's id of each raw id (-1 where unknown).

        Raises:
            ValueError: ``qid`` mode on a split without a ``qid`` column, or ``id`` mode with non-integers.
        """
        as_int = all((isinstance(v, int) and not isinstance(v, bool)) or _INT.match(str(v)) for v in raw)
        mode = self.mode if self.mode != "auto" else ("id" if as_int else "qid")
        if mode == "qid":
            if self.by_qid is None:
                raise ValueError(
                    f"{where}: its ids are read as question ids but the split has no qid column to map them; "
                    "write the task's integer example ids"
                )
            ids = np.array([self.by_qid.get(str(v), -1) for v in raw], dtype=np.int64)
            return ids, np.array([str(v) in self.by_qid for v in raw], dtype=bool)
        if not as_int:
            bad = [v for v in raw if not _INT.match(str(v))]
            raise ValueError(f"{where}: ids must be integers with model.ids=id, got {first_few(bad)}")
        ids = np.array([int(v) for v in raw], dtype=np.int64)
        return ids, np.array([i in self.known for i in ids.tolist()], dtype=bool)
