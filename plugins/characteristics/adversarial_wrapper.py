"""A TextAttack model wrapper over a trustequiv :class:`~trustequiv.models.LoadedModel`.

It scores texts exactly as the cached predictor does (``trustequiv.prediction.predict_outputs``): the same
tokenizer call (``truncation=True, max_length=task.max_length``, sentence pairs as ``(text_a, text_b)``),
batches of similar length padded to their longest member (``trustequiv.data.PadCollator``), logit columns
permuted to the task's canonical label order, softmax. TextAttack calls it with a list of strings, or of
``(premise, hypothesis)`` tuples for a pair task, and reads ``(N, C)`` probabilities
(``textattack.models.wrappers.ModelWrapper``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trustequiv.data import PadCollator


class TextClassifier:
    """Callable ``texts -> (N, C) float64 probabilities`` in canonical label order.

    Args:
        loaded: the :class:`trustequiv.models.LoadedModel` (eval mode).
        max_length: the task's ``max_length`` (the cached outputs were computed with it).
        pair: whether inputs are ``(text_a, text_b)`` pairs.
        batch_size: texts per forward pass.

    Attributes:
        n_calls: texts scored so far (the model queries spent).
    """

    def __init__(self, loaded: Any, *, max_length: int, pair: bool = False, batch_size: int = 32):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.perm = torch.tensor(list(loaded.label_permutation), dtype=torch.long)
        self.max_length, self.pair, self.batch_size = int(max_length), bool(pair), int(batch_size)
        self.collate = PadCollator(self.tokenizer)
        self.n_calls = 0

    def _encode(self, texts: Sequence[Any]) -> list[dict[str, Any]]:
        if self.pair:
            if any(not isinstance(t, (tuple, list)) or len(t) != 2 for t in texts):
                raise ValueError("a pair task's wrapper takes (text_a, text_b) tuples")
            a, b = [str(t[0]) for t in texts], [str(t[1]) for t in texts]
        else:
            a = [t[0] if isinstance(t, (tuple, list)) else t for t in texts]
            b = None
        enc = self.tokenizer(a, b, truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{**{k: enc[k][i] for k in keys}, "label": -1, "example_id": i} for i in range(len(a))]

    @torch.no_grad()
    def __call__(self, texts: Sequence[Any]) -> np.ndarray:
        texts = list(texts)
        n_classes = int(self.perm.numel())
        if not texts:
            return np.zeros((0, n_classes))
        feats = self._encode(texts)
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
        probs = np.zeros((len(feats), n_classes))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.collate([feats[i] for i in idx])
            inputs = {
                k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            logits = self.model(**inputs).logits.float()[:, self.perm]
            probs[idx] = torch.softmax(logits.double(), dim=-1).numpy()
        self.n_calls += len(texts)
        return probs

    def predict(self, texts: Sequence[Any]) -> list[int]:
        """Argmax class index (canonical order) of each text."""
        return [int(k) for k in self(texts).argmax(axis=1)]


def textattack_wrapper(classifier: TextClassifier):
    """A ``textattack.models.wrappers.ModelWrapper`` around ``classifier`` (imports TextAttack offline)."""
    from plugins.characteristics.adversarial_env import import_textattack

    import_textattack()
    from textattack.models.wrappers import ModelWrapper

    class _Wrapper(ModelWrapper):
        def __init__(self, inner: TextClassifier):
            self.model = inner.model  # TextAttack reads .model (device moves, gradients); we never train it
            self.inner = inner

        def __call__(self, text_input_list, **kwargs):
            return self.inner(text_input_list)

    return _Wrapper(classifier)
