"""Lightning Trainer construction shared by fine-tuning and prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch


def resolve_precision(precision: str | None, accelerator: str | None) -> str:
    """``auto`` -> ``bf16-mixed`` on a CUDA GPU that supports it, else ``32-true`` (fp32 on CPU)."""
    if precision not in (None, "auto"):
        return str(precision)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_trainer(trainer_cfg: Mapping[str, Any], *, cpu_only: bool = False, **overrides: Any) -> L.Trainer:
    """A ``lightning.Trainer`` from the ``trainer`` config group (null entries dropped) plus ``overrides``.

    Our batch samplers shard by rank themselves, so Lightning must not inject a DistributedSampler.
    ``cpu_only`` forces one CPU process (dynamically quantized models run nowhere else).
    """
    kwargs = {k: v for k, v in dict(trainer_cfg).items() if v is not None}
    kwargs.update(overrides)
    if cpu_only:
        kwargs.update(accelerator="cpu", devices=1, strategy="auto")
    kwargs["precision"] = resolve_precision(kwargs.get("precision"), kwargs.get("accelerator"))
    kwargs["use_distributed_sampler"] = False
    kwargs.setdefault("logger", False)
    return L.Trainer(**kwargs)
