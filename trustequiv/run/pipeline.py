"""train(cfg) and evaluate(cfg), the jobs of the entry points: plan -> one runner per model ->
characteristics -> report. Each step lives in the module named after it; the core knows no specific model
source or task kind."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trustequiv.cache import OutputCache, distributed_rank
from trustequiv.config import to_container
from trustequiv.data.task_kind import task_kind
from trustequiv.models.compressor import build_compressor
from trustequiv.models.loading import read_metadata
from trustequiv.models.source import RunContext, build_source
from trustequiv.models.spec import ModelSpec
from trustequiv.plain import plain
from trustequiv.report.run_report import print_headline, report_run
from trustequiv.report.saved_outputs import save_run_outputs
from trustequiv.report.trust_curves import write_trust_curves
from trustequiv.run.comparison import compare
from trustequiv.run.plan import Plan, load_task_data, make_plan, model_node
from trustequiv.run.runner import ModelRunner, replay_pass, skip_unrunnable
from trustequiv.tracking import finish_run, log_evaluation, make_csv_logger, run_config, start_run
from trustequiv.train.checkpoints import build_checkpoint
from trustequiv.verdict.noise_floor import make_noise_floor
from trustequiv.verdict.verdict import judge_run

log = logging.getLogger(__name__)

__all__ = ["evaluate", "load_task_data", "run_context", "train"]


def run_context(cfg: DictConfig, task_cfg: dict[str, Any], dataset=None, logger=None) -> RunContext:
    """The :class:`RunContext` every model source of this run shares."""
    loaded: dict[str, Any] = {} if dataset is None else {"data": dataset}

    def data():
        if "data" not in loaded:
            loaded["data"] = task_kind(task_cfg).load_data(task_cfg, cfg.paths.get("data_dir"))
        return loaded["data"]

    return RunContext(
        task_cfg=task_cfg,
        kind=task_kind(task_cfg),
        cache=OutputCache(cfg.paths.cache_dir),
        trainer_cfg=plain(cfg.trainer),
        predict_cfg=plain(cfg.predict) if "predict" in cfg else {},
        models_dir=str(cfg.paths.models_dir),
        memo_file=Path(cfg.paths.cache_dir) / "fingerprints.json",
        allow_train=bool(cfg.get("train_missing", False)),
        seed=int(cfg.seed),
        dataset=data,
        logger=logger,
        callbacks_cfg=plain(cfg.get("callbacks")) or {},
    )


def with_teacher(spec: Any, reference: Any) -> Any:
    """``spec`` distilled from ``reference`` (train.py's ``model@reference``; None: from the model itself): a
    distilling compressor's base, its teacher, becomes that model.

    Raises:
        ValueError: a reference other than the model for a compressor that does not distil.
    """

    if reference is None or spec.base is None:
        return spec
    teacher = ModelSpec.from_config(model_node(reference), key="reference")
    if build_compressor(spec.compressor).distills:
        return dataclasses.replace(spec, base=teacher)
    if teacher.name != spec.base.name:
        raise ValueError(
            f"model@reference={teacher.name} names a teacher, which compressor={spec.compressor['name']} "
            "does not use (it compresses the model itself) - drop model@reference, or use compressor=distill"
        )
    return spec


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` (compressed by ``cfg.compressor`` if set) on ``cfg.task``; return its metadata.

    Raises:
        FileExistsError: the checkpoint exists and ``overwrite`` is false.
        ValueError: the model's source cannot be fine-tuned, or ``model.checkpoint`` is set.
    """

    source = build_source(cfg.model, cfg.get("compressor"))
    spec = source.fine_tune_spec()
    if spec is None:
        raise ValueError(
            f"model {source.name} comes from a {source.kind} source, which train.py cannot fine-tune"
        )
    if spec.checkpoint:
        raise ValueError("train.py writes to paths.models_dir; model.checkpoint is for evaluate.py")
    spec = with_teacher(spec, cfg.get("reference"))
    out_dir = spec.default_dir(cfg.paths.models_dir, cfg.task.name)
    if (out_dir / "config.json").exists() and not cfg.get("overwrite", False):
        raise FileExistsError(f"{out_dir} already holds a checkpoint: pass overwrite=true to train it again")
    logger = start_run(
        cfg.get("logger"),
        save_dir=cfg.paths.output_dir,
        name=f"train-{cfg.task.name}-{spec.name}",
        job_type="train",
        config={"model": spec.name, "task": cfg.task.name, "config": to_container(cfg)},
    )
    csv_logger = None if logger else make_csv_logger(cfg.get("logger"), save_dir=cfg.paths.output_dir)
    ctx = run_context(cfg, plain(cfg.task), logger=logger or csv_logger)
    path = build_checkpoint(spec, ctx)
    finish_run(logger)
    if csv_logger is not None:  # the trust metrics per epoch, as a figure beside the CSV
        write_trust_curves(Path(csv_logger.log_dir) / "metrics.csv", Path(cfg.paths.output_dir))
    meta = read_metadata(path)
    print(f"checkpoint: {path}  {ctx.kind.training_summary(meta)}")
    return {"checkpoint": str(path), **meta}


def run_models(plan: Plan, ctx: RunContext) -> list[ModelRunner]:
    """Every model's outputs and collected results (reference first), then the cross-model replay pass."""
    runners = [ModelRunner(source, plan, ctx) for source in plan.models]
    skip_unrunnable(runners, plan.characteristics)
    for runner in runners:
        runner.run()
    for char in plan.characteristics:
        if char.needs_model and char.needs_replay:
            for split in plan.splits:
                if char.runs_on(split):
                    replay_pass(char, runners, split, plan, ctx.cache)
    return runners


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Compare the reference with each candidate on the task's evaluation split(s).

    Writes results.json (with the verdict), predictions/, figures/, per_example/, outputs/, report.md and
    report.html into ``paths.output_dir`` and logs to W&B; returns ``{"metrics", "output_dir", "cached":
    {"<model>/<split>": bool}, "seconds"}``.
    """
    started = time.time()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(cfg)
    wb = start_run(  # now, so the fine-tunings done for this run log into it
        cfg.get("logger"),
        save_dir=out_dir,
        name=f"{plan.task_cfg['name']}-{'-'.join(c.name for c in plan.candidates)}",
        job_type="evaluate",
        config=run_config(
            to_container(cfg),
            reference=plan.reference.name,
            candidates=[c.name for c in plan.candidates],
            characteristics=[c.name for c in plan.characteristics],
        ),
    )
    ctx = run_context(cfg, plan.task_cfg, dataset=plan.dataset, logger=wb)
    plan.floor = make_noise_floor(
        plan.reference,
        plain(cfg.get("noise_floor")) or {},
        ctx,
        reference_cfg=plan.reference_cfg,
        taken=[c.name for c in plan.candidates],
    )
    runners = run_models(plan, ctx)
    if distributed_rank() > 0:  # DDP's other processes helped predict; rank 0 compares and reports
        return {"metrics": {}, "output_dir": str(out_dir), "cached": {}, "seconds": 0.0}
    comparison = compare(plan, runners)
    verdict = judge_run(plan, runners, comparison, plain(cfg.get("verdict")))
    seconds = round(time.time() - started, 1)
    config = to_container(cfg)
    headline, figures = report_run(
        out_dir,
        plan=plan,
        runners=runners,
        comparison=comparison,
        verdict=verdict,
        config=config,
        seconds=seconds,
        min_effect=float(cfg.get("min_effect", 0.005)),
    )
    # every model's final outputs in the run dir: what a sweep compares across its jobs
    # (trustequiv.report.sweep)
    save_run_outputs(out_dir, {r.name: r.outputs[plan.main_split] for r in runners})
    tables = {
        f"{label}/{k}": rows for label, res in comparison.results.items() for k, rows in res.tables.items()
    }
    log_evaluation(  # role-keyed summary, figures, tables, the results as an Artifact; then finish
        wb,
        out_dir,
        reference=plan.reference.name,
        candidates=[c.name for c in plan.candidates],
        floor=[m.name for m in plan.floor.models],
        figures={k.replace("/", "_"): v for k, v in figures.items()},
        tables=tables,
    )
    print_headline(headline)
    cached = {k: v for r in runners for k, v in r.cached.items()}
    return {"metrics": comparison.metrics, "output_dir": str(out_dir), "cached": cached, "seconds": seconds}
