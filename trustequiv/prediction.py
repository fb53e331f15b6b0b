"""Model outputs for one (checkpoint, task, split): computed once through Lightning predict, then cached."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from trustequiv.cache import OutputCache, PartialPredictionWriter, content_key
from trustequiv.data import EncodedSplit, TaskDataModule, encode_split
from trustequiv.models import LoadedModel
from trustequiv.module import SequenceClassifier
from trustequiv.outputs import ModelOutputs
from trustequiv.runtime import make_trainer

log = logging.getLogger(__name__)

#: bump when predict_step's semantics change, so old cache entries are not reused.
CACHE_VERSION = 1


def output_key(
    fingerprint: str,
    task: str,
    split: str,
    example_ids: list[int],
    max_length: int,
    predict_cfg: Mapping[str, Any],
    declared_label_names: list[str] | None = None,
) -> str:
    """Cache key of one model's outputs: what the outputs depend on, nothing else (batch size excluded)."""
    return content_key(
        version=CACHE_VERSION,
        checkpoint=fingerprint,
        declared_label_names=declared_label_names,
        task=task,
        split=split,
        ids=content_key(ids=sorted(example_ids)),
        max_length=max_length,
        pooling=predict_cfg.get("pooling", "cls"),
        layer=predict_cfg.get("layer", -1),
    )


def predict_outputs(
    name: str,
    fingerprint: str,
    load: Callable[[], LoadedModel],
    split_data,
    *,
    task_cfg: Mapping[str, Any],
    split: str,
    cache: OutputCache,
    trainer_cfg: Mapping[str, Any],
    predict_cfg: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    declared_label_names: list[str] | None = None,
) -> tuple[ModelOutputs, bool]:
    """Outputs of the model that ``load()`` returns on ``split_data`` (a datasets split with
    id/text_a/[text_b]/label); ``fingerprint`` is the checkpoint's content hash.

    Returns (outputs, was_cached). A second call with the same checkpoint content, task, split and settings
    neither loads the model nor runs a forward pass; a killed call resumes from the batches already written.
    """
    label_names = tuple(task_cfg["label_names"])
    ids = [int(i) for i in split_data["id"]]
    key = output_key(
        fingerprint,
        task_cfg["name"],
        split,
        ids,
        int(task_cfg["max_length"]),
        predict_cfg,
        declared_label_names,
    )
    encoded: dict[str, EncodedSplit] = {}

    def run(done_ids: set[int]) -> None:
        loaded = load()
        enc = encode_split(
            split_data,
            loaded.tokenizer,
            pair=bool(task_cfg["pair"]),
            max_length=int(task_cfg["max_length"]),
            name=split,
        )
        todo = [k for k, i in enumerate(enc.example_ids) if i not in done_ids]
        encoded[split] = enc.subset(todo)
        if not todo:
            return
        module = SequenceClassifier(
            loaded.model,
            num_labels=len(label_names),
            label_permutation=loaded.label_permutation,
            pooling=predict_cfg.get("pooling", "cls"),
            layer=int(predict_cfg.get("layer", -1)),
        )
        dm = TaskDataModule(
            encoded,
            loaded.tokenizer,
            eval_batch_size=int(predict_cfg.get("batch_size", 64)),
            num_workers=int(predict_cfg.get("num_workers", 0)),
            predict_split=split,
        )
        writer = PartialPredictionWriter(cache.partial_dir(key))
        trainer = make_trainer(
            trainer_cfg,
            cpu_only=loaded.cpu_only,
            callbacks=[writer],
            enable_checkpointing=False,
            inference_mode=True,
        )
        log.info("%s: predicting %d examples of %s/%s", name, len(todo), task_cfg["name"], split)
        trainer.predict(module, datamodule=dm, return_predictions=False)
        if trainer.world_size > 1:
            torch.distributed.barrier()

    info = {"model": name, "task": task_cfg["name"], "split": split, "checkpoint_fingerprint": fingerprint}
    info.update(meta or {})
    return cache.get_or_predict(key, name, label_names, run, info)
