"""The one route from texts to class probabilities, used by every characteristic that runs a model on new
texts (LIME, SHAP, attacks): :class:`TextScorer`. Model sources provide one (torch, ONNX Runtime, ...);
:class:`TorchTextScorer` is the torch one, built from a :class:`trustequiv.models.loading.LoadedModel`."""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from trustequiv.data.batches import TOKEN_KEYS, pad_features, pad_id_of
from trustequiv.models.handle import ModelHandle


class TextScorer(ABC):
    """Callable ``texts -> (N, C) float64 probabilities`` in the task's canonical label order.

    ``texts``: a sequence of tuples, ``(text,)`` for single-text tasks or ``(text_a, text_b)`` for pairs,
    tokenized as the cached outputs were (truncation to the task's ``max_length``), so that scoring an
    example's own text gives the softmax of its cached logits (up to float32 batch effects).

    Counters ``n_calls``, ``n_texts`` (texts asked for), ``n_unique`` (texts actually run), ``n_tokens`` and
    ``seconds`` accumulate over calls; attacks read ``n_texts`` as their query count.
    """

    n_calls: int = 0
    n_texts: int = 0
    n_unique: int = 0
    n_tokens: int = 0
    seconds: float = 0.0
    #: the scorer runs on the CPU only (e.g. dynamic int8 quantization, ONNX Runtime's CPU provider).
    cpu_only: bool = False

    @abstractmethod
    def __call__(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        """``(N, C)`` float64 probabilities, rows in the order of ``texts``."""

    def configure(
        self,
        *,
        batch_tokens: int | None = None,
        max_batch: int | None = None,
        devices: Sequence[str] | None = None,
    ) -> TextScorer:
        """Batching a characteristic asks for (its config's ``batch_tokens``, ``max_batch``, ``devices``);
        None keeps the scorer's own. A scorer without such settings ignores them. Returns ``self``."""
        return self


class BatchedTextScorer(TextScorer):
    """What every text scorer over a tokenizer shares: identical texts run once (``dedup``), the unique ones
    tokenized in one call (truncation to ``max_length``, pairs as pairs, as
    :func:`trustequiv.data.batches.encode_split` tokenizes a split), grouped longest first into dynamically
    padded batches of at most ``batch_tokens`` padded tokens and ``max_batch`` texts, and the counters.
    Subclasses implement :meth:`_run` (the unique texts -> ``(U, C)`` probabilities) and :meth:`_classes`.
    """

    def __init__(
        self, tokenizer: Any, *, max_length: int, batch_tokens: int | None, max_batch: int, dedup: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length, self.max_batch, self.dedup = int(max_length), int(max_batch), bool(dedup)
        self.batch_tokens = batch_tokens  # type: ignore[assignment]
        self.pad_id = pad_id_of(tokenizer)
        self.n_calls = self.n_texts = self.n_unique = self.n_tokens = 0
        self.seconds = 0.0

    @property
    def batch_tokens(self) -> int:
        """Padded tokens per batch: the value set, else :meth:`_default_batch_tokens`."""
        return self._batch_tokens if self._batch_tokens is not None else self._default_batch_tokens()

    @batch_tokens.setter
    def batch_tokens(self, value: int | None) -> None:
        self._batch_tokens = None if value is None else int(value)

    def _default_batch_tokens(self) -> int:
        return 4096  # measured fastest on CPU (MiniLM, 2 cores: benchmarks/attribution.py)

    def __call__(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        started = time.perf_counter()
        texts = [tuple(t) for t in texts]
        if self.dedup:
            index: dict[tuple[str, ...], int] = {}
            inverse = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
            unique = list(index)
        else:
            unique, inverse = texts, np.arange(len(texts))
        probs = self._run(unique) if unique else np.zeros((0, self._classes()))
        self.n_calls += 1
        self.n_texts += len(texts)
        self.n_unique += len(unique)
        self.seconds += time.perf_counter() - started
        return probs[inverse]

    def encode(self, texts: Sequence[tuple[str, ...]]) -> dict[str, list[list[int]]]:
        """Token features (``input_ids``, ``attention_mask``, [``token_type_ids``]) of each text, truncated to
        ``max_length``, pairs as pairs (as :func:`trustequiv.data.batches.encode_split` tokenizes a split).

        Raises:
            ValueError: texts of mixed arity, or a tuple that is not one or two strings.
        """
        arity = {len(t) for t in texts}
        if len(arity) > 1 or not arity <= {1, 2}:
            raise ValueError(
                f"a text scorer takes tuples of one text (single-text task) or two (pair task), got "
                f"lengths {sorted(arity)}"
            )
        a = [t[0] for t in texts]
        b = [t[1] for t in texts] if arity == {2} else None
        enc = self.tokenizer(a, b, truncation=True, max_length=self.max_length)
        return {k: enc[k] for k in TOKEN_KEYS if k in enc}

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """Positions grouped into batches, longest first, each within the token budget."""
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out, i = [], 0
        while i < len(order):
            size = max(1, min(self.max_batch, self.batch_tokens // max(int(lengths[order[i]]), 1)))
            out.append(order[i : i + size])
            i += size
        return out

    def padded(self, enc: dict[str, list[list[int]]], idx: np.ndarray, device: Any = None):
        """The rows ``idx`` of ``enc`` padded to their longest
        (:func:`trustequiv.data.batches.pad_features`)."""
        return pad_features([{k: rows[i] for k, rows in enc.items()} for i in idx], self.pad_id, device)

    @abstractmethod
    def _run(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        """``(U, C)`` float64 probabilities of the unique ``texts`` (count ``n_tokens`` here)."""

    @abstractmethod
    def _classes(self) -> int:
        """C, for an empty call."""


def default_devices(cpu_only: bool = False) -> list[str]:
    """Every GPU when there is one and the model may use it, else the CPU."""
    if cpu_only or not torch.cuda.is_available():
        return ["cpu"]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class TorchTextScorer(BatchedTextScorer):
    """A Hugging Face sequence classifier as a :class:`TextScorer`.

    Identical texts are evaluated once; the unique ones are tokenized in one call, sorted by length and run
    in large dynamically padded batches (:func:`trustequiv.data.batches.pad_features`) under
    ``torch.inference_mode``, split over all devices when there are several. Logit columns are permuted to the
    canonical label order and softmaxed in float64, as :attr:`ModelOutputs.probs` does with cached logits.

    Args:
        model: a Hugging Face sequence classifier (eval mode); tokenizer: its fast tokenizer.
        label_permutation: logit columns in canonical class order (``LoadedModel.label_permutation``).
        max_length: truncation length (the task's).
        batch_tokens: padded tokens per batch (batch size = ``batch_tokens // longest``, at most
            ``max_batch``); None: 4096 on CPU (measured fastest with MiniLM on 2 cores: 7,570 tokens/s vs
            4,806 at 32,768; benchmarks/attribution.py), 32768 on GPUs.
        devices: torch devices; several devices get a model replica each and batches round-robin; None: the
            device the model is on. The model is moved (and replicas made) at the first call.
        dedup: evaluate identical texts once.
        cpu_only: the model cannot run on an accelerator (dynamic int8 quantization): it stays on the CPU
            whatever ``devices`` says.

    Raises (on call):
        ValueError: a text is not a tuple of one or two strings.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        label_permutation: Sequence[int] | None = None,
        *,
        max_length: int = 128,
        batch_tokens: int | None = None,
        max_batch: int = 1024,
        devices: Sequence[str | torch.device] | None = None,
        dedup: bool = True,
        cpu_only: bool = False,
    ) -> None:
        self.model, self.cpu_only = model, bool(cpu_only)
        self.perm = None if label_permutation is None else torch.tensor(list(label_permutation))
        self.n_classes = len(label_permutation) if label_permutation is not None else None
        if self.cpu_only:
            devices = ["cpu"]
        self.devices = [torch.device(d) for d in (devices or [next(model.parameters()).device])]
        self._replicas: list[torch.nn.Module] = []
        super().__init__(
            tokenizer, max_length=max_length, batch_tokens=batch_tokens, max_batch=max_batch, dedup=dedup
        )

    @classmethod
    def from_loaded(
        cls,
        loaded: Any,
        *,
        max_length: int,
        batch_tokens: int | None = None,
        max_batch: int = 1024,
        devices: Sequence[str] | None = None,
    ) -> TorchTextScorer:
        """The scorer of a :class:`trustequiv.models.loading.LoadedModel` (its model, tokenizer, label
        permutation and ``cpu_only``). ``devices`` None: every GPU if there is one and the model may use it,
        else CPU."""
        cpu_only = bool(getattr(loaded, "cpu_only", False))
        return cls(
            loaded.model,
            loaded.tokenizer,
            loaded.label_permutation,
            max_length=max_length,
            batch_tokens=batch_tokens,
            max_batch=max_batch,
            devices=devices or default_devices(cpu_only),
            cpu_only=cpu_only,
        )

    @classmethod
    def handle(
        cls,
        loaded: Any,
        *,
        name: str | None = None,
        fingerprint: str | None = None,
        source: str = "hf",
        batch_tokens: int | None = None,
        max_batch: int = 1024,
        devices: Sequence[str] | None = None,
    ) -> ModelHandle:
        """The :class:`trustequiv.models.handle.ModelHandle` of a loaded torch model: ``scorer(task)`` builds
        a :meth:`from_loaded` scorer at the task's ``max_length``; ``loaded`` gives gradient methods the
        model.

        Args:
            name: the model's name in results (default: its checkpoint directory's name);
            fingerprint: its content hash (default: ``loaded.fingerprint``); source: the source's kind.
        """

        def scorer(task: Any) -> TorchTextScorer:
            return cls.from_loaded(
                loaded,
                max_length=int(task["max_length"]),
                batch_tokens=batch_tokens,
                max_batch=max_batch,
                devices=devices,
            )

        return ModelHandle(
            name=name or str(getattr(getattr(loaded, "directory", None), "name", None) or "model"),
            fingerprint=fingerprint or str(loaded.fingerprint),
            scorer=scorer,
            loaded=loaded,
            source=source,
            cpu_only=bool(getattr(loaded, "cpu_only", False)),
        )

    # ------------------------------------------------------------------ settings
    def _default_batch_tokens(self) -> int:
        # CPU caches favour small batches; GPUs want large ones
        return 32768 if any(d.type == "cuda" for d in self.devices) else 4096

    def configure(
        self,
        *,
        batch_tokens: int | None = None,
        max_batch: int | None = None,
        devices: Sequence[str] | None = None,
    ) -> TorchTextScorer:
        """Override the batching and devices (None keeps each); a ``cpu_only`` model stays on the CPU."""
        if devices:
            wanted = [torch.device(d) for d in devices]
            if self.cpu_only and any(d.type != "cpu" for d in wanted):
                wanted = [torch.device("cpu")]
            if wanted != self.devices:
                self.devices, self._replicas = wanted, []
        if batch_tokens is not None:
            self.batch_tokens = batch_tokens
        if max_batch is not None:
            self.max_batch = int(max_batch)
        return self

    @property
    def models(self) -> list[torch.nn.Module]:
        """The model on each device (moved, and replicated, on first use)."""
        # Another scorer of the same model may have moved it since (e.g. an attack kept on the CPU).
        if not self._replicas or not _same_device(
            next(self._replicas[0].parameters()).device, self.devices[0]
        ):
            first = self.model.to(self.devices[0])
            self._replicas = [first, *(copy.deepcopy(first).to(d) for d in self.devices[1:])]
        return self._replicas

    # ------------------------------------------------------------------ scoring
    def _classes(self) -> int:
        if self.n_classes is not None:
            return self.n_classes
        return int(getattr(getattr(self.model, "config", None), "num_labels", 0))

    def _forward(self, model: torch.nn.Module, device: torch.device, enc, idx: np.ndarray) -> torch.Tensor:
        batch = self.padded(enc, idx, device)
        with torch.inference_mode():
            logits = model(**batch).logits.float()
        if self.perm is not None:
            logits = logits[:, self.perm.to(logits.device)]
        return torch.softmax(logits.double(), dim=-1).cpu()

    def _run(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        enc = self.encode(texts)
        lengths = [len(x) for x in enc["input_ids"]]
        self.n_tokens += int(sum(lengths))
        batches = self.batches(lengths)
        models = self.models
        out: np.ndarray | None = None

        def run_one(j: int) -> tuple[np.ndarray, torch.Tensor]:
            k = j % len(models)
            return batches[j], self._forward(models[k], self.devices[k], enc, batches[j])

        if len(models) == 1:
            results = list(map(run_one, range(len(batches))))
        else:
            with ThreadPoolExecutor(len(models)) as pool:
                results = list(pool.map(run_one, range(len(batches))))
        for idx, p in results:
            if out is None:
                out = np.zeros((len(texts), p.shape[1]), dtype=np.float64)
            out[idx] = p.numpy()
        return out  # type: ignore[return-value]
