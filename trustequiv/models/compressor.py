"""The Compressor interface: how a candidate is made from a fine-tuned reference."""

from __future__ import annotations

import inspect
import logging
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from trustequiv import registry

log = logging.getLogger(__name__)

# Compressor settings a recipe may carry: plain JSON values, so building one can run no chosen code.
_SCALARS = (str, int, float, bool, type(None))


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
                changed). base_spec: its :class:`trustequiv.models.spec.ModelSpec`, or None.
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


def compressor_registry() -> dict[str, type[Compressor]]:
    """Compressor name -> class, as :data:`plugins.PLUGINS` declares them (each name's settings are in its
    ``conf/compressor/<name>.yaml``). Only these names can be built."""
    return {name: registry.lookup("compressor", name) for name in registry.names("compressor")}


def build_compressor(recipe: dict[str, Any]) -> Compressor:
    """The compressor a config node or a checkpoint's recipe names, built by name, never by ``_target_``.

    ``recipe["name"]`` picks the class from :func:`compressor_registry`; the other keys (less ``_target_``,
    which is ignored) are its keyword arguments and must be plain JSON values (strings, numbers, booleans,
    null, lists of those). A checkpoint's ``trustequiv.json`` is data from wherever the checkpoint came from:
    instantiating its ``_target_`` through Hydra once let a crafted checkpoint write a file of its choosing.

    Raises:
        ValueError: no or unknown ``name`` (the message lists the known ones), a key starting with ``_``
            other than ``_target_``, a value that is not plain JSON, or a keyword the class does not take.
    """
    if not isinstance(recipe, dict):
        raise ValueError(f"a compressor recipe is a mapping with a 'name', got {type(recipe).__name__}")
    known = registry.names("compressor")
    name = recipe.get("name")
    if not isinstance(name, str) or name not in known:
        raise ValueError(
            f"unknown compressor {name!r}; known: {known} "
            "(a new one is a class in plugins/compressors/, its entry in plugins.PLUGINS and its "
            "conf/compressor/<name>.yaml)"
        )
    cls = registry.lookup("compressor", name)
    target = recipe.get("_target_")
    if target is not None and target != f"{cls.__module__}.{cls.__qualname__}":
        log.warning("compressor %s: ignoring _target_ %r; building %s by name", name, target, cls.__name__)
    kwargs = {k: v for k, v in recipe.items() if k not in ("_target_", "name")}
    for k, v in kwargs.items():
        plain = isinstance(v, _SCALARS) or (isinstance(v, list) and all(isinstance(x, _SCALARS) for x in v))
        if not isinstance(k, str) or k.startswith("_") or not plain:
            raise ValueError(
                f"compressor {name}: setting {k}={v!r} is not allowed (settings are plain JSON values: "
                "strings, numbers, booleans, null or lists of those; no '_'-prefixed keys)"
            )
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            raise ValueError(f"compressor {name} takes no setting(s) {unknown}; it takes {sorted(params)}")
    return cls(**kwargs)
