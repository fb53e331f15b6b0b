"""Checks of a checkpoint before and while it loads: its input limit against ``task.max_length``, its layers
against ``predict.layer``, its architecture, class count and weights against what is asked of it, each a
refusal that names the checkpoint and the fix instead of a failure deep in transformers (or a head initialised
at random)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from trustequiv.user_errors import CheckpointError, ConfigError

#: a tokenizer's ``model_max_length`` above this is transformers' "no limit set" placeholder (int(1e30)).
_NO_TOKENIZER_LIMIT = 1_000_000


def _setting(config: Any, *names: str) -> Any:
    """The first of ``names`` a config (an ``AutoConfig`` or config.json's dict) sets to a positive int."""
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def input_limit(directory: str | Path, config: Any) -> tuple[int, str] | None:
    """``(tokens, where from)``: the longest input the model in ``directory`` takes, the smaller of its
    position embeddings (``config``: its AutoConfig or config.json's dict) and its tokenizer's
    ``model_max_length`` when that is a real limit (RoBERTa: 514 positions, 512 tokens); None if neither says.
    """
    limits = []
    positions = _setting(config, "max_position_embeddings", "n_positions", "max_seq_len")
    if positions:
        limits.append((positions, f"{positions} position embeddings in its config.json"))
    try:
        tok_cfg = json.loads((Path(directory) / "tokenizer_config.json").read_bytes())
    except (OSError, ValueError):  # absent or unreadable: the tokenizer's load says what is wrong
        tok_cfg = {}
    tok = _setting(tok_cfg, "model_max_length") if isinstance(tok_cfg, dict) else None
    if tok and tok <= _NO_TOKENIZER_LIMIT:
        limits.append((tok, f"model_max_length={tok} in its tokenizer_config.json"))
    return min(limits) if limits else None


def check_max_length(directory: str | Path, config: Any, task_cfg: Mapping[str, Any]) -> None:
    """Refuse a ``task.max_length`` above what the model takes (:func:`input_limit`): its position
    embeddings would be indexed out of range (an IndexError deep in the model, on the first long text).

    Raises:
        trustequiv.user_errors.ConfigError: the key, the value and the model's limit.
    """

    limit = input_limit(directory, config)
    wanted = task_cfg.get("max_length")
    if limit is None or wanted is None or int(wanted) <= limit[0]:
        return
    raise ConfigError(
        f"task.max_length={wanted} is more than the model in {directory} takes: at most {limit[0]} tokens "
        f"({limit[1]})",
        f"set task.max_length={limit[0]} or less",
    )


def check_layer(directory: str | Path, config: Any, predict_cfg: Mapping[str, Any]) -> None:
    """Refuse a ``predict.layer`` the model does not have: its hidden states are 0 (the embeddings) to L.

    Raises:
        trustequiv.user_errors.ConfigError: the key, the value and the layers there are.
    """

    n = _setting(config, "num_hidden_layers", "n_layers", "n_layer")
    layer = predict_cfg.get("layer")
    if n is None or layer is None:
        return
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"predict.layer={layer!r} is not a layer number", "set e.g. predict.layer=-1")
    if not -(n + 1) <= layer <= n:
        raise ConfigError(
            f"predict.layer={layer} is not a layer of the model in {directory}: it has {n} hidden layers, "
            f"so hidden states 0..{n} (0 = the embeddings) or -{n + 1}..-1 counted from the last",
            f"set predict.layer to one of those, e.g. predict.layer=-1 (the last) or predict.layer={n // 2}",
        )


_KIND_OF_HEAD = {
    "ForSequenceClassification": "a sequence classifier",
    "ForQuestionAnswering": "an extractive QA model",
    "ForTokenClassification": "a token classifier",
    "ForMaskedLM": "a masked language model (pre-trained, not fine-tuned)",
    "ForPreTraining": "a pre-training model (not fine-tuned)",
    "ForMultipleChoice": "a multiple-choice model",
}
_REFIT_FIX = (
    "point model.checkpoint (reference.checkpoint for the reference) at a checkpoint fine-tuned for this "
    "task, or fine-tune one (python train.py model=<model> task=<task>, or train_missing=true with "
    "model.checkpoint unset)"
)


def _head(model_class: Any) -> str:
    """``"ForSequenceClassification"`` of ``AutoModelForSequenceClassification`` (the head a class loads)."""
    name = getattr(model_class, "__name__", str(model_class))
    return name.removeprefix("AutoModel").removeprefix("TF") if "For" in name else name


def check_architecture(directory: Path, config: Any, model_class: Any) -> None:
    """Refuse a checkpoint whose ``config.architectures`` names only heads of another kind than
    ``model_class`` loads (transformers would load its encoder and put a random head on it). A bare encoder
    (``BertModel``) or no ``architectures`` passes: :func:`load_checkpoint` then checks the weights.

    Raises:
        trustequiv.user_errors.CheckpointError: e.g. a ``BertForQuestionAnswering`` loaded as a classifier.
    """

    archs = [str(a) for a in (getattr(config, "architectures", None) or [])]
    wanted = _head(model_class)
    heads = [a for a in archs if "For" in a]
    if not heads or any(a.endswith(wanted) for a in archs):
        return
    other = heads[0][heads[0].index("For") :]
    kind = _KIND_OF_HEAD.get(other, f"a *{other} model")
    raise CheckpointError(
        f"{directory} holds {kind} ({heads[0]} in its config.json), not {_KIND_OF_HEAD.get(wanted, wanted)}: "
        "loading it would put a random head on its encoder",
        _REFIT_FIX,
    )


def check_num_labels(
    directory: Path, num_labels: int, label_names: list[str], declared: list[str] | None = None
) -> None:
    """Refuse a classification head with another number of classes than the task (or than the declared
    ``model.label_names``): mapping by name would drop a class silently.

    Raises:
        trustequiv.user_errors.CheckpointError: the counts differ.
    """

    if declared and len(declared) != num_labels:
        raise CheckpointError(
            f"{directory} has a classification head of {num_labels} classes, but model.label_names declares "
            f"{len(declared)} ({', '.join(map(str, declared))})",
            f"declare all {num_labels} class names of the checkpoint in its order, or {_REFIT_FIX}",
        )
    if num_labels != len(label_names):
        raise CheckpointError(
            f"{directory} has a classification head of {num_labels} classes, the task has "
            f"{len(label_names)} ({', '.join(label_names)})",
            _REFIT_FIX,
        )


def check_weight_files(directory: Path) -> None:
    """Open the header of every ``*.safetensors`` file in ``directory``: a truncated or corrupt file fails
    here with its name (transformers reports it without one, or as a missing file).

    Raises:
        trustequiv.user_errors.CheckpointError: a file that safetensors cannot open.
    """

    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # SafetensorError (header, sizes) or OSError: both mean unusable
            raise CheckpointError(
                f"{path} is corrupt or truncated ({type(err).__name__}: {' '.join(str(err).split())[:160]})",
                "replace the checkpoint: download it again, or fine-tune it again (python train.py ... "
                "overwrite=true)",
            ) from None


def _checkpoint_keys(directory: Path) -> set[str] | None:
    """The tensor names of the ``*.safetensors`` weights in ``directory`` (headers only), None when the
    weights are in another format (``.bin``: reading their names means unpickling them)."""

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            keys.update(fh.keys())
    return keys


def check_head(directory: Path, config: Any, model_class: Any, *, trust_remote_code: bool = False) -> None:
    """Refuse, before anything else is asked of it (its label names, its class count), a checkpoint whose
    weights lack the head ``model_class`` puts on its encoder (a pre-trained encoder such as ``BertModel``):
    the head's parameter names come from the model built on the meta device (no memory, no weights), its
    weights' names from the safetensors headers. Checkpoints in another format are checked when they load
    (:func:`_refuse_new_weights`).

    Raises:
        trustequiv.user_errors.CheckpointError: the head's weights are not in the checkpoint.
    """

    check_weight_files(directory)  # a corrupt file is named as such, not as a missing head
    have = _checkpoint_keys(directory)
    if have is None:
        return
    try:
        with torch.device("meta"):
            model = model_class.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # a model that cannot be built this way: the check after loading still runs
        return
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    head = [k for k in model.state_dict() if not k.startswith(prefix)]
    # A key may be saved with or without the encoder's prefix; head keys have none.
    missing = [k for k in head if k not in have]
    if missing and len(missing) == len(head):
        _refuse_new_weights(directory, model, missing)


def _refuse_new_weights(directory: Path, model: nn.Module, missing: list[str]) -> None:
    """Refuse a load that left weights newly (randomly) initialised: the checkpoint lacks them."""

    if not missing:
        return
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    head = [k for k in missing if not k.startswith(prefix)]
    shown = ", ".join((head or missing)[:4]) + (" ..." if len(head or missing) > 4 else "")
    what = (
        f"{directory} has no trained {type(model).__name__} head (no weights for {shown}): it was not "
        "fine-tuned for this task kind, and transformers would initialise the head at random"
        if head
        else f"{directory} lacks {len(missing)} weight(s) of {type(model).__name__} ({shown}), which would "
        "be initialised at random"
    )
    raise CheckpointError(what, _REFIT_FIX)
