"""The characteristics step: every selected characteristic on every evaluated split, reference vs each
candidate; a characteristic that cannot run on some model is skipped with one line that says why."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trustequiv.characteristic import Characteristic
from trustequiv.outputs import CharacteristicResult, ModelOutputs
from trustequiv.run.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """What the characteristics found.

    Attributes:
        metrics: flat ``"[<split>/]<characteristic>/<scope>/<metric>": number`` (no split prefix on the
            main split).
        results: ``"[<split>/]<characteristic>"`` -> its :class:`CharacteristicResult`; figures keyed the same
            way go to ``<run dir>/figures/<split>/``.
        splits: the evaluated splits, main first.
        skipped: ``"<characteristic>"`` -> why it did not run.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    results: dict[str, CharacteristicResult] = field(default_factory=dict)
    result_split: dict[str, str] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def why_not(char: Characteristic, outputs: Sequence[ModelOutputs], runners: Sequence[Any]) -> str | None:
    """Why ``char`` cannot compare these models, or None."""
    for runner in runners:
        if char.name in runner.skipped:
            return runner.skipped[char.name]
    if char.needs_scores:
        lacking = [o.name for o in outputs if not o.has_scores]
        if lacking:
            return (
                f"{', '.join(lacking)}: outputs carry no per-example scores (only which examples are wrong)"
            )
    return None


def compare(plan: Plan, runners: Sequence[Any]) -> Comparison:
    """Run every characteristic of ``plan`` over the runners' outputs (the first runner is the reference)."""
    comparison = Comparison(splits=list(plan.splits))
    for split in plan.splits:
        outs = [r.outputs[split] for r in runners]
        prefix = "" if split == plan.main_split else f"{split}/"
        for char in plan.characteristics:
            if not char.runs_on(split):
                continue
            reason = why_not(char, outs, runners)
            if reason:
                comparison.skipped.setdefault(char.name, reason)
                continue
            res = char.evaluate(outs[0], outs[1:])
            label = f"{prefix}{char.name}"
            comparison.results[label] = res
            comparison.result_split[label] = split
            comparison.metrics.update({f"{label}/{k}": float(v) for k, v in res.metrics.items()})
    if comparison.skipped:
        ran = [c.name for c in plan.characteristics if c.name not in comparison.skipped]
        for name, reason in comparison.skipped.items():
            log.warning(
                "characteristic %s skipped: %s. Characteristics that can run on these models: %s",
                name,
                reason,
                ", ".join(ran) or "none",
            )
    return comparison
