"""Post-training dynamic int8 quantization (torch.ao)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from trustequiv.compressor import Compressor


class QuantizeDynamic(Compressor):
    """Dynamic quantization of every ``nn.Linear``: int8 weights, activations quantized per batch at run time.

    Uses ``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of torchao's ``quantize_``, which
    is not part of the verified stack). The quantized model runs on CPU only. Embeddings and LayerNorm stay
    fp32, as in Zafrir et al. / PyTorch's BERT dynamic-quantization tutorial.

    Args:
        name: registry name. dtype: ``qint8`` (default) or ``float16``.
    """

    finetune = False
    cpu_only = True

    def __init__(self, name: str = "quantize_dynamic", dtype: str = "qint8"):
        if dtype not in ("qint8", "float16"):
            raise ValueError(f"dtype must be qint8 or float16, got {dtype!r}")
        self.name, self.dtype = name, dtype

    def on_load(self, model: nn.Module) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(model.float().cpu(), {nn.Linear}, dtype=getattr(torch, self.dtype))

    def recipe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "backend": "torch.ao.quantization.quantize_dynamic"}
