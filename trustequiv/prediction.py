"""The one way model outputs are computed: once per (model content, task, split content, settings), through
the output cache, resumable by batch. Task kinds supply how to predict batches and how to assemble them.

A prediction writes each finished batch into the entry's partial dir (:class:`trustequiv.cache.
PartialPredictionWriter`); a killed run resumes with the rows not yet done. When all are done, the task kind
assembles the batches into :class:`~trustequiv.outputs.ModelOutputs`, which are saved whole (tensors, then
per-row columns and info as JSON; the entry counts only once its metadata file exists) and the partial dir
is removed. The entry is locked while it is checked and computed, so two runs on one cache never write the
same entry at once: the second waits and reads the first's result.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from trustequiv.cache import OutputCache, content_key, distributed_rank
from trustequiv.outputs import ModelOutputs

log = logging.getLogger(__name__)

#: bump when what an entry holds changes meaning, so old entries are not reused.
#: 3: keys hold the split's content fingerprint (a changed data file is never served stale outputs), and every
#: task kind goes through this one mechanism.
CACHE_VERSION = 3


def output_key(
    *,
    kind: str,
    fingerprint: str,
    task: str,
    split: str,
    data: str,
    settings: Mapping[str, Any],
) -> str:
    """Cache key of one model's outputs: what they depend on and nothing else (batch size excluded).

    Args:
        kind: the task kind; fingerprint: the model's content hash; task, split: names;
        data: the split's content fingerprint (:func:`trustequiv.data.splits.split_fingerprint`);
        settings: everything else the outputs depend on (max_length, pooling, declared label names ...).
    """
    return content_key(
        version=CACHE_VERSION,
        kind=kind,
        checkpoint=fingerprint,
        task=task,
        split=split,
        data=data,
        settings=dict(settings),
    )


def _columns_key(key: str) -> str:
    return content_key(kind="columns", outputs=key)


def load_cached(
    cache: OutputCache, key: str, name: str, expected_ids: Iterable[int] | None = None
) -> ModelOutputs | None:
    """The finished entry ``key`` with its per-row columns and info, renamed ``name``; None if absent (an
    entry whose ids differ from ``expected_ids`` is set aside by the cache)."""
    out = cache.load(key, name, expected_ids)
    if out is None:
        return None
    side = cache.load_extras(_columns_key(key))
    if side is None:
        return None
    return dataclasses.replace(out, columns=side.get("columns", {}), info=side.get("info", {}))


def save_outputs(cache: OutputCache, key: str, outputs: ModelOutputs, meta: Mapping[str, Any]) -> None:
    """Save a finished entry: columns and info first, then tensors and metadata (which make it present)."""
    cache.save_extras(
        _columns_key(key), {"columns": {k: list(v) for k, v in outputs.columns.items()}, "info": outputs.info}
    )
    cache.save(key, outputs, meta)


def cached_prediction(
    cache: OutputCache,
    key: str,
    *,
    name: str,
    run: Callable[[set[int]], None],
    assemble: Callable[[list[dict[str, torch.Tensor]]], ModelOutputs],
    id_key: str = "example_id",
    meta: Mapping[str, Any] | None = None,
    expected_ids: Iterable[int] | None = None,
) -> tuple[ModelOutputs, bool]:
    """``(outputs, was_cached)`` for ``key``: the finished entry, or computed.

    The entry's lock is held from the cache check to the save: a second run on the same key waits, then
    returns the first's entry as cached. On a distributed job's non-zero ranks, rank 0 assembles and saves;
    the others wait for its lock and read the entry.

    Args:
        run: ``run(done)`` predicts every row (example or window) whose ``id_key`` value is not in ``done``,
            writing batches into ``cache.partial_dir(key)``.
        assemble: the batches written (a list of dicts of tensors, in file order) -> the outputs.
        expected_ids: the example ids the outputs must hold; a finished entry with other ids is set aside and
            recomputed.

    Raises:
        RuntimeError: the prediction wrote nothing, or outputs for other examples than ``expected_ids``.
    """
    want = None if expected_ids is None else sorted({int(i) for i in expected_ids})
    with cache.lock(key):
        cached = load_cached(cache, key, name, want)
        if cached is not None:
            return cached, True
        done = cache.partial_files(key)
        done_ids = {int(i) for b in done for i in b[id_key].tolist()}
        if done_ids:
            log.info("%s: resuming prediction, %d rows already in the cache", name, len(done_ids))
        run(done_ids)
        if distributed_rank() > 0:
            with cache.lock(key, any_rank=True):  # rank 0 holds it until the entry is saved
                finished = load_cached(cache, key, name, want)
            if finished is not None:
                return finished, False
        parts = cache.partial_files(key)
        if not parts:
            raise RuntimeError(f"{name}: prediction wrote no outputs to {cache.partial_dir(key)}")
        outputs = dataclasses.replace(assemble(parts), name=name)
        if want is not None and sorted(outputs.example_ids.tolist()) != want:
            raise RuntimeError(
                f"{name}: prediction wrote outputs for {len(outputs)} examples, {len(want)} were requested "
                f"({cache.partial_dir(key)}); rerun the same command to resume"
            )
        save_outputs(cache, key, outputs, dict(meta or {}))
        cache.clear_partial(key)
        return outputs, False


def unique_rows(
    parts: list[dict[str, torch.Tensor]], id_key: str = "example_id", keep_ids: Iterable[int] | None = None
) -> dict[str, torch.Tensor]:
    """The batches concatenated, one row per ``id_key`` value (a resumed batch may overlap), sorted by it;
    with ``keep_ids``, only rows of those ids (a stale batch of a resumed run may hold others)."""
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    ids = cat[id_key]
    order = torch.argsort(ids, stable=True)
    ids_sorted = ids[order]
    first = torch.ones_like(ids_sorted, dtype=torch.bool)
    first[1:] = ids_sorted[1:] != ids_sorted[:-1]
    if keep_ids is not None:
        first &= torch.isin(ids_sorted, torch.tensor(sorted({int(i) for i in keep_ids}), dtype=ids.dtype))
    return {k: v[order[first]] for k, v in cat.items()}


def assemble_rows(
    name: str, label_names: tuple[str, ...], keep_ids: Iterable[int] | None = None
) -> Callable[[list[dict[str, torch.Tensor]]], ModelOutputs]:
    """An ``assemble`` for predictions written one row per example (``example_id``, ``logits``, ``labels``,
    optional ``embeddings`` / ``correct``): the outputs ordered by example id."""

    def assemble(parts: list[dict[str, torch.Tensor]]) -> ModelOutputs:
        rows = unique_rows(parts, keep_ids=keep_ids)
        return ModelOutputs(
            name=name,
            example_ids=rows["example_id"],
            logits=rows.get("logits"),
            labels=rows["labels"],
            label_names=label_names,
            embeddings=rows.get("embeddings"),
            correct=rows["correct"].bool() if "correct" in rows else None,
        )

    return assemble
