"""Content-addressed cache of model outputs, resumable at batch granularity.

Layout under ``root``::

    outputs/<key[:2]>/<key>.safetensors          entry: example_id, logits, labels, [embeddings, correct]
    outputs/<key[:2]>/<key>.json                 its metadata (model, task, split, label names, checkpoint)
    outputs/<key[:2]>/<key>.partial/*.safetensors  batches written so far by an unfinished prediction
    extras/<key[:2]>/<key>.json                  per-model characteristic results (attributions, attacks)

The key is a SHA-256 of the content that determines the outputs: checkpoint fingerprint, task, split, the
data's example ids and the prediction settings. Files are written to a temporary name and renamed, so a
killed run leaves either a whole file or none; a corrupt entry is moved aside and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file

from trustequiv.outputs import ModelOutputs

log = logging.getLogger(__name__)

_TENSORS = ("example_id", "logits", "labels", "embeddings", "correct")


def content_key(**parts: Any) -> str:
    """SHA-256 hex digest of the JSON of ``parts`` (keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class OutputCache:
    """Model outputs and per-model extras keyed by content.

    Args:
        root: cache directory (``paths.cache_dir``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths
    def _entry(self, key: str) -> Path:
        return self.root / "outputs" / key[:2] / key

    def tensors_path(self, key: str) -> Path:
        return self._entry(key).with_suffix(".safetensors")

    def meta_path(self, key: str) -> Path:
        return self._entry(key).with_suffix(".json")

    def partial_dir(self, key: str) -> Path:
        return self._entry(key).with_suffix(".partial")

    # -- finished entries
    def load(self, key: str, name: str) -> ModelOutputs | None:
        """The cached outputs for ``key`` renamed ``name``, or None if absent or corrupt (moved aside)."""
        tpath, mpath = self.tensors_path(key), self.meta_path(key)
        if not tpath.exists() or not mpath.exists():
            return None
        try:
            meta = json.loads(mpath.read_text())
            t = load_file(str(tpath))
            return ModelOutputs(
                name=name,
                example_ids=t["example_id"],
                logits=t["logits"],
                labels=t["labels"],
                label_names=tuple(meta["label_names"]),
                embeddings=t.get("embeddings"),
                correct=t["correct"].bool() if "correct" in t else None,
            )
        except Exception as err:  # any parse/shape error means the entry cannot be trusted
            self._quarantine(key, err)
            return None

    def _quarantine(self, key: str, err: Exception) -> None:
        bad = self.root / "corrupt"
        bad.mkdir(parents=True, exist_ok=True)
        for p in (self.tensors_path(key), self.meta_path(key)):
            if p.exists():
                shutil.move(str(p), str(bad / p.name))
        log.warning(
            "cache entry %s was corrupt (%s: %s); moved to %s and recomputing",
            key[:12],
            type(err).__name__,
            err,
            bad,
        )

    def save(self, key: str, outputs: ModelOutputs, meta: Mapping[str, Any]) -> None:
        tensors = {"example_id": outputs.example_ids, "logits": outputs.logits, "labels": outputs.labels}
        if outputs.embeddings is not None:
            tensors["embeddings"] = outputs.embeddings
        if outputs.correct is not None:
            tensors["correct"] = outputs.correct.to(torch.uint8)
        _atomic_save(tensors, self.tensors_path(key))
        # Metadata last: an entry counts as present only when both files exist.
        _atomic_write_text(
            json.dumps({**meta, "label_names": list(outputs.label_names)}, indent=2, default=str),
            self.meta_path(key),
        )

    # -- unfinished predictions
    def partial_files(self, key: str) -> list[dict[str, torch.Tensor]]:
        """Each batch file written so far for ``key`` (a killed prediction's work); unreadable ones (a write
        cut short) are deleted and left out."""
        d = self.partial_dir(key)
        parts = []
        for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            try:
                parts.append(load_file(str(f)))
            except Exception:
                f.unlink(missing_ok=True)
        return parts

    def partial_batches(self, key: str) -> dict[str, torch.Tensor] | None:
        """All batches written so far for ``key``, concatenated, or None. Unreadable batches are dropped."""
        parts = self.partial_files(key)
        if not parts:
            return None
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def clear_partial(self, key: str) -> None:
        shutil.rmtree(self.partial_dir(key), ignore_errors=True)

    def get_or_predict(
        self,
        key: str,
        name: str,
        label_names: tuple[str, ...],
        predict: Callable[[set[int]], None],
        meta: Mapping[str, Any],
    ) -> tuple[ModelOutputs, bool]:
        """Cached outputs for ``key``, or run ``predict(done_ids)`` (which writes batches into
        :meth:`partial_dir`, skipping ``done_ids``) and assemble them. Returns (outputs, was_cached).
        """
        cached = self.load(key, name)
        if cached is not None:
            return cached, True
        done = self.partial_batches(key)
        done_ids = set(done["example_id"].tolist()) if done else set()
        if done_ids:
            log.info("%s: resuming prediction, %d examples already in the cache", name, len(done_ids))
        predict(done_ids)
        parts = self.partial_batches(key)
        if parts is None:
            raise RuntimeError(f"{name}: prediction wrote no outputs to {self.partial_dir(key)}")
        # Keep one row per id (a resumed batch may overlap), ordered by example id.
        ids = parts["example_id"]
        order = torch.argsort(ids, stable=True)
        ids_sorted = ids[order]
        first = torch.ones_like(ids_sorted, dtype=torch.bool)
        first[1:] = ids_sorted[1:] != ids_sorted[:-1]
        order = order[first]
        outputs = ModelOutputs(
            name=name,
            example_ids=parts["example_id"][order],
            logits=parts["logits"][order],
            labels=parts["labels"][order],
            label_names=label_names,
            embeddings=parts["embeddings"][order] if "embeddings" in parts else None,
            correct=parts["correct"][order].bool() if "correct" in parts else None,
        )
        self.save(key, outputs, meta)
        self.clear_partial(key)
        return outputs, False

    # -- extras (per-model characteristic results; JSON so nothing is ever unpickled)
    def extras_path(self, key: str) -> Path:
        return self.root / "extras" / key[:2] / f"{key}.json"

    def load_extras(self, key: str) -> dict[str, Any] | None:
        p = self.extras_path(key)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as err:
            self._quarantine_file(p, err)
            return None

    def _quarantine_file(self, path: Path, err: Exception) -> None:
        bad = self.root / "corrupt"
        bad.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(bad / path.name))
        log.warning("cache file %s was corrupt (%s); moved aside and recomputing", path.name, err)

    def save_extras(self, key: str, extras: Mapping[str, Any]) -> None:
        _atomic_write_text(json.dumps(extras, default=str), self.extras_path(key))


class PartialPredictionWriter(BasePredictionWriter):
    """Writes each predicted batch to the cache's partial dir when it finishes: a killed run resumes there.

    ``keys``: the prediction entries written (default: the classification outputs); ``id_key`` names the
    entry whose first value goes into the file name (files of a resumed run never overwrite earlier ones).
    """

    def __init__(self, directory: str | Path, keys: tuple[str, ...] = _TENSORS, id_key: str = "example_id"):
        super().__init__(write_interval="batch")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keys, self.id_key = keys, id_key

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        first = int(prediction[self.id_key][0]) if len(prediction[self.id_key]) else 0
        name = f"r{trainer.global_rank}-b{batch_idx:06d}-{first}.safetensors"
        _atomic_save({k: prediction[k] for k in self.keys if k in prediction}, self.directory / name)
