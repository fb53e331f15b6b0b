"""The noise floor: the reference fine-tuned again with other training seeds (replicas), compared with the
reference exactly as a candidate is, so each difference a candidate shows can be set against how far the
reference is from itself (McCoy et al. 2020, "BERTs of a feather do not generalize together": fine-tuning
seeds alone change which examples a model gets wrong).

``noise_floor.seeds``: a list of training seeds, ``[]`` (off), or ``auto``: one extra seed when the run can
fine-tune the reference (its recipe is here: fine-tuned locally or trainable with ``train_missing=true``),
else off with a note saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trustequiv.models import resolve_checkpoint
from trustequiv.sources import ModelSource, RunContext

log = logging.getLogger(__name__)

#: the seed ``auto`` picks (another if it is the run's own).
AUTO_SEEDS = (1, 2)


@dataclass
class NoiseFloor:
    """The replicas a run compares with the reference, and why there are none or fewer than asked.

    Attributes:
        models: the replicas, as model sources named ``<reference>+seed<k>``.
        seeds: their training seeds, in order.
        notes: why the floor is off or lacks a seed (shown in the report and results.json).
    """

    models: list[ModelSource] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "models": [m.name for m in self.models], "notes": self.notes}


def wanted_seeds(setting: Any, run_seed: int) -> list[int] | None:
    """``noise_floor.seeds`` read: a list of distinct ints, or None for ``auto``.

    Raises:
        ValueError: neither ``auto`` nor a list of integers.
    """
    if setting is None or setting == "auto":
        return None
    if isinstance(setting, str | bytes) or not isinstance(setting, Sequence):
        raise ValueError(f"noise_floor.seeds must be auto or a list of training seeds, got {setting!r}")
    try:
        seeds = [int(s) for s in setting]
    except (TypeError, ValueError):
        raise ValueError(
            f"noise_floor.seeds must be auto or a list of integers, got {list(setting)}"
        ) from None
    return list(dict.fromkeys(s for s in seeds if s != run_seed))


def make_noise_floor(reference: ModelSource, setting: Any, ctx: RunContext) -> NoiseFloor:
    """The replicas of ``reference`` the setting asks for (see the module docstring)."""
    seeds = wanted_seeds(setting, ctx.seed)
    auto = seeds is None
    if auto:
        seeds = [next(s for s in AUTO_SEEDS if s != ctx.seed)]
    floor = NoiseFloor()
    if not seeds:
        return NoiseFloor(notes=["noise floor off (noise_floor.seeds=[])"])
    for seed in seeds:
        replica, why = reference.replica(seed, ctx)
        if replica is None:
            floor.notes.append(f"noise floor without seed {seed}: {why}")
            continue
        spec = replica.fine_tune_spec()
        ready = spec is not None and resolve_checkpoint(spec, ctx.task_cfg["name"], ctx.models_dir)
        if auto and not ready and not ctx.allow_train:
            floor.notes.append(
                f"noise floor off: {replica.name} (the reference fine-tuned with seed {seed}) is not "
                "trained and train_missing is false; add train_missing=true, or noise_floor.seeds=[] to "
                "silence this"
            )
            continue
        floor.models.append(replica)
        floor.seeds.append(seed)
    for note in floor.notes:
        log.info("%s", note)
    return floor
