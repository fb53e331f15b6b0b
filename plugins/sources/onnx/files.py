"""The ``.onnx`` file's own checks, read without onnxruntime: its external tensor-data files (which must
lie beside it), the one-line error for a file that is not an ONNX model, its fingerprint, and the label names
and ``config.json`` beside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustequiv.data.labels import id2label_names
from trustequiv.models.fingerprint import file_digest, fingerprint
from trustequiv.user_errors import CheckpointError

MODEL_FILE = "model.onnx"


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
    """SHA-256 of ``path``'s bytes, memoised in ``memo_file`` as
    :func:`trustequiv.models.fingerprint.fingerprint` does
    (one memo key, so a same-size copy with its mtime kept is hashed again here too)."""
    return file_digest(path, memo_file)


def onnx_fingerprint(onnx_file: Path, data_files: Sequence[Path], memo_file: Path | None = None) -> str:
    """SHA-256 over the ``.onnx`` file, its external data files and the tokenizer / config / trustequiv.json
    files of its directory (:func:`trustequiv.models.fingerprint.fingerprint`): a changed file is never served
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
