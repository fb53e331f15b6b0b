"""The ModelSource interface: where one judged model comes from (a Hugging Face checkpoint, an ONNX file,
predictions made elsewhere), and what the pipeline can ask of it.

A model config names its source (``source: hf`` by default; ``onnx``, ``predictions``); the source is a
:class:`ModelSource` subclass in ``plugins/sources/``, declared by name in ``plugins.PLUGINS`` and found with
:func:`trustequiv.registry.lookup`, built from the model config. The pipeline asks each source for:

- its identity (:meth:`ModelSource.prepare` returns checkpoint or file, content fingerprint, metadata): the
  fingerprint keys the output cache, so a changed file is never served stale outputs;
- its outputs on a split (:meth:`ModelSource.outputs`);
- a handle for characteristics that run the model again (:meth:`ModelSource.handle`): a
  :class:`trustequiv.models.scorer.TextScorer` (texts -> probabilities) and, where gradients exist, the torch
  model. A source with no model (predictions) returns None and the characteristics that need one are skipped
  with a one-line note naming those that can run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustequiv import registry
from trustequiv.data.task_kind import TaskKind
from trustequiv.models.handle import ModelHandle
from trustequiv.outputs import ModelOutputs
from trustequiv.plain import plain


@dataclass
class RunContext:
    """What every source needs from the run: the task, its kind, the cache and the settings.

    Attributes:
        task_cfg: the task config (plain dict); kind: its :class:`TaskKind`.
        cache: the :class:`trustequiv.cache.OutputCache`.
        trainer_cfg, predict_cfg: the ``trainer`` and ``predict`` config blocks (plain dicts).
        models_dir: where fine-tuned checkpoints live (``<models_dir>/<task>/<name>``).
        memo_file: the fingerprint memo (``<cache_dir>/fingerprints.json``).
        allow_train: fine-tune (and compress) a missing checkpoint instead of failing (``train_missing``).
        seed: the fine-tuning seed.
        dataset: ``() -> DatasetDict`` of the task (loaded once, lazily).
        logger: a Lightning logger for fine-tunings done for the run, or None.
        callbacks_cfg: the ``callbacks`` config block (plain dict): callbacks added to those fine-tunings
            (:func:`trustequiv.train.trust_callbacks.trust_callbacks`).
    """

    task_cfg: dict[str, Any]
    kind: TaskKind
    cache: Any
    trainer_cfg: dict[str, Any]
    predict_cfg: dict[str, Any]
    models_dir: str
    memo_file: Path
    allow_train: bool = False
    seed: int = 42
    dataset: Callable[[], Any] = field(default=lambda: None, repr=False)
    logger: Any = None
    callbacks_cfg: dict[str, Any] = field(default_factory=dict)


class ModelSource(ABC):
    """One model to judge. Subclasses are built with ``(model_cfg: dict, compressor_cfg: dict | None)``.

    Attributes:
        name: the model's name in results (``<model>+<compressor>`` for a compressed candidate).
        kind: the source's registry name.
        provides: what it can give besides outputs: ``"scorer"`` (texts -> probabilities) and/or
            ``"gradients"`` (a torch model).
    """

    kind: str = "source"
    provides: frozenset[str] = frozenset()
    #: the outputs are final as read (predictions made elsewhere): the task kind's post-processing (e.g. QA's
    #: no-answer threshold) is not applied to them.
    final_outputs: bool = False
    name: str

    @abstractmethod
    def prepare(self, ctx: RunContext) -> dict[str, Any]:
        """Make the model ready (resolve, and when allowed fine-tune, its checkpoint; read its file) and
        return its identity: ``{"checkpoint" or "path": str, "fingerprint": str, "metadata": dict,
        "source": kind}``. Raises with a message that names the fix when it cannot."""

    @abstractmethod
    def outputs(
        self, data, task_cfg: Mapping[str, Any], split: str, ctx: RunContext
    ) -> tuple[ModelOutputs, bool]:
        """``(outputs, was_cached)`` on ``data`` (a split of ``task_cfg``'s data, or an OOD set)."""

    def handle(self, ctx: RunContext) -> ModelHandle | None:
        """The model for characteristics that run it again, or None when the source has none."""
        return None

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free the loaded model (the next model is loaded after)."""

    def column_label_names(self) -> list[str] | None:
        """The class names the source read its logit columns as, in its own column order (declared or from
        the checkpoint), for the label-order check; None when it has none to declare."""
        return None

    def fine_tune_spec(self) -> Any:
        """The :class:`trustequiv.models.spec.ModelSpec` train.py fine-tunes, or None (not trainable)."""
        return None

    def replica(self, seed: int, ctx: RunContext) -> tuple[ModelSource | None, str]:
        """This model fine-tuned again by the same recipe on the same data with training seed ``seed`` (a
        noise-floor replica, named ``<name>+seed<seed>``), and ``""``; or ``(None, why not)`` when there is
        no recipe here to repeat (a checkpoint made elsewhere, a file of predictions)."""
        return None, f"a {self.kind} source has no fine-tuning recipe to repeat with another seed"


def build_source(model_cfg: Any, compressor_cfg: Any = None) -> ModelSource:
    """The :class:`ModelSource` that ``model_cfg["source"]`` names (default ``hf``).

    Raises:
        ValueError: an unknown source name (lists the available ones), or a compressor given to a source
            that cannot take one.
    """
    m = dict(plain(model_cfg) or {})
    c = plain(compressor_cfg) or None
    name = str(m.get("source") or "hf")
    try:
        cls = registry.lookup("source", name)
    except LookupError:
        raise ValueError(
            f"model {m.get('name')}: unknown model source {name!r}; available: {available_sources()}"
        ) from None
    return cls(m, c)


def available_sources() -> list[str]:
    """The declared model sources (:data:`plugins.PLUGINS`)."""
    return registry.names("source")
