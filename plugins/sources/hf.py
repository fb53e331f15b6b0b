"""Model source ``hf``: a Hugging Face checkpoint (local dir or hub id), fine-tuned on the task here, named by
the model zoo for the task, or given as ``model.checkpoint``; compressors apply when it is built or loaded.

Which checkpoint (first that exists): ``model.checkpoint``; the fine-tuned one in
``<paths.models_dir>/<task>/<name>``; the model's zoo entry for the task (``zoo:`` in ``conf/model/*.yaml``,
a published fine-tuned checkpoint on the hub, with its declared label order); else it is fine-tuned when
``train_missing=true`` (a compressed candidate from its base), or the run stops naming the command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from trustequiv.data.splits import split_fingerprint
from trustequiv.models.fingerprint import fingerprint
from trustequiv.models.handle import ModelHandle
from trustequiv.models.loading import check_model_inputs, checkpoint_label_names, read_metadata
from trustequiv.models.scorer import TorchTextScorer
from trustequiv.models.source import ModelSource, RunContext
from trustequiv.models.spec import ModelSpec, local_dir, resolve_checkpoint
from trustequiv.models.zoo import zoo_entry
from trustequiv.outputs import ModelOutputs
from trustequiv.train.checkpoints import ensure_checkpoint


def with_zoo(spec: ModelSpec, model_cfg: Mapping[str, Any], task: str, models_dir: str) -> ModelSpec:
    """``spec`` pointed at its zoo checkpoint for ``task`` when it has neither an explicit nor a locally
    fine-tuned checkpoint (a compressed spec: its base)."""
    if spec.base is not None:
        return dataclasses.replace(spec, base=with_zoo(spec.base, model_cfg, task, models_dir))
    if resolve_checkpoint(spec, task, models_dir):
        return spec
    entry = zoo_entry(model_cfg, task)
    if not entry:
        return spec
    return dataclasses.replace(
        spec,
        checkpoint=entry["checkpoint"],
        label_names=entry.get("label_names") or spec.label_names,
        revision=entry.get("revision") or spec.revision,
    )


class HFSource(ModelSource):
    """A transformers checkpoint run through torch (scorer and gradients available)."""

    kind = "hf"
    provides = frozenset({"scorer", "gradients"})

    def __init__(self, model_cfg: Mapping[str, Any], compressor_cfg: Mapping[str, Any] | None = None):
        self.model_cfg = dict(model_cfg)
        self.spec = ModelSpec.from_config(self.model_cfg, compressor_cfg)
        self.name = self.spec.name
        self.fingerprint = ""
        self.directory = None
        self._loaded = None

    def fine_tune_spec(self) -> ModelSpec:
        return self.spec

    def replica(self, seed: int, ctx: RunContext) -> tuple[ModelSource | None, str]:
        task = ctx.task_cfg["name"]
        if self.spec.compressor:
            return None, f"{self.name} is compressed: a noise floor re-fine-tunes an uncompressed reference"
        if self.spec.checkpoint:
            return None, (
                f"{self.name} is a checkpoint made elsewhere (model.checkpoint): there is no recipe here to "
                "repeat with another seed"
            )
        found = resolve_checkpoint(self.spec, task, ctx.models_dir)
        if not found and zoo_entry(self.model_cfg, task):
            return None, (
                f"{self.name} on {task} is a published checkpoint (the model zoo), not fine-tuned here: "
                "there is no recipe to repeat with another seed"
            )
        if found and read_metadata(found).get("seed") == seed:
            return None, f"{self.name} was itself fine-tuned with seed {seed}"
        # The replica never takes the zoo's checkpoint: it is fine-tuned here or found where train.py put it.
        replica = HFSource({**self.model_cfg, "zoo": None}, None)
        replica.spec = dataclasses.replace(self.spec, name=f"{self.name}+seed{seed}", seed=int(seed))
        replica.name = replica.spec.name
        return replica, ""

    def prepare(self, ctx: RunContext) -> dict[str, Any]:
        self.spec = with_zoo(self.spec, self.model_cfg, ctx.task_cfg["name"], ctx.models_dir)
        checkpoint = ensure_checkpoint(self.spec, ctx, allow_train=ctx.allow_train)
        self.directory = local_dir(checkpoint, self.spec.revision)
        # Before hashing and predicting: a setting the model cannot take, or a garbage config, in one line.
        check_model_inputs(
            self.directory, ctx.task_cfg, ctx.predict_cfg, trust_remote_code=self.spec.trust_remote_code
        )
        self.fingerprint = fingerprint(self.directory, ctx.memo_file)
        return {
            "checkpoint": str(self.directory),
            "fingerprint": self.fingerprint,
            "metadata": read_metadata(self.directory),
            "source": self.kind,
        }

    def _load(self, ctx: RunContext):
        if self._loaded is None:  # at most once per model, and only when something is not cached
            self._loaded = ctx.kind.load_model(
                self.directory,
                ctx.task_cfg,
                declared_label_names=self.spec.label_names,
                revision=self.spec.revision,
                trust_remote_code=self.spec.trust_remote_code,
                memo_file=ctx.memo_file,
            )
        return self._loaded

    def outputs(
        self, data, task_cfg: Mapping[str, Any], split: str, ctx: RunContext
    ) -> tuple[ModelOutputs, bool]:
        return ctx.kind.predict(
            self.name,
            self.fingerprint,
            lambda: self._load(ctx),
            data,
            task_cfg=task_cfg,
            split=split,
            cache=ctx.cache,
            trainer_cfg=ctx.trainer_cfg,
            predict_cfg=ctx.predict_cfg,
            key_extra={"data": split_fingerprint(data), "declared_label_names": self.spec.label_names},
        )

    def handle(self, ctx: RunContext) -> ModelHandle:

        return TorchTextScorer.handle(
            self._load(ctx), name=self.name, fingerprint=self.fingerprint, source=self.kind
        )

    def release(self) -> None:
        self._loaded = None

    def column_label_names(self) -> list[str] | None:

        try:
            return checkpoint_label_names(self.directory, self.spec.label_names)
        except (OSError, ValueError):
            return None
