"""Extractive QA data (SQuAD 2.0 layout) from local files: SQuAD 2.0, COVID-QA (SQuAD JSON) and SubjQA (CSV).

Each split is a ``datasets.Dataset`` with one row per question: ``id`` (int64, ``id_offset`` + position in
the file), ``qid`` (the source's question id), ``question``, ``context``, ``answers`` (list of gold answer
texts, empty = unanswerable) and ``answer_starts`` (their character offsets).

- SQuAD 2.0 (``squad_json``): ``data[].paragraphs[].qas[]`` with ``is_impossible``; only the CS224n half of
  the official dev set is local, so it is split deterministically into train / validation / test by a
  seeded hash of the *context* (:func:`trustequiv.splits.hash_split`): questions on one paragraph stay in one
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

from trustequiv.splits import hash_split

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


class QALoader:
    """Local extractive-QA splits.

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
    ) -> None:
        if format not in ("squad_json", "subjqa_csv"):
            raise ValueError(f"format must be 'squad_json' or 'subjqa_csv', got {format!r}")
        self.folder, self.format, self.file = folder, format, file
        self.domains = list(domains) if domains else None
        self.fractions = dict(fractions) if fractions else None
        self.split_seed = int(split_seed)
        self.id_offset = int(id_offset)

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
            ValueError: ``data_dir`` is None (no hub source is configured for QA yet).
            FileNotFoundError: a source file is missing.
        """
        import datasets

        if data_dir is None:
            raise ValueError(f"QA task {self.folder}: set paths.data_dir (only local files are supported)")
        rows = self.rows(data_dir)
        if self.fractions:
            parts = hash_split([r["context"] for r in rows], self.fractions, seed=self.split_seed)
        else:
            parts = {"test": list(range(len(rows)))}
        return datasets.DatasetDict(
            {
                name: datasets.Dataset.from_dict({c: [rows[i][c] for i in pos] for c in COLUMNS})
                for name, pos in parts.items()
            }
        )
