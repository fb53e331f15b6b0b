"""A TextAttack model wrapper over a model's :class:`trustequiv.models.scorer.TextScorer`.

The scorer is the project's one route from texts to probabilities (torch: :class:`trustequiv.models.scorer.
TorchTextScorer`; other sources their own): the same tokenization as the cached outputs (``truncation=True,
max_length=task.max_length``, sentence pairs as ``(text_a, text_b)``), logit columns in the task's canonical
label order, softmax. TextAttack calls the wrapper with a list of strings, or of ``(premise, hypothesis)``
tuples for a pair task, and reads ``(N, C)`` probabilities (``textattack.models.wrappers.ModelWrapper``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from plugins.characteristics.adversarial.env import import_textattack
from trustequiv.models.scorer import TextScorer


class TextClassifier:
    """Callable ``texts -> (N, C) float64 probabilities`` in canonical label order, over a scorer.

    Args:
        scorer: the model's text scorer (its batching is the scorer's: ``scorer.configure(...)``).
        pair: whether inputs are ``(text_a, text_b)`` pairs (else strings, or 1-tuples).

    Raises (on call):
        ValueError: a pair task given anything but ``(text_a, text_b)`` tuples.
    """

    def __init__(self, scorer: TextScorer, *, pair: bool = False):
        self.scorer, self.pair = scorer, bool(pair)

    @property
    def n_calls(self) -> int:
        """Texts scored so far (the model queries spent): the scorer's ``n_texts``."""
        return int(self.scorer.n_texts)

    def _tuples(self, texts: Sequence[Any]) -> list[tuple[str, ...]]:
        if self.pair:
            if any(not isinstance(t, (tuple, list)) or len(t) != 2 for t in texts):
                raise ValueError("a pair task's wrapper takes (text_a, text_b) tuples")
            return [(str(t[0]), str(t[1])) for t in texts]
        return [(str(t[0]) if isinstance(t, (tuple, list)) else str(t),) for t in texts]

    def __call__(self, texts: Sequence[Any]) -> np.ndarray:
        return self.scorer(self._tuples(list(texts)))

    def predict(self, texts: Sequence[Any]) -> list[int]:
        """Argmax class index (canonical order) of each text."""
        return [int(k) for k in self(texts).argmax(axis=1)] if len(texts) else []


def textattack_wrapper(classifier: TextClassifier):
    """A ``textattack.models.wrappers.ModelWrapper`` around ``classifier`` (imports TextAttack offline)."""

    import_textattack()
    # optional dependency (the [attack] extra): imported when used
    from textattack.models.wrappers import ModelWrapper

    class _Wrapper(ModelWrapper):
        def __init__(self, inner: TextClassifier):
            # TextAttack reads .model (its class, for a compatibility check; gradient recipes use it):
            # the torch model when the scorer has one; we never train it
            model = getattr(inner.scorer, "model", None)
            self.model = inner.scorer if model is None else model
            self.inner = inner

        def __call__(self, text_input_list, **kwargs):
            return self.inner(text_input_list)

    return _Wrapper(classifier)
