"""Hub zoo: published fine-tuned checkpoints of a model, per task, so evaluation can run without fine-tuning.

Each ``conf/model/<name>.yaml`` may carry a ``zoo`` mapping, task name -> entry::

    zoo:
      mnli:
        checkpoint: textattack/bert-base-uncased-MNLI      # hub id (or a local dir)
        label_names: [contradiction, entailment, neutral]  # the task's names in the checkpoint's logit order
        revision: null                                     # optional: branch, tag or commit to pin

Every entry in the shipped configs was checked against its model card, cited in a YAML comment with the
label order and accuracy the card reports. ``label_names`` is declared even where the checkpoint's
``config.id2label`` carries names: many hub heads are generic ``LABEL_0..n`` and some (textattack's MNLI/SNLI
models) use a non-standard order, so the declaration is what the loader maps by (see
:func:`trustequiv.data.labels.label_permutation`); extractive QA entries (``squad2``) carry no
``label_names``.

Resolution order of the fine-tuned checkpoint of a model on a task (the Hugging Face model source):

1. ``model.checkpoint`` when set explicitly (with ``model.label_names`` / ``model.revision``);
2. the local fine-tuned directory ``<paths.models_dir>/<task>/<model.name>`` when it holds a ``config.json``;
3. :func:`zoo_entry` for the task (its ``label_names`` and ``revision`` replace the model's);
4. fine-tuning from ``model.pretrained`` when ``train_missing=true``;
5. otherwise an error naming the three ways out (train.py, model.checkpoint, train_missing=true).

A compressed candidate (``<base>+<compressor>``) resolves its base model this way and compresses that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trustequiv.plain import plain

__all__ = ["zoo_entry"]

_KEYS = {"checkpoint", "label_names", "revision"}


def zoo_entry(model_cfg: Mapping, task_name: str) -> dict | None:
    """The published fine-tuned checkpoint of a model for a task, from the model config's ``zoo`` mapping.

    Args:
        model_cfg: a ``conf/model`` node (DictConfig or mapping) with an optional ``zoo`` mapping
            ``task name -> {checkpoint, label_names?, revision?}`` (a bare string is taken as the checkpoint).
        task_name: ``cfg.task.name`` (``"mnli"``, ``"squad2"``); a group prefix such as ``"qa/squad2"`` is
            dropped.

    Returns:
        ``{"checkpoint": str, "label_names": list[str] | None}`` plus ``"revision": str`` when the entry pins
        one; ``None`` when the model has no zoo or no entry for the task.

    Raises:
        ValueError: a malformed entry (not a mapping, no checkpoint, unknown keys, label names that are not
            distinct strings); the message names the model, the task and the fix.
    """
    zoo = plain(model_cfg.get("zoo")) if model_cfg is not None else None
    if not zoo:
        return None
    name = model_cfg.get("name", "?")
    if not isinstance(zoo, Mapping):
        raise ValueError(f"model {name}: `zoo` must map task names to entries, got {type(zoo).__name__}")
    task = str(task_name).rsplit("/", 1)[-1]
    entry = zoo.get(task)
    if entry is None:
        return None
    where = f"model {name}, zoo.{task}"
    if isinstance(entry, str):
        entry = {"checkpoint": entry}
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected {{checkpoint: <hub id>, label_names: [...]}}, got {entry!r}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    checkpoint = entry.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise ValueError(f"{where}: `checkpoint` must be a hub id or a local directory, got {checkpoint!r}")
    label_names = entry.get("label_names")
    if label_names is not None:
        if isinstance(label_names, str) or not all(isinstance(n, str) for n in label_names):
            raise ValueError(f"{where}: `label_names` must be a list of class names, got {label_names!r}")
        label_names = list(label_names)
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"{where}: `label_names` {label_names} repeats a name; list each class once")
    out: dict[str, Any] = {"checkpoint": checkpoint.strip(), "label_names": label_names}
    revision = entry.get("revision")
    if revision:
        out["revision"] = str(revision)
    return out
