"""Extractive QA data (SQuAD 2.0 layout) from local files: SQuAD 2.0, COVID-QA (SQuAD JSON) and SubjQA (CSV);
from the hub (``paths.data_dir=null``): SQuAD 2.0 (``rajpurkar/squad_v2``) and NewsQA (MRQA's dev set).

Each split is a ``datasets.Dataset`` with one row per question: ``id`` (int64, ``id_offset`` + position in
the file), ``qid`` (the source's question id), ``question``, ``context``, ``answers`` (list of gold answer
texts, empty = unanswerable) and ``answer_starts`` (their character offsets).

- SQuAD 2.0 (``squad_json``): ``data[].paragraphs[].qas[]`` with ``is_impossible``; only the CS224n half of
  the official dev set is local, so it is split deterministically into train / validation / test by a
  seeded hash of the *context* (:func:`trustequiv.data.splits.hash_split`): questions on one paragraph stay in
  one
  split, as the MNLI backbone splits its local dev file by hashed ids.
- COVID-QA: the same JSON layout (no unanswerable question), one ``test`` split.
- SubjQA (``subjqa_csv``): ``<domain>/splits/<split>.csv``; rows are answer annotations, grouped here per
  (question, review); ``ANSWERNOTFOUND`` marks no answer and the token SubjQA appends to every review is
  removed from the context.

Wired into the pipeline by :mod:`trustequiv.qa` for tasks with ``kind: qa`` (``conf/task/qa/``).
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from trustequiv.data.splits import hash_split

NO_ANSWER = "ANSWERNOTFOUND"
COLUMNS = ("id", "qid", "question", "context", "answers", "answer_starts")


def read_squad_json(path: str | Path, id_offset: int = 0) -> list[dict[str, Any]]:
    """Rows of a SQuAD-format JSON file, in file order.

    Raises:
        FileNotFoundError: the file is missing (the message names it).
        ValueError: the JSON has no ``data`` list.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SQuAD-format file not found: {path}")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc.get("data"), list):
        raise ValueError(f"{path}: no 'data' list (not SQuAD format)")
    rows = []
    for article in doc["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append(
                    {
                        "id": id_offset + len(rows),
                        "qid": str(qa["id"]),
                        "question": qa["question"].strip(),
                        "context": para["context"],
                        "answers": [a["text"] for a in answers],
                        "answer_starts": [int(a["answer_start"]) for a in answers],
                    }
                )
    return rows


def read_subjqa_csv(path: str | Path, id_offset: int = 0) -> list[dict[str, Any]]:
    """Rows of one SubjQA split file, one per (question, review) pair, in order of first appearance.

    Raises:
        FileNotFoundError: the file is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SubjQA file not found: {path}")
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for rec in csv.DictReader(f):
            key = (rec["question"], rec["review_id"])
            review = rec["review"]
            context = review[: -len(NO_ANSWER)].rstrip() if review.endswith(NO_ANSWER) else review
            row = groups.setdefault(
                key,
                {
                    "id": id_offset + len(groups),
                    "qid": f"{rec['q_reviews_id']}:{rec['review_id']}",
                    "question": rec["question"].strip(),
                    "context": context,
                    "answers": [],
                    "answer_starts": [],
                },
            )
            text = rec["human_ans_spans"]
            if text and text != NO_ANSWER:
                start = int(ast.literal_eval(rec["human_ans_indices"])[0])
                if text not in row["answers"]:
                    row["answers"].append(text)
                    row["answer_starts"].append(start)
    return list(groups.values())


def hub_rows(
    records: Any, id_offset: int = 0, where: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows (``COLUMNS``) of a hub QA split: SQuAD layout (``answers = {text: [...], answer_start: [...]}``)
    or MRQA layout (``answers`` a list of texts, located in the context by their first occurrence);
    ``where``: keep only records whose columns equal these values (e.g. ``{subset: NewsQA}``)."""
    rows: list[dict[str, Any]] = []
    for k, rec in enumerate(records):
        if where and any(rec.get(col) != val for col, val in where.items()):
            continue
        answers = rec.get("answers") or []
        if isinstance(answers, Mapping):
            texts, starts = list(answers.get("text", [])), [int(a) for a in answers.get("answer_start", [])]
        else:
            texts = list(dict.fromkeys(answers))
            starts = [max(rec["context"].find(t), 0) for t in texts]
        rows.append(
            {
                "id": id_offset + k,
                "qid": str(rec.get("id", rec.get("qid", k))),
                "question": rec["question"].strip(),
                "context": rec["context"],
                "answers": texts,
                "answer_starts": starts,
            }
        )
    return rows


class QALoader:
    """Extractive-QA splits from local files, or from the hub when ``data_dir`` is None.

    Args:
        folder: folder under ``data_dir`` (e.g. ``squad2``).
        format: ``"squad_json"`` or ``"subjqa_csv"``.
        files: for ``squad_json``, the JSON file name; for ``subjqa_csv``, the split file name
            (``test.csv``) read from every domain in ``domains``.
        domains: SubjQA domains (default: every sub-folder).
        fractions: if set, split the rows by a seeded hash of their context into these splits
            (e.g. ``{train: 0.7, validation: 0.1, test: 0.2}``); else one ``test`` split.
        split_seed: hash seed.
        id_offset: first example id.
        hub: the hub source (``data_dir`` None): ``path``, optional ``name``, ``splits`` (our split -> hub
            split), optional ``derive`` (``{from: <our split>, fractions: {...}}``: that split re-split by
            hashed context, e.g. a validation split carved out of train) and ``where`` (column filter). The
            k-th hub split's ids start at ``id_offset + k * 10**9``.
    """

    def __init__(
        self,
        folder: str,
        format: str,
        file: str,
        domains: Sequence[str] | None = None,
        fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        id_offset: int = 0,
        hub: Mapping[str, Any] | None = None,
    ) -> None:
        if format not in ("squad_json", "subjqa_csv"):
            raise ValueError(f"format must be 'squad_json' or 'subjqa_csv', got {format!r}")
        self.folder, self.format, self.file = folder, format, file
        self.domains = list(domains) if domains else None
        self.fractions = dict(fractions) if fractions else None
        self.split_seed = int(split_seed)
        self.id_offset = int(id_offset)
        self.hub = dict(hub) if hub else None

    def rows(self, data_dir: str | Path) -> list[dict[str, Any]]:
        """Every row of the source, before splitting."""
        root = Path(data_dir) / self.folder
        if self.format == "squad_json":
            return read_squad_json(root / self.file, self.id_offset)
        domains = self.domains or sorted(p.name for p in root.iterdir() if (p / "splits").is_dir())
        rows: list[dict[str, Any]] = []
        for domain in domains:
            for r in read_subjqa_csv(root / domain / "splits" / self.file, self.id_offset + len(rows)):
                rows.append({**r, "qid": f"{domain}:{r['qid']}"})
        return rows

    def load(self, data_dir: str | Path | None, label_names: Sequence[str] | None = None) -> Any:
        """``datasets.DatasetDict`` of the splits (see the module docstring).

        Raises:
            ValueError: ``data_dir`` is None and no hub source is configured.
            FileNotFoundError: a source file is missing.
        """
        if data_dir is None:
            return self._load_hub()
        rows = self.rows(data_dir)
        return _dataset_dict(self._split(rows, self.fractions) if self.fractions else {"test": rows})

    def _split(self, rows: list[dict[str, Any]], fractions: Mapping[str, float]) -> dict[str, list[dict]]:
        """Rows split by a seeded hash of their context: questions on one paragraph stay together."""
        parts = hash_split([r["context"] for r in rows], dict(fractions), seed=self.split_seed)
        return {name: [rows[i] for i in pos] for name, pos in parts.items()}

    def _load_hub(self) -> Any:

        if not self.hub:
            raise ValueError(
                f"QA task {self.folder} has no hub source: set paths.data_dir to a folder with {self.folder}/"
            )
        where = self.hub.get("where")
        parts: dict[str, list[dict[str, Any]]] = {}
        for k, (ours, theirs) in enumerate(dict(self.hub["splits"]).items()):
            records = datasets.load_dataset(self.hub["path"], self.hub.get("name"), split=theirs)
            parts[ours] = hub_rows(records, self.id_offset + k * 10**9, where)
        derive = self.hub.get("derive")
        if derive:
            parts.update(self._split(parts.pop(derive["from"]), derive["fractions"]))
        return _dataset_dict(parts)


def _dataset_dict(parts: Mapping[str, list[dict[str, Any]]]) -> Any:

    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})
            for name, rows in parts.items()
        }
    )
