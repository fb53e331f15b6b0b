"""The one conversion to plain Python values: config nodes to resolved containers, tensors and arrays to
lists, numpy scalars to Python numbers, recursively, so results are JSON and settings compare as data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(value: Any) -> Any:
    """``value`` as plain Python data.

    An OmegaConf ``DictConfig``/``ListConfig`` becomes its container with interpolations resolved; a tensor or
    array its ``tolist()`` (a 0-d one a Python number, of the same value); a numpy scalar its ``item()``; a
    mapping (keys as strings) or list/tuple (as a list) is converted element-wise; anything else is returned
    unchanged.
    """
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
