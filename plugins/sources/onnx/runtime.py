"""ONNX Runtime: whether it is installed, sessions on the CPU provider, :class:`OnnxModel` (a session with
its tokenizer and what its graph takes and gives) and :class:`OnnxTextScorer` (texts -> probabilities)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugins.sources.onnx.files import not_an_onnx_model
from trustequiv.data.batches import TOKEN_KEYS, pad_features, pad_id_of
from trustequiv.models.loading import load_tokenizer
from trustequiv.models.scorer import BatchedTextScorer

PROVIDER = "CPUExecutionProvider"


def require_runtime() -> None:
    """Raises ImportError (one line, naming the install) when onnx or onnxruntime is missing."""

    missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"model source onnx needs {' and '.join(missing)}: pip install -e '.[onnx]'")


def package_version(package: str) -> str:
    """The installed version of ``package``, or ``"absent"``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


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
