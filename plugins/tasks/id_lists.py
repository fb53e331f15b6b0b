"""A task split made of example ids only, for models whose outputs come as files (``model.source:
predictions``): the released error sets of paper B (``<data_dir>/paper_b_errors``) name SQuAD 2.0 questions
by id and carry no text.

The split's examples are the union of the ids listed in the JSON files (each a list of ids), optionally
padded to a known universe size with placeholder ids for the examples no file lists (for error sets: the
examples every model answered correctly). Columns: ``id`` (int64, position in the sorted union, as the SQuAD
loader numbers questions by position), ``qid`` (the listed id as a string; placeholders ``unlisted:<k>``) and
``label`` (``-1``: the files carry no gold labels). A model source maps its files' string ids to ``id``
through ``qid``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

PLACEHOLDER = "unlisted:"


def read_id_list(path: str | Path) -> list[Any]:
    """The ids of one JSON file holding a list of ids (strings or integers), in file order.

    Raises:
        FileNotFoundError: the file is missing. ValueError: the JSON is not a list of strings/integers.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"id list not found: {path}")
    ids = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(ids, list) or not all(
        isinstance(i, str | int) and not isinstance(i, bool) for i in ids
    ):
        raise ValueError(f"{path}: expected a JSON list of example ids (strings or integers)")
    return ids


class IdListLoader:
    """One split whose examples are the ids listed in JSON files under ``<data_dir>/<folder>``.

    Args:
        folder: folder under ``data_dir`` (e.g. ``paper_b_errors``).
        files: file names or glob patterns in it (default every ``*.json``).
        split: the split's name.
        universe_size: if set, the number of examples the ids were drawn from: the union is padded with
            ``universe_size - |union|`` placeholder ids (examples no file lists); null: the union only.
        id_offset: first example id.
    """

    def __init__(
        self,
        folder: str,
        files: Sequence[str] = ("*.json",),
        split: str = "test",
        universe_size: int | None = None,
        id_offset: int = 0,
    ) -> None:
        self.folder = folder
        self.files = [files] if isinstance(files, str) else list(files)
        self.split = split
        self.universe_size = None if universe_size is None else int(universe_size)
        self.id_offset = int(id_offset)
        if self.universe_size is not None and self.universe_size < 1:
            raise ValueError(
                f"universe_size must be a positive number of examples or null, got {universe_size}"
            )

    def paths(self, data_dir: str | Path) -> list[Path]:
        """The listed files, sorted and without duplicates.

        Raises:
            FileNotFoundError: a name or pattern matches no file.
        """
        root = Path(data_dir) / self.folder
        found: set[Path] = set()
        for pattern in self.files:
            matches = sorted(root.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"no file matches {root / pattern}")
            found.update(matches)
        return sorted(found)

    def qids(self, data_dir: str | Path) -> list[str]:
        """The split's ``qid`` column: the sorted union of the listed ids, then the placeholders.

        Raises:
            ValueError: more distinct ids than ``universe_size``, or a listed id looks like a placeholder.
        """
        union = sorted({str(i) for p in self.paths(data_dir) for i in read_id_list(p)})
        if any(q.startswith(PLACEHOLDER) for q in union):
            raise ValueError(f"listed ids must not start with {PLACEHOLDER!r} (reserved for placeholders)")
        if self.universe_size is None:
            return union
        if len(union) > self.universe_size:
            raise ValueError(
                f"{self.folder}: the files list {len(union)} distinct ids, more than universe_size="
                f"{self.universe_size}; raise it or set it to null"
            )
        return union + [f"{PLACEHOLDER}{k}" for k in range(self.universe_size - len(union))]

    def load(self, data_dir: str | Path | None, label_names: Sequence[str] | None = None) -> Any:
        """``datasets.DatasetDict`` with the one split (see the module docstring).

        Raises:
            ValueError: ``data_dir`` is None (these files are local only), or from :meth:`qids`.
            FileNotFoundError: a listed file is missing.
        """

        if data_dir is None:
            raise ValueError(
                f"the ids of this task are read from local files: set paths.data_dir to a folder with "
                f"{self.folder}/ (layout: README 'Local data')"
            )
        qids = self.qids(data_dir)
        n = len(qids)
        table = {"id": [self.id_offset + k for k in range(n)], "qid": qids, "label": [-1] * n}
        features = datasets.Features(
            {"id": datasets.Value("int64"), "qid": datasets.Value("string"), "label": datasets.Value("int64")}
        )
        return datasets.DatasetDict({self.split: datasets.Dataset.from_dict(table, features=features)})
