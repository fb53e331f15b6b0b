"""Model specs, checkpoint resolution, loading with label remapping, and content fingerprints."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trustequiv.compressor import Compressor
from trustequiv.labels import id2label_names, label_permutation

log = logging.getLogger(__name__)

METADATA_FILE = "trustequiv.json"
# Files that define a checkpoint's behaviour; anything else in the dir (logs, README) is not hashed.
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
# A checkpoint may only name compressors from these modules: its metadata must not run arbitrary code.
_TRUSTED_TARGETS = ("plugins.compressors.", "trustequiv.")


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
    """

    name: str
    pretrained: str
    checkpoint: str | None = None
    label_names: list[str] | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    compressor: dict[str, Any] | None = None
    base: ModelSpec | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls, model_cfg: DictConfig | dict, compressor_cfg: DictConfig | dict | None = None
    ) -> ModelSpec:
        """Build from a ``conf/model`` node and an optional ``conf/compressor`` node.

        Raises:
            ValueError: the node lacks ``name`` or ``pretrained``.
        """
        m = (
            OmegaConf.to_container(model_cfg, resolve=True)
            if isinstance(model_cfg, DictConfig)
            else dict(model_cfg)
        )
        for key in ("name", "pretrained"):
            if not m.get(key):
                raise ValueError(
                    f"model config needs '{key}' (got {sorted(m)}); see conf/model/bert_base.yaml"
                )
        base = cls(
            name=str(m["name"]),
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
            name=f"{base.name}+{c['name']}",
            pretrained=base.pretrained,
            checkpoint=None,
            label_names=base.label_names,
            revision=base.revision,
            trust_remote_code=base.trust_remote_code,
            compressor=c,
            base=base,
        )

    def default_dir(self, models_dir: str | Path, task: str) -> Path:
        """``<models_dir>/<task>/<name>``: where train.py saves and evaluate.py looks."""
        return Path(models_dir) / task / self.name


def build_compressor(recipe: dict[str, Any]) -> Compressor:
    """Instantiate a compressor from its config/recipe.

    Raises:
        ValueError: ``_target_`` is missing or outside ``plugins.compressors`` / ``trustequiv``.
    """
    target = str(recipe.get("_target_", ""))
    if not target.startswith(_TRUSTED_TARGETS):
        raise ValueError(
            f"compressor target {target!r} is not a trustequiv compressor (plugins.compressors.*)"
        )
    return hydra.utils.instantiate(recipe)


def resolve_checkpoint(spec: ModelSpec, task: str, models_dir: str | Path) -> str | None:
    """The fine-tuned checkpoint to use: ``spec.checkpoint`` if set, else the default dir if it holds one."""
    if spec.checkpoint:
        return str(spec.checkpoint)
    default = spec.default_dir(models_dir, task)
    return str(default) if (default / "config.json").exists() else None


def local_dir(checkpoint: str, revision: str | None = None) -> Path:
    """A local directory for ``checkpoint``: itself if it is one, else a hub snapshot.

    Raises:
        FileNotFoundError: not a local dir and the hub cannot provide it (offline, unknown id).
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: it is not a Hugging Face model directory")
        return path.resolve()
    if path.is_absolute() or checkpoint.startswith((".", "~")) or checkpoint.count("/") > 1:
        raise FileNotFoundError(f"checkpoint directory {checkpoint} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                checkpoint,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model.bin"],
            )
        )
    except Exception as err:
        raise FileNotFoundError(
            f"could not get '{checkpoint}' from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline, point model.checkpoint (or model.pretrained) at a local directory, or use "
            "model=minilm / "
            "experiment=offline_minilm, which need no hub."
        ) from None


def fingerprint(directory: str | Path, memo_file: str | Path | None = None) -> str:
    """SHA-256 over the names and bytes of a checkpoint directory's model files (config, weights, tokenizer,
    trustequiv.json). Memoised by (path, size, mtime) in ``memo_file`` so large weights are hashed once.
    """
    directory = Path(directory).resolve()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES)
    memo: dict[str, str] = {}
    if memo_file is not None and Path(memo_file).exists():
        try:
            memo = json.loads(Path(memo_file).read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
    outer = hashlib.sha256()
    changed = False
    for p in files:
        st = p.stat()
        key = f"{p}:{st.st_size}:{st.st_mtime_ns}"
        digest = memo.get(key)
        if digest is None:
            h = hashlib.sha256()
            with p.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(chunk)
            digest = memo[key] = h.hexdigest()
            changed = True
        outer.update(p.name.encode())
        outer.update(digest.encode())
    if changed and memo_file is not None:
        Path(memo_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{memo_file}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    return outer.hexdigest()


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``trustequiv.json`` (empty for checkpoints made elsewhere)."""
    p = Path(directory) / METADATA_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def write_metadata(directory: str | Path, metadata: dict[str, Any]) -> None:
    (Path(directory) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))


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
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    return id2label_names(config.id2label)


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
        trustequiv.labels.LabelMismatchError: the checkpoint's class names cannot be matched to the task's.
    """
    from transformers import AutoModelForSequenceClassification

    directory = local_dir(checkpoint, revision)
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
    the compressor recipe recorded in its trustequiv.json, and put it in eval mode."""
    from transformers import AutoTokenizer

    model = model_class.from_pretrained(directory, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    metadata = read_metadata(directory)
    cpu_only = False
    recipe = metadata.get("compressor")
    if recipe:
        compressor = build_compressor(recipe)
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
