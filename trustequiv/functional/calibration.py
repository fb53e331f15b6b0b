"""Calibration metrics following paper A's protocol (Rai, Pal, Awekar, arXiv 2508.13533).

Confidence is the top-label (max softmax) probability and "correct" means ``argmax == label``. Bins are
equal-width (``"uniform"``) or equal-mass (``"quantile"``: edges are the unique quantiles of the
confidences, paper A's default in their commands); an example goes to bin ``b`` when
``edges[b] < conf <= edges[b + 1]`` (``np.digitize(conf, edges[1:-1], right=True)``), the first bin also
taking ``conf == edges[0]``. So every confidence, 0 and 1.0 included, lands in exactly one of the ``B``
bins (torchmetrics puts 1.0 in an extra bin, issue #3510; this module does not).

All inputs may be numpy arrays or torch tensors; computation is in float64 and results are Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import norm

Strategy = Literal["uniform", "quantile"]
Reduction = Literal["mean", "none"]
STRATEGIES: tuple[str, ...] = ("uniform", "quantile")

#: probabilities are clipped to this before taking logs in :func:`negative_log_likelihood`.
NLL_EPS = 1e-12
#: tolerance on rows of a probability matrix summing to 1.
SUM_TOL = 1e-4


# --------------------------------------------------------------------------------------------------------
# input validation (shared with agreement.py)


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_nonempty(x: np.ndarray, name: str) -> None:
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")


def _as_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """Validate an ``(N, C)`` probability matrix and return it as float64."""
    p = _to_numpy(probs)
    if p.ndim != 2:
        raise ValueError(f"{name} must be (N, C), got shape {p.shape}")
    _check_nonempty(p, name)
    if p.shape[1] < 1:
        raise ValueError(f"{name} has no class column")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or inf")
    if (p < 0).any() or (p > 1 + SUM_TOL).any():
        raise ValueError(f"{name} has values outside [0, 1]; pass probabilities (softmax), not logits")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > SUM_TOL:
        raise ValueError(
            f"rows of {name} must sum to 1 within {SUM_TOL}; row {worst} sums to {sums[worst]!r}"
        )
    return p


def _as_labels(
    labels: Any, n: int | None = None, n_classes: int | None = None, name: str = "labels"
) -> np.ndarray:
    """Validate ``(N,)`` integer labels in ``[0, n_classes)`` and return them as int64."""
    y = _to_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {y.shape}")
    _check_nonempty(y, name)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries, expected {n}")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    elif y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or inf")
        if (y != np.round(y)).any():
            raise ValueError(f"{name} must be integer class indices")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    hi = n_classes if n_classes is not None else np.iinfo(np.int64).max
    bad = (y < 0) | (y >= hi)
    if bad.any():
        rng = f"[0, {n_classes})" if n_classes is not None else "[0, inf)"
        raise ValueError(
            f"{name} out of range {rng}: {y[bad][:5].tolist()} (drop unlabelled rows, label -1, first)"
        )
    return y


def _as_bool(x: Any, n: int | None = None, name: str = "correct") -> np.ndarray:
    """Validate a ``(N,)`` boolean (or 0/1) mask."""
    a = _to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {a.shape}")
    _check_nonempty(a, name)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n}")
    if a.dtype.kind != "b":
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must be boolean or 0/1")
        a = a.astype(bool)
    return a


def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_probs(probs)
    return p, _as_labels(labels, n=p.shape[0], n_classes=p.shape[1])


def _reduce(values: np.ndarray, reduction: str) -> float | np.ndarray:
    if reduction == "mean":
        return float(np.mean(values))
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------------------------------------
# binning


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin reliability statistics (``B`` bins).

    Attributes:
        edges: ``(B + 1,)`` increasing bin edges in [0, 1]; bin ``b`` is ``(edges[b], edges[b+1]]`` and the
            first bin also holds ``edges[0]``.
        counts: ``(B,)`` int64 number of examples per bin.
        accuracy: ``(B,)`` fraction correct per bin, NaN for empty bins.
        confidence: ``(B,)`` mean confidence per bin, NaN for empty bins.
        accuracy_low, accuracy_high: ``(B,)`` Wilson score interval for the bin accuracy at level
            ``interval``, NaN for empty bins.
        interval: the interval's confidence level (0.95 by default).
        strategy: ``"uniform"`` or ``"quantile"``.
        n: total number of examples.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    accuracy_low: np.ndarray
    accuracy_high: np.ndarray
    interval: float
    strategy: str
    n: int

    @property
    def n_bins(self) -> int:
        """Number of bins ``B`` (for ``"quantile"`` possibly below the requested number: tied edges merge)."""
        return int(self.counts.shape[0])

    @property
    def ece(self) -> float:
        """Σ_b (n_b / N) |acc_b − conf_b| (Guo et al. 2017; Naeini et al. 2015)."""
        nonempty = self.counts > 0
        gaps = np.abs(self.accuracy[nonempty] - self.confidence[nonempty])
        return float(np.sum(self.counts[nonempty] / self.n * gaps))

    @property
    def mce(self) -> float:
        """max over non-empty bins of |acc_b − conf_b| (Naeini et al. 2015)."""
        nonempty = self.counts > 0
        return float(np.max(np.abs(self.accuracy[nonempty] - self.confidence[nonempty])))


def wilson_interval(successes: Any, trials: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (Wilson 1927), elementwise.

    Args:
        successes, trials: broadcastable integer arrays; ``trials == 0`` gives NaN bounds.
        confidence: two-sided level in (0, 1).

    Returns:
        ``(low, high)`` float64 arrays in [0, 1].

    Raises:
        ValueError: confidence not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    z = norm.ppf(0.5 + confidence / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1.0 + z**2 / n
        center = (p + z**2 / (2.0 * n)) / denom
        half = z / denom * np.sqrt(p * (1.0 - p) / n + z**2 / (4.0 * n**2))
        low, high = np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)
        # The interval contains p mathematically; rounding near p = 0 or 1 can put a bound a hair inside.
        low, high = np.minimum(low, p), np.maximum(high, p)
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def bin_edges(confidences: Any, n_bins: int = 10, strategy: Strategy = "uniform") -> np.ndarray:
    """Bin edges for top-label confidences (paper A).

    Args:
        confidences: ``(N,)`` values in [0, 1] (only used by ``"quantile"``).
        n_bins: requested number of bins, >= 1.
        strategy: ``"uniform"``: ``n_bins + 1`` equal-width edges on [0, 1];
            ``"quantile"``: ``np.unique(np.quantile(conf, linspace(0, 1, n_bins + 1)))``, equal-mass bins as
            in paper A (and sklearn's ``calibration_curve``), so tied quantiles merge into fewer bins.
            If all confidences are equal the result is ``[c, c]``: one bin holding everything.

    Returns:
        ``(B + 1,)`` float64 increasing edges.

    Raises:
        ValueError: unknown strategy, n_bins < 1, empty / non-1-D / NaN / out-of-[0, 1] confidences.
    """
    n_bins = _check_n_bins(n_bins)
    conf = _as_confidences(confidences)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        edges = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1)))
        return edges if edges.shape[0] > 1 else np.repeat(edges, 2)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _as_confidences(confidences: Any) -> np.ndarray:
    c = _to_numpy(confidences)
    if c.ndim != 1:
        raise ValueError(f"confidences must be 1-D (N,), got shape {c.shape}")
    _check_nonempty(c, "confidences")
    c = c.astype(np.float64, copy=False)
    if not np.isfinite(c).all():
        raise ValueError("confidences contain NaN or inf")
    if (c < 0).any() or (c > 1 + SUM_TOL).any():
        raise ValueError("confidences must lie in [0, 1]")
    return c


def assign_bins(confidences: Any, edges: Any) -> np.ndarray:
    """Bin index of each confidence: ``np.digitize(conf, edges[1:-1], right=True)`` (paper A).

    Bin ``b`` is ``(edges[b], edges[b+1]]``; values at or below ``edges[1]`` (0 included) go to bin 0 and
    values above ``edges[-2]`` (1.0 included) to bin ``B - 1``, so there is never an extra bin.

    Returns:
        ``(N,)`` int64 in ``[0, B)`` where ``B = len(edges) - 1``.
    """
    e = np.asarray(edges, dtype=np.float64)
    return np.digitize(np.asarray(confidences, dtype=np.float64), e[1:-1], right=True).astype(np.int64)


def calibration_bins_from_confidences(
    confidences: Any,
    correct: Any,
    n_bins: int = 10,
    strategy: Strategy = "uniform",
    interval: float = 0.95,
) -> CalibrationBins:
    """Reliability bins from top-label confidences and correctness (paper A's protocol).

    Args:
        confidences: ``(N,)`` top-label probabilities in [0, 1].
        correct: ``(N,)`` bool (or 0/1), whether the top label is the gold label.
        n_bins, strategy: see :func:`bin_edges`.
        interval: level of the per-bin Wilson score interval on accuracy.

    Raises:
        ValueError: shapes differ, empty input, NaN, bad n_bins / strategy / interval.
    """
    conf = _as_confidences(confidences)
    corr = _as_bool(correct, n=conf.shape[0])
    edges = bin_edges(conf, n_bins, strategy)
    n_b = edges.shape[0] - 1
    idx = assign_bins(conf, edges)
    counts = np.bincount(idx, minlength=n_b)
    hits = np.bincount(idx, weights=corr.astype(np.float64), minlength=n_b)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(counts > 0, hits / counts, np.nan)
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
    low, high = wilson_interval(hits, counts, interval)
    return CalibrationBins(
        edges=edges,
        counts=counts.astype(np.int64),
        accuracy=acc,
        confidence=mean_conf,
        accuracy_low=low,
        accuracy_high=high,
        interval=float(interval),
        strategy=str(strategy),
        n=int(conf.shape[0]),
    )


def top_label(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence ``max_k p_k`` and correctness ``argmax_k p_k == label`` (first max on ties).

    Args:
        probs: ``(N, C)`` probabilities, rows summing to 1.
        labels: ``(N,)`` int in ``[0, C)``.

    Returns:
        ``(confidences (N,) float64, correct (N,) bool)``.

    Raises:
        ValueError: bad shapes, empty, NaN, rows not summing to 1 within 1e-4, labels out of range.
    """
    p, y = _probs_labels(probs, labels)
    return p.max(axis=1), p.argmax(axis=1) == y


def calibration_bins(
    probs: Any,
    labels: Any,
    n_bins: int = 10,
    strategy: Strategy = "uniform",
    interval: float = 0.95,
) -> CalibrationBins:
    """Reliability bins of the top-label confidence (paper A; Guo et al. 2017).

    Args:
        probs: ``(N, C)`` probabilities, rows summing to 1 within 1e-4.
        labels: ``(N,)`` int gold labels in ``[0, C)``.
        n_bins: requested bins (>= 1); strategy: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass,
            paper A's default).
        interval: level of the per-bin Wilson score interval on accuracy.

    Returns:
        :class:`CalibrationBins`; empty bins have count 0 and NaN accuracy / confidence / interval.

    Raises:
        ValueError: bad shapes, empty input, NaN, rows not summing to 1, labels out of range, n_bins < 1,
            unknown strategy.
    """
    conf, correct = top_label(probs, labels)
    return calibration_bins_from_confidences(conf, correct, n_bins, strategy, interval)


# --------------------------------------------------------------------------------------------------------
# scalar metrics


def expected_calibration_error(
    probs: Any, labels: Any, n_bins: int = 10, strategy: Strategy = "uniform"
) -> float:
    """Expected calibration error ECE = Σ_b (n_b / N) |acc_b − conf_b| of the top-label confidence.

    Definition: Naeini et al. 2015, Guo et al. 2017; binning as in paper A (see module docstring).

    Args:
        probs: ``(N, C)`` probabilities; labels: ``(N,)`` int in ``[0, C)``.
        n_bins: >= 1; strategy: ``"uniform"`` or ``"quantile"`` (paper A's default).

    Returns:
        float in [0, 1].

    Raises:
        ValueError: as :func:`calibration_bins`.
    """
    return calibration_bins(probs, labels, n_bins, strategy).ece


def maximum_calibration_error(
    probs: Any, labels: Any, n_bins: int = 10, strategy: Strategy = "uniform"
) -> float:
    """Maximum calibration error MCE = max over non-empty bins of |acc_b − conf_b| (Naeini et al. 2015).

    Args / Raises: as :func:`expected_calibration_error`.

    Returns:
        float in [0, 1]; always >= the ECE with the same bins.
    """
    return calibration_bins(probs, labels, n_bins, strategy).mce


def brier_score(probs: Any, labels: Any, reduction: Reduction = "mean") -> float | np.ndarray:
    """Multiclass Brier score: mean over examples of Σ_k (p_k − y_k)², y one-hot (Brier 1950; paper A).

    Args:
        probs: ``(N, C)`` probabilities; labels: ``(N,)`` int in ``[0, C)``.
        reduction: ``"mean"`` (float) or ``"none"`` (``(N,)`` per-example terms, e.g. for a bootstrap).

    Returns:
        float in [0, 2] (0 = perfect). For C = 2 it is twice the binary Brier score.

    Raises:
        ValueError: bad shapes, empty, NaN, rows not summing to 1 within 1e-4, labels out of range,
            unknown reduction.
    """
    p, y = _probs_labels(probs, labels)
    return _reduce(_brier_terms(p, y), reduction)


def _brier_terms(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example Σ_k (p_k − y_k)² = Σ_k p_k² − 2 p_y + 1 (no one-hot matrix needed)."""
    p_y = p[np.arange(p.shape[0]), y]
    return np.einsum("nk,nk->n", p, p) - 2.0 * p_y + 1.0


def binary_brier_score(
    probs: Any, labels: Any, positive_index: int = 1, reduction: Reduction = "mean"
) -> float | np.ndarray:
    """Brier score of the positive-class probability: mean (p_pos − [y == pos])² (Brier 1950; paper A).

    Paper A reports it for binary tasks (paraphrase identification); equals sklearn's ``brier_score_loss``
    on ``(labels == positive_index, probs[:, positive_index])``. For C > 2 it is the one-vs-rest score.

    Args:
        probs: ``(N, C)`` probabilities; labels: ``(N,)`` int in ``[0, C)``.
        positive_index: column of the positive class, in ``[0, C)``.
        reduction: ``"mean"`` or ``"none"`` (per-example terms).

    Returns:
        float in [0, 1].

    Raises:
        ValueError: as :func:`brier_score`, or positive_index out of range.
    """
    p, y = _probs_labels(probs, labels)
    if not 0 <= positive_index < p.shape[1]:
        raise ValueError(f"positive_index {positive_index} out of range for {p.shape[1]} classes")
    return _reduce((p[:, positive_index] - (y == positive_index)) ** 2, reduction)


def negative_log_likelihood(probs: Any, labels: Any, reduction: Reduction = "mean") -> float | np.ndarray:
    """Mean negative log-likelihood (log loss, natural log) of the gold label: mean −log p_label.

    ``p_label`` is clipped below at 1e-12 (``NLL_EPS``) so a zero probability gives 27.6, not inf; sklearn's
    ``log_loss`` clips at the dtype's machine epsilon instead, so the two differ only for p_label < 1e-12.

    Args:
        probs: ``(N, C)`` probabilities; labels: ``(N,)`` int in ``[0, C)``.
        reduction: ``"mean"`` or ``"none"`` (per-example terms).

    Returns:
        float >= 0, in nats.

    Raises:
        ValueError: as :func:`brier_score`.
    """
    p, y = _probs_labels(probs, labels)
    return _reduce(_nll_terms(p, y), reduction)


def _nll_terms(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(p[np.arange(p.shape[0]), y], NLL_EPS, None))


def accuracy(probs_or_predictions: Any, labels: Any) -> float:
    """Fraction of examples whose predicted class equals the gold label.

    Args:
        probs_or_predictions: ``(N, C)`` probabilities (argmax taken, first max on ties) or ``(N,)`` int
            predicted classes.
        labels: ``(N,)`` int gold labels (>= 0; in ``[0, C)`` when probabilities are given).

    Returns:
        float in [0, 1].

    Raises:
        ValueError: bad shapes, empty, NaN, rows not summing to 1, labels out of range.
    """
    x = _to_numpy(probs_or_predictions)
    if x.ndim == 2:
        p, y = _probs_labels(x, labels)
        return float(np.mean(p.argmax(axis=1) == y))
    pred = _as_labels(x, name="predictions")
    y = _as_labels(labels, n=pred.shape[0])
    return float(np.mean(pred == y))
