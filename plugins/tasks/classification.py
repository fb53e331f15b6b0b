"""Task kind ``classification``: single-text and sentence-pair classification (GLUE, SNLI, IMDB ...).

Models are ``AutoModelForSequenceClassification`` checkpoints whose classes are matched to the task's label
names (:func:`trustequiv.models.loading.load_classifier`); outputs hold per example the logits in canonical
label
order, the gold label and the pooled embedding
(:class:`trustequiv.train.lightning_module.SequenceClassifier`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from trustequiv.cache import PartialPredictionWriter
from trustequiv.data.batches import EncodedSplit, TaskDataModule, encode_split
from trustequiv.data.task_kind import TaskKind
from trustequiv.models.loading import load_classifier, load_tokenizer
from trustequiv.models.spec import ModelSpec, local_dir
from trustequiv.outputs import ModelOutputs
from trustequiv.prediction import assemble_rows, cached_prediction, output_key
from trustequiv.train.fine_tune import Recipe, optimizer_settings
from trustequiv.train.lightning_module import SequenceClassifier
from trustequiv.train.trainer import make_trainer

log = logging.getLogger(__name__)


def new_classifier(spec: ModelSpec, task_cfg: Mapping[str, Any]):
    """``(model, tokenizer)``: ``spec.pretrained`` with a new classification head over the task's labels."""

    label_names = list(task_cfg["label_names"])
    directory = local_dir(spec.pretrained, spec.revision)
    tokenizer = load_tokenizer(directory, trust_remote_code=spec.trust_remote_code)  # first: fails at once
    id2label = dict(enumerate(label_names))
    model = AutoModelForSequenceClassification.from_pretrained(
        directory,
        num_labels=len(label_names),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,  # a checkpoint fine-tuned on another task brings a head of another size
        trust_remote_code=spec.trust_remote_code,
    )
    return model, tokenizer


def fit_inputs(dataset, tokenizer, task_cfg: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``Trainer.fit`` inputs: the train and validation splits, tokenized once, bucketed batches."""
    pair, max_length = bool(task_cfg["pair"]), int(task_cfg["max_length"])
    splits = {
        s: encode_split(dataset[s], tokenizer, pair=pair, max_length=max_length, name=s)
        for s in ("train", "validation")
    }
    log.info(
        "%s: %d train / %d validation examples",
        task_cfg["name"],
        len(splits["train"]),
        len(splits["validation"]),
    )
    bs = int(task_cfg["training"]["batch_size"])
    return {"datamodule": TaskDataModule(splits, tokenizer, batch_size=bs, eval_batch_size=64, seed=seed)}


RECIPE = Recipe(
    new_model=new_classifier,
    load_base=lambda checkpoint, task_cfg: load_classifier(checkpoint, list(task_cfg["label_names"])),
    make_module=lambda model, task_cfg: SequenceClassifier(
        model, num_labels=len(task_cfg["label_names"]), **optimizer_settings(task_cfg["training"])
    ),
    fit_inputs=fit_inputs,
)


class Classification(TaskKind):
    """Text classification: one row per example, logits over the task's classes."""

    name = "classification"

    def recipe(self) -> Recipe:
        return RECIPE

    def load_model(
        self, directory: Path, task_cfg: Mapping[str, Any], *, declared_label_names=None, **kwargs
    ):
        return load_classifier(
            str(directory), list(task_cfg["label_names"]), declared_label_names=declared_label_names, **kwargs
        )

    def predict(
        self,
        name: str,
        fingerprint: str,
        load: Callable[[], Any],
        split_data,
        *,
        task_cfg: Mapping[str, Any],
        split: str,
        cache: Any,
        trainer_cfg: Mapping[str, Any],
        predict_cfg: Mapping[str, Any],
        key_extra: Mapping[str, Any],
    ) -> tuple[ModelOutputs, bool]:
        label_names = tuple(task_cfg["label_names"])
        ids = [int(i) for i in split_data["id"]]
        max_length = int(task_cfg["max_length"])
        pooling, layer = predict_cfg.get("pooling", "cls"), int(predict_cfg.get("layer", -1))
        key = self._output_key(fingerprint, task_cfg, split, key_extra, max_length, pooling, layer)

        def run(done_ids: set[int]) -> None:
            loaded = load()
            enc = encode_split(
                split_data, loaded.tokenizer, pair=bool(task_cfg["pair"]), max_length=max_length, name=split
            )
            todo = [k for k, i in enumerate(enc.example_ids) if i not in done_ids]
            if not todo:
                return
            encoded: dict[str, EncodedSplit] = {split: enc.subset(todo)}
            n_labels = len(label_names)
            module, dm = _predict_inputs(loaded, encoded, n_labels, split, pooling, layer, predict_cfg)
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

        meta = {
            "model": name,
            "task": task_cfg["name"],
            "split": split,
            "checkpoint_fingerprint": fingerprint,
        }
        return cached_prediction(
            cache,
            key,
            name=name,
            run=run,
            assemble=assemble_rows(name, label_names, keep_ids=ids),
            meta=meta,
            expected_ids=ids,
        )

    def _output_key(
        self,
        fingerprint: str,
        task_cfg: Mapping[str, Any],
        split: str,
        key_extra: Mapping[str, Any],
        max_length: int,
        pooling: str,
        layer: int,
    ) -> str:
        """The prediction cache key of one model and split."""
        return output_key(
            kind=self.name,
            fingerprint=fingerprint,
            task=task_cfg["name"],
            split=split,
            data=key_extra["data"],
            settings={
                "max_length": max_length,
                "pooling": pooling,
                "layer": layer,
                "declared_label_names": key_extra.get("declared_label_names"),
            },
        )


def _predict_inputs(
    loaded: Any,
    encoded: dict[str, EncodedSplit],
    num_labels: int,
    split: str,
    pooling: str,
    layer: int,
    predict_cfg: Mapping[str, Any],
) -> tuple[SequenceClassifier, TaskDataModule]:
    """The Lightning module and data module that predict the ``encoded`` rows of ``split``."""
    module = SequenceClassifier(
        loaded.model,
        num_labels=num_labels,
        label_permutation=loaded.label_permutation,
        pooling=pooling,
        layer=layer,
    )
    dm = TaskDataModule(
        encoded,
        loaded.tokenizer,
        eval_batch_size=int(predict_cfg.get("batch_size", 64)),
        num_workers=int(predict_cfg.get("num_workers", 0)),
        predict_split=split,
    )
    return module, dm


KIND = Classification()
