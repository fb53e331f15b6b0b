"""trustequiv.functional.agreement and .bootstrap against sklearn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from trustequiv.functional import (
    agreement_rate,
    bootstrap_indices,
    cohen_kappa,
    error_jaccard,
    error_set,
    flips,
    jaccard,
    jensen_shannon_distance,
    mcnemar_exact_p,
    paired_bootstrap,
    paired_bootstrap_many,
)

TOL = 1e-6


def two_models(n: int = 300, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gold labels and two correlated prediction vectors."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    a = np.where(rng.random(n) < 0.8, y, rng.integers(0, c, n))
    b = np.where(rng.random(n) < 0.85, a, rng.integers(0, c, n))
    return y, a, b


def random_probs(n: int, c: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).dirichlet(np.ones(c) * 0.7, n)
    return p


# --------------------------------------------------------------------------------------------------------
# error sets and Jaccard


def test_error_set_and_jaccard() -> None:
    y, a, b = two_models()
    ids = np.arange(1000, 1000 + len(y))
    ea, eb = error_set(a, y, ids), error_set(b, y, ids)
    assert ea == frozenset(int(i) for i in ids[a != y])
    expected = len(ea & eb) / len(ea | eb)
    assert jaccard(ea, eb) == pytest.approx(expected)
    assert error_jaccard(a == y, b == y) == pytest.approx(expected)
    assert error_set(torch.from_numpy(a), torch.from_numpy(y), torch.from_numpy(ids)) == ea


def test_jaccard_empty_convention() -> None:
    assert jaccard(set(), set()) == 1.0  # identical (empty) error sets
    assert jaccard([], [], empty=0.0) == 0.0  # paper A's attribution convention
    assert jaccard({1}, set()) == 0.0
    assert error_jaccard(np.ones(4, bool), np.ones(4, bool)) == 1.0


def test_error_set_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="unique"):
        error_set([0, 1], [1, 1], [7, 7])


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 30)), st.sets(st.integers(0, 30)))
def test_jaccard_symmetric_and_bounded(a: set[int], b: set[int]) -> None:
    assert jaccard(a, b) == jaccard(b, a)
    assert 0.0 <= jaccard(a, b) <= 1.0
    assert jaccard(a, a) == 1.0


# --------------------------------------------------------------------------------------------------------
# agreement, flips, kappa, McNemar


def test_agreement_and_flips() -> None:
    y, a, b = two_models()
    assert agreement_rate(a, b) == pytest.approx(np.mean(a == b))
    f = flips(a == y, b == y)
    assert f.correct_to_wrong == int(np.sum((a == y) & (b != y)))
    assert f.wrong_to_correct == int(np.sum((a != y) & (b == y)))
    assert f.flip_rate == pytest.approx(np.mean((a == y) != (b == y)))
    assert f.n == len(y)
    assert flips(a == y, a == y).flip_rate == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohen_kappa_matches_sklearn(seed: int) -> None:
    _, a, b = two_models(seed=seed, c=4)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=TOL)
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_cohen_kappa_degenerate() -> None:
    const = np.zeros(10, dtype=int)
    with pytest.warns(UserWarning):  # sklearn >= 1.9: UndefinedMetricWarning, NaN by default (0/0)
        assert np.isnan(cohen_kappa_score(const, const))
    assert cohen_kappa(const, const) == 1.0  # ours: identical predictions agree perfectly
    assert cohen_kappa(const, const + 1) == pytest.approx(cohen_kappa_score(const, const + 1))  # 0.0
    assert cohen_kappa([1], [1]) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_mcnemar_matches_binomtest(seed: int) -> None:
    y, a, b = two_models(seed=seed)
    ca, cb = a == y, b == y
    n_b, n_c = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
    assert mcnemar_exact_p(ca, cb) == pytest.approx(binomtest(n_b, n_b + n_c, 0.5).pvalue, abs=1e-12)
    assert mcnemar_exact_p(ca, ca) == 1.0  # no discordant pair


def test_mcnemar_known_value() -> None:
    # b = 0, c = 6: two-sided exact p = 2 * 0.5**6
    ca = np.array([False] * 6 + [True] * 4)
    cb = np.ones(10, bool)
    assert mcnemar_exact_p(ca, cb) == pytest.approx(2 * 0.5**6)


# --------------------------------------------------------------------------------------------------------
# Jensen-Shannon


def test_js_distance_matches_scipy() -> None:
    p, q = random_probs(200, 4, 1), random_probs(200, 4, 2)
    expected = jensenshannon(p, q, base=2, axis=1)
    np.testing.assert_allclose(jensen_shannon_distance(p, q, reduction="none"), expected, atol=TOL)
    assert jensen_shannon_distance(p, q) == pytest.approx(expected.mean(), abs=TOL)
    assert jensen_shannon_distance(p, p) == pytest.approx(0.0, abs=1e-7)
    assert jensen_shannon_distance(torch.from_numpy(p), torch.from_numpy(q)) == pytest.approx(expected.mean())


def test_js_distance_bounds() -> None:
    assert jensen_shannon_distance(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (agreement_rate, ([0, 1], [0]), "entries"),
        (agreement_rate, ([], []), "empty"),
        (agreement_rate, ([0.5], [0]), "integer"),
        (agreement_rate, ([-1], [0]), "out of range"),
        (flips, ([True, False], [True]), "entries"),
        (flips, ([2, 0], [1, 0]), "boolean"),
        (flips, ([np.nan], [1.0]), "NaN"),
        (mcnemar_exact_p, ([], []), "empty"),
        (cohen_kappa, (np.zeros((2, 2), int), np.zeros((2, 2), int)), "1-D"),
        (jensen_shannon_distance, (np.ones((2, 2)) / 2, np.ones((3, 2)) / 2), "shape"),
        (jensen_shannon_distance, (np.array([[0.9, 0.9]]), np.array([[0.5, 0.5]])), "sum to 1"),
        (jensen_shannon_distance, (np.array([[np.nan, 1.0]]), np.array([[0.5, 0.5]])), "NaN"),
    ],
)
def test_bad_input_raises(fn, args, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*args)


# --------------------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_deterministic_and_contains_estimate() -> None:
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=200), rng.normal(size=200)
    r1 = paired_bootstrap(lambda a, b: np.mean(a - b), x, z, n_resamples=300, seed=3)
    r2 = paired_bootstrap(lambda a, b: np.mean(a - b), x, z, n_resamples=300, seed=3)
    assert r1 == r2
    assert r1.low <= r1.estimate <= r1.high
    assert r1.estimate == pytest.approx(np.mean(x - z))
    assert r1.n_resamples == 300 and r1.n_dropped == 0
    # roughly the normal-theory interval
    se = np.std(x - z, ddof=1) / np.sqrt(200)
    assert r1.high - r1.low == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_bootstrap_vectorized_matches_loop() -> None:
    x = np.random.default_rng(1).normal(size=(50, 2))
    loop = paired_bootstrap(lambda a: a[:, 0].mean() - a[:, 1].mean(), x, n_resamples=200, seed=5)
    vec = paired_bootstrap(
        lambda a: a[..., 0].mean(axis=-1) - a[..., 1].mean(axis=-1),
        x,
        n_resamples=200,
        seed=5,
        vectorized=True,
    )
    assert vec.estimate == pytest.approx(loop.estimate)
    assert vec.low == pytest.approx(loop.low) and vec.high == pytest.approx(loop.high)


def test_bootstrap_indices_independent_of_chunking() -> None:
    whole = np.concatenate(list(bootstrap_indices(17, 10, seed=2, chunk=10)))
    chunked = np.concatenate(list(bootstrap_indices(17, 10, seed=2, chunk=3)))
    np.testing.assert_array_equal(whole, chunked)


def test_bootstrap_keeps_pairing() -> None:
    x = np.arange(100.0)
    r = paired_bootstrap(lambda a, b: np.max(np.abs(a - b)), x, x.copy(), n_resamples=50)
    assert r.low == r.high == 0.0  # same indices for both arrays


def test_bootstrap_drops_nan() -> None:
    x = np.array([0.0, 1.0, 1.0, 1.0])
    r = paired_bootstrap(lambda a: np.nan if a.min() == 1.0 else a.mean(), x, n_resamples=400, seed=0)
    assert 0 < r.n_dropped < 400 and r.n_resamples + r.n_dropped == 400
    assert np.isfinite(r.low) and np.isfinite(r.high)


def test_bootstrap_many() -> None:
    x = np.random.default_rng(2).normal(size=80)
    many = paired_bootstrap_many(lambda a: {"mean": a.mean(), "max": a.max()}, x, n_resamples=100, seed=1)
    one = paired_bootstrap(np.mean, x, n_resamples=100, seed=1)
    assert many["mean"] == one
    assert many["max"].estimate == pytest.approx(x.max())


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "at least one"),
        ((np.zeros(3), np.zeros(4)), {}, "share"),
        ((np.zeros(0),), {}, "empty"),
        ((np.zeros(3),), {"n_resamples": 0}, "n_resamples"),
        ((np.zeros(3),), {"confidence": 1.0}, "confidence"),
    ],
)
def test_bootstrap_bad_input(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(np.mean, *args, **kwargs)
