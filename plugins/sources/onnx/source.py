"""Model source ``onnx``: a classifier exported to ONNX (fp32, or int8 by onnxruntime's quantizer) and run
through ONNX Runtime on the CPU: the artefact that is deployed, judged as a candidate (issue 10, 2b).

Config (``conf/model/onnx.yaml``), one of:

- ``path``: an ``.onnx`` file, or a directory holding ``model.onnx``, with the tokenizer files beside it
  and either ``config.json`` (its ``id2label`` gives the logit order) or a declared ``label_names``;
- ``export_from``: a model node (an HF model config, e.g. ``${model}``) whose fine-tuned checkpoint is
  found, or fine-tuned with ``train_missing=true``, by its own source (:func:`trustequiv.train.checkpoints.
  ensure_checkpoint` for ``hf``) and exported once into ``<paths.models_dir>/<task>/<name>/``
  (``model.onnx``, tokenizer, ``config.json``, ``trustequiv.json``); ``quantize: int8`` then applies
  ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights of the ``quantize_ops``, activations
  quantized per batch at run time), ``quantize: null`` keeps fp32.

An export is written to a temporary directory and renamed into place under ``path_lock(out_dir)``; it is
redone (with a warning) when its source checkpoint's fingerprint or the export settings differ from those
recorded in its ``trustequiv.json``. Each fp32 export is checked against torch on a padded and an unpadded
batch (the tracer records data-dependent branches once: a mask path dropped for an all-ones mask would
show here) and the largest differences are recorded.

The exported graph returns ``logits`` and every layer's hidden states (``hidden_states.0`` .. ``.L``), so the
cached embeddings follow ``predict.pooling`` (cls | mean) and ``predict.layer`` as the torch path
(:func:`trustequiv.train.lightning_module.pool`); a file exported elsewhere may give ``last_hidden_state``
(layer -1 only)
or none (no embeddings: the representation characteristic then says so).

Outputs go through :func:`trustequiv.prediction.cached_prediction` (resumable by batch), keyed by the
SHA-256 of the ``.onnx`` file (and its external data) plus the tokenizer and config files, the split's
content and the settings; inputs are tokenized as the torch path does
(:func:`trustequiv.data.batches.encode_split`,
truncation to the task's ``max_length``, pairs as pairs) and run in length-sorted batches of
``predict.batch_size``; logit columns are mapped to the task's canonical label order by name
(:func:`trustequiv.data.labels.label_permutation`). :class:`OnnxTextScorer` serves LIME, SHAP and attacks;
there are no gradients (``ModelHandle.loaded`` is None), so integrated gradients says it cannot run.

Classification tasks only. Nothing a file names is loaded: external tensor data must lie beside the
``.onnx`` file (checked before onnxruntime opens it), ``config.json`` is read as JSON for its labels, the
tokenizer loads with ``trust_remote_code=False``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugins.sources.onnx.export import export_classifier
from plugins.sources.onnx.files import (
    MODEL_FILE,
    external_data_files,
    model_label_names,
    onnx_fingerprint,
    read_config_json,
)
from plugins.sources.onnx.runtime import PROVIDER, OnnxModel, OnnxTextScorer, package_version, require_runtime
from trustequiv.cache import atomic_save, path_lock
from trustequiv.data.batches import LengthSortedBatchSampler, encode_split, pad_features
from trustequiv.data.labels import label_permutation
from trustequiv.data.splits import split_fingerprint
from trustequiv.models.checks import check_max_length
from trustequiv.models.handle import ModelHandle
from trustequiv.models.loading import read_metadata
from trustequiv.models.source import ModelSource, RunContext, build_source
from trustequiv.models.spec import check_name
from trustequiv.outputs import ModelOutputs
from trustequiv.prediction import cached_prediction, output_key, unique_rows
from trustequiv.train.lightning_module import pool

log = logging.getLogger(__name__)

KEYS = frozenset(
    {
        "source",
        "name",
        "path",
        "export_from",
        "quantize",
        "quantize_ops",
        "per_channel",
        "reduce_range",
        "opset",
        "label_names",
        "threads",
    }
)
QUANTIZE = (None, "int8")
#: bump when what an export holds changes (inputs, outputs, wrapper): older exports are then redone.
EXPORT_FORMAT = 1


class OnnxSource(ModelSource):
    """A classifier run as ONNX through onnxruntime on the CPU (see the module docstring).

    Args:
        model_cfg: the model node (``name``, ``path`` or ``export_from``, ``quantize``, ``quantize_ops``,
            ``per_channel``, ``reduce_range``, ``opset``, ``label_names``, ``threads``).
        compressor_cfg: must be None or empty (quantize with ``quantize: int8``).

    Raises:
        ValueError: both ``path`` and ``export_from`` (neither: :meth:`prepare` raises, so the template
            config builds), an unknown ``quantize``, ``quantize`` with ``path``, a compressor, or a name that
            is not a safe directory name.
    """

    kind = "onnx"
    provides = frozenset({"scorer"})

    def __init__(self, model_cfg: Mapping[str, Any], compressor_cfg: Mapping[str, Any] | None = None):
        cfg = dict(model_cfg)
        self.path = Path(str(cfg["path"])).expanduser() if cfg.get("path") else None
        self.export_from = dict(cfg["export_from"]) if cfg.get("export_from") else None
        self.quantize = cfg.get("quantize") or None
        label = cfg.get("name") or "?"
        if self.path is not None and self.export_from is not None:
            raise ValueError(self._which_message(label))
        if self.quantize not in QUANTIZE:
            raise ValueError(
                f"model {label} (source onnx): quantize must be null or int8, got {self.quantize!r}"
            )
        if self.quantize and self.path is not None:
            raise ValueError(
                f"model {label} (source onnx): quantize applies to export_from; point path at an int8 .onnx "
                "file, or use export_from with quantize: int8"
            )
        self.name = check_name(cfg.get("name") or self._default_name(), "model.name")
        if compressor_cfg:
            raise ValueError(
                f"model {self.name}: an ONNX model takes no compressor; set quantize: int8 for int8 weights, "
                "or export_from a compressed model"
            )
        unknown = sorted(set(cfg) - KEYS)
        if unknown:
            log.warning(
                "model %s (source onnx): keys %s are not used (known: %s)", self.name, unknown, sorted(KEYS)
            )
        self.label_names = list(cfg["label_names"]) if cfg.get("label_names") else None
        self.threads = int(cfg["threads"]) if cfg.get("threads") else None
        self.export_settings: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "opset": int(cfg.get("opset") or 17),
            "quantize": None
            if not self.quantize
            else {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "QInt8",
                "op_types": list(cfg.get("quantize_ops") or ["MatMul"]),
                "per_channel": bool(cfg.get("per_channel", False)),
                "reduce_range": bool(cfg.get("reduce_range", False)),
            },
        }
        self.onnx_file: Path | None = None
        self.model_labels: list[str] = []
        self.fingerprint = ""
        self._model: OnnxModel | None = None

    @staticmethod
    def _which_message(label: str) -> str:
        return (
            f"model {label} (source onnx): set exactly one of model.path (an .onnx file or its directory) "
            "and model.export_from (a model node to export, e.g. ${model})"
        )

    def _default_name(self) -> str:
        if self.export_from is not None:
            return f"{self.export_from.get('name') or 'model'}+onnx{'_int8' if self.quantize else ''}"
        if self.path is None:  # the template conf/model/onnx.yaml: prepare() says what to set
            return "onnx"
        stem = self.path.name if self.path.suffix != ".onnx" else self.path.parent.name
        return stem if "onnx" in stem else f"{stem}+onnx"

    # ------------------------------------------------------------------------------------------ identity
    def _check_kind(self, kind_name: str, task: str) -> None:
        if kind_name != "classification":
            raise ValueError(
                f"model {self.name}: ONNX models run classification tasks only, and {task} is {kind_name}; "
                "judge this model with source hf"
            )

    def prepare(self, ctx: RunContext) -> dict[str, Any]:
        """Export the model if needed, find its files, hash them and read its label names.

        Returns:
            ``{"path": <.onnx file>, "fingerprint", "metadata": <its trustequiv.json>, "source": "onnx"}``.

        Raises:
            ValueError: neither ``path`` nor ``export_from`` set, another task kind, an unsafe external
                data location, missing label names; a CheckpointError for a file that is not an ONNX model
                or a garbage config.json, a ConfigError for a ``task.max_length`` above the model's.
            ImportError: onnx or onnxruntime is not installed (``pip install -e '.[onnx]'``).
            FileNotFoundError: the file, its tokenizer or its external data is missing; or the checkpoint to
                export is missing and ``train_missing`` is false (the message names the command).
            trustequiv.user_errors.LabelMismatchError: its classes do not match the task's.
        """
        if self.path is None and self.export_from is None:
            raise ValueError(self._which_message(self.name))
        require_runtime()
        self._check_kind(ctx.kind.name, ctx.task_cfg["name"])
        if self.export_from is not None:
            onnx_file = self._ensure_export(ctx) / MODEL_FILE
        else:
            onnx_file = self._find_file()
        directory = onnx_file.parent
        if not any(
            (directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
        ):
            raise FileNotFoundError(
                f"{directory} holds no tokenizer files beside {onnx_file.name}: save them there with "
                "tokenizer.save_pretrained(<dir>)"
            )
        data_files = external_data_files(onnx_file)
        check_max_length(directory, read_config_json(directory), ctx.task_cfg)
        self.model_labels = model_label_names(directory, self.label_names)
        label_permutation(self.model_labels, list(ctx.task_cfg["label_names"]))  # mismatch: fail before work
        self.onnx_file = onnx_file
        self.fingerprint = onnx_fingerprint(onnx_file, data_files, ctx.memo_file)
        return {
            "path": str(onnx_file),
            "fingerprint": self.fingerprint,
            "metadata": read_metadata(directory),
            "source": self.kind,
        }

    def _find_file(self) -> Path:
        assert self.path is not None
        if self.path.is_dir():
            found = self.path / MODEL_FILE
            if not found.is_file():
                others = sorted(p.name for p in self.path.glob("*.onnx"))
                raise FileNotFoundError(
                    f"model {self.name}: {self.path} has no {MODEL_FILE}"
                    + (f" (it has {others}): point model.path at one of them" if others else "")
                )
            return found.resolve()
        if self.path.is_file() and self.path.suffix == ".onnx":
            return self.path.resolve()
        raise FileNotFoundError(
            f"model {self.name}: model.path={self.path} is neither an .onnx file nor a directory holding "
            f"{MODEL_FILE}"
        )

    def _ensure_export(self, ctx: RunContext) -> Path:
        """The export directory, made (or redone) when missing or stale."""
        assert self.export_from is not None
        base = build_source(self.export_from)
        if "gradients" not in base.provides:
            raise ValueError(
                f"model {self.name}: export_from must name a model with torch weights (source hf), "
                f"not a {base.kind} source"
            )
        identity = base.prepare(ctx)  # finds, or with train_missing fine-tunes, the checkpoint
        task = ctx.task_cfg["name"]
        out_dir = Path(ctx.models_dir) / check_name(task, "task.name") / self.name
        wanted = {
            **self.export_settings,
            "exported_from": {
                "name": base.name,
                "checkpoint": identity.get("checkpoint"),
                "fingerprint": identity["fingerprint"],
            },
        }

        def current() -> bool:
            return (out_dir / MODEL_FILE).is_file() and read_metadata(out_dir).get("export") == wanted

        if current():
            return out_dir
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with path_lock(out_dir):
            if current():  # another run exported it while this one waited
                return out_dir
            if out_dir.exists():
                log.warning(
                    "%s: the export in %s was made from another checkpoint or with other settings; "
                    "exporting again",
                    self.name,
                    out_dir,
                )
            log.info("%s: exporting %s to ONNX in %s", self.name, identity.get("checkpoint"), out_dir)
            started = time.perf_counter()
            handle = base.handle(ctx)
            try:
                loaded = handle.loaded
                labels = [""] * len(loaded.label_permutation)
                for canonical, column in enumerate(loaded.label_permutation):
                    labels[column] = str(ctx.task_cfg["label_names"][canonical])
                meta = export_classifier(
                    loaded, out_dir, pair=bool(ctx.task_cfg.get("pair")), label_names=labels, export=wanted
                )
            finally:
                base.release()
            log.info(
                "%s: exported in %.1f s (fp32 vs torch, relative: %s)",
                self.name,
                time.perf_counter() - started,
                meta["fp32_vs_torch"],
            )
        return out_dir

    # ------------------------------------------------------------------------------------------ running
    def _load(self) -> OnnxModel:
        if self._model is None:  # at most once per model, and only when something is not cached
            if self.onnx_file is None:
                raise RuntimeError(f"model {self.name}: call prepare(ctx) before running it")
            self._model = OnnxModel.load(self.onnx_file, self.model_labels, self.threads)
        return self._model

    def outputs(
        self, data, task_cfg: Mapping[str, Any], split: str, ctx: RunContext
    ) -> tuple[ModelOutputs, bool]:
        """``(outputs, was_cached)`` on ``data``: logits in canonical label order, gold labels and pooled
        embeddings (``predict.pooling`` of hidden layer ``predict.layer``), through the output cache.

        Raises:
            ValueError: another task kind, or a ``predict.layer`` the graph does not have.
        """
        self._check_kind(str(task_cfg.get("kind") or "classification"), task_cfg["name"])
        label_names = tuple(task_cfg["label_names"])
        perm = label_permutation(self.model_labels, list(label_names))
        ids = [int(i) for i in data["id"]]
        pooling, layer = str(ctx.predict_cfg.get("pooling", "cls")), int(ctx.predict_cfg.get("layer", -1))
        if pooling not in ("cls", "mean"):
            raise ValueError(f"predict.pooling={pooling!r}: use cls or mean")
        key = self._output_key(data, task_cfg, split, ctx, pooling, layer)

        def run(done_ids: set[int]) -> None:
            self._predict(data, task_cfg, split, ctx, key, done_ids, perm=perm, pooling=pooling, layer=layer)

        def assemble(parts: list[dict[str, torch.Tensor]]) -> ModelOutputs:
            rows = unique_rows(parts)
            return ModelOutputs(
                name=self.name,
                example_ids=rows["example_id"],
                logits=rows["logits"],
                labels=rows["labels"],
                label_names=label_names,
                embeddings=rows.get("embeddings"),
            )

        meta = {
            "model": self.name,
            "task": task_cfg["name"],
            "split": split,
            "checkpoint_fingerprint": self.fingerprint,
            "source": self.kind,
            "path": str(self.onnx_file),
        }
        return cached_prediction(
            ctx.cache, key, name=self.name, run=run, assemble=assemble, meta=meta, expected_ids=ids
        )

    def _output_key(
        self, data, task_cfg: Mapping[str, Any], split: str, ctx: RunContext, pooling: str, layer: int
    ) -> str:
        """The output-cache key of this model's outputs on ``data``: the file fingerprint, the split's
        content and every setting that changes them (onnxruntime's version and provider included)."""
        return output_key(
            kind=ctx.kind.name,
            fingerprint=self.fingerprint,
            task=task_cfg["name"],
            split=split,
            data=split_fingerprint(data),
            settings={
                "max_length": int(task_cfg["max_length"]),
                "pooling": pooling,
                "layer": layer,
                "declared_label_names": self.label_names,
                "runtime": f"onnxruntime {package_version('onnxruntime')} {PROVIDER}",
            },
        )

    def _predict(
        self,
        data,
        task_cfg: Mapping[str, Any],
        split: str,
        ctx: RunContext,
        key: str,
        done_ids: set[int],
        *,
        perm: list[int],
        pooling: str,
        layer: int,
    ) -> None:
        """Run the examples of ``data`` not in ``done_ids`` through onnxruntime in length-sorted batches of
        ``predict.batch_size``, each saved as one partial file of ``key`` (:func:`_batch_rows`)."""
        model = self._load()
        hidden = model.hidden_output(layer)
        if hidden is None:
            log.warning("%s: %s gives no hidden states: no embeddings are stored", self.name, model.path)
        enc = encode_split(
            data,
            model.tokenizer,
            pair=bool(task_cfg["pair"]),
            max_length=int(task_cfg["max_length"]),
            name=split,
        )
        todo = enc.subset([k for k, i in enumerate(enc.example_ids) if i not in done_ids])
        if not len(todo):
            return
        log.info(
            "%s: predicting %d examples of %s/%s with onnxruntime",
            self.name,
            len(todo),
            task_cfg["name"],
            split,
        )
        batches = LengthSortedBatchSampler(todo.lengths, int(ctx.predict_cfg.get("batch_size", 64))).batches
        part = ctx.cache.partial_dir(key)
        for b, idx in enumerate(batches):
            rows = _batch_rows(model, todo, idx, hidden, perm, pooling)
            # the number done before names the pass: a resumed run's files never replace earlier ones
            name = f"onnx-{len(done_ids):08d}-b{b:06d}-{int(rows['example_id'][0])}.safetensors"
            atomic_save(rows, part / name)

    def handle(self, ctx: RunContext) -> ModelHandle:
        """A scorer (texts -> probabilities through onnxruntime) and no torch model: gradient methods (IG)
        say they cannot run on it."""
        model = self._load()

        def scorer(task: Mapping[str, Any], **settings: Any) -> OnnxTextScorer:
            perm = label_permutation(model.label_names, list(task["label_names"]))
            return OnnxTextScorer(model, perm, max_length=int(task["max_length"])).configure(
                batch_tokens=settings.get("batch_tokens"), max_batch=settings.get("max_batch")
            )

        return ModelHandle(
            name=self.name,
            fingerprint=self.fingerprint,
            scorer=scorer,
            loaded=None,
            source=self.kind,
            cpu_only=True,
        )

    def release(self) -> None:
        self._model = None


def _batch_rows(
    model: OnnxModel, todo: Any, idx: list[int], hidden: str | None, perm: list[int], pooling: str
) -> dict[str, torch.Tensor]:
    """One batch (rows ``idx`` of the encoded split ``todo``) run: example ids, logits in canonical label
    order (``perm``), gold labels and, when the graph gives ``hidden``, its embeddings pooled by ``pooling``
    over the real tokens (:func:`trustequiv.train.lightning_module.pool`)."""
    feats = [todo.features[i] for i in idx]
    got = model.run(feats, [model.logits] + ([hidden] if hidden else []))
    rows = {
        "example_id": torch.tensor([todo.example_ids[i] for i in idx], dtype=torch.long),
        "logits": torch.from_numpy(np.asarray(got[0], dtype=np.float32))[:, perm].contiguous(),
        "labels": torch.tensor([todo.labels[i] for i in idx], dtype=torch.long),
    }
    if hidden:
        mask = pad_features(feats, 0)["attention_mask"]
        rows["embeddings"] = pool(torch.from_numpy(np.asarray(got[1], dtype=np.float32)), mask, pooling)
    return rows
