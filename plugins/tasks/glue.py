"""Text-classification task loaders: GLUE (MNLI, QQP, MRPC, SST-2, RTE), SNLI, IMDB and PAWS-QQP.

One class, :class:`TextClassificationLoader` (alias :data:`GlueTaskLoader`), driven by the ``loader`` block
of ``conf/task/<task>.yaml``. ``load(data_dir, label_names)`` returns a :class:`datasets.DatasetDict` whose
splits have exactly the columns ``id`` (int64, unique across all splits of the task), ``text_a`` (str),
``text_b`` (str, pair tasks only) and ``label`` (int64 index into ``label_names``, -1 where unlabelled).

Sources
-------
``data_dir is None``: the Hugging Face hub, ``datasets.load_dataset(hub.path, hub.name)``. Labels are
mapped *by name* from the dataset's ClassLabel names to ``label_names``
(:func:`trustequiv.data.labels.label_permutation`).

``data_dir`` set: files under ``<data_dir>/<local.folder>/`` in the formats of :mod:`plugins.tasks.formats`;
the raw label strings of each file are mapped to class names by that file's explicit ``labels`` mapping in the
config.

Config (``loader`` block)::

    _target_: plugins.tasks.glue.TextClassificationLoader
    task: ${..name}
    pair: ${..pair}
    split_seed: 0
    hub:                                   # null: no hub source
      path: nyu-mll/glue
      name: sst2
      columns: {text_a: sentence, label: label, id: idx}   # id: null -> row position
      splits:
        test: {split: validation, id_offset: 1000000000}
        # a split from another hub dataset; optional: skipped with a warning when it cannot be loaded
        test_advglue: {path: AI-Secure/adv_glue, name: adv_sst2, split: validation, optional: true, ...}
      derive:                              # optional: split one source by hashed ids
        source: {split: train, id_offset: 0}
        fractions: {train: 0.9, validation: 0.1}
      drop_unlabelled: false               # drop label -1 rows (SNLI's no-consensus pairs)
    local:                                 # null: no local files
      folder: sst2
      splits:
        test: {file: dev.tsv, format: glue_sst2, labels: {"0": negative, "1": positive}, id_offset: ...}
        test_advglue: {file: ../advglue/dev.json, optional: true, format: advglue_sst2, ...}  # may be absent
      derive: {source: {file: train.tsv, ...}, fractions: {train: 0.9, validation: 0.1}}
      missing_hint: null                   # extra sentence for the missing-file error

Ids: ``id = id_offset + row id``, where the row id is the source's own id column (``idx`` on the hub,
``index`` / ``idx`` / ``id`` in files that have one, the IMDB file id) or else the 0-based row number. Offsets
are multiples of 10^9, one per source file or hub split, so ids are unique across splits; a source read both
from the hub and from a file with the same row ids gets the same offset in both (e.g. MNLI validation_matched
``idx`` = dev_matched ``index``), so such examples keep one id whichever way they are loaded.

Derived splits are decided by :func:`trustequiv.data.splits.hash_split` on these ids (logged with their
sizes), so
an example stays in its split when rows are added, dropped or reordered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from plugins.tasks.formats import FORMATS, read_rows
from trustequiv.data.labels import label_permutation, resolve_label
from trustequiv.data.splits import hash_split
from trustequiv.plain import plain
from trustequiv.user_errors import LabelMismatchError, MissingFileError, check_hub

__all__ = ["GlueTaskLoader", "TextClassificationLoader"]

logger = logging.getLogger(__name__)

#: where local task files go, for messages (the layout: README 'Local data').
LOCAL_DATA = "a folder of local task files (layout: README 'Local data')"

_SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class _Part:
    """Rows of one source (a file or a hub split) after label mapping."""

    origin: str
    ids: np.ndarray  # int64
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray  # int64, -1 unlabelled

    def take(self, positions: Sequence[int]) -> _Part:
        pos = np.asarray(positions, dtype=np.int64)
        return _Part(
            self.origin,
            self.ids[pos],
            [self.text_a[i] for i in pos],
            None if self.text_b is None else [self.text_b[i] for i in pos],
            self.labels[pos],
        )

    def __len__(self) -> int:
        return len(self.text_a)


def _check_layout(where: str, spec: Mapping[str, Any] | None, source_key: str) -> None:
    if spec is None:
        return
    splits = dict(spec.get("splits") or {})
    derive = spec.get("derive")
    names = list(splits)
    if derive is not None:
        if "source" not in derive or "fractions" not in derive:
            raise ValueError(f"{where}.derive needs `source` and `fractions`, got {sorted(derive)}")
        names += list(derive["fractions"])
        if source_key not in derive["source"]:
            raise ValueError(f"{where}.derive.source needs `{source_key}`, got {derive['source']}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: split(s) {dup} defined twice (in `splits` and in `derive.fractions`)")
    if not names:
        raise ValueError(f"{where}: no splits defined")
    for name, src in splits.items():
        if source_key not in src:
            raise ValueError(f"{where}.splits.{name} needs `{source_key}`, got {src}")


class TextClassificationLoader:
    """Load one text-classification task from the Hugging Face hub or from local files.

    Args:
        task: task name, for messages.
        pair: sentence-pair task (``text_a``, ``text_b``) or single text (``text_a``).
        hub: hub source spec (module docstring), or ``None`` when the task has no hub source (PAWS-QQP).
        local: local files spec (module docstring), or ``None`` when there are none.
        split_seed: seed of the hashed derived splits.
        aliases: extra label-name aliases for hub ClassLabel names (see
            :func:`trustequiv.data.labels.label_permutation`).

    Raises:
        ValueError: a malformed spec (a split defined twice, an unknown file format).
    """

    def __init__(
        self,
        task: str,
        pair: bool,
        hub: Mapping[str, Any] | None = None,
        local: Mapping[str, Any] | None = None,
        split_seed: int = 0,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.task = str(task)
        self.pair = bool(pair)
        self.hub = plain(hub)
        self.local = plain(local)
        self.split_seed = int(split_seed)
        self.aliases = dict(plain(aliases) or {})
        if self.hub is None and self.local is None:
            raise ValueError(f"task {self.task!r}: the loader needs a `hub` or a `local` source")
        _check_layout(f"task {self.task!r} loader.hub", self.hub, "split")
        _check_layout(f"task {self.task!r} loader.local", self.local, "file")
        if self.local is not None:
            for src in self._local_sources():
                if src["format"] not in FORMATS:
                    raise ValueError(
                        f"task {self.task!r}: unknown local format {src['format']!r} for {src['file']}; "
                        f"known: {list(FORMATS)}"
                    )

    # ------------------------------------------------------------------ public
    def load(self, data_dir: str | os.PathLike | None, label_names: Sequence[str]) -> Any:
        """Load the task's splits.

        Args:
            data_dir: the folder of local task files (``cfg.paths.data_dir``: one sub-folder per task, README
                'Local data'), or ``None`` for the hub.
            label_names: the task's canonical label order (``cfg.task.label_names``).

        Returns:
            ``datasets.DatasetDict`` with splits train/validation/test (as configured) plus extra splits,
            columns ``id`` int64, ``text_a`` str, ``text_b`` str (pair tasks), ``label`` int64 (-1 where
            unlabelled).

        Raises:
            trustequiv.user_errors.MissingFileError: a local file is missing, or the chosen source does not
            exist
                for this task; the message names the path and the fix (``paths.data_dir=...`` or the hub).
            trustequiv.user_errors.HubUnreachableError: ``data_dir`` is None and the hub does not answer
            (within
                seconds, not after the hub client's retries).
            ValueError: unknown columns or label values (naming file, row and value), ids not unique; a file
                that is not UTF-8 (naming file and line) or has no rows
                (trustequiv.user_errors.DataFileError).
            trustequiv.user_errors.LabelMismatchError: hub ClassLabel names do not match ``label_names``.
        """
        label_names = list(label_names)
        if data_dir is None:
            parts = self._load_hub(label_names)
        else:
            parts = self._load_local(Path(data_dir), label_names)
        self._check_unique_ids(parts)
        return self._to_dataset_dict(parts)

    # ------------------------------------------------------------------ hub
    def _hub_label_map(self, features: Any, column: str, label_names: list[str]) -> np.ndarray | None:
        """Table source index -> canonical index from a ClassLabel (None: use the explicit ``hub.labels``)."""

        feature = features[column]
        if isinstance(feature, datasets.ClassLabel):
            try:
                perm = label_permutation(feature.names, label_names, self.aliases)
            except LabelMismatchError as err:
                raise LabelMismatchError(
                    f"task {self.task!r}: the hub dataset {self.hub['path']}/{self.hub.get('name')} has "
                    f"labels {feature.names}, the task config label_names {label_names}: {err}"
                ) from None
            table = np.empty(len(perm), dtype=np.int64)
            for canonical, source in enumerate(perm):
                table[source] = canonical
            return table
        if self.hub.get("labels") is None:
            raise ValueError(
                f"task {self.task!r}: hub column {column!r} of {self.hub['path']} is {feature}, not a "
                f"ClassLabel; give loader.hub.labels (raw value -> class name) to map it"
            )
        return None

    def _load_hub(self, label_names: list[str]) -> dict[str, _Part]:

        hub = self.hub
        if hub is None:
            raise MissingFileError(
                f"task {self.task!r} has no Hugging Face hub source (paths.data_dir is null)",
                f"set paths.data_dir to {LOCAL_DATA}, holding {self.local['folder']}/",
            )
        kwargs = {"revision": hub["revision"]} if hub.get("revision") else {}
        args = [hub["path"]] + ([hub["name"]] if hub.get("name") else [])
        check_hub(
            f"task {self.task!r} data ({'/'.join(args)})",
            f"set paths.data_dir to {LOCAL_DATA}"
            if self.local is not None
            else f"task {self.task!r} has no local files: run it where the hub is reachable",
        )
        logger.info("task %s: loading %s from the Hugging Face hub", self.task, "/".join(args))
        dsd = datasets.load_dataset(*args, **kwargs)
        wanted, id_col = self._hub_columns(hub)

        def read(split_spec: Mapping[str, Any]) -> _Part | None:
            name = split_spec["split"]
            # A split may come from another hub dataset (e.g. AdvGLUE's adversarial dev sets).
            own = split_spec.get("path")
            src_args = [own] + ([split_spec["name"]] if split_spec.get("name") else []) if own else args
            try:
                source = datasets.load_dataset(*src_args) if own else dsd
            except Exception as err:  # datasets raises many types for an unreachable dataset
                if not split_spec.get("optional"):
                    raise
                logger.warning("task %s: optional hub dataset %s not loadable (%s)", self.task, own, err)
                return None
            origin = f"hub {'/'.join(src_args)} split {name!r}"
            if name not in source:
                if split_spec.get("optional"):
                    logger.warning("task %s: optional %s does not exist; skipped", self.task, origin)
                    return None
                raise ValueError(f"{origin} does not exist; the dataset has splits {list(source)}")
            ds = source[name]
            needed = list(wanted.values()) + ([id_col] if id_col else [])
            unknown = [c for c in needed if c not in ds.column_names]
            if unknown:
                raise ValueError(f"{origin}: columns {unknown} not found; it has {ds.column_names}")
            batch = ds.select_columns(needed)[:]
            labels = self._hub_labels(ds.features, batch, wanted["label"], hub, label_names, origin)
            n = len(labels)
            row_ids = np.asarray(batch[id_col], dtype=np.int64) if id_col else np.arange(n, dtype=np.int64)
            part = _Part(
                origin,
                int(split_spec.get("id_offset", 0)) + row_ids,
                list(batch[wanted["text_a"]]),
                list(batch[wanted["text_b"]]) if self.pair else None,
                labels.astype(np.int64),
            )
            if hub.get("drop_unlabelled"):
                keep = np.flatnonzero(part.labels >= 0)
                if len(keep) < n:
                    logger.info("%s: dropped %d unlabelled rows (label -1) of %d", origin, n - len(keep), n)
                    part = part.take(keep)
            return part

        parts = self._assemble(hub, read)
        self._check_labelled(parts)
        return parts

    def _hub_columns(self, hub: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
        """The hub columns read (``{"text_a", "label"[, "text_b"]}`` -> hub column) and the id column."""
        cols = dict(hub["columns"])
        wanted = {"text_a": cols["text_a"], "label": cols["label"]}
        if self.pair:
            if not cols.get("text_b"):
                raise ValueError(f"task {self.task!r} is a pair task but loader.hub.columns has no text_b")
            wanted["text_b"] = cols["text_b"]
        return wanted, cols.get("id")

    def _hub_labels(
        self,
        features: Any,
        batch: Mapping[str, Any],
        column: str,
        hub: Mapping[str, Any],
        label_names: list[str],
        origin: str,
    ) -> np.ndarray:
        """The task's label ids of a hub split's rows (-1: unlabelled): by ClassLabel or by raw value."""
        table = self._hub_label_map(features, column, label_names)
        raw = np.asarray(batch[column])
        if table is None:
            return self._map_raw_labels([str(v) for v in raw], hub["labels"], label_names, origin)
        raw = raw.astype(np.int64)
        bad = (raw < -1) | (raw >= len(table))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{origin}, row {i}: label value {raw[i]} outside the ClassLabel range")
        return np.where(raw < 0, -1, table[np.clip(raw, 0, None)])

    def _check_labelled(self, parts: Mapping[str, _Part]) -> None:
        """Raise ``ValueError`` for a hub split with rows but no label (GLUE's hidden test labels)."""
        for split, part in parts.items():
            if len(part) and (part.labels < 0).all():
                raise ValueError(
                    f"task {self.task!r}: split {split!r} ({part.origin}) is entirely unlabelled (label -1; "
                    f"GLUE hides its test labels); map {split!r} to a labelled hub split in loader.hub.splits"
                )

    # ------------------------------------------------------------------ local
    def _local_sources(self) -> list[Mapping[str, Any]]:
        srcs = list((self.local.get("splits") or {}).values())
        if self.local.get("derive") is not None:
            srcs.append(self.local["derive"]["source"])
        return srcs

    def _missing(self, path: Path) -> MissingFileError:
        hint = self.local.get("missing_hint")
        hub = self.hub
        hub_fix = (
            f", or drop paths.data_dir (paths.data_dir=null) to load {hub['path']}"
            f"{'/' + hub['name'] if hub.get('name') else ''} from the Hugging Face hub"
            if hub is not None
            else " (this task has no Hugging Face hub source)"
        )
        return MissingFileError(
            f"{path} not found: task {self.task!r} reads it from paths.data_dir"
            + (f". {hint}" if hint else ""),
            f"set paths.data_dir to {LOCAL_DATA}, holding {self.local['folder']}/{path.name}{hub_fix}",
        )

    def _load_local(self, data_dir: Path, label_names: list[str]) -> dict[str, _Part]:
        local = self.local
        if local is None:
            hub = self.hub
            raise MissingFileError(
                f"task {self.task!r} has no local files (paths.data_dir={data_dir})",
                f"drop paths.data_dir (paths.data_dir=null) to load {hub['path']} from the Hugging Face hub",
            )
        folder = data_dir / local["folder"]
        # Fail on the first missing file before parsing anything.
        for src in self._local_sources():
            path = folder / src["file"]
            if not path.is_file() and not src.get("optional"):
                raise self._missing(path)

        def read(src: Mapping[str, Any]) -> _Part | None:
            path = folder / src["file"]
            if not path.is_file():  # an optional extra split (e.g. AdvGLUE) whose file is not there
                logger.warning("task %s: optional file %s not found; its split is skipped", self.task, path)
                return None
            rows = read_rows(path, src["format"])
            if self.pair and rows.text_b is None:
                raise ValueError(
                    f"{path}: format {src['format']!r} has one text, task {self.task!r} is a pair task"
                )
            if "labels" not in src:
                raise ValueError(
                    f"task {self.task!r}: loader.local entry for {src['file']} needs a `labels` map"
                )
            labels = self._map_raw_labels(rows.labels, src["labels"], label_names, str(path))
            n = len(rows.text_a)
            row_ids = rows.ids if rows.ids is not None else np.arange(n, dtype=np.int64)
            logger.info("task %s: read %d rows from %s", self.task, n, path)
            return _Part(
                str(path),
                int(src.get("id_offset", 0)) + row_ids,
                rows.text_a,
                rows.text_b if self.pair else None,
                labels,
            )

        return self._assemble(local, read)

    # ------------------------------------------------------------------ shared
    def _map_raw_labels(
        self, raw: Sequence[str], mapping: Mapping[Any, Any], label_names: list[str], origin: str
    ) -> np.ndarray:
        """Raw label strings -> canonical indices through an explicit ``raw value -> class name`` map.

        A class name of ``null`` marks the raw value as unlabelled (-1).
        """
        canonical = {resolve_label(n, self.aliases): i for i, n in enumerate(label_names)}
        lookup: dict[str, int] = {}
        for key, name in mapping.items():
            if name is None:
                lookup[str(key)] = -1
                continue
            idx = canonical.get(resolve_label(str(name), self.aliases))
            if idx is None:
                raise ValueError(
                    f"task {self.task!r}: the label map of {origin} maps {key!r} to {name!r}, which is "
                    f"not one of label_names {label_names}"
                )
            lookup[str(key)] = idx
        try:
            return np.fromiter((lookup[v] for v in raw), dtype=np.int64, count=len(raw))
        except KeyError:
            i = next(i for i, v in enumerate(raw) if v not in lookup)
            raise ValueError(
                f"{origin}, data row {i + 1}: unknown label value {raw[i]!r} (known: {sorted(lookup)})"
            ) from None

    def _assemble(self, spec: Mapping[str, Any], read: Any) -> dict[str, _Part]:
        parts: dict[str, _Part] = {}
        derive = spec.get("derive")
        if derive is not None:
            source = read(derive["source"])
            positions = hash_split(source.ids.tolist(), dict(derive["fractions"]), seed=self.split_seed)
            for split, pos in positions.items():
                parts[split] = source.take(pos)
            logger.info(
                "task %s: split %s by hashed example ids (seed %d) into %s",
                self.task,
                source.origin,
                self.split_seed,
                {k: len(v) for k, v in positions.items()},
            )
        for split, src in (spec.get("splits") or {}).items():
            part = read(src)
            if part is not None:  # None: an optional split that is not available
                parts[split] = part
        order = [s for s in _SPLIT_ORDER if s in parts] + [s for s in parts if s not in _SPLIT_ORDER]
        return {s: parts[s] for s in order}

    def _check_unique_ids(self, parts: Mapping[str, _Part]) -> None:
        ids = np.concatenate([p.ids for p in parts.values()]) if parts else np.empty(0, np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != len(ids):
            dup = int(uniq[counts > 1][0])
            where = [f"{s} ({p.origin})" for s, p in parts.items() if (p.ids == dup).any()]
            raise ValueError(
                f"task {self.task!r}: example id {dup} occurs more than once, in {where}; give each source "
                f"its own id_offset in the loader config"
            )

    def _to_dataset_dict(self, parts: Mapping[str, _Part]) -> Any:

        features = {"id": datasets.Value("int64"), "text_a": datasets.Value("string")}
        if self.pair:
            features["text_b"] = datasets.Value("string")
        features["label"] = datasets.Value("int64")
        out = {}
        for split, part in parts.items():
            columns: dict[str, Any] = {"id": part.ids, "text_a": part.text_a}
            if self.pair:
                columns["text_b"] = part.text_b
            columns["label"] = part.labels
            out[split] = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        logger.info("task %s: splits %s", self.task, {k: len(v) for k, v in parts.items()})
        return datasets.DatasetDict(out)


#: The name the task configs' ``_target_`` may use.
GlueTaskLoader = TextClassificationLoader
