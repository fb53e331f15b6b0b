"""The Compressor interface: how a candidate is made from a fine-tuned reference."""

from __future__ import annotations

from abc import ABC
from typing import Any

from torch import nn


class Compressor(ABC):  # noqa: B024 - every hook has a sensible default
    """Turns a fine-tuned model into a compressed candidate.

    Two hooks, because some compressions can be saved as ordinary weights and some cannot:

    * :meth:`compress` changes the model before it is saved (e.g. dropping layers); the result is written in
      Hugging Face format and, when :attr:`finetune` is true, fine-tuned on the task again.
    * :meth:`on_load` transforms the model every time it is loaded (e.g. dynamic int8 quantization, whose
      packed weights have no safetensors form); the checkpoint then stores the fp32 weights and this recipe.

    Attributes:
        name: registry name, also the suffix of the candidate's name (``minilm+layer_drop``).
        finetune: fine-tune on the task after :meth:`compress`.
        cpu_only: the loaded model runs on CPU only (torch.ao dynamic quantization).
    """

    name: str = "compressor"
    finetune: bool = False
    cpu_only: bool = False

    def compress(self, model: nn.Module) -> nn.Module:
        """Structural change before saving. Default: none."""
        return model

    def on_load(self, model: nn.Module) -> nn.Module:
        """Transform applied after every load. Default: none."""
        return model

    def recipe(self) -> dict[str, Any]:
        """JSON-able settings written into the checkpoint (and thus into its fingerprint)."""
        return {"name": self.name}
