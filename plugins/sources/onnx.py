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

import copy
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.jit import TracerWarning

from trustequiv.cache import atomic_save, path_lock
from trustequiv.data.batches import (
    TOKEN_KEYS,
    LengthSortedBatchSampler,
    encode_split,
    pad_features,
    pad_id_of,
)
from trustequiv.data.labels import id2label_names, label_permutation
from trustequiv.data.splits import split_fingerprint
from trustequiv.models.handle import ModelHandle
from trustequiv.models.loading import (
    METADATA_FILE,
    check_max_length,
    check_name,
    file_digest,
    fingerprint,
    load_tokenizer,
    read_metadata,
)
from trustequiv.models.scorer import BatchedTextScorer
from trustequiv.models.source import ModelSource, RunContext, build_source
from trustequiv.outputs import ModelOutputs
from trustequiv.prediction import cached_prediction, output_key, unique_rows
from trustequiv.train.lightning_module import pool
from trustequiv.user_errors import CheckpointError

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
MODEL_FILE = "model.onnx"
QUANTIZE = (None, "int8")
#: bump when what an export holds changes (inputs, outputs, wrapper): older exports are then redone.
EXPORT_FORMAT = 1
PROVIDER = "CPUExecutionProvider"
#: fp32 export vs torch: largest |difference| allowed, relative to max(1, largest |value|).
EXPORT_TOLERANCE = 1e-3
#: texts the export is traced and checked on (two lengths, so the traced batch is padded).
_PROBE_A = ("the quick brown fox jumps over the lazy dog , again and again", "hello")
_PROBE_B = ("a lazy dog sleeps", "world")


def require_runtime() -> None:
    """Raises ImportError (one line, naming the install) when onnx or onnxruntime is missing."""

    missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"model source onnx needs {' and '.join(missing)}: pip install -e '.[onnx]'")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


# --------------------------------------------------------------------------------------------------- files
def _tensors(graph: Any):
    """Every tensor of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_data_files(onnx_file: Path) -> list[Path]:
    """The external tensor-data files ``onnx_file`` names (large models keep weights beside the graph).

    Read without loading the data; each must be a plain file name in the ``.onnx`` file's own directory.

    Raises:
        ValueError: a location that is absolute or leaves that directory (nothing a file names outside it
            is ever read). FileNotFoundError: a named data file is missing.
        trustequiv.user_errors.CheckpointError: the file is not a readable ONNX model (truncated, empty,
        other).
    """
    # optional dependency (the [onnx] extra): imported when used
    import onnx

    try:
        proto = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError (truncated, not ONNX), or an OSError reading it
        if isinstance(err, PermissionError | FileNotFoundError):
            raise
        raise not_an_onnx_model(
            onnx_file, f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
        ) from None
    if not proto.graph.node or not proto.graph.output:  # protobuf reads an empty file as an empty model
        raise not_an_onnx_model(onnx_file, "no graph in it: empty, or another kind of file")
    names: set[str] = set()
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if not location or Path(location).name != location or location in (".", ".."):
            raise ValueError(
                f"{onnx_file}: external tensor data at {location!r} is not a file beside the model; "
                "re-save it with its data next to it (onnx.save_model(..., location=<file name>))"
            )
        names.add(location)
    files = [onnx_file.parent / n for n in sorted(names)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{onnx_file}: its external tensor data {missing} is missing; copy it beside it"
        )
    return files


def not_an_onnx_model(onnx_file: Path, why: str) -> CheckpointError:
    """The one-line error for a ``.onnx`` file that onnx or onnxruntime cannot read."""
    return CheckpointError(
        f"{onnx_file} is not a readable ONNX model ({why}): truncated, or not an .onnx export",
        "copy or download it again whole, point model.path at another .onnx file, or export it here with "
        "model.export_from (e.g. model=minilm_onnx)",
    )


def _file_digest(path: Path, memo_file: Path | None) -> str:
    """SHA-256 of ``path``'s bytes, memoised in ``memo_file`` as :func:`trustequiv.models.loading.fingerprint`
    does
    (one memo key, so a same-size copy with its mtime kept is hashed again here too)."""
    return file_digest(path, memo_file)


def onnx_fingerprint(onnx_file: Path, data_files: Sequence[Path], memo_file: Path | None = None) -> str:
    """SHA-256 over the ``.onnx`` file, its external data files and the tokenizer / config / trustequiv.json
    files of its directory (:func:`trustequiv.models.loading.fingerprint`): a changed file is never served
    stale
    outputs."""
    outer = hashlib.sha256()
    outer.update(fingerprint(onnx_file.parent, memo_file).encode())
    for f in [onnx_file, *data_files]:
        outer.update(f.name.encode())
        outer.update(_file_digest(f, memo_file).encode())
    return outer.hexdigest()


def model_label_names(directory: Path, declared: Sequence[str] | None) -> list[str]:
    """Class names in logit order: ``declared`` if given, else ``config.json``'s ``id2label`` (read as JSON).

    Raises:
        ValueError: neither is available (the message names both fixes).
    """
    if declared:
        return [str(n) for n in declared]
    id2label = read_config_json(directory).get("id2label")
    if not id2label:
        raise ValueError(
            f"{directory}: no config.json with id2label beside the ONNX model: set model.label_names to the "
            "class names in logit order"
        )
    return id2label_names(id2label)


def read_config_json(directory: Path) -> dict[str, Any]:
    """``config.json`` beside the ONNX model, read as JSON (nothing it names is loaded); ``{}`` if absent.

    Raises:
        trustequiv.user_errors.CheckpointError: it is not a JSON object.
    """
    config = directory / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_bytes())
    except ValueError as err:  # not JSON, not text
        data = err
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{config} is not a JSON object ({' '.join(str(data).split())[:120]})",
            "restore it (save_pretrained writes it), or delete it and set model.label_names to the class "
            "names in logit order",
        )
    return data


def open_session(onnx_file: Path, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU provider (all graph optimizations; ``threads``
    intra-op threads, None: onnxruntime's default, one per physical core)."""
    # optional dependency (the [onnx] extra): imported when used
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(onnx_file), options, providers=[PROVIDER])
    except Exception as err:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail ... (no common base)
        if isinstance(err, OSError):
            raise
        raise not_an_onnx_model(onnx_file, " ".join(str(err).split())[:160]) from None


# --------------------------------------------------------------------------------------------------- runtime
@dataclass
class OnnxModel:
    """An ONNX classifier ready to run: the session, its tokenizer and what its graph takes and gives.

    Attributes:
        session: the ``onnxruntime.InferenceSession``; tokenizer: the fast tokenizer of its directory.
        label_names: class names in logit order. path: the ``.onnx`` file.
        inputs: graph input name -> numpy integer dtype. logits: the logits output's name.
        hidden: layer index (0 = embeddings) -> hidden-state output name; ``{-1: name}`` for a graph giving
            only ``last_hidden_state``; empty when it gives none.
    """

    session: Any
    tokenizer: Any
    label_names: list[str]
    path: Path
    inputs: dict[str, Any] = field(default_factory=dict)
    logits: str = "logits"
    hidden: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, onnx_file: Path, label_names: list[str], threads: int | None = None) -> OnnxModel:
        """Open ``onnx_file`` and the tokenizer beside it.

        Raises:
            ValueError: the graph takes an input other than the token features, or its logits have another
                number of classes than ``label_names``.
        """
        session = open_session(onnx_file, threads)
        tokenizer = load_tokenizer(onnx_file.parent, trust_remote_code=False)
        inputs = {}
        for inp in session.get_inputs():
            if inp.name not in TOKEN_KEYS:
                raise ValueError(
                    f"{onnx_file}: graph input {inp.name!r} is not one of {list(TOKEN_KEYS)}; export the "
                    "model with token features only (export_from does)"
                )
            inputs[inp.name] = np.int32 if inp.type == "tensor(int32)" else np.int64
        outs = {o.name: o for o in session.get_outputs()}
        logits = "logits" if "logits" in outs else next(iter(outs))
        width = outs[logits].shape[-1] if outs[logits].shape else None
        if isinstance(width, int) and width != len(label_names):
            raise ValueError(
                f"{onnx_file}: {width} logit columns but {len(label_names)} label names {label_names}; "
                "fix model.label_names or the config.json id2label beside it"
            )
        hidden = {int(n.rsplit(".", 1)[1]): n for n in outs if n.startswith("hidden_states.")}
        if not hidden and "last_hidden_state" in outs:
            hidden = {-1: "last_hidden_state"}
        return cls(session, tokenizer, label_names, onnx_file, inputs, logits, hidden)

    def hidden_output(self, layer: int) -> str | None:
        """The output holding hidden layer ``layer`` (negative counts from the last); None when the graph
        gives no hidden states.

        Raises:
            ValueError: the graph has no such layer (the message names those it has).
        """
        if not self.hidden:
            return None
        if set(self.hidden) == {-1}:
            if layer != -1:
                raise ValueError(
                    f"{self.path} gives only last_hidden_state: use predict.layer=-1, or export with "
                    "export_from (every layer's hidden states)"
                )
            return self.hidden[-1]
        n = len(self.hidden)
        if not -n <= layer < n:
            raise ValueError(f"predict.layer={layer}: {self.path} has hidden layers 0..{n - 1} (or -{n}..-1)")
        return self.hidden[layer % n]

    def run(
        self, features: Sequence[Mapping[str, Sequence[int]]], outputs: Sequence[str]
    ) -> list[np.ndarray]:
        """``outputs`` of one batch of token features, padded to its longest row (:func:`pad_features`)."""
        batch = pad_features(features, pad_id_of(self.tokenizer))
        feed = {}
        for name, dtype in self.inputs.items():
            value = batch.get(name)
            if value is None:  # e.g. a tokenizer without token types, a graph that takes them
                value = torch.zeros_like(batch["input_ids"])
            feed[name] = value.numpy().astype(dtype, copy=False)
        return self.session.run(list(outputs), feed)


class OnnxTextScorer(BatchedTextScorer):
    """An ONNX classifier as a :class:`~trustequiv.models.scorer.TextScorer` (``texts -> (N, C)`` float64
    probabilities in canonical label order), batched as :class:`~trustequiv.models.scorer.BatchedTextScorer`
    does
    for every scorer; logits are permuted to the canonical order and softmaxed in float64. CPU only.

    Args:
        model: the :class:`OnnxModel`. label_permutation: logit columns in canonical class order.
        max_length: truncation length (the task's). batch_tokens: padded tokens per batch (None: 4096, the
            torch CPU scorer's measured best). max_batch: texts per batch. dedup: run identical texts once.

    Raises (on call):
        ValueError: texts of mixed arity, or a tuple that is not one or two strings.
    """

    cpu_only = True

    def __init__(
        self,
        model: OnnxModel,
        label_permutation: Sequence[int],
        *,
        max_length: int = 128,
        batch_tokens: int | None = None,
        max_batch: int = 1024,
        dedup: bool = True,
    ) -> None:
        self.model = model
        self.perm = np.asarray(list(label_permutation), dtype=np.int64)
        super().__init__(
            model.tokenizer,
            max_length=max_length,
            batch_tokens=batch_tokens,
            max_batch=max_batch,
            dedup=dedup,
        )

    def configure(
        self,
        *,
        batch_tokens: int | None = None,
        max_batch: int | None = None,
        devices: Sequence[str] | None = None,
    ) -> OnnxTextScorer:
        """Override the batching (None keeps each); ``devices`` is ignored: ONNX Runtime runs on the CPU."""
        if batch_tokens is not None:
            self.batch_tokens = int(batch_tokens)
        if max_batch is not None:
            self.max_batch = int(max_batch)
        return self

    def _classes(self) -> int:
        return len(self.perm)

    def _run(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        enc = self.encode(texts)
        lengths = [len(ids) for ids in enc["input_ids"]]
        self.n_tokens += int(sum(lengths))
        out = np.zeros((len(texts), len(self.perm)), dtype=np.float64)
        for idx in self.batches(lengths):
            rows = [{k: v[i] for k, v in enc.items()} for i in idx]
            (logits,) = self.model.run(rows, [self.model.logits])
            logits = torch.from_numpy(np.asarray(logits, dtype=np.float32)[:, self.perm]).double()
            out[idx] = torch.softmax(logits, dim=-1).numpy()
        return out


# --------------------------------------------------------------------------------------------------- export
class _Exported(torch.nn.Module):
    """A sequence classifier taking positional token features and returning (logits, *hidden states)."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names = model, list(input_names)

    def forward(self, *features: torch.Tensor):
        out = self.model(**dict(zip(self.input_names, features, strict=True)), output_hidden_states=True)
        return (out.logits, *out.hidden_states)


def _probe(tokenizer: Any, pair: bool, input_names: Sequence[str]) -> list[torch.Tensor]:
    """The probe texts as the runtime feeds them: tokenized, padded by :func:`pad_features`."""
    enc = tokenizer(list(_PROBE_A), list(_PROBE_B) if pair else None, truncation=True)
    features = [{k: enc[k][i] for k in TOKEN_KEYS if k in enc} for i in range(len(_PROBE_A))]
    batch = pad_features(features, pad_id_of(tokenizer))
    return [batch[k] if k in batch else torch.zeros_like(batch["input_ids"]) for k in input_names]


def _max_diff(ort_out: Sequence[np.ndarray], torch_out: Sequence[torch.Tensor], mask: torch.Tensor) -> dict:
    """Largest |ONNX - torch| of the logits and, over real tokens, the last hidden state, each relative to
    max(1, largest |torch value|)."""
    logits, hidden = torch.from_numpy(ort_out[0]), torch.from_numpy(ort_out[-1])
    real = mask.bool()
    return {
        "logits": float((logits - torch_out[0]).abs().max() / max(1.0, float(torch_out[0].abs().max()))),
        "last_hidden": float(
            (hidden - torch_out[-1])[real].abs().max() / max(1.0, float(torch_out[-1][real].abs().max()))
        ),
    }


def _check_export(
    onnx_file: Path, wrapper: _Exported, probe: Sequence[torch.Tensor], names: list[str]
) -> dict:
    """The export's largest relative differences from torch on the padded probe batch and on each probe row
    alone (unpadded), per output kind."""
    session = open_session(onnx_file)
    mask = probe[names.index("attention_mask")]
    worst = {"logits": 0.0, "last_hidden": 0.0}
    batches = [list(probe)]
    for i in range(mask.shape[0]):  # each row alone, padding cut: an all-ones mask
        n = int(mask[i].sum())
        batches.append([t[i : i + 1, :n] for t in probe])
    for batch in batches:
        with torch.inference_mode():
            expected = wrapper(*batch)
        got = session.run(None, {k: t.numpy() for k, t in zip(names, batch, strict=True)})
        diff = _max_diff(got, expected, batch[names.index("attention_mask")])
        worst = {k: max(worst[k], diff[k]) for k in worst}
    return worst


class _QuietQuantizer(logging.Filter):
    """Drops what onnxruntime's quantizer logs on the root logger below WARNING (a line per tensor and per
    skipped MatMul) and its advice to pre-process the model first (shape inference for static
    quantization; dynamic quantization of a transformer does not need it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        hint = "pre-processing before quantization" in record.getMessage()
        return record.levelno >= logging.WARNING and not hint


def export_classifier(
    loaded: Any,
    out_dir: Path,
    *,
    pair: bool,
    label_names: list[str],
    export: Mapping[str, Any],
) -> dict[str, Any]:
    """Export a loaded torch classifier to ``out_dir`` (model.onnx, tokenizer, config.json, trustequiv.json),
    written into a temporary sibling directory and renamed into place (an older export there is replaced).

    Args:
        loaded: a :class:`trustequiv.models.loading.LoadedModel` (model, tokenizer). pair: the task is a pair
        task
            (the probe texts are pairs). label_names: the class names in the model's logit order.
        export: the export settings recorded in trustequiv.json (``opset``, ``quantize`` settings or None).

    Returns:
        The metadata written to trustequiv.json.

    Raises:
        RuntimeError: torch cannot export the model (e.g. a torch.ao-quantized one), or the fp32 export
            differs from torch by more than :data:`EXPORT_TOLERANCE` (the message names the fix).
    """

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    try:
        model = loaded.model.float().cpu().eval()
        tokenizer = loaded.tokenizer
        names = [k for k in TOKEN_KEYS if k in tokenizer.model_input_names]
        if names[:2] != ["input_ids", "attention_mask"]:
            raise RuntimeError(
                f"the tokenizer of {loaded.directory} gives {tokenizer.model_input_names}: an ONNX export "
                "needs input_ids and attention_mask"
            )
        wrapper = _Exported(model, names).eval()  # export restores the wrapper's mode onto the model
        probe = _probe(tokenizer, pair, names)
        with torch.inference_mode():
            n_outputs = len(wrapper(*probe))
        outputs = ["logits", *(f"hidden_states.{i}" for i in range(n_outputs - 1))]
        axes = {n: {0: "batch", 1: "sequence"} for n in [*names, *outputs[1:]]}
        axes["logits"] = {0: "batch"}
        fp32 = tmp / MODEL_FILE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", TracerWarning)
                torch.onnx.export(
                    wrapper,
                    tuple(probe),
                    str(fp32),
                    input_names=names,
                    output_names=outputs,
                    dynamic_axes=axes,
                    opset_version=int(export["opset"]),
                    do_constant_folding=True,
                    dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic axes as declared
                )
        except Exception as err:
            raise RuntimeError(
                f"torch could not export {loaded.directory} to ONNX ({type(err).__name__}: {err}); "
                "export_from must name an uncompressed (or layer-dropped) model: quantize with quantize: int8"
            ) from err
        diff = _check_export(fp32, wrapper, probe, names)
        if max(diff.values()) > EXPORT_TOLERANCE:
            raise RuntimeError(
                f"the ONNX export of {loaded.directory} differs from torch by {diff} (relative; allowed "
                f"{EXPORT_TOLERANCE}): the traced graph is wrong for this model; try another model.opset"
            )
        meta: dict[str, Any] = {
            "source": "onnx",
            "export": dict(export),
            "label_names": list(label_names),
            "inputs": names,
            "outputs": outputs,
            "fp32_vs_torch": diff,
            "versions": {p: _version(p) for p in ("torch", "transformers", "onnx", "onnxruntime")},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        quant = export.get("quantize")
        if quant:
            # optional dependency (the [onnx] extra): imported when used
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8 = tmp / "model.int8.onnx"
            root = logging.getLogger()
            hint = _QuietQuantizer()
            root.addFilter(hint)
            try:
                quantize_dynamic(
                    str(fp32),
                    str(int8),
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(quant["op_types"]),
                    per_channel=bool(quant["per_channel"]),
                    reduce_range=bool(quant["reduce_range"]),
                )
            finally:
                root.removeFilter(hint)
            os.replace(int8, fp32)
            meta["int8_vs_torch"] = _check_export(fp32, wrapper, probe, names)  # recorded, not checked
        tokenizer.save_pretrained(str(tmp))
        config = copy.deepcopy(model.config)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
        config.save_pretrained(str(tmp))
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- source
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
        max_length = int(task_cfg["max_length"])
        pooling, layer = str(ctx.predict_cfg.get("pooling", "cls")), int(ctx.predict_cfg.get("layer", -1))
        if pooling not in ("cls", "mean"):
            raise ValueError(f"predict.pooling={pooling!r}: use cls or mean")
        key = output_key(
            kind=ctx.kind.name,
            fingerprint=self.fingerprint,
            task=task_cfg["name"],
            split=split,
            data=split_fingerprint(data),
            settings={
                "max_length": max_length,
                "pooling": pooling,
                "layer": layer,
                "declared_label_names": self.label_names,
                "runtime": f"onnxruntime {_version('onnxruntime')} {PROVIDER}",
            },
        )
        cache = ctx.cache

        def run(done_ids: set[int]) -> None:
            model = self._load()
            hidden = model.hidden_output(layer)
            if hidden is None:
                log.warning("%s: %s gives no hidden states: no embeddings are stored", self.name, model.path)
            enc = encode_split(
                data, model.tokenizer, pair=bool(task_cfg["pair"]), max_length=max_length, name=split
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
            batches = LengthSortedBatchSampler(
                todo.lengths, int(ctx.predict_cfg.get("batch_size", 64))
            ).batches
            part = cache.partial_dir(key)
            for b, idx in enumerate(batches):
                feats = [todo.features[i] for i in idx]
                got = model.run(feats, [model.logits] + ([hidden] if hidden else []))
                rows = {
                    "example_id": torch.tensor([todo.example_ids[i] for i in idx], dtype=torch.long),
                    "logits": torch.from_numpy(np.asarray(got[0], dtype=np.float32))[:, perm].contiguous(),
                    "labels": torch.tensor([todo.labels[i] for i in idx], dtype=torch.long),
                }
                if hidden:
                    mask = pad_features(feats, 0)["attention_mask"]
                    rows["embeddings"] = pool(
                        torch.from_numpy(np.asarray(got[1], dtype=np.float32)), mask, pooling
                    )
                # the number done before names the pass: a resumed run's files never replace earlier ones
                name = f"onnx-{len(done_ids):08d}-b{b:06d}-{int(rows['example_id'][0])}.safetensors"
                atomic_save(rows, part / name)

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
            cache, key, name=self.name, run=run, assemble=assemble, meta=meta, expected_ids=ids
        )

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
