"""Fine-tuned checkpoints of Hugging Face models: find one, or fine-tune (and compress) it when allowed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustequiv.cache import distributed_rank, path_lock
from trustequiv.models.compressor import build_compressor
from trustequiv.models.loading import check_model_inputs, read_metadata, write_metadata
from trustequiv.models.spec import ModelSpec, local_dir, resolve_checkpoint
from trustequiv.tracking import model_logger
from trustequiv.train.fine_tune import fine_tune
from trustequiv.train.trust_callbacks import trust_callbacks

log = logging.getLogger(__name__)


def ensure_checkpoint(spec: ModelSpec, ctx: Any, *, allow_train: bool) -> str:
    """The fine-tuned checkpoint of ``spec`` on the task of ``ctx`` (a
    :class:`~trustequiv.models.source.RunContext`); trained (and compressed) first when missing and
    ``allow_train``, under a lock on its directory.

    Raises:
        FileNotFoundError: missing and not allowed to train (the message gives the command that makes it).
    """
    task = ctx.task_cfg["name"]
    found = resolve_checkpoint(spec, task, ctx.models_dir)
    if found:
        return found
    out_dir = spec.default_dir(ctx.models_dir, task)
    if not allow_train:
        comp = f" compressor={spec.compressor['name']}" if spec.compressor else ""
        base = spec.base.name if spec.base else spec.name
        if spec.seed is not None:  # a noise-floor replica: the reference again, another seed
            base, comp = spec.name.rpartition("+seed")[0], f" seed={spec.seed} model.name={spec.name}"
        raise FileNotFoundError(
            f"no fine-tuned checkpoint for {spec.name} on {task} at {out_dir}. Make it with "
            f"`python train.py model={base}{comp} task={task}`, point model.checkpoint at one, "
            "or add train_missing=true"
        )
    # One process builds it; another run started meanwhile (a parallel sweep) waits, then takes it.
    with path_lock(out_dir):
        found = resolve_checkpoint(spec, task, ctx.models_dir)
        if found:
            return found
        log.info("training missing checkpoint %s on %s", spec.name, task)
        return str(build_checkpoint(spec, ctx))


def build_checkpoint(spec: ModelSpec, ctx: Any) -> Path:
    """Fine-tune (and compress) ``spec`` into its default dir with the task kind's recipe; a compressed
    model's base is made first if missing (and, re-fine-tuned, trust against it is logged while it trains:
    ``callbacks.trust``)."""

    compressor = build_compressor(spec.compressor) if spec.compressor else None
    base_checkpoint = None
    if spec.base is not None:
        base_checkpoint = ensure_checkpoint(spec.base, ctx, allow_train=True)
    # The models the fine-tuning feeds task.max_length tokens: the base it starts from, or the pretrained
    # model (a distilled student too, beside its teacher). Refused here, not at the first long text.
    starts = [base_checkpoint] if base_checkpoint else []
    if compressor is None or compressor.distills:
        starts.append(str(local_dir(spec.pretrained, spec.revision)))
    for start in starts:
        check_model_inputs(start, ctx.task_cfg, trust_remote_code=spec.trust_remote_code)
    trains = compressor is None or compressor.finetune
    untrained = untrained_warning(spec, ctx.trainer_cfg) if trains else None
    if untrained:
        log.warning("%s", untrained)
    out_dir = fine_tune(
        spec,
        ctx.dataset(),
        task_cfg=ctx.task_cfg,
        trainer_cfg=ctx.trainer_cfg,
        out_dir=spec.default_dir(ctx.models_dir, ctx.task_cfg["name"]),
        seed=int(ctx.seed if spec.seed is None else spec.seed),
        base_checkpoint=base_checkpoint,
        logger=model_logger(ctx.logger, spec.name),  # train/<model>/...: one run, several fine-tunings
        recipe=ctx.kind.recipe(),
        callbacks=trust_callbacks(spec, base_checkpoint, ctx),
        ctx=ctx,
    )
    if untrained and distributed_rank() == 0:
        # Kept with the checkpoint: every run that evaluates it says so (results.json notes, the report).
        meta = read_metadata(out_dir)
        write_metadata(out_dir, {**meta, "warnings": [*meta.get("warnings", []), untrained]})
    return out_dir


def untrained_warning(spec: ModelSpec, trainer_cfg: Mapping[str, Any]) -> str | None:
    """The warning for a fine-tuning that trains nothing (``trainer.max_epochs=0`` or ``max_steps=0``: a new
    head stays as initialised, at random), None otherwise. Allowed (a smoke test, an untrained baseline)
    but never silent."""
    for key in ("max_epochs", "max_steps"):
        value = trainer_cfg.get(key)
        if value is not None and not isinstance(value, bool) and int(value) == 0:
            what = (
                "its new head is untrained (as initialised, at random)"
                if spec.base is None
                else f"it was not fine-tuned after compression (it is {spec.base.name} as compressed)"
            )
            return (
                f"{spec.name} was fine-tuned with trainer.{key}=0: no training step ran, so {what} and its "
                f"results say little about the model; set trainer.{key} >= 1 and fine-tune it again "
                "(python train.py ... overwrite=true)"
            )
    return None
