"""Model specs, checkpoint resolution, loading with label remapping, and content fingerprints."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trustequiv.cache import (
    CACHE_FIX,
    atomic_write_text,
    not_a_file,
    not_readable,
    path_lock,
    quarantine_file,
)
from trustequiv.models.compressor import Compressor
from trustequiv.data.labels import id2label_names, label_permutation
from huggingface_hub import snapshot_download
from hydra.utils import get_class
from safetensors import safe_open
from transformers import AutoConfig
from transformers import AutoModelForSequenceClassification
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging
from trustequiv.conf_tree import CONF_DIR, available
from trustequiv.user_errors import CheckpointError
from trustequiv.user_errors import ConfigError
from trustequiv.user_errors import HubUnreachableError, MissingFileError, check_hub, hub_offline
import torch
from trustequiv import registry

log = logging.getLogger(__name__)

METADATA_FILE = "trustequiv.json"
# Files that define a checkpoint's behaviour; anything else in the dir (logs, README) is not hashed.
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
# Names that become one directory component: no separators, no "."/".." or hidden names (a leading dot).
_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,199}")
# Compressor settings a recipe may carry: plain JSON values, so building one can run no chosen code.
_SCALARS = (str, int, float, bool, type(None))


def check_name(name: Any, key: str) -> str:
    """``name`` if it is safe as one directory component, else an error naming the config ``key``.

    Letters, digits and ``_ - . +``, at most 200 characters, not starting with a dot (so never ``.``, ``..``
    or hidden). ``model.name=../../x`` once wrote a checkpoint outside ``paths.models_dir``.

    Raises:
        ValueError: anything else.
    """
    text = str(name)
    if not _NAME.fullmatch(text):
        raise ValueError(
            f"{key}={text!r} is not a valid name: use letters, digits and _ - . + only (no '/' or '\\', "
            "no leading dot, at most 200 characters); it names a directory under paths.models_dir"
        )
    return text


@dataclass
class ModelSpec:
    """What the config says about one model (``conf/model/*.yaml`` plus an optional compressor).

    Attributes:
        name: display and directory name; ``<base>+<compressor>`` for a compressed candidate.
        pretrained: hub id or local dir fine-tuning starts from.
        checkpoint: explicit fine-tuned checkpoint (local dir or hub id), or None for the default location.
        label_names: declared class order for checkpoints without names in ``config.id2label``.
        compressor: the config node of the compressor (``_target_`` ...), or None.
        base: the spec of the uncompressed model a compressed one is made from.
        seed: the fine-tuning seed when it is not the run's (a noise-floor replica, ``<model>+seed<k>``).
    """

    name: str
    pretrained: str
    checkpoint: str | None = None
    label_names: list[str] | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    compressor: dict[str, Any] | None = None
    base: ModelSpec | None = field(default=None, repr=False)
    seed: int | None = None

    @classmethod
    def from_config(
        cls,
        model_cfg: DictConfig | dict,
        compressor_cfg: DictConfig | dict | None = None,
        *,
        key: str = "model",
    ) -> ModelSpec:
        """Build from a ``conf/model`` node and an optional ``conf/compressor`` node.

        ``key``: the config key of the model node (``model``, ``reference``), named in errors.

        Raises:
            ValueError: the node lacks ``name`` or ``pretrained``; the model's or compressor's ``name`` is not
                a safe directory name (:func:`check_name`).
        """
        m = (
            OmegaConf.to_container(model_cfg, resolve=True)
            if isinstance(model_cfg, DictConfig)
            else dict(model_cfg)
        )
        for field_name in ("name", "pretrained"):
            if not m.get(field_name):
                raise ValueError(
                    f"{key} config needs '{field_name}' (got {sorted(m)}); see conf/model/bert_base.yaml"
                )
        base = cls(
            name=check_name(m["name"], f"{key}.name"),
            pretrained=str(m["pretrained"]),
            checkpoint=m.get("checkpoint"),
            label_names=m.get("label_names"),
            revision=m.get("revision"),
            trust_remote_code=bool(m.get("trust_remote_code", False)),
        )
        if compressor_cfg is None:
            return base
        c = (
            OmegaConf.to_container(compressor_cfg, resolve=True)
            if isinstance(compressor_cfg, DictConfig)
            else dict(compressor_cfg)
        )
        if not c:
            return base
        return cls(
            name=f"{base.name}+{check_name(c.get('name', ''), 'compressor.name')}",
            pretrained=base.pretrained,
            checkpoint=None,
            label_names=base.label_names,
            revision=base.revision,
            trust_remote_code=base.trust_remote_code,
            compressor=c,
            base=base,
        )

    def default_dir(self, models_dir: str | Path, task: str) -> Path:
        """``<models_dir>/<task>/<name>``: where train.py saves and evaluate.py looks.

        Raises:
            ValueError: ``task`` or the name is not a safe directory name, so the path could leave
                ``models_dir`` (checked here too, for specs not made by :meth:`from_config`).
        """
        root = Path(models_dir)
        out = root / check_name(task, "task.name") / check_name(self.name, "model.name")
        if not Path(os.path.normpath(out)).is_relative_to(os.path.normpath(root)):
            raise ValueError(f"model directory {out} is outside paths.models_dir={root}")
        return out


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


def resolve_checkpoint(spec: ModelSpec, task: str, models_dir: str | Path) -> str | None:
    """The fine-tuned checkpoint to use: ``spec.checkpoint`` if set, else the default dir if it holds one."""
    if spec.checkpoint:
        return str(spec.checkpoint)
    default = spec.default_dir(models_dir, task)
    return str(default) if (default / "config.json").exists() else None


_NO_HUB_FIX = (
    "point model.checkpoint (or model.pretrained) at a local model directory, or use model=minilm / "
    "experiment=offline_minilm, which need no hub"
)
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model.bin"]


def local_dir(checkpoint: str, revision: str | None = None) -> Path:
    """A local directory for ``checkpoint``: itself if it is one, else a hub snapshot.

    The hub is probed first (:func:`trustequiv.user_errors.check_hub`): unreachable, a snapshot downloaded
    before is used, else the run stops within seconds instead of after the hub client's retries.

    Raises:
        trustequiv.user_errors.MissingFileError: a local path that does not exist or holds no config.json; a hub
            id that is unknown, or not cached while ``HF_HUB_OFFLINE=1`` (a FileNotFoundError).
        trustequiv.user_errors.HubUnreachableError: the hub does not answer and no snapshot is cached (a
            ConnectionError).
    """

    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise MissingFileError(
                f"{path} has no config.json: it is not a Hugging Face model directory",
                "point model.checkpoint (or model.pretrained) at a directory written by save_pretrained "
                "(config.json, weights, tokenizer files)",
            )
        return path.resolve()
    if path.is_absolute() or checkpoint.startswith((".", "~")) or checkpoint.count("/") > 1:
        raise MissingFileError(
            f"checkpoint directory {checkpoint} does not exist",
            "check the path in model.checkpoint (or model.pretrained); relative paths start from the "
            "directory the command runs in",
        )

    try:
        check_hub(f"model '{checkpoint}'", _NO_HUB_FIX)
    except HubUnreachableError as unreachable:
        try:  # a snapshot downloaded before still serves
            cached = snapshot_download(
                checkpoint, revision=revision, allow_patterns=_HUB_FILES, local_files_only=True
            )
        except Exception:
            raise unreachable from None
        log.warning("the Hugging Face hub is unreachable: using the cached snapshot of %s", checkpoint)
        return Path(cached)
    try:
        return Path(snapshot_download(checkpoint, revision=revision, allow_patterns=_HUB_FILES))
    except Exception as err:
        if hub_offline():
            raise MissingFileError(
                f"'{checkpoint}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                "downloading it",
                f"{_NO_HUB_FIX}; or download it once with HF_HUB_OFFLINE unset",
            ) from None
        reason = " ".join(str(err).split())[:200]
        raise MissingFileError(
            f"could not get '{checkpoint}' from the Hugging Face hub ({type(err).__name__}: {reason})",
            f"check the id (and model.revision) on huggingface.co; or {_NO_HUB_FIX}",
        ) from None


def _load_memo(memo_file: Path) -> dict[str, str]:
    """The fingerprint memo (file key -> SHA-256), ``{}`` if absent; a malformed one (not JSON, not an object
    of strings) is moved to ``<its dir>/corrupt/`` and ``{}`` returned, so the digests are recomputed.

    Raises:
        trustequiv.cache.CachePermissionError: it exists but this user may not read it.
    """
    try:
        raw = memo_file.read_bytes()
    except FileNotFoundError:
        return {}
    except PermissionError as err:
        raise not_readable(memo_file, err) from err
    except IsADirectoryError as err:
        raise not_a_file(memo_file) from err
    try:
        memo = json.loads(raw)
    except ValueError as err:  # JSONDecodeError, or bytes that are not text
        quarantine_file(memo_file, err)
        return {}
    if not isinstance(memo, dict) or not all(isinstance(v, str) for v in memo.values()):
        quarantine_file(memo_file, TypeError("expected a JSON object of digests"))
        return {}
    return memo


def _memo_key(path: Path, st: os.stat_result) -> str:
    # Size and mtime alone let a same-size file copied in with its time kept (cp -p, rsync -t, an archive's
    # fixed times) pass for the old one, which was then served its cached outputs. The inode change time
    # cannot be set by a user and moves on every write, utime, chmod or rename into place (and rsync or tar
    # give a new inode), so such a copy gets a new key; at worst a file is hashed again.
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _digest(path: Path, memo: dict[str, str], new: dict[str, str]) -> str:
    """SHA-256 of ``path``'s bytes: from ``memo`` when its key (:func:`_memo_key`) is there, else hashed
    and added to ``new``."""
    key = _memo_key(path, path.stat())
    digest = memo.get(key)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
        digest = new[key] = h.hexdigest()
    return digest


def _save_memo(memo_path: Path | None, new: dict[str, str]) -> None:
    if new and memo_path is not None:
        # Re-read under the lock and merge: another run may have added entries since we read it.
        with path_lock(memo_path, fix=CACHE_FIX):
            atomic_write_text(json.dumps({**_load_memo(memo_path), **new}), memo_path)


def file_digest(path: str | Path, memo_file: str | Path | None = None) -> str:
    """SHA-256 of one file's bytes, memoised in ``memo_file`` as :func:`fingerprint` does (e.g. an ONNX
    model's external data).

    Raises:
        trustequiv.cache.CachePermissionError, trustequiv.cache.CacheNotWritableError: as
            :func:`fingerprint`.
    """
    memo_path = None if memo_file is None else Path(memo_file)
    new: dict[str, str] = {}
    digest = _digest(Path(path).resolve(), {} if memo_path is None else _load_memo(memo_path), new)
    _save_memo(memo_path, new)
    return digest


def fingerprint(directory: str | Path, memo_file: str | Path | None = None) -> str:
    """SHA-256 over the names and bytes of a checkpoint directory's model files (config, weights, tokenizer,
    trustequiv.json). Memoised in ``memo_file`` by path, size, mtime, ctime and inode (:func:`_memo_key`)
    so large weights are hashed once; a malformed memo is set aside and rebuilt, and concurrent runs merge
    their entries under its lock.

    Raises:
        trustequiv.cache.CachePermissionError: the memo exists but this user may not read it.
        trustequiv.cache.CacheNotWritableError: the memo cannot be written (read-only ``paths.cache_dir``).
    """
    directory = Path(directory).resolve()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES)
    memo_path = None if memo_file is None else Path(memo_file)
    memo = {} if memo_path is None else _load_memo(memo_path)
    outer = hashlib.sha256()
    new: dict[str, str] = {}
    for p in files:
        digest = _digest(p, memo, new)
        outer.update(p.name.encode())
        outer.update(digest.encode())
    _save_memo(memo_path, new)
    return outer.hexdigest()


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
        trustequiv.user_errors.CheckpointError: it cannot be loaded (e.g. a checkpoint saved without its tokenizer
            files: transformers then fails deep inside with a TypeError).
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
        trustequiv.user_errors.LabelMismatchError: the checkpoint's class names cannot be matched to the task's.
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
