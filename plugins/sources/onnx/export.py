"""Exporting a loaded Hugging Face sequence classifier to ONNX (the TorchScript exporter), checked against
torch on a padded and an unpadded batch, optionally quantized to int8 by onnxruntime's ``quantize_dynamic``,
written with its tokenizer, ``config.json`` and ``trustequiv.json`` into a temporary directory renamed into
place."""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.jit import TracerWarning

from plugins.sources.onnx.files import MODEL_FILE
from plugins.sources.onnx.runtime import open_session, package_version
from trustequiv.data.batches import TOKEN_KEYS, pad_features, pad_id_of
from trustequiv.models.loading import METADATA_FILE

#: fp32 export vs torch: largest |difference| allowed, relative to max(1, largest |value|).
EXPORT_TOLERANCE = 1e-3
#: texts the export is traced and checked on (two lengths, so the traced batch is padded).
_PROBE_A = ("the quick brown fox jumps over the lazy dog , again and again", "hello")
_PROBE_B = ("a lazy dog sleeps", "world")


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


def _input_names(loaded: Any) -> list[str]:
    """The token features the tokenizer of ``loaded`` gives, in :data:`TOKEN_KEYS` order.

    Raises:
        RuntimeError: they do not start with input_ids and attention_mask.
    """
    tokenizer = loaded.tokenizer
    names = [k for k in TOKEN_KEYS if k in tokenizer.model_input_names]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise RuntimeError(
            f"the tokenizer of {loaded.directory} gives {tokenizer.model_input_names}: an ONNX export "
            "needs input_ids and attention_mask"
        )
    return names


def _trace(
    wrapper: _Exported,
    probe: Sequence[torch.Tensor],
    names: list[str],
    onnx_file: Path,
    opset: int,
    source: Any,
) -> list[str]:
    """Trace ``wrapper`` on ``probe`` into ``onnx_file`` (batch and sequence axes dynamic) and return the
    output names (``logits``, ``hidden_states.0`` ..).

    Raises:
        RuntimeError: torch cannot export the model (``source``: its directory, named in the message).
    """
    with torch.inference_mode():
        n_outputs = len(wrapper(*probe))
    outputs = ["logits", *(f"hidden_states.{i}" for i in range(n_outputs - 1))]
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, *outputs[1:]]}
    axes["logits"] = {0: "batch"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", TracerWarning)
            torch.onnx.export(
                wrapper,
                tuple(probe),
                str(onnx_file),
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic axes as declared
            )
    except Exception as err:
        raise RuntimeError(
            f"torch could not export {source} to ONNX ({type(err).__name__}: {err}); "
            "export_from must name an uncompressed (or layer-dropped) model: quantize with quantize: int8"
        ) from err
    return outputs


def _checked_fp32(
    onnx_file: Path, wrapper: _Exported, probe: Sequence[torch.Tensor], names: list[str], source: Any
) -> dict:
    """:func:`_check_export` of the fp32 export.

    Raises:
        RuntimeError: it differs from torch by more than :data:`EXPORT_TOLERANCE`.
    """
    diff = _check_export(onnx_file, wrapper, probe, names)
    if max(diff.values()) > EXPORT_TOLERANCE:
        raise RuntimeError(
            f"the ONNX export of {source} differs from torch by {diff} (relative; allowed "
            f"{EXPORT_TOLERANCE}): the traced graph is wrong for this model; try another model.opset"
        )
    return diff


def _quantize_int8(onnx_file: Path, quant: Mapping[str, Any]) -> None:
    """Replace ``onnx_file`` by its ``quantize_dynamic`` int8 version (QInt8 weights of ``quant["op_types"]``,
    ``per_channel``, ``reduce_range``), the quantizer's chatter filtered out (:class:`_QuietQuantizer`)."""
    # optional dependency (the [onnx] extra): imported when used
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = onnx_file.with_name("model.int8.onnx")
    root = logging.getLogger()
    hint = _QuietQuantizer()
    root.addFilter(hint)
    try:
        quantize_dynamic(
            str(onnx_file),
            str(int8),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(quant["op_types"]),
            per_channel=bool(quant["per_channel"]),
            reduce_range=bool(quant["reduce_range"]),
        )
    finally:
        root.removeFilter(hint)
    os.replace(int8, onnx_file)


def _write_beside(
    directory: Path, tokenizer: Any, model_config: Any, label_names: list[str], meta: Mapping[str, Any]
) -> None:
    """The tokenizer, ``config.json`` (a copy of ``model_config`` with ``label_names`` as id2label /
    label2id) and ``trustequiv.json`` (``meta``) into ``directory``."""
    tokenizer.save_pretrained(str(directory))
    config = copy.deepcopy(model_config)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {n: i for i, n in enumerate(label_names)}
    config.save_pretrained(str(directory))
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an older ``out_dir`` is moved aside first, then deleted."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


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
        names = _input_names(loaded)
        wrapper = _Exported(model, names).eval()  # export restores the wrapper's mode onto the model
        probe = _probe(loaded.tokenizer, pair, names)
        fp32 = tmp / MODEL_FILE
        outputs = _trace(wrapper, probe, names, fp32, int(export["opset"]), loaded.directory)
        diff = _checked_fp32(fp32, wrapper, probe, names, loaded.directory)
        meta: dict[str, Any] = {
            "source": "onnx",
            "export": dict(export),
            "label_names": list(label_names),
            "inputs": names,
            "outputs": outputs,
            "fp32_vs_torch": diff,
            "versions": {p: package_version(p) for p in ("torch", "transformers", "onnx", "onnxruntime")},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        quant = export.get("quantize")
        if quant:
            _quantize_int8(fp32, quant)
            meta["int8_vs_torch"] = _check_export(fp32, wrapper, probe, names)  # recorded, not checked
        _write_beside(tmp, loaded.tokenizer, model.config, label_names, meta)
        _move_into_place(tmp, out_dir)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
