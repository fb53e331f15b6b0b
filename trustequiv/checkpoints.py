"""Fine-tuned checkpoints of Hugging Face models: find one, or fine-tune (and compress) it when allowed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trustequiv.cache import path_lock
from trustequiv.models import ModelSpec, resolve_checkpoint

log = logging.getLogger(__name__)


def ensure_checkpoint(spec: ModelSpec, ctx: Any, *, allow_train: bool) -> str:
    """The fine-tuned checkpoint of ``spec`` on the task of ``ctx`` (a
    :class:`~trustequiv.sources.RunContext`); trained (and compressed) first when missing and
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
    from trustequiv.callbacks import trust_callbacks
    from trustequiv.tracking import model_logger
    from trustequiv.training import fine_tune

    base_checkpoint = None
    if spec.base is not None:
        base_checkpoint = ensure_checkpoint(spec.base, ctx, allow_train=True)
    return fine_tune(
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
