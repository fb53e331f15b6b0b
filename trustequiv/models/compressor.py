"""The Compressor interface: how a candidate is made from a fine-tuned reference."""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass(frozen=True)
class CalibrationData:
    """What a data-driven compressor (:attr:`Compressor.calibration_batches` > 0) scores the model on.

    Attributes:
        batches: the first ``calibration_batches`` batches of the task's training loader (dicts of tensors, on
            the CPU), drawn without changing the order fine-tuning then sees.
        loss: ``batch -> scalar tensor``: the task's training loss of the model being compressed. It calls the
            model with keyword arguments, so a forward pre-hook (``register_forward_pre_hook(...,
            with_kwargs=True)``) can add some, e.g. Hugging Face's ``head_mask``.
    """

    batches: list[Mapping[str, Tensor]]
    loss: Callable[[Mapping[str, Tensor]], Tensor]


class Compressor(ABC):  # noqa: B024 - every hook has a sensible default
    """Turns a fine-tuned model into a compressed candidate.

    Two hooks, because some compressions can be saved as ordinary weights and some cannot:

    * :meth:`compress` changes the model before it is saved (e.g. dropping layers); the result is written in
      Hugging Face format and, when :attr:`finetune` is true, fine-tuned on the task again. Every save (each
      best epoch's too) writes :meth:`before_save`'s view of the model, so a compression may keep
      training-time state (pruning masks) in the live model.
    * :meth:`on_load` transforms the model every time it is loaded (e.g. dynamic int8 quantization, whose
      packed weights have no safetensors form); the checkpoint then stores the fp32 weights and this recipe.

    Attributes:
        name: registry name, also the suffix of the candidate's name (``minilm+layer_drop``).
        finetune: fine-tune on the task after :meth:`compress`.
        cpu_only: the loaded model runs on CPU only (torch.ao dynamic quantization).
        calibration_batches: > 0: :meth:`compress` is called with ``data=``:class:`CalibrationData` of that
            many training batches (e.g. head importance); 0 (default): with the model only.
        distills: the base is a teacher the candidate is trained against (knowledge distillation), so
            train.py's ``model@reference`` may name one other than the model.

    Fine-tuning its own way: :meth:`candidate_tokenizer` (a student with its own vocabulary) and
    :meth:`training_module` (a LightningModule with its own loss).
    """

    name: str = "compressor"
    finetune: bool = False
    cpu_only: bool = False
    calibration_batches: int = 0
    distills: bool = False

    def compress(self, model: nn.Module, data: CalibrationData | None = None) -> nn.Module:
        """Structural change before saving. Default: none. ``data``: only with :attr:`calibration_batches`."""
        return model

    def before_save(self, model: nn.Module) -> nn.Module:
        """The model as written to a checkpoint, leaving ``model`` as it is (fine-tuning may go on with it).
        Default: ``model`` itself. E.g. magnitude pruning folds its masks into a copy."""
        return model

    def candidate_tokenizer(self, tokenizer: Any) -> Any:
        """The candidate's tokenizer given the base's (called after :meth:`compress`). Default: the base's."""
        return tokenizer

    def training_module(
        self,
        student: nn.Module,
        *,
        base: Any,
        base_spec: Any,
        task_cfg: Mapping[str, Any],
        dataset: Any,
        ctx: Any,
    ) -> Any:
        """The LightningModule that fine-tunes ``student`` (what :meth:`compress` returned), or None: the task
        recipe's own (``Recipe.make_module``). Called by :func:`trustequiv.train.fine_tune.fine_tune` when
        :attr:`finetune` is true. Default: None.

        Args:
            base: the fine-tuned base as loaded (:class:`trustequiv.models.loading.LoadedModel`: directory,
                fingerprint, label permutation, tokenizer; its ``model`` may be the one :meth:`compress`
                changed). base_spec: its :class:`trustequiv.models.loading.ModelSpec`, or None.
            task_cfg, dataset: the task config and its ``DatasetDict``.
            ctx: the run's :class:`trustequiv.models.source.RunContext` (output cache, task kind, prediction
                settings), or None when :func:`~trustequiv.train.fine_tune.fine_tune` is called without one.
        """
        return None

    def on_load(self, model: nn.Module) -> nn.Module:
        """Transform applied after every load. Default: none."""
        return model

    def recipe(self) -> dict[str, Any]:
        """JSON-able settings written into the checkpoint (and thus into its fingerprint)."""
        return {"name": self.name}
