"""The TaskKind interface: what differs between families of tasks (text classification, extractive QA).

A task config names its kind (``kind: classification`` or ``kind: extractive_qa``; absent = classification).
The kind is a :class:`TaskKind` instance in ``plugins/tasks/<kind>.py`` (``KIND``), declared by name in
``plugins.PLUGINS`` and found with :func:`trustequiv.registry.lookup`. The core calls
only this interface, so it never names a specific kind, model class or output column.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra

from trustequiv import registry
from trustequiv.outputs import ModelOutputs

#: a kind name is a plain module name under plugins.tasks (no dots: nothing else can be imported).


class TaskKind(ABC):
    """One family of tasks.

    Attributes:
        name: the ``task.kind`` value that selects it.
        model_class: the transformers Auto class of its models (e.g. ``"AutoModelForQuestionAnswering"``).
    """

    name: str = "kind"
    model_class: str = "AutoModelForSequenceClassification"
    #: extra columns of ``predictions/<model>.csv``: CSV header -> key of ``ModelOutputs.columns``.
    csv_columns: Mapping[str, str] = {}

    def load_data(self, task_cfg: Mapping[str, Any], data_dir: str | None):
        """The task's ``datasets.DatasetDict``: local files under ``data_dir``, else the hub.

        Raises:
            ConnectionError: ``data_dir`` is null and the hub cannot be reached (the message names the fix).
        """
        loader = hydra.utils.instantiate(task_cfg["loader"])
        label_names = list(task_cfg["label_names"])
        if data_dir:
            return loader.load(str(Path(data_dir).expanduser()), label_names=label_names)
        try:
            return loader.load(None, label_names=label_names)
        except ConnectionError as err:  # datasets raises this offline; say what to do instead
            raise ConnectionError(
                f"{err}. Task {task_cfg['name']} loads from the Hugging Face hub because paths.data_dir is "
                "null: go online, or set paths.data_dir to a folder of local task files"
            ) from err

    @abstractmethod
    def recipe(self) -> Any:
        """The fine-tuning :class:`trustequiv.train.fine_tune.Recipe` of this kind."""

    @abstractmethod
    def load_model(
        self, directory: Path, task_cfg: Mapping[str, Any], *, declared_label_names=None, **kwargs: Any
    ) -> Any:
        """A :class:`trustequiv.models.loading.LoadedModel` (eval mode, logit columns mapped to the task's
        labels)."""

    @abstractmethod
    def predict(
        self,
        name: str,
        fingerprint: str,
        load: Callable[[], Any],
        split_data,
        *,
        task_cfg: Mapping[str, Any],
        split: str,
        cache: Any,
        trainer_cfg: Mapping[str, Any],
        predict_cfg: Mapping[str, Any],
        key_extra: Mapping[str, Any],
    ) -> tuple[ModelOutputs, bool]:
        """``(outputs, was_cached)`` of the model that ``load()`` returns on ``split_data``, through the
        output cache (``key_extra``: what else the outputs depend on, e.g. declared label names and the
        split's content fingerprint)."""

    def postprocessor(
        self,
        task_cfg: Mapping[str, Any],
        predict_split: Callable[[str], ModelOutputs],
        available_splits: list[str],
    ) -> Callable[[ModelOutputs], ModelOutputs]:
        """What is applied to every outputs of one model after prediction (QA: the no-answer threshold,
        possibly chosen on its validation outputs, which ``predict_split("validation")`` returns).
        Default: nothing."""
        return lambda out: out

    def ood_settings(self, task_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Settings an OOD set's task config takes from the evaluated task (the model reads it as its own)."""
        return {"max_length": task_cfg["max_length"]}

    def training_summary(self, metadata: Mapping[str, Any]) -> str:
        """One line about a finished fine-tuning for train.py."""
        return f"best val acc: {metadata.get('best_val_acc')}"


def task_kind(task_cfg: Mapping[str, Any]) -> TaskKind:
    """The :class:`TaskKind` that ``task_cfg["kind"]`` names (default ``classification``), from the registry.

    Raises:
        ValueError: the name is not a declared task kind (the message lists the available ones).
    """
    name = str(task_cfg.get("kind") or "classification")
    try:
        kind = registry.lookup("task_kind", name)
    except LookupError:
        kind = None
    if not isinstance(kind, TaskKind):
        raise ValueError(
            f"task {task_cfg.get('name')}: unknown task kind {name!r}; available: {available_kinds()}"
        )
    return kind


def available_kinds() -> list[str]:
    """The declared task kinds (:data:`plugins.PLUGINS`)."""
    return registry.names("task_kind")
