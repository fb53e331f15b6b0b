"""One runner per model: prepare its source, predict every split and OOD set, run the characteristics'
per-model work (``collect``, cached), then the cross-model second pass (``replay``) over all models."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from trustequiv.cache import OutputCache, content_key
from trustequiv.characteristic import Characteristic
from trustequiv.data.labels import label_order_warning
from trustequiv.models.handle import ModelHandle
from trustequiv.models.source import ModelSource, RunContext
from trustequiv.outputs import ModelOutputs, aligned_rows
from trustequiv.run.plan import Plan

log = logging.getLogger(__name__)


def _collect_key(
    char: Characteristic, fingerprint: str, task: str, split: str, out: ModelOutputs, kind="extras", **more
) -> str:
    """Cache key of one model's collected (``kind="extras"``) or replayed (``"replay"``) results."""
    return content_key(
        kind=kind,
        characteristic=char.name,
        config=dict(char.cache_config()),
        checkpoint=fingerprint,
        task=task,
        split=split,
        ids=content_key(ids=out.example_ids.tolist()),
        **more,
    )


class ModelRunner:
    """Everything the run needs of one model, computed once through the cache.

    Args:
        source: the model; plan: the run's plan; ctx: the shared :class:`RunContext`.

    After :meth:`run`, :attr:`outputs` maps each evaluated split to the model's outputs (OOD outputs in
    ``.ood``, collected results in ``.collected``), :attr:`identity` holds what :meth:`ModelSource.prepare`
    returned, :attr:`cached` which outputs came from the cache, :attr:`skipped` the characteristics that
    cannot run on this model, with the reason, and :attr:`warnings` what the user should check (e.g. a label
    order that looks wrong).
    """

    def __init__(self, source: ModelSource, plan: Plan, ctx: RunContext):
        self.source, self.plan, self.ctx = source, plan, ctx
        self.name = source.name
        self.outputs: dict[str, ModelOutputs] = {}
        self.cached: dict[str, bool] = {}
        self.identity: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.warnings: list[str] = []
        self._handle: ModelHandle | None = None

    # -- per model
    def run(self) -> dict[str, ModelOutputs]:
        self.identity = self.source.prepare(self.ctx)
        # Warnings a checkpoint carries (e.g. fine-tuned with trainer.max_epochs=0): in every run judging it.
        carried = (self.identity.get("metadata") or {}).get("warnings")
        for warning in carried if isinstance(carried, list) else []:
            log.warning("%s", warning)
            self.warnings.append(str(warning))
        if self.source.final_outputs:
            post = lambda out: out  # noqa: E731 - outputs read as they were made
        else:
            post = self.plan.kind.postprocessor(
                self.plan.task_cfg, self._predict_split, list(self.plan.dataset)
            )
        ood = {
            name: post(self._predict(data, task, name.rpartition("/")[2], name))
            for name, (task, data) in self.plan.ood.items()
        }
        for split, data in self.plan.splits.items():
            out = post(self._predict(data, self.plan.task_cfg, split, split))
            if split == self.plan.main_split and out.has_scores:
                warning = label_order_warning(out, self.source.column_label_names())
                if warning:
                    log.warning("%s", warning)
                    self.warnings.append(warning)
            out = dataclasses.replace(out, ood=ood)
            for char in self.plan.characteristics:
                if char.needs_model and char.runs_on(split):
                    out = self._collect(char, out, data, split)
            self.outputs[split] = out
        self.release()
        return self.outputs

    def _predict(self, data, task_cfg: Mapping[str, Any], split: str, label: str) -> ModelOutputs:
        out, was_cached = self.source.outputs(data, task_cfg, split, self.ctx)
        self.cached[f"{self.name}/{label}"] = was_cached
        return out

    def _predict_split(self, split: str) -> ModelOutputs:
        """Outputs on a whole split of the task (e.g. validation, for QA's threshold)."""
        return self._predict(self.plan.dataset[split], self.plan.task_cfg, split, split)

    def handle(self) -> ModelHandle | None:
        if self._handle is None:
            self._handle = self.source.handle(self.ctx)
        return self._handle

    def release(self) -> None:
        self._handle = None
        self.source.release()

    def can_run(self, char: Characteristic) -> str | None:
        """Why ``char`` cannot run on this model, or None."""
        if char.needs_model and "scorer" not in self.source.provides:
            return f"needs the model itself; a {self.source.kind} source has only its outputs"
        if char.needs_gradients and "gradients" not in self.source.provides:
            return f"needs gradients through the model; a {self.source.kind} model has none"
        return None

    def _collect(self, char: Characteristic, out: ModelOutputs, data, split: str) -> ModelOutputs:
        """``char.collect`` on this model (cached), attached as ``out.collected[char.name]``."""
        if char.name in self.skipped:
            return out
        key = _collect_key(char, self.identity["fingerprint"], self.plan.task_cfg["name"], split, out)
        collected = self.ctx.cache.load_extras(key)
        if collected is None:
            collected = dict(char.collect(self.handle(), out, aligned_rows(data, out), self.plan.task_cfg))
            self.ctx.cache.save_extras(key, collected)
        return out.with_collected(char.name, collected)


def skip_unrunnable(runners: list[ModelRunner], characteristics: list[Characteristic]) -> None:
    """Mark on every runner the characteristics some model cannot run (it would be compared with nothing):
    no model is loaded for them."""
    for char in characteristics:
        for runner in runners:
            why = runner.can_run(char)
            if why:
                for other in runners:
                    other.skipped[char.name] = f"{runner.name}: {why}"
                break


def replay_pass(char: Characteristic, runners: list[ModelRunner], split: str, plan: Plan, cache: OutputCache):
    """``char.replay`` once per model (cached) after every model's collect; each model sees the other
    models' collected results as they were before any replay, so the result does not depend on the order of
    the models (the cache key holds their content). The result goes to ``collected[char.name]["replay"]``."""
    able = [r for r in runners if char.name in r.outputs[split].collected]
    before = {r.name: r.outputs[split] for r in able}
    results: dict[str, Any] = {}
    for runner in able:
        out = before[runner.name]
        others = {n: o for n, o in before.items() if n != runner.name}
        key = _collect_key(
            char,
            runner.identity["fingerprint"],
            plan.task_cfg["name"],
            split,
            out,
            kind="replay",
            others={n: content_key(extras=o.collected.get(char.name)) for n, o in others.items()},
        )
        replayed = cache.load_extras(key)
        if replayed is None:
            data = aligned_rows(plan.splits[split], out)
            replayed = dict(char.replay(runner.handle(), out, others, data, plan.task_cfg))
            cache.save_extras(key, replayed)
            runner.release()  # free the model before the next one
        results[runner.name] = replayed
    for runner in able:
        out = before[runner.name]
        merged = {**out.collected[char.name], "replay": results[runner.name]}
        runner.outputs[split] = out.with_collected(char.name, merged)
