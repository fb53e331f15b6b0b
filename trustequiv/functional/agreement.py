"""Agreement between two models' predictions on the same examples.

Error-set Jaccard (paper B, Rai, Pal, Awekar, arXiv 2407.13174), label agreement and Jensen-Shannon
"probability loyalty" (Xu et al. 2021), flips (Dutta et al. 2024, "Accuracy is Not All You Need"),
Cohen's kappa (Cohen 1960) and McNemar's exact test (McNemar 1947).

Inputs may be numpy arrays or torch tensors; results are Python floats / ints or small dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import rel_entr
from scipy.stats import binomtest

from trustequiv.functional.calibration import _as_bool, _as_labels, _as_probs


def _pair_labels(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    x = _as_labels(a, name=name_a)
    return x, _as_labels(b, n=x.shape[0], name=name_b)


def _pair_bool(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x = _as_bool(a, name="correct_a")
    return x, _as_bool(b, n=x.shape[0], name="correct_b")


def error_set(predictions: Any, labels: Any, example_ids: Any) -> frozenset[int]:
    """Ids of the examples a model gets wrong (paper B's error set E).

    Args:
        predictions: ``(N,)`` int predicted classes; labels: ``(N,)`` int gold labels (>= 0, so drop
            unlabelled rows first); example_ids: ``(N,)`` int unique ids.

    Returns:
        frozenset of the ids with ``prediction != label``.

    Raises:
        ValueError: shapes differ, empty input, negative labels, duplicate ids.
    """
    pred, y = _pair_labels(predictions, labels, "predictions", "labels")
    ids = _as_labels(example_ids, n=pred.shape[0], name="example_ids")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError("example_ids must be unique")
    return frozenset(int(i) for i in ids[pred != y])


def jaccard(set_a: Iterable[Any], set_b: Iterable[Any], empty: float = 1.0) -> float:
    """Jaccard similarity |A ∩ B| / |A ∪ B| (paper B for error sets, paper A for top-k words).

    Args:
        set_a, set_b: any iterables of hashables (converted to sets).
        empty: value when both sets are empty. Default 1.0: two empty sets are identical (two models that make
            no error agree perfectly on their errors). Paper A's attribution alignment uses 0.0: pass
            ``empty=0.0`` for it.

    Returns:
        float in [0, 1] (or ``empty``).
    """
    a, b = set(set_a), set(set_b)
    union = len(a | b)
    return float(empty) if union == 0 else len(a & b) / union


def error_jaccard(correct_a: Any, correct_b: Any, empty: float = 1.0) -> float:
    """Jaccard of two error sets given as correctness masks over the same examples (paper B).

    ``Σ (¬a ∧ ¬b) / Σ (¬a ∨ ¬b)``: equal to :func:`jaccard` of the error-id sets when rows are distinct
    examples, and counting multiplicity when rows repeat (bootstrap resamples).

    Args:
        correct_a, correct_b: ``(N,)`` bool (or 0/1) masks.
        empty: value when neither model errs (see :func:`jaccard`).

    Returns:
        float in [0, 1] (or ``empty``).

    Raises:
        ValueError: shapes differ, empty input, non-boolean values.
    """
    a, b = _pair_bool(correct_a, correct_b)
    union = int(np.sum(~a | ~b))
    return float(empty) if union == 0 else int(np.sum(~a & ~b)) / union


def agreement_rate(pred_a: Any, pred_b: Any) -> float:
    """Share of examples on which two models predict the same class ("label loyalty", Xu et al. 2021).

    Args:
        pred_a, pred_b: ``(N,)`` int predicted classes (>= 0).

    Returns:
        float in [0, 1].

    Raises:
        ValueError: shapes differ, empty, negative or non-integer classes.
    """
    a, b = _pair_labels(pred_a, pred_b, "pred_a", "pred_b")
    return float(np.mean(a == b))


@dataclass(frozen=True)
class Flips:
    """Correctness changes from model A (reference) to model B (candidate) (Dutta et al. 2024).

    Attributes:
        correct_to_wrong: examples A gets right and B wrong.
        wrong_to_correct: examples A gets wrong and B right.
        flip_rate: (correct_to_wrong + wrong_to_correct) / n, in [0, 1].
        n: number of examples.
    """

    correct_to_wrong: int
    wrong_to_correct: int
    flip_rate: float
    n: int


def flips(correct_a: Any, correct_b: Any) -> Flips:
    """Flips between two models: examples whose correctness changes (Dutta et al. 2024).

    Args:
        correct_a: ``(N,)`` bool, reference correct; correct_b: ``(N,)`` bool, candidate correct.

    Returns:
        :class:`Flips`.

    Raises:
        ValueError: shapes differ, empty input, non-boolean values.
    """
    a, b = _pair_bool(correct_a, correct_b)
    c2w, w2c = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return Flips(
        correct_to_wrong=c2w, wrong_to_correct=w2c, flip_rate=(c2w + w2c) / a.shape[0], n=int(a.shape[0])
    )


def cohen_kappa(pred_a: Any, pred_b: Any) -> float:
    """Cohen's kappa (Cohen 1960) between two models' predicted classes: (p_o − p_e) / (1 − p_e).

    Matches ``sklearn.metrics.cohen_kappa_score`` (unweighted) except in its degenerate case: when p_e = 1,
    which happens only when both models predict one and the same constant class, sklearn returns NaN (0/0)
    and this returns 1.0, because the two prediction vectors are then identical (perfect agreement).

    Args:
        pred_a, pred_b: ``(N,)`` int predicted classes (>= 0).

    Returns:
        float in [-1, 1].

    Raises:
        ValueError: shapes differ, empty, negative or non-integer classes.
    """
    a, b = _pair_labels(pred_a, pred_b, "pred_a", "pred_b")
    n = a.shape[0]
    p_o = float(np.mean(a == b))
    k = int(max(a.max(), b.max())) + 1
    p_e = float(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k))) / (n * n)
    if np.isclose(p_e, 1.0, rtol=0.0, atol=1e-15):
        return 1.0
    return (p_o - p_e) / (1.0 - p_e)


def mcnemar_exact_p(correct_a: Any, correct_b: Any) -> float:
    """Exact two-sided McNemar test (McNemar 1947) that two models have the same error rate.

    The discordant pairs b = #(A right, B wrong) and c = #(A wrong, B right) are tested with a two-sided
    binomial test of b successes in b + c trials at p = 0.5 (``scipy.stats.binomtest``).

    Args:
        correct_a, correct_b: ``(N,)`` bool masks over the same examples.

    Returns:
        p-value in [0, 1]; 1.0 when b + c == 0 (no discordant pair, no evidence of a difference).

    Raises:
        ValueError: shapes differ, empty input, non-boolean values.
    """
    a, b = _pair_bool(correct_a, correct_b)
    n_b, n_c = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n_b + n_c == 0:
        return 1.0
    return float(binomtest(n_b, n_b + n_c, 0.5, alternative="two-sided").pvalue)


def jensen_shannon_distance(
    p: Any, q: Any, reduction: Literal["mean", "none"] = "mean"
) -> float | np.ndarray:
    """Jensen-Shannon distance (base 2) between two models' predicted distributions ("probability loyalty",
    Xu et al. 2021).

    Per example ``sqrt((KL(p || m) + KL(q || m)) / 2)`` with ``m = (p + q) / 2`` and log base 2, the same as
    ``scipy.spatial.distance.jensenshannon(p_i, q_i, base=2)``.

    Args:
        p, q: ``(N, C)`` probabilities, rows summing to 1 within 1e-4 (renormalised exactly, as scipy does).
        reduction: ``"mean"`` (float, mean over examples) or ``"none"`` (``(N,)`` array).

    Returns:
        values in [0, 1] (0 = identical distributions).

    Raises:
        ValueError: shapes differ, empty, NaN, rows not summing to 1, unknown reduction.
    """
    a, b = _as_probs(p, "p"), _as_probs(q, "q")
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same shape, got {a.shape} and {b.shape}")
    a = a / a.sum(axis=1, keepdims=True)
    b = b / b.sum(axis=1, keepdims=True)
    m = (a + b) / 2.0
    js = (rel_entr(a, m).sum(axis=1) + rel_entr(b, m).sum(axis=1)) / (2.0 * np.log(2.0))
    dist = np.sqrt(np.clip(js, 0.0, None))  # rounding can make js a hair below 0
    if reduction == "mean":
        return float(dist.mean())
    if reduction == "none":
        return dist
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
