"""Fine-tuning (and compressing) one model on one task into a Hugging Face checkpoint directory."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from trustequiv.data import TaskDataModule, encode_split
from trustequiv.models import (
    ModelSpec,
    build_compressor,
    load_classifier,
    local_dir,
    read_metadata,
    write_metadata,
)
from trustequiv.module import SequenceClassifier
from trustequiv.runtime import make_trainer

log = logging.getLogger(__name__)


class BestHFCheckpoint(Callback):
    """After each validation, saves the model in Hugging Face format (safetensors + tokenizer) when
    ``monitor`` improved. Only the global-zero process writes; the directory is replaced atomically.
    """

    def __init__(self, directory: str | Path, tokenizer, monitor: str = "val/acc", mode: str = "max"):
        self.directory, self.tokenizer, self.monitor, self.mode = Path(directory), tokenizer, monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not self._improved(value):
            return
        self.best, self.best_epoch = value, trainer.current_epoch
        if trainer.is_global_zero:
            save_hf(pl_module.model, self.tokenizer, self.directory)
            log.info(
                "saved best checkpoint (%s=%.4f, epoch %d) to %s",
                self.monitor,
                value,
                trainer.current_epoch,
                self.directory,
            )


def save_hf(model, tokenizer, directory: Path) -> None:
    """Save ``model`` and ``tokenizer`` to ``directory`` (safetensors), replacing it only once complete."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _new_classifier(pretrained: str, label_names: list[str], revision: str | None, trust_remote_code: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = local_dir(pretrained, revision)
    id2label = dict(enumerate(label_names))
    model = AutoModelForSequenceClassification.from_pretrained(
        directory,
        num_labels=len(label_names),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,  # a checkpoint fine-tuned on another task brings a head of another size
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    return model, tokenizer


def optimizer_settings(training: Mapping[str, Any]) -> dict[str, float]:
    """AdamW settings of a task's ``training`` block (learning rate, weight decay, warmup share)."""
    return {
        "learning_rate": float(training["learning_rate"]),
        "weight_decay": float(training.get("weight_decay", 0.01)),
        "warmup_ratio": float(training.get("warmup_ratio", 0.1)),
    }


@dataclass(frozen=True)
class Recipe:
    """What differs between task families when fine-tuning; :func:`fine_tune` does the rest.

    Attributes:
        new_model: ``(spec, task_cfg) -> (model, tokenizer)`` from the pretrained weights, new head.
        load_base: ``(checkpoint, task_cfg) -> LoadedModel``: the fine-tuned base of a compressed model.
        make_module: ``(model, task_cfg) -> LightningModule``.
        fit_inputs: ``(dataset, tokenizer, task_cfg, seed) -> kwargs of Trainer.fit`` (datamodule or loaders).
        monitor, mode: the validation metric that picks the best checkpoint (recorded as ``best_<monitor>``).
        metadata: ``task_cfg -> extra trustequiv.json entries``.
    """

    new_model: Callable[[ModelSpec, Mapping[str, Any]], tuple[Any, Any]]
    load_base: Callable[[str, Mapping[str, Any]], Any]
    make_module: Callable[[Any, Mapping[str, Any]], L.LightningModule]
    fit_inputs: Callable[[Any, Any, Mapping[str, Any], int], dict[str, Any]]
    monitor: str = "val/acc"
    mode: str = "max"
    metadata: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=lambda task_cfg: {})


def _classification_inputs(dataset, tokenizer, task_cfg: Mapping[str, Any], seed: int) -> dict[str, Any]:
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


CLASSIFICATION = Recipe(
    new_model=lambda spec, task_cfg: _new_classifier(
        spec.pretrained, list(task_cfg["label_names"]), spec.revision, spec.trust_remote_code
    ),
    load_base=lambda checkpoint, task_cfg: load_classifier(checkpoint, list(task_cfg["label_names"])),
    make_module=lambda model, task_cfg: SequenceClassifier(
        model, num_labels=len(task_cfg["label_names"]), **optimizer_settings(task_cfg["training"])
    ),
    fit_inputs=_classification_inputs,
)


def fine_tune(
    spec: ModelSpec,
    dataset,
    *,
    task_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    out_dir: Path,
    seed: int = 42,
    base_checkpoint: str | None = None,
    logger: Any = False,
    recipe: Recipe = CLASSIFICATION,
) -> Path:
    """Make ``spec``'s fine-tuned checkpoint at ``out_dir`` and return it.

    Plain models start from ``spec.pretrained`` with a new head. Compressed models start from
    ``base_checkpoint`` (the fine-tuned base model): the compressor's :meth:`compress` runs, then fine-tuning
    when the compressor asks for it; otherwise the weights are copied with the compressor's recipe so it is
    applied at load time. ``trustequiv.json`` records task, labels, provenance and the best validation
    metric. ``recipe`` says what is specific to the task family (classification by default; QA in
    :mod:`trustequiv.qa`).

    Raises:
        ValueError: the dataset has no ``train``/``validation`` split, or a compressed spec lacks its base.
    """
    for split in ("train", "validation"):
        if split not in dataset:
            raise ValueError(
                f"task {task_cfg['name']} has no '{split}' split to fine-tune on (has {list(dataset)}); "
                "it is an evaluation-only set: fine-tune on its source task and evaluate here"
            )
    started = time.time()
    L.seed_everything(seed, workers=True)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {
        "model": spec.name,
        "task": task_cfg["name"],
        "label_names": list(task_cfg["label_names"]),
        "pretrained": spec.pretrained,
        "seed": seed,
        "training": dict(task_cfg["training"]),
        **recipe.metadata(task_cfg),
    }

    compressor = build_compressor(spec.compressor) if spec.compressor else None
    if compressor is not None:
        if base_checkpoint is None:
            raise ValueError(f"{spec.name}: a compressed model needs the fine-tuned base checkpoint")
        base = recipe.load_base(base_checkpoint, task_cfg)
        model, tokenizer = compressor.compress(base.model), base.tokenizer
        metadata.update(base_checkpoint=str(base.directory), base_fingerprint=base.fingerprint)
        metadata["compression"] = compressor.recipe()
        if not compressor.finetune:
            # Nothing to train: keep the fp32 weights and the recipe the loader applies.
            save_hf(model, tokenizer, out_dir)
            metadata["compressor"] = dict(spec.compressor)
            metadata["seconds"] = round(time.time() - started, 1)
            write_metadata(out_dir, metadata)
            return out_dir
    else:
        model, tokenizer = recipe.new_model(spec, task_cfg)

    fit_inputs = recipe.fit_inputs(dataset, tokenizer, task_cfg, seed)
    module = recipe.make_module(model, task_cfg)
    # from_pretrained returns eval mode and Lightning keeps submodule modes: without this, no dropout.
    model.train()
    # Best checkpoints go to a staging dir moved into place only when fit completes: a killed run never
    # leaves a half-trained model where evaluate.py would take it for a finished one.
    staging = out_dir.with_name(f"{out_dir.name}.training")
    shutil.rmtree(staging, ignore_errors=True)
    best = BestHFCheckpoint(staging, tokenizer, monitor=recipe.monitor, mode=recipe.mode)
    trainer = make_trainer(trainer_cfg, callbacks=[best], enable_checkpointing=False, logger=logger)
    log.info("fine-tuning %s on %s", spec.name, task_cfg["name"])
    trainer.fit(module, **fit_inputs)
    if trainer.is_global_zero:
        if best.best is None:  # no validation ran (e.g. limit_val_batches=0): keep the last weights
            save_hf(module.model, tokenizer, staging)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
        metadata.update(
            {f"best_{recipe.monitor.replace('/', '_')}": best.best},
            best_epoch=best.best_epoch,
            epochs_run=trainer.current_epoch,
            seconds=round(time.time() - started, 1),
            torch=torch.__version__,
        )
        write_metadata(out_dir, {**read_metadata(out_dir), **metadata})
    return out_dir
