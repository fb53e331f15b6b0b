"""Model specs and where a checkpoint lives: :class:`ModelSpec` (what the config says about one model),
:func:`check_name` (names that become one directory component), :func:`resolve_checkpoint` (the fine-tuned
checkpoint to use) and :func:`local_dir` (a local directory for it, itself or a hub snapshot)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from omegaconf import DictConfig, OmegaConf

from trustequiv.user_errors import HubUnreachableError, MissingFileError, check_hub, hub_offline

log = logging.getLogger(__name__)

# Names that become one directory component: no separators, no "."/".." or hidden names (a leading dot).
_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,199}")


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
        trustequiv.user_errors.MissingFileError: a local path that does not exist or holds no config.json; a
            hub id that is unknown, or not cached while ``HF_HUB_OFFLINE=1`` (a FileNotFoundError).
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
