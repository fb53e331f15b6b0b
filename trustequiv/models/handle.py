"""ModelHandle: what characteristics that run a model again receive (its name, content hash, a scorer factory
and, where there is one, the torch model). Its own module so that both the scorers, which make handles, and
the sources, which return them, import it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustequiv.models.scorer import TextScorer


@dataclass
class ModelHandle:
    """What characteristics that run the model again (:meth:`Characteristic.collect`) receive.

    Attributes:
        name: the model's name; fingerprint: its content hash (part of their own cache keys).
        scorer: ``scorer(task_cfg)`` -> a :class:`TextScorer` (texts -> probabilities in canonical label
            order); batching options go through its ``configure``.
        loaded: the :class:`trustequiv.models.loading.LoadedModel` (torch model, tokenizer, label permutation)
            when the source has one, for gradient methods (IG); None otherwise (ONNX).
        source: the source's kind (``hf``, ``onnx`` ...), for messages.
    """

    name: str
    fingerprint: str
    scorer: Callable[..., TextScorer]
    loaded: Any = None
    source: str = "hf"
    cpu_only: bool = False

    def __getattr__(self, item: str) -> Any:
        # A LoadedModel's attributes (model, tokenizer, label_permutation, directory ...) for code written
        # against it; a clear error where the source has no torch model.
        loaded = self.__dict__.get("loaded")
        if loaded is None:
            raise AttributeError(
                f"{self.__dict__.get('name')}: a {self.__dict__.get('source')} model has no torch model "
                f"('{item}'): this characteristic cannot run on it"
            )
        return getattr(loaded, item)
