"""Word features with sentence-pair structure, per-example seeds, and a fast batched predictor.

- :class:`WordFeatures`: an example's words (premise words, then hypothesis words); a word of ``text_a`` is a
  different feature from the same word in ``text_b``; the separator is no feature, so it is never masked: a
  perturbed example is rebuilt as a (text_a, text_b) pair and tokenized as a pair.
- :func:`example_seed`: the sampler seed of one example from the run seed and the example id, so an example
  gets the same perturbations for every model and whatever the order or number of examples (lime #486).
- :class:`BatchedPredictor`: perturbed texts -> class probabilities; identical texts are evaluated once, the
  unique ones are tokenized in bulk, sorted by length and run in large dynamically padded batches under
  ``torch.inference_mode`` (split over all devices when there are several).
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: paper A's PI tokenizer for the SHAP text masker (words and single punctuation marks).
DEFAULT_WORD_PATTERN = r"\w+|[^\w\s]"


def example_seed(run_seed: int, example_id: int) -> int:
    """A 32-bit sampler seed from the run seed and the example id (independent of order and count)."""
    digest = hashlib.sha256(f"{int(run_seed)}:{int(example_id)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def word_keys(words: Sequence[str], segments: Sequence[int], lowercase: bool = True) -> list[str]:
    """Word keys for paper A's unique-word Jaccard: ``"a:<word>"`` (text_a) / ``"b:<word>"`` (text_b)."""
    return [f"{'ab'[s]}:{w.lower() if lowercase else w}" for s, w in zip(segments, words, strict=True)]


@dataclass
class WordFeatures:
    """One example split into word features.

    Attributes:
        example_id: the example's id.
        texts: ``(text_a,)`` or ``(text_a, text_b)``.
        spans: per text, the ``(start, end)`` character spans of its words.
        words: all word strings, text_a's first.
        segments: per word, 0 (text_a) or 1 (text_b).
    """

    example_id: int
    texts: tuple[str, ...]
    spans: tuple[list[tuple[int, int]], ...]
    words: list[str] = field(init=False)
    segments: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.words = [t[s:e] for t, sp in zip(self.texts, self.spans, strict=True) for s, e in sp]
        self.segments = [seg for seg, sp in enumerate(self.spans) for _ in sp]

    @classmethod
    def from_texts(
        cls, example_id: int, text_a: str, text_b: str | None = None, pattern: str = DEFAULT_WORD_PATTERN
    ) -> WordFeatures:
        texts = (text_a,) if text_b is None else (text_a, text_b)
        rx = re.compile(pattern)
        return cls(int(example_id), texts, tuple([m.span() for m in rx.finditer(t)] for t in texts))

    @property
    def n_features(self) -> int:
        return len(self.words)

    def keys(self, lowercase: bool = True) -> list[str]:
        """Word keys for paper A's unique-word Jaccard: ``"a:<word>"`` / ``"b:<word>"``."""
        return word_keys(self.words, self.segments, lowercase)

    def masked(self, keep: Sequence[bool] | np.ndarray, mask_token: str | None = None) -> tuple[str, ...]:
        """The texts with the words where ``keep`` is False deleted (or replaced by ``mask_token``).

        Kept neighbours keep their original gap; a deleted word leaves one space so that two kept words
        never merge. ``keep`` all True gives back the texts (bar leading/trailing blanks).
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_features,):
            raise ValueError(f"keep must have shape ({self.n_features},), got {keep.shape}")
        out = []
        pos = 0
        for text, spans in zip(self.texts, self.spans, strict=True):
            parts: list[str] = []
            prev_end, prev_kept, prev_orig = 0, False, False
            for s, e in spans:
                word = text[s:e] if keep[pos] else mask_token
                pos += 1
                if word is not None:
                    if parts:
                        gap = text[prev_end:s] if prev_kept else " "
                        parts.append(gap if gap or (prev_orig and keep[pos - 1]) else " ")
                    parts.append(word)
                prev_end, prev_kept, prev_orig = e, word is not None, bool(keep[pos - 1])
            out.append("".join(parts))
        return tuple(out)

    def token_words(
        self, offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None]
    ) -> np.ndarray:
        """Word index of each token from a fast tokenizer's ``offset_mapping`` and ``sequence_ids``;
        ``-1`` for special tokens, padding and tokens outside every word (e.g. stray whitespace)."""
        base = [0, len(self.spans[0])]
        out = np.full(len(offsets), -1, dtype=np.int64)
        for t, ((s, e), seq) in enumerate(zip(offsets, sequence_ids, strict=True)):
            if seq is None or e <= s:
                continue
            for j, (ws, we) in enumerate(self.spans[seq]):
                if s < we and e > ws:
                    out[t] = base[seq] + j
                    break
        return out


class BatchedPredictor:
    """Texts (single or pairs) -> ``(N, C)`` float64 probabilities in the task's canonical class order.

    Args:
        model: a Hugging Face sequence classifier (eval mode); tokenizer: its fast tokenizer.
        label_permutation: logit columns in canonical class order (``LoadedModel.label_permutation``).
        max_length: truncation length (the task's).
        batch_tokens: padded tokens per batch (batch size = ``batch_tokens // longest``, at most
            ``max_batch``); None: 4096 on CPU (measured fastest with MiniLM on 2 cores: 7,570 tokens/s vs
            4,806 at 32,768; benchmarks/attribution.py), 32768 on GPUs.
        devices: torch devices to run on; several devices get a model replica each and batches round-robin.
        dedup: evaluate identical texts once.

    Counters (``n_calls``, ``n_texts``, ``n_unique``, ``n_tokens``, ``seconds``) accumulate over calls.
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
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.dedup = dedup
        devs = [torch.device(d) for d in (devices or [next(model.parameters()).device])]
        if batch_tokens is None:  # CPU caches favour small batches; GPUs want large ones
            batch_tokens = 32768 if any(d.type == "cuda" for d in devs) else 4096
        self.batch_tokens, self.max_batch = int(batch_tokens), int(max_batch)
        self.models = [model if i == 0 else copy.deepcopy(model).to(d) for i, d in enumerate(devs)]
        if devs[0] != next(model.parameters()).device:
            self.models[0] = model.to(devs[0])
        self.devices = devs
        self.perm = None if label_permutation is None else torch.tensor(list(label_permutation))
        self.n_calls = self.n_texts = self.n_unique = self.n_tokens = 0
        self.seconds = 0.0

    def __call__(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        started = time.perf_counter()
        texts = [tuple(t) for t in texts]
        if self.dedup:
            index: dict[tuple[str, ...], int] = {}
            inverse = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
            unique = list(index)
        else:
            unique, inverse = texts, np.arange(len(texts))
        probs = self._run(unique) if unique else np.zeros((0, 0))
        self.n_calls += 1
        self.n_texts += len(texts)
        self.n_unique += len(unique)
        self.seconds += time.perf_counter() - started
        return probs[inverse]

    def encode(self, texts: Sequence[tuple[str, ...]]) -> dict[str, list[list[int]]]:
        a = [t[0] for t in texts]
        b = [t[1] for t in texts] if texts and len(texts[0]) > 1 else None
        enc = self.tokenizer(a, b, truncation=True, max_length=self.max_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """Positions grouped into batches, longest first, each within the token budget."""
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out, i = [], 0
        while i < len(order):
            size = max(1, min(self.max_batch, self.batch_tokens // max(int(lengths[order[i]]), 1)))
            out.append(order[i : i + size])
            i += size
        return out

    def _forward(self, model: torch.nn.Module, device: torch.device, enc, idx: np.ndarray) -> torch.Tensor:
        width = max(len(enc["input_ids"][i]) for i in idx)
        pad = self.tokenizer.pad_token_id or 0
        batch = {}
        for key, rows in enc.items():
            fill = pad if key == "input_ids" else 0
            batch[key] = torch.tensor(
                [rows[i] + [fill] * (width - len(rows[i])) for i in idx], dtype=torch.long, device=device
            )
        with torch.inference_mode():
            logits = model(**batch).logits.float()
        if self.perm is not None:
            logits = logits[:, self.perm.to(logits.device)]
        return torch.softmax(logits, dim=-1).cpu()

    def _run(self, texts: Sequence[tuple[str, ...]]) -> np.ndarray:
        enc = self.encode(texts)
        lengths = [len(x) for x in enc["input_ids"]]
        self.n_tokens += int(sum(lengths))
        batches = self.batches(lengths)
        out: np.ndarray | None = None

        def run_one(j: int) -> tuple[np.ndarray, torch.Tensor]:
            k = j % len(self.models)
            return batches[j], self._forward(self.models[k], self.devices[k], enc, batches[j])

        if len(self.models) == 1:
            results = map(run_one, range(len(batches)))
        else:
            pool = ThreadPoolExecutor(len(self.models))
            results = pool.map(run_one, range(len(batches)))
        for idx, p in results:
            if out is None:
                out = np.zeros((len(texts), p.shape[1]), dtype=np.float64)
            out[idx] = p.double().numpy()
        return out
