"""Word features with sentence-pair structure and per-example seeds.

- :class:`WordFeatures`: an example's words (premise words, then hypothesis words); a word of ``text_a`` is a
  different feature from the same word in ``text_b``; the separator is no feature, so it is never masked: a
  perturbed example is rebuilt as a (text_a, text_b) pair and tokenized as a pair.
- :func:`example_seed`: the sampler seed of one example from the run seed and the example id, so an example
  gets the same perturbations for every model and whatever the order or number of examples (lime #486).

Perturbed texts are scored through the model's :class:`trustequiv.models.scorer.TextScorer` (the torch one,
:class:`trustequiv.models.scorer.TorchTextScorer`, evaluates identical texts once and runs the unique ones in
large
length-sorted batches).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

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
