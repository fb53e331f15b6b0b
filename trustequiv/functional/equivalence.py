"""Equivalence decisions from paired bootstrap resamples: non-inferiority against a noise floor, and two
one-sided tests (TOST) against absolute margins.

Every function here works on statistics already evaluated on the SAME bootstrap resamples of the examples
(:func:`joint_resamples`), so the interval of a difference (candidate minus floor) keeps the pairing of the
examples (Efron & Tibshirani 1993, percentile interval; the resampler is
:func:`trustequiv.functional.bootstrap.bootstrap_indices`).

Three decisions, each ``"equivalent"``, ``"not_equivalent"`` or ``"inconclusive"``:

- :func:`noninferiority` (with a noise floor): the shortfall of the candidate behind the floor (the mean
  statistic of reference replicas fine-tuned with other seeds) must stay within ``margin``: equivalent when
  the upper bound of its percentile interval at level ``confidence`` is <= margin, not equivalent when the
  lower bound is > margin. With ``confidence = 0.95`` this is a one-sided test at 2.5%, the usual level of a
  non-inferiority trial (ICH E9; Wellek 2010, "Testing Statistical Hypotheses of Equivalence and
  Noninferiority").
- :func:`tost` (no floor, signed statistic such as ΔECE): two one-sided tests at level α = 1 - confidence
  (Schuirmann 1987; Lakens 2017, "Equivalence Tests", Soc. Psychol. Personal. Sci.): equivalent when the
  ``1 - 2α`` interval (90% for confidence 0.95) lies inside ``[-margin, margin]``; not equivalent when it
  lies wholly outside.
- :func:`one_sided` (no floor, similarity without sign such as a Jaccard): one one-sided test at level α
  against an absolute threshold, read from the same ``1 - 2α`` interval.

With several replicas the floor's interval must also cover how another seed would have fallen: each resample
draws the replicas with replacement as well as the examples (:func:`replica_counts`,
:func:`floor_resamples`; the multi-bootstrap of Sellam et al. 2022, "The MultiBERTs", ICLR, code
google-research/language ``multiberts/multibootstrap.py``), with the small-sample correction of the replica
draw described in :func:`floor_resamples`.

Resamples where a statistic is NaN/inf (an empty class, a constant vector) are dropped, as in
:func:`trustequiv.functional.bootstrap.paired_bootstrap`; with no finite resample the decision is
``"inconclusive"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trustequiv.functional.bootstrap import bootstrap_indices

Decision = Literal["equivalent", "not_equivalent", "inconclusive"]
Alike = Literal["higher", "lower"]
#: the decisions from worst to best (a characteristic's verdict is the worst of its statistics').
DECISIONS: tuple[str, ...] = ("not_equivalent", "inconclusive", "equivalent")


@dataclass(frozen=True)
class IntervalTest:
    """One decision with the interval it was read from.

    Attributes:
        decision: ``"equivalent"``, ``"not_equivalent"`` or ``"inconclusive"``.
        estimate: the tested quantity on the original rows (shortfall, signed difference or statistic).
        low, high: its percentile bootstrap interval bounds (NaN when no resample is finite).
        level: the two-sided level of ``[low, high]`` (``confidence`` for :func:`noninferiority`,
            ``1 - 2(1 - confidence)`` for :func:`tost` and :func:`one_sided`).
        bound: the margin (:func:`noninferiority`, :func:`tost`) or threshold (:func:`one_sided`).
        n_resamples: finite resamples used; n_dropped: resamples dropped as NaN/inf.
    """

    decision: Decision
    estimate: float
    low: float
    high: float
    level: float
    bound: float
    n_resamples: int
    n_dropped: int


def worst(decisions: Iterable[str]) -> Decision:
    """The worst decision (not_equivalent < inconclusive < equivalent).

    Raises:
        ValueError: no decision, or one not in :data:`DECISIONS`.
    """
    ds = list(decisions)
    if not ds:
        raise ValueError("worst() needs at least one decision")
    bad = [d for d in ds if d not in DECISIONS]
    if bad:
        raise ValueError(f"unknown decision(s) {bad}; expected one of {DECISIONS}")
    return min(ds, key=DECISIONS.index)  # type: ignore[return-value]


def joint_resamples(
    statistics: Sequence[Callable[[np.ndarray], np.ndarray]],
    n: int,
    n_resamples: int = 1000,
    seed: int = 0,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate several statistics on the same bootstrap resamples of ``n`` examples.

    Args:
        statistics: ``S`` functions, each mapping an int64 index array ``(r, n)`` (rows into the shared
            examples; ``r`` resamples at a time) to ``(r,)`` float values. A statistic indexes its own
            per-example arrays with it, so all ``S`` see the same examples in each resample.
        n: number of shared examples (>= 1).
        n_resamples: resamples (>= 1). seed: seed of ``numpy.random.default_rng`` (deterministic given it).
        chunk: resamples materialised at once (None: as :func:`bootstrap_indices`, about 4M indices); the
            chunking does not change the indices.

    Returns:
        ``(estimates (S,), resamples (S, n_resamples))`` float64; the estimates use the identity index
        ``arange(n)[None]``.

    Raises:
        ValueError: no statistic, ``n < 1``, ``n_resamples < 1``, or a statistic returns the wrong shape.
    """
    if not statistics:
        raise ValueError("joint_resamples needs at least one statistic")
    if n < 1:
        raise ValueError(f"no examples to resample (n = {n})")
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")

    def run(fn: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> np.ndarray:
        out = np.asarray(fn(idx), dtype=np.float64).reshape(-1)
        if out.shape[0] != idx.shape[0]:
            raise ValueError(f"a statistic returned {out.shape[0]} values for {idx.shape[0]} resamples")
        return out

    identity = np.arange(n)[None]
    estimates = np.array([run(fn, identity)[0] for fn in statistics])
    parts = [
        np.stack([run(fn, idx) for fn in statistics])
        for idx in bootstrap_indices(n, int(n_resamples), seed, chunk)
    ]
    return estimates, np.concatenate(parts, axis=1)


def replica_counts(k: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """How often each of ``k`` replicas is drawn, with replacement, in each resample.

    The draws come from a stream of their own (``default_rng([seed, 1])``), so the example indices of
    :func:`joint_resamples` with the same ``seed`` are unchanged, and every statistic and candidate of a run
    sees the same replica draws.

    Args:
        k: replicas (>= 1); n_resamples: resamples (>= 1); seed: the verdict's seed.

    Returns:
        ``(n_resamples, k)`` int64 counts, each row summing to ``k``.

    Raises:
        ValueError: ``k < 1`` or ``n_resamples < 1``.
    """
    if k < 1 or n_resamples < 1:
        raise ValueError(f"replica_counts needs k >= 1 and n_resamples >= 1, got k={k}, n={n_resamples}")
    draws = np.random.default_rng([int(seed), 1]).integers(0, k, size=(int(n_resamples), k))
    counts = np.zeros((int(n_resamples), k), dtype=np.int64)
    np.add.at(counts, (np.arange(int(n_resamples))[:, None], draws), 1)
    return counts


def floor_resamples(
    replicas: np.ndarray, counts: np.ndarray | None, spread_correction: bool = True
) -> np.ndarray:
    """The noise floor on each resample: the mean statistic of the replicas drawn in it.

    Args:
        replicas: ``(k, R)`` the statistic of each (reference, replica) pair on each example resample.
        counts: ``(R, k)`` replica draws (:func:`replica_counts`), or None for the mean over all replicas on
            every resample (examples resampled only; with ``k == 1`` the two are the same).
        spread_correction: scale each resample's deviation of the drawn mean from the all-replica mean by
            ``sqrt(k / (k - 1))``. Drawing ``k`` of ``k`` values with replacement gives their mean a
            variance of ``(k - 1)/k · s²/k`` (``s²`` the replicas' sample variance), a third too small at
            ``k = 3``; the scaled deviation has the unbiased ``s²/k`` (the usual adjustment of the
            bootstrap's first stage with few clusters: Davison & Hinkley 1997, *Bootstrap Methods and their
            Application*, section 3.8).

    Returns:
        ``(R,)`` float64. NaN where a drawn replica's statistic is NaN on that resample.

    Raises:
        ValueError: ``counts`` not ``(R, k)``.
    """
    f = np.asarray(replicas, dtype=np.float64)
    k, r = f.shape
    full = f.mean(axis=0)
    if counts is None or k == 1:
        return full
    c = np.asarray(counts)
    if c.shape != (r, k):
        raise ValueError(f"replica counts must be ({r}, {k}), got {c.shape}")
    with np.errstate(invalid="ignore"):
        drawn = np.where(c > 0, f.T, 0.0) * c
        drawn = drawn.sum(axis=1) / k
    if spread_correction:
        drawn = full + np.sqrt(k / (k - 1)) * (drawn - full)
    return drawn


def seed_deviation(replicas: np.ndarray, seed: int = 0) -> np.ndarray:
    """One seed's deviation from the recipe's mean on each resample, for a candidate taken as one draw of its
    recipe: replica ``j_r`` drawn uniformly (stream ``default_rng([seed, 2])``), ``sqrt(k/(k-1)) ·
    (f[j_r, r] - mean_j f[j, r])``, whose variance is the replicas' unbiased ``s²``. Added to the candidate's
    resampled statistic it puts a seed-to-seed spread like the reference recipe's into the shortfall (the
    population question; :class:`trustequiv.verdict.verdict.VerdictSettings` ``candidate_seed_spread``).

    Args:
        replicas: ``(k, R)`` the replicas' statistic on each resample, ``k >= 2``.

    Returns:
        ``(R,)`` float64.

    Raises:
        ValueError: fewer than 2 replicas.
    """
    f = np.asarray(replicas, dtype=np.float64)
    k, r = f.shape
    if k < 2:
        raise ValueError(f"a seed's deviation needs 2 or more replicas, got {k}")
    pick = np.random.default_rng([int(seed), 2]).integers(0, k, size=r)
    return np.sqrt(k / (k - 1)) * (f[pick, np.arange(r)] - f.mean(axis=0))


def shortfall(candidate: np.ndarray, floor: np.ndarray, alike: Alike) -> np.ndarray:
    """How much less alike the candidate is than the floor: ``floor - candidate`` when higher means more
    alike (Jaccard, agreement), ``candidate - floor`` when lower does (|ΔECE|, flip rate). Positive = worse.

    Args:
        candidate, floor: broadcastable float arrays (e.g. ``(R,)`` resamples, or scalars).

    Raises:
        ValueError: ``alike`` not ``"higher"`` or ``"lower"``.
    """
    c, f = np.asarray(candidate, dtype=np.float64), np.asarray(floor, dtype=np.float64)
    if alike == "higher":
        return f - c
    if alike == "lower":
        return c - f
    raise ValueError(f"alike must be 'higher' or 'lower', got {alike!r}")


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float, int, int]:
    """``(low, high, n_finite, n_dropped)``: the ``((1 - level)/2, (1 + level)/2)`` percentiles of the finite
    ``values`` (numpy's linear interpolation, as :func:`~trustequiv.functional.bootstrap.paired_bootstrap`);
    NaN bounds when none is finite.

    Raises:
        ValueError: level not in (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level!r}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return float("nan"), float("nan"), 0, int(v.size)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high), int(finite.size), int(v.size - finite.size)


def _check_confidence(confidence: float, two_one_sided: bool) -> None:
    lowest = 0.5 if two_one_sided else 0.0
    if not lowest < confidence < 1.0:
        raise ValueError(f"confidence must be in ({lowest}, 1), got {confidence!r}")


def _check_margin(margin: float) -> None:
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")


def noninferiority(
    estimate: float, resamples: np.ndarray, margin: float, confidence: float = 0.95
) -> IntervalTest:
    """Non-inferiority against the noise floor: is the shortfall (:func:`shortfall`) within ``margin``?

    Equivalent when the upper bound of the shortfall's percentile interval at level ``confidence`` is
    <= margin; not equivalent when its lower bound is > margin; inconclusive otherwise (or with no finite
    resample).

    Args:
        estimate: the shortfall on the original rows.
        resamples: ``(R,)`` the shortfall on each joint resample (candidate and floor pairs resampled with
            the same indices).
        margin: the largest tolerated shortfall, in the statistic's units (>= 0).
        confidence: two-sided level of the interval in (0, 1); the test is one-sided at (1 - confidence)/2.

    Raises:
        ValueError: confidence not in (0, 1), margin negative or not finite.
    """
    _check_confidence(confidence, two_one_sided=False)
    _check_margin(margin)
    low, high, n_ok, n_bad = percentile_interval(resamples, confidence)
    if n_ok and high <= margin:
        decision: Decision = "equivalent"
    elif n_ok and low > margin:
        decision = "not_equivalent"
    else:
        decision = "inconclusive"
    return IntervalTest(decision, float(estimate), low, high, float(confidence), float(margin), n_ok, n_bad)


def tost(estimate: float, resamples: np.ndarray, margin: float, confidence: float = 0.95) -> IntervalTest:
    """Two one-sided tests (TOST; Schuirmann 1987, Lakens 2017) on a signed difference, bootstrap version.

    With α = 1 - confidence, equivalent at level α when the ``1 - 2α`` percentile interval (90% for
    confidence 0.95, i.e. TOST at α = 0.05) lies inside ``[-margin, margin]``; not equivalent when it lies
    wholly outside (above ``margin`` or below ``-margin``); inconclusive otherwise. For a mean difference
    the interval approaches the t interval that :func:`statsmodels.stats.weightstats.ttost_paired` tests.

    Args:
        estimate: the signed difference on the original rows (e.g. ECE_cand - ECE_ref).
        resamples: ``(R,)`` the signed difference on each resample.
        margin: equivalence margin (>= 0), in the difference's units.
        confidence: 1 - α, in (0.5, 1).

    Raises:
        ValueError: confidence not in (0.5, 1), margin negative or not finite.
    """
    _check_confidence(confidence, two_one_sided=True)
    _check_margin(margin)
    level = 1.0 - 2.0 * (1.0 - confidence)
    low, high, n_ok, n_bad = percentile_interval(resamples, level)
    if n_ok and -margin <= low and high <= margin:
        decision: Decision = "equivalent"
    elif n_ok and (low > margin or high < -margin):
        decision = "not_equivalent"
    else:
        decision = "inconclusive"
    return IntervalTest(decision, float(estimate), low, high, level, float(margin), n_ok, n_bad)


def one_sided(
    estimate: float, resamples: np.ndarray, threshold: float, alike: Alike, confidence: float = 0.95
) -> IntervalTest:
    """One-sided test of a similarity against an absolute threshold, at level α = 1 - confidence.

    Read from the ``1 - 2α`` percentile interval (as :func:`tost`, so both tests of one run share a level):
    for ``alike="higher"`` equivalent when its lower bound is >= threshold (e.g. error Jaccard >= 0.5), not
    equivalent when its upper bound is < threshold; for ``alike="lower"`` equivalent when the upper bound
    is <= threshold, not equivalent when the lower bound is > threshold; inconclusive otherwise.

    Args:
        estimate: the statistic on the original rows; resamples: ``(R,)`` the statistic per resample.
        threshold: the absolute bound, in the statistic's units (finite).
        alike: ``"higher"`` or ``"lower"``; confidence: 1 - α, in (0.5, 1).

    Raises:
        ValueError: confidence not in (0.5, 1), threshold not finite, unknown ``alike``.
    """
    _check_confidence(confidence, two_one_sided=True)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    level = 1.0 - 2.0 * (1.0 - confidence)
    low, high, n_ok, n_bad = percentile_interval(resamples, level)
    if alike == "higher":
        ok, bad = low >= threshold, high < threshold
    elif alike == "lower":
        ok, bad = high <= threshold, low > threshold
    else:
        raise ValueError(f"alike must be 'higher' or 'lower', got {alike!r}")
    decision: Decision = "equivalent" if n_ok and ok else "not_equivalent" if n_ok and bad else "inconclusive"
    return IntervalTest(decision, float(estimate), low, high, level, float(threshold), n_ok, n_bad)
