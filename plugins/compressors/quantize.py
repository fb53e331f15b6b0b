"""Post-training dynamic int8 quantization (torch.ao)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from trustequiv.models.compressor import Compressor


class QuantizeDynamic(Compressor):
    """Dynamic quantization of every ``nn.Linear``: int8 weights, activations quantized per batch at run time.

    Backends: ``torch_ao`` (default), ``torch.ao.quantization.quantize_dynamic``: deprecated in favour of
    torchao but measured here 2.2x faster than fp32 on CPU, while torchao 0.18's
    ``Int8DynamicActivationInt8WeightConfig`` ran 2.1x *slower* than fp32 without torch.compile (MiniLM-sized
    MLP, 64x128 tokens, torch 2.13 CPU). ``torchao`` serves GPUs and newer stacks (``pip install torchao``).
    torch.ao models run on CPU only. Embeddings and LayerNorm stay fp32 (PyTorch's BERT dynamic-quantization
    tutorial).

    Args:
        name: registry name. dtype: ``qint8`` (default) or ``float16`` (torch_ao only).
        backend: ``torch_ao`` or ``torchao``.

    Raises:
        ValueError: unknown dtype or backend. ImportError: backend torchao without the package.
    """

    finetune = False

    def __init__(self, name: str = "quantize_dynamic", dtype: str = "qint8", backend: str = "torch_ao"):
        if dtype not in ("qint8", "float16"):
            raise ValueError(f"dtype must be qint8 or float16, got {dtype!r}")
        if backend not in ("torch_ao", "torchao"):
            raise ValueError(f"backend must be torch_ao or torchao, got {backend!r}")
        self.name, self.dtype, self.backend = name, dtype, backend
        self.cpu_only = backend == "torch_ao"

    def on_load(self, model: nn.Module) -> nn.Module:
        if self.backend == "torchao":
            try:
                # optional dependency (the [quantize] extra): imported when used
                from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            except ImportError as err:
                raise ImportError("compressor.backend=torchao needs `pip install torchao`") from err
            quantize_(model.float(), Int8DynamicActivationInt8WeightConfig())
            return model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)

            return quantize_dynamic(model.float().cpu(), {nn.Linear}, dtype=getattr(torch, self.dtype))

    def recipe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "backend": self.backend}
