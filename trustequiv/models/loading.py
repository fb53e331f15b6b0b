"""Loading fine-tuned checkpoints: their config, tokenizer and ``trustequiv.json`` metadata, the classifier
with its classes mapped to the task's by name (:func:`load_classifier`), and any checkpoint with its
compressor recipe applied (:func:`load_checkpoint`). Specs and where a checkpoint lives are in
:mod:`trustequiv.models.spec`, the checks a checkpoint must pass in :mod:`trustequiv.models.checks`, its
content fingerprint in :mod:`trustequiv.models.fingerprint`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from trustequiv.data.labels import id2label_names, label_permutation
from trustequiv.models.checks import (
    _refuse_new_weights,
    check_architecture,
    check_head,
    check_layer,
    check_max_length,
    check_num_labels,
    check_weight_files,
)
from trustequiv.models.compressor import build_compressor
from trustequiv.models.fingerprint import fingerprint
from trustequiv.models.spec import local_dir
from trustequiv.user_errors import CheckpointError

METADATA_FILE = "trustequiv.json"


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``trustequiv.json`` (empty for checkpoints made elsewhere).

    Raises:
        trustequiv.user_errors.CheckpointError: it is not a JSON object (a ValueError, as JSON's own errors).
    """

    p = Path(directory) / METADATA_FILE
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_bytes())
    except (ValueError, IsADirectoryError) as err:  # not JSON, not text; a directory of that name
        data = err
    if not isinstance(data, dict):
        why = f"{type(data).__name__}: {_short(data)}" if isinstance(data, Exception) else type(data).__name__
        raise CheckpointError(
            f"{p} is not a JSON object of this project's checkpoint metadata ({why})",
            "restore it from where the checkpoint was made, or delete it if the checkpoint was made "
            "elsewhere (only checkpoints trained here have one; a compressor recipe in it is then lost)",
        )
    return data


def _short(err: Any, n: int = 160) -> str:
    return " ".join(str(err).split())[:n]


def load_config(directory: str | Path, *, trust_remote_code: bool = False) -> Any:
    """``AutoConfig`` of a local checkpoint dir.

    Raises:
        trustequiv.user_errors.CheckpointError: its ``config.json`` is not valid JSON or names no model type
            transformers knows (transformers raises an OSError or ValueError with several lines).
    """

    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, FileNotFoundError | PermissionError):
            raise
        raise CheckpointError(
            f"{Path(directory) / 'config.json'} is not a usable model config ({type(err).__name__}: "
            f"{_short(err)})",
            "restore the checkpoint's config.json (save_pretrained writes it; a hub model's is on its page), "
            "or point the setting that names the checkpoint (model.checkpoint, model.pretrained) elsewhere",
        ) from None


def load_tokenizer(directory: str | Path, *, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer`` of a local checkpoint dir.

    Raises:
        trustequiv.user_errors.CheckpointError: it cannot be loaded (e.g. a checkpoint saved without its
            tokenizer files: transformers then fails deep inside with a TypeError).
    """

    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except Exception as err:  # TypeError, OSError, ValueError ... by version and tokenizer class
        if isinstance(err, PermissionError):
            raise
        present = sorted(p.name for p in Path(directory).iterdir()) if Path(directory).is_dir() else []
        raise CheckpointError(
            f"cannot load a tokenizer from {directory} ({type(err).__name__}: {_short(err, 120)}); it holds "
            f"{', '.join(present[:8]) or 'nothing'}{' ...' if len(present) > 8 else ''}",
            "save the tokenizer of the model it was fine-tuned from into it "
            "(AutoTokenizer.from_pretrained(<that model>).save_pretrained(<this dir>): tokenizer.json or "
            "vocab files, tokenizer_config.json)",
        ) from None


def write_metadata(directory: str | Path, metadata: dict[str, Any]) -> None:
    (Path(directory) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))


def check_model_inputs(
    directory: str | Path,
    task_cfg: Mapping[str, Any],
    predict_cfg: Mapping[str, Any] | None = None,
    *,
    trust_remote_code: bool = False,
) -> None:
    """Where the model and the run's settings meet, before any work: its config.json and trustequiv.json
    read (a garbage one is named), ``task.max_length`` within its input limit and ``predict.layer`` one of
    its layers (``predict_cfg`` None: fine-tuning, no embeddings taken).

    Raises:
        trustequiv.user_errors.CheckpointError: an unreadable config.json or trustequiv.json.
        trustequiv.user_errors.ConfigError: a setting the model cannot take.
    """
    config = load_config(directory, trust_remote_code=trust_remote_code)
    read_metadata(directory)
    check_max_length(directory, config, task_cfg)
    if predict_cfg is not None:
        check_layer(directory, config, predict_cfg)


@dataclass
class LoadedModel:
    """A classifier ready for inference.

    Attributes:
        model: the ``AutoModelForSequenceClassification`` (after any on-load compression), eval mode.
        tokenizer: its tokenizer.
        label_permutation: column order mapping the model's logits to the task's canonical labels.
        directory: local checkpoint dir; fingerprint: its content hash; metadata: its trustequiv.json.
        cpu_only: the model cannot run on an accelerator (dynamic quantization).
    """

    model: nn.Module
    tokenizer: Any
    label_permutation: list[int]
    directory: Path
    fingerprint: str
    metadata: dict[str, Any]
    cpu_only: bool = False


def checkpoint_label_names(directory: str | Path, declared: list[str] | None = None) -> list[str]:
    """The checkpoint's class names in logit order: ``declared`` if given, else ``config.id2label``."""
    if declared:
        return list(declared)
    return id2label_names(load_config(directory).id2label)


def load_classifier(
    checkpoint: str,
    label_names: list[str],
    *,
    declared_label_names: list[str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    memo_file: str | Path | None = None,
) -> LoadedModel:
    """Load a fine-tuned sequence classifier and map its classes to ``label_names`` by name.

    Weights load from safetensors when present; ``.bin`` files go through transformers' ``torch.load``
    with ``weights_only=True``. ``trust_remote_code`` stays False unless the user sets it.

    Raises:
        FileNotFoundError: the checkpoint is neither a local model dir nor reachable on the hub.
        trustequiv.user_errors.CheckpointError: a checkpoint of another kind (e.g. extractive QA), a head with
            another number of classes than the task (or than ``declared_label_names``), or one of the
            refusals of :func:`load_checkpoint`.
        trustequiv.user_errors.LabelMismatchError: the checkpoint's class names cannot be matched to the
            task's.
    """

    directory = local_dir(checkpoint, revision)
    config = load_config(directory, trust_remote_code=trust_remote_code)
    # Before the label names: a QA checkpoint has generic LABEL_0/1 names, and "declare them" is no fix; nor
    # is it for an encoder without a head (its config's default num_labels=2 and LABEL_0/1 say nothing).
    check_architecture(directory, config, AutoModelForSequenceClassification)
    check_head(directory, config, AutoModelForSequenceClassification, trust_remote_code=trust_remote_code)
    check_num_labels(directory, config.num_labels, label_names, declared_label_names)
    names = checkpoint_label_names(directory, declared_label_names)
    perm = label_permutation(names, label_names)
    return load_checkpoint(
        directory,
        AutoModelForSequenceClassification,
        perm,
        trust_remote_code=trust_remote_code,
        memo_file=memo_file,
    )


def load_checkpoint(
    directory: Path,
    model_class: Any,
    label_permutation: list[int],
    *,
    trust_remote_code: bool = False,
    memo_file: str | Path | None = None,
) -> LoadedModel:
    """Load ``model_class`` (a transformers Auto class) and its tokenizer from a local checkpoint dir, apply
    the compressor recipe recorded in its trustequiv.json, and put it in eval mode.

    Only fine-tuned checkpoints: fine-tuning starts from a new head elsewhere
    (``plugins.tasks.classification.new_classifier``).

    Raises:
        trustequiv.user_errors.CheckpointError: a checkpoint of another kind (:func:`check_architecture`), a
            corrupt or truncated weights file (:func:`check_weight_files`) or weights transformers would
            initialise at random (a head that was never fine-tuned).
    """

    config = load_config(directory, trust_remote_code=trust_remote_code)
    check_architecture(directory, config, model_class)
    check_weight_files(directory)
    metadata = read_metadata(directory)
    # Before the weights: a checkpoint saved without its tokenizer fails in a second, not after the load.
    tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)
    recipe = metadata.get("compressor")
    compressor = build_compressor(recipe) if recipe else None  # refuses a crafted recipe before any load
    # transformers warns about newly initialised weights in several lines; the refusal below says it in one.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(
            directory, trust_remote_code=trust_remote_code, output_loading_info=True
        )
    except (OSError, RuntimeError) as err:  # unreadable .bin weights, a missing weights file
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"cannot load the weights in {directory} ({type(err).__name__}: {reason})",
            "replace the checkpoint: download it again, or fine-tune it again (python train.py ... "
            "overwrite=true)",
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    _refuse_new_weights(directory, model, list(info.get("missing_keys") or []))
    cpu_only = False
    if compressor is not None:
        model = compressor.on_load(model)
        cpu_only = compressor.cpu_only
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        label_permutation=list(label_permutation),
        directory=directory,
        fingerprint=fingerprint(directory, memo_file),
        metadata=metadata,
        cpu_only=cpu_only,
    )
