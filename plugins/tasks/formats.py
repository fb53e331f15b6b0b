"""Readers for local text-classification files under ``paths.data_dir`` (one folder per task, the files of
its config's ``loader.local`` block; README 'Local data').

Each reader returns :class:`RawRows`: texts, the raw label string of every row (mapped to a class name later,
through the per-file ``labels`` mapping of the task config) and the row's own id where the file carries one.
Files differ in ways a naive ``line.split("\\t")`` gets wrong, so each format is named and described here:

``glue_mrpc``
    GLUE / MSR MRPC: UTF-8 with BOM, header ``Quality #1 ID #2 ID #1 String #2 String``, no quoting (strings
    contain lone ``"``). id = data row number.
``glue_sst2``
    GLUE SST-2 train/dev: header ``sentence label``, no quoting. id = data row number.
``glue_rte``
    Hugging Face ``glue/rte`` export written by pandas: header ``sentence1 sentence2 label idx``, CSV quoting
    (fields with ``"`` are quoted, inner quotes doubled). id = ``idx`` (the hub's ``idx``).
``glue_qqp``
    GLUE QQP train/dev: header ``id qid1 qid2 question1 question2 is_duplicate``, no quoting. id = ``id``.
``mnli_mccoy``
    MNLI dev_matched from McCoy et al. (tommccoy1/hans): header ``index premise hypothesis gold_label
    <correct responses>``, no quoting. id = ``index`` (= GLUE / hub ``idx`` of validation_matched).
``textfooler``
    TextFooler 1,000-row samples (jind11/TextFooler ``data/snli``, ``data/mnli_mismatched``): no header,
    ``label premise hypothesis``, PTB-tokenized text, no quoting. id = data row number.
``paws_qqp``
    PAWS-QQP ``dev_and_test.tsv``: header ``id sentence1 sentence2 label``; sentences are Python bytes
    literals (``b'...'`` / ``b"..."``) decoded as UTF-8; no quoting. id = ``id``.
``imdb_jsonl``
    one JSON object per line with ``id`` ("test/pos/123"), ``text``, ``label``. id = n for neg, 1,000,000 + n
    for pos (:func:`imdb_id`), whatever the ``train/``/``test/`` prefix.
``advglue_<subset>`` (sst2, qqp, mnli, mnli_mm, qnli, rte)
    AdvGLUE ``dev.json`` (Wang et al. 2021): one JSON object whose key (``mnli-mm`` for ``mnli_mm``) lists
    dicts with ``idx``, ``label`` and the GLUE text fields of the subset. Labels use the Hugging Face GLUE
    coding (checked: the 94 AdvGLUE SST-2 sentences with a near-identical SST-2 dev sentence carry its label).
    id = ``idx``.

Errors: a header, field count, id or text that does not fit the format raises ``ValueError`` naming the file,
the 1-based line number and the value; a file that is not UTF-8 or has no rows raises
:class:`trustequiv.user_errors.DataFileError` (a ValueError) naming the file (and the line).
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustequiv.user_errors import DataFileError

__all__ = ["FORMATS", "RawRows", "imdb_id", "read_rows"]

csv.field_size_limit(2**31 - 1)


@dataclass
class RawRows:
    """Rows of one file. ``ids`` is ``None`` when the file has no id column (row numbers are used)."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list[str]
    ids: np.ndarray | None


@dataclass(frozen=True)
class _TsvSpec:
    header: tuple[str, ...] | None  # expected first header names (checked), None: no header line
    n_fields: int
    text_a: int
    text_b: int | None
    label: int
    id: int | None
    quoting: int = csv.QUOTE_NONE
    decode: Callable[[str], str] | None = None


def _bytes_literal(value: str) -> str:
    if not (value.startswith(("b'", 'b"')) and value.endswith(value[1]) and len(value) >= 3):
        raise ValueError("not a Python bytes literal")
    obj = ast.literal_eval(value)
    if not isinstance(obj, bytes):
        raise ValueError("not a Python bytes literal")
    return obj.decode("utf-8")


_TSV: dict[str, _TsvSpec] = {
    "glue_mrpc": _TsvSpec(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), 5, 3, 4, 0, None),
    "glue_sst2": _TsvSpec(("sentence", "label"), 2, 0, None, 1, None),
    "glue_rte": _TsvSpec(
        ("sentence1", "sentence2", "label", "idx"), 4, 0, 1, 2, 3, quoting=csv.QUOTE_MINIMAL
    ),
    "glue_qqp": _TsvSpec(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), 6, 3, 4, 5, 0),
    # 5th column: "number of correct responses (out of 100)" (McCoy et al. 2020), ignored
    "mnli_mccoy": _TsvSpec(("index", "premise", "hypothesis", "gold_label"), 5, 1, 2, 3, 0),
    "textfooler": _TsvSpec(None, 3, 1, 2, 0, None),
    "paws_qqp": _TsvSpec(("id", "sentence1", "sentence2", "label"), 4, 1, 2, 3, 0, decode=_bytes_literal),
}


def _parse_int(path: Path, line: int, what: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}, line {line}: {what} {value!r} is not an integer") from None


def _not_utf8(path: Path, err: UnicodeDecodeError) -> DataFileError:
    """The error for a file that is not UTF-8, naming the first line that does not decode: the decoder
    reads in chunks, so ``err`` knows the byte offset in a chunk, not the line."""
    line, column, byte = None, None, None
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as bad:
                line, column, byte = n, bad.start + 1, raw[bad.start]
                break
    where = f"{path}, line {line}" if line is not None else str(path)
    detail = f"byte 0x{byte:02x} at column {column}" if byte is not None else err.reason
    return DataFileError(
        f"{where}: not UTF-8 text ({detail})",
        f"save the file as UTF-8 (if it is Latin-1: iconv -f latin1 -t utf-8 {path} > {path.name}.utf8, then "
        "put that in its place)",
    )


def _no_rows(path: Path, header: bool) -> DataFileError:
    what = f"{path} has a header but no rows" if header else f"{path} has no rows"
    return DataFileError(what, "put the task's examples in it (or restore the original file)")


def _decoded(path: Path, lines):
    """``lines`` (an open text file), with a decoding failure turned into :func:`_not_utf8`'s error."""
    try:
        yield from lines
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _read_tsv(path: Path, fmt: str, spec: _TsvSpec) -> RawRows:
    text_a: list[str] = []
    text_b: list[str] | None = [] if spec.text_b is not None else None
    labels: list[str] = []
    ids: list[int] = []
    # utf-8-sig drops the BOM of the MRPC files and is a no-op elsewhere.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(_decoded(path, f), delimiter="\t", quoting=spec.quoting)
        first_line = 1
        if spec.header is not None:
            header = tuple(next(reader, ()))
            if not header:
                raise DataFileError(
                    f"{path} is empty (format {fmt!r} starts with a header line)",
                    "put the task's file there (header and rows), or restore the original file",
                )
            expected = spec.header
            if header[: len(expected)] != expected or len(header) != spec.n_fields:
                raise ValueError(
                    f"{path}, line 1: header {list(header)} does not match format {fmt!r} "
                    f"(expected {list(expected)}, {spec.n_fields} fields)"
                )
            first_line = 2
        for line, row in enumerate(reader, start=first_line):
            if len(row) != spec.n_fields:
                raise ValueError(
                    f"{path}, line {line}: {len(row)} tab-separated fields, format {fmt!r} expects "
                    f"{spec.n_fields}: {row!r}"
                )
            a = row[spec.text_a]
            b = row[spec.text_b] if spec.text_b is not None else None
            if spec.decode is not None:
                try:
                    a = spec.decode(a)
                    b = spec.decode(b) if b is not None else None
                except (ValueError, SyntaxError, UnicodeDecodeError) as err:
                    raise ValueError(f"{path}, line {line}: cannot decode text {row!r} ({err})") from None
            text_a.append(a)
            if text_b is not None:
                text_b.append(b)
            labels.append(row[spec.label].strip())
            if spec.id is not None:
                ids.append(_parse_int(path, line, "id", row[spec.id]))
    if not labels:
        raise _no_rows(path, header=spec.header is not None)
    return RawRows(text_a, text_b, labels, np.asarray(ids, dtype=np.int64) if spec.id is not None else None)


_IMDB_ID = re.compile(r"(?:train|test)/(pos|neg)/(\d+)")
IMDB_POS_OFFSET = 1_000_000


def imdb_id(raw: str) -> int:
    """Stable int id of an aclImdb review id ``"<split>/<pos|neg>/<n>"``: n for neg, 1_000_000 + n for pos.

    Raises:
        ValueError: ``raw`` has another form.
    """
    m = _IMDB_ID.fullmatch(raw)
    if m is None:
        raise ValueError(f"IMDB id {raw!r} is not of the form 'test/pos/123'")
    return (IMDB_POS_OFFSET if m.group(1) == "pos" else 0) + int(m.group(2))


def _read_imdb_jsonl(path: Path) -> RawRows:
    text_a: list[str] = []
    labels: list[str] = []
    ids: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line, raw in enumerate(_decoded(path, f), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                text, label, rid = obj["text"], obj["label"], obj["id"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {line}: not an object with id/text/label ({err})") from None
            if not isinstance(text, str):
                raise ValueError(f"{path}, line {line}: text {text!r} is not a string")
            try:
                ids.append(imdb_id(str(rid)))
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
            text_a.append(text)
            labels.append(str(label))
    if not labels:
        raise _no_rows(path, header=False)
    return RawRows(text_a, None, labels, np.asarray(ids, dtype=np.int64))


# AdvGLUE subset -> (key in dev.json, text_a field, text_b field or None)
_ADVGLUE: dict[str, tuple[str, str, str | None]] = {
    "sst2": ("sst2", "sentence", None),
    "qqp": ("qqp", "question1", "question2"),
    "mnli": ("mnli", "premise", "hypothesis"),
    "mnli_mm": ("mnli-mm", "premise", "hypothesis"),
    "qnli": ("qnli", "question", "sentence"),
    "rte": ("rte", "sentence1", "sentence2"),
}


def _read_advglue(path: Path, subset: str) -> RawRows:
    key, field_a, field_b = _ADVGLUE[subset]
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)[key]
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an AdvGLUE dev.json with a {key!r} list ({err!r})") from None
    text_a: list[str] = []
    text_b: list[str] | None = [] if field_b else None
    labels: list[str] = []
    ids: list[int] = []
    for i, row in enumerate(rows):
        try:
            text_a.append(str(row[field_a]))
            if text_b is not None:
                text_b.append(str(row[field_b]))
            labels.append(str(row["label"]))
            ids.append(int(row["idx"]))
        except (KeyError, TypeError, ValueError) as err:
            want = f"idx, label, {field_a}" + (f", {field_b}" if field_b else "")
            raise ValueError(f"{path}, {key}[{i}]: expected {want} ({err!r})") from None
    if not labels:
        raise _no_rows(path, header=False)
    return RawRows(text_a, text_b, labels, np.asarray(ids, dtype=np.int64))


FORMATS: tuple[str, ...] = (*_TSV, "imdb_jsonl", *(f"advglue_{k}" for k in _ADVGLUE))


def read_rows(path: str | Path, fmt: str) -> RawRows:
    """Read one local file in format ``fmt`` (one of :data:`FORMATS`).

    Raises:
        FileNotFoundError: ``path`` does not exist (the caller adds the fix to the message).
        trustequiv.user_errors.DataFileError: the file is not UTF-8 (naming the line), is empty or has no
        rows.
        ValueError: unknown format, or a row that does not fit the format.
    """
    path = Path(path)
    if fmt == "imdb_jsonl":
        return _read_imdb_jsonl(path)
    if fmt.startswith("advglue_") and fmt[len("advglue_") :] in _ADVGLUE:
        return _read_advglue(path, fmt[len("advglue_") :])
    if fmt not in _TSV:
        raise ValueError(f"unknown local file format {fmt!r} for {path}; known formats: {list(FORMATS)}")
    return _read_tsv(path, fmt, _TSV[fmt])
