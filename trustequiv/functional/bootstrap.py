"""Paired (example-level) bootstrap confidence intervals (Efron & Tibshirani 1993, percentile interval).

Every array is resampled with the same example indices, so the pairing of two models' outputs on one
example is kept: the interval of a difference then reflects the models' correlation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustequiv.functional.calibration import _to_numpy

#: resampled elements materialised at once by the vectorized path (bounds memory, about 32 MB of float64).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BootstrapResult:
    """A statistic with its percentile bootstrap interval.

    Attributes:
        estimate: the statistic on the original (not resampled) data.
        low, high: percentile interval bounds at level ``confidence`` (NaN if no resample is finite).
        n_resamples: resamples whose statistic was finite and thus used.
        n_dropped: resamples dropped because the statistic was NaN or inf (e.g. an empty bin or class).
        confidence: the interval's level.
    """

    estimate: float
    low: float
    high: float
    n_resamples: int
    n_dropped: int
    confidence: float


def _check(arrays: tuple[Any, ...], n_resamples: int, confidence: float) -> tuple[list[np.ndarray], int]:
    if not arrays:
        raise ValueError("paired_bootstrap needs at least one array")
    arrs = [_to_numpy(a) for a in arrays]
    if any(a.ndim == 0 for a in arrs):
        raise ValueError("arrays must have a leading example axis")
    n = arrs[0].shape[0]
    if n == 0:
        raise ValueError("arrays are empty")
    if any(a.shape[0] != n for a in arrs):
        raise ValueError(f"arrays must share the example axis, got lengths {[a.shape[0] for a in arrs]}")
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return arrs, n


def bootstrap_indices(
    n: int, n_resamples: int, seed: int = 0, chunk: int | None = None
) -> Iterator[np.ndarray]:
    """Resample indices in chunks of shape ``(r, n)``, ``n_resamples`` rows in all, deterministic given seed.

    The chunking does not change the indices (numpy's Generator draws them sequentially).
    """
    rng = np.random.default_rng(seed)
    rows = chunk if chunk is not None else max(1, CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_resamples:
        r = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(r, n))
        done += r


def _interval(values: np.ndarray, estimate: float, confidence: float) -> BootstrapResult:
    finite = values[np.isfinite(values)]
    if finite.size:
        alpha = (1.0 - confidence) / 2.0
        low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    else:
        low = high = np.nan
    return BootstrapResult(
        estimate=float(estimate),
        low=float(low),
        high=float(high),
        n_resamples=int(finite.size),
        n_dropped=int(values.size - finite.size),
        confidence=float(confidence),
    )


def paired_bootstrap(
    statistic: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    vectorized: bool = False,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling examples jointly.

    Args:
        statistic: function of the arrays returning a float. With ``vectorized=True`` it receives arrays
            with a leading resample axis, shapes ``(R, N, ...)``, and must return ``(R,)``
            (reduce over axis 1).
        *arrays: numpy arrays or torch tensors sharing the first (example) axis of length N; all are indexed
            with the same resample indices, so pairs of models stay paired.
        n_resamples: number of bootstrap resamples (>= 1).
        confidence: interval level in (0, 1); the interval is the (α/2, 1 − α/2) percentiles.
        seed: seed of ``numpy.random.default_rng``; the result is deterministic given it.
        vectorized: see ``statistic``; resamples are materialised in chunks to bound memory.

    Returns:
        :class:`BootstrapResult`. Resamples where the statistic is NaN/inf are dropped (counted in
        ``n_dropped``); the interval uses the rest.

    Raises:
        ValueError: no array, empty arrays, lengths differ, n_resamples < 1, confidence outside (0, 1).
    """
    arrs, n = _check(arrays, n_resamples, confidence)
    if vectorized:
        estimate = float(np.asarray(statistic(*(a[None] for a in arrs)), dtype=np.float64).reshape(-1)[0])
        width = max(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrs)
        chunk = max(1, CHUNK_ELEMENTS // (n * width))
        parts = [
            np.asarray(statistic(*(a[idx] for a in arrs)), dtype=np.float64).reshape(-1)
            for idx in bootstrap_indices(n, n_resamples, seed, chunk)
        ]
        values = np.concatenate(parts)
    else:
        estimate = float(statistic(*arrs))
        values = np.array(
            [
                float(statistic(*(a[i] for a in arrs)))
                for idx in bootstrap_indices(n, n_resamples, seed)
                for i in idx
            ]
        )
    return _interval(values, estimate, confidence)


def paired_bootstrap_many(
    statistic: Callable[..., Mapping[str, float]],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, BootstrapResult]:
    """Like :func:`paired_bootstrap` for a statistic returning several named floats from one resample.

    Computing many metrics from the same resample is cheaper than one bootstrap per metric and keeps their
    intervals on the same resamples.

    Args:
        statistic: function of the arrays returning ``{name: float}`` with the same keys every call.
        *arrays, n_resamples, confidence, seed: as :func:`paired_bootstrap`.

    Returns:
        ``{name: BootstrapResult}``; NaN/inf values are dropped per name.

    Raises:
        ValueError: as :func:`paired_bootstrap`, or the statistic's keys change between calls.
    """
    arrs, n = _check(arrays, n_resamples, confidence)
    estimate = {k: float(v) for k, v in statistic(*arrs).items()}
    values: dict[str, list[float]] = {k: [] for k in estimate}
    for idx in bootstrap_indices(n, n_resamples, seed):
        for i in idx:
            out = statistic(*(a[i] for a in arrs))
            if out.keys() != estimate.keys():
                raise ValueError(f"statistic keys changed between calls: {sorted(out)} vs {sorted(estimate)}")
            for k, v in out.items():
                values[k].append(float(v))
    return {k: _interval(np.asarray(values[k], dtype=np.float64), estimate[k], confidence) for k in estimate}
