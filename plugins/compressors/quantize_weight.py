"""Weight-only int8 / int4 quantization of every nn.Linear (torchao), applied at load time."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from trustequiv.models.compressor import Compressor


def _import_torchao():
    """torchao's ``quantize_``, ``IntxWeightOnlyConfig``, ``PerAxis``, ``PerGroup``. Its import logs a warning
    per CUDA kernel library a CPU build of torch cannot load: harmless, silenced."""
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # optional dependency (the [quantize] extra): imported when used
        from torchao.quantization import IntxWeightOnlyConfig, PerAxis, PerGroup, quantize_
    except ImportError as err:
        raise ImportError(
            "compressor quantize_weight needs torchao - pip install 'trustequiv[quantize]' (or torchao)"
        ) from err
    finally:
        logger.setLevel(level)
    return quantize_, IntxWeightOnlyConfig, PerAxis, PerGroup


class QuantizeWeight(Compressor):
    """Weight-only quantization: each ``nn.Linear`` weight stored as signed ``bits``-bit integers with one
    symmetric scale per output row (``group_size`` null) or per group of ``group_size`` input columns;
    activations stay float and the weight is dequantized in the matmul. torchao's ``IntxWeightOnlyConfig``
    (torchao 0.18), which runs on CPU and GPU alike; the int4 groupwise scheme is that of GPTQ/AWQ-style
    4-bit LLM weights (Frantar et al. 2023; Lin et al. 2024) without their error-compensating rounding.

    The packed weights have no safetensors form: the checkpoint keeps the fp32 weights and this recipe, and
    the model is quantized when loaded (:meth:`on_load`). Embeddings and LayerNorm stay float.

    Args:
        name: registry name. bits: 8 or 4. group_size: input columns per scale (must divide every Linear's
            input width), or null for one scale per output row.

    Raises:
        ValueError: bits not 8 or 4, group_size < 1, or a Linear whose width group_size does not divide.
        ImportError: torchao is not installed.
    """

    finetune = False

    def __init__(self, name: str = "quantize_weight", bits: int = 8, group_size: int | None = None):
        if int(bits) not in (8, 4):
            raise ValueError(f"quantize_weight: bits must be 8 or 4, got {bits}")
        if group_size is not None and int(group_size) < 1:
            raise ValueError(f"quantize_weight: group_size must be >= 1 or null, got {group_size}")
        self.name, self.bits = name, int(bits)
        self.group_size = None if group_size is None else int(group_size)

    def on_load(self, model: nn.Module) -> nn.Module:
        quantize_, IntxWeightOnlyConfig, PerAxis, PerGroup = _import_torchao()
        if self.group_size is not None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            bad = sorted({m.in_features for m in linears if m.in_features % self.group_size})
            if bad:
                raise ValueError(
                    f"quantize_weight: group_size={self.group_size} does not divide the input width(s) {bad} "
                    "of the model's Linear layers - pick a divisor of them, or group_size=null (per row)"
                )
        granularity = PerAxis(0) if self.group_size is None else PerGroup(self.group_size)
        config = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{self.bits}"), granularity=granularity)
        quantize_(model.float(), config)
        return model

    def recipe(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits, "group_size": self.group_size, "backend": "torchao"}
