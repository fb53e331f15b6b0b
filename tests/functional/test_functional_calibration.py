"""trustequiv.functional.calibration against torchmetrics, netcal, sklearn and paper A's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from trustequiv.functional import (
    accuracy,
    assign_bins,
    bin_edges,
    binary_brier_score,
    brier_score,
    calibration_bins,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    top_label,
    wilson_interval,
)

TOL = 1e-6


def random_probs(n: int, c: int, seed: int, sharpness: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of random logits with labels that agree with the argmax more often than chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * sharpness
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), labels


def paper_a(probs: np.ndarray, labels: np.ndarray, n_bins: int, strategy: str) -> tuple[float, float]:
    """Paper A's protocol written out: top-label confidence, np.digitize(right=True), ECE and MCE."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    if strategy == "quantile":
        edges = np.unique(np.quantile(conf, np.linspace(0, 1, n_bins + 1)))
        if len(edges) == 1:  # all confidences equal: one bin (taken literally, the protocol would have none)
            edges = np.repeat(edges, 2)
    else:
        edges = np.linspace(0, 1, n_bins + 1)
    ids = np.digitize(conf, edges[1:-1], right=True)
    ece, mce = 0.0, 0.0
    for b in range(len(edges) - 1):
        m = ids == b
        if m.any():
            gap = abs(correct[m].mean() - conf[m].mean())
            ece += m.sum() / len(conf) * gap
            mce = max(mce, gap)
    return ece, mce


def off_boundaries(conf: np.ndarray, edges: np.ndarray, margin: float = 1e-9) -> bool:
    return bool(np.min(np.abs(conf[:, None] - edges[None, :])) > margin)


# --------------------------------------------------------------------------------------------------------
# outside implementations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_torchmetrics_uniform(seed: int) -> None:
    probs, labels = random_probs(600, 4, seed)
    # torchmetrics bins are [lo, hi) and 1.0 gets an extra bin (#3510): keep away from every edge
    assert off_boundaries(probs.max(axis=1), np.linspace(0, 1, 11))
    p_t, y_t = torch.from_numpy(probs), torch.from_numpy(labels)
    tm_ece = multiclass_calibration_error(p_t, y_t, num_classes=4, n_bins=10, norm="l1").item()
    tm_mce = multiclass_calibration_error(p_t, y_t, num_classes=4, n_bins=10, norm="max").item()
    assert expected_calibration_error(probs, labels, 10, "uniform") == pytest.approx(tm_ece, abs=TOL)
    assert maximum_calibration_error(probs, labels, 10, "uniform") == pytest.approx(tm_mce, abs=TOL)


@pytest.mark.parametrize("equal_intervals", [True, False])
def test_against_netcal_multiclass(equal_intervals: bool) -> None:
    netcal_metrics = pytest.importorskip("netcal.metrics")
    probs, labels = random_probs(
        1000, 4, 3
    )  # (N-1)*q is never an integer: quantile edges fall between points
    assert set(labels.tolist()) == {
        0,
        1,
        2,
        3,
    }  # netcal switches to binary P(y=1) mode with <= 2 label values
    strategy = "uniform" if equal_intervals else "quantile"
    assert off_boundaries(probs.max(axis=1), bin_edges(probs.max(axis=1), 10, strategy)[1:-1])
    ece = netcal_metrics.ECE(bins=10, equal_intervals=equal_intervals).measure(probs, labels)
    mce = netcal_metrics.MCE(bins=10, equal_intervals=equal_intervals).measure(probs, labels)
    assert expected_calibration_error(probs, labels, 10, strategy) == pytest.approx(ece, abs=TOL)
    assert maximum_calibration_error(probs, labels, 10, strategy) == pytest.approx(mce, abs=TOL)


def test_against_netcal_binary_top_label() -> None:
    """A binary task's top-label confidence goes to netcal as a 1-D P(correct) with y = correctness."""
    netcal_metrics = pytest.importorskip("netcal.metrics")
    probs, labels = random_probs(800, 2, 4)
    conf, correct = top_label(probs, labels)
    ece = netcal_metrics.ECE(bins=10).measure(conf, correct.astype(int))
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(ece, abs=TOL)
    # the pitfall: the (N, 2) matrix makes netcal measure P(y=1) calibration, a different number
    positive = netcal_metrics.ECE(bins=10).measure(probs, labels)
    assert positive != pytest.approx(ece, abs=1e-3)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_bins_against_sklearn_calibration_curve(strategy: str) -> None:
    probs, labels = random_probs(500, 3, 5)
    probs = np.round(probs, 2)  # many ties, so quantile edges repeat
    probs = probs / probs.sum(axis=1, keepdims=True)
    conf, correct = top_label(probs, labels)
    acc_sk, conf_sk = calibration_curve(correct, conf, n_bins=10, strategy=strategy)
    bins = calibration_bins(probs, labels, 10, strategy)
    ok = bins.counts > 0
    np.testing.assert_allclose(bins.accuracy[ok], acc_sk, atol=TOL)
    np.testing.assert_allclose(bins.confidence[ok], conf_sk, atol=TOL)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("seed", [0, 1])
def test_against_paper_a_formula(strategy: str, seed: int) -> None:
    probs, labels = random_probs(400, 3, seed)
    probs[:7] = np.eye(3)[labels[:7]]  # confidences of exactly 1.0
    ece, mce = paper_a(probs, labels, 10, strategy)
    assert expected_calibration_error(probs, labels, 10, strategy) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(probs, labels, 10, strategy) == pytest.approx(mce, abs=1e-12)


def test_scores_against_sklearn() -> None:
    probs, labels = random_probs(300, 3, 6)
    onehot = np.eye(3)[labels]
    assert brier_score(probs, labels) == pytest.approx(
        np.mean(np.sum((probs - onehot) ** 2, axis=1)), abs=TOL
    )
    assert brier_score(probs, labels) == pytest.approx(
        brier_score_loss(labels, probs, labels=[0, 1, 2], scale_by_half=False), abs=TOL
    )
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        log_loss(labels, probs, labels=[0, 1, 2]), abs=TOL
    )
    assert accuracy(probs, labels) == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)), abs=TOL)
    assert accuracy(probs.argmax(axis=1), labels) == accuracy(probs, labels)


def test_binary_brier_against_sklearn() -> None:
    probs, labels = random_probs(300, 2, 7)
    assert binary_brier_score(probs, labels) == pytest.approx(brier_score_loss(labels, probs[:, 1]), abs=TOL)
    assert binary_brier_score(probs, labels, positive_index=0) == pytest.approx(
        brier_score_loss(labels == 0, probs[:, 0]), abs=TOL
    )
    assert brier_score(probs, labels) == pytest.approx(2 * binary_brier_score(probs, labels), abs=TOL)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(np.array([0, 5, 10, 0]), np.array([10, 10, 10, 0]))
    np.testing.assert_allclose(low[:3], [0.0, 0.236593, 0.722467], atol=1e-6)
    np.testing.assert_allclose(high[:3], [0.277533, 0.763407, 1.0], atol=1e-6)
    assert np.isnan(low[3]) and np.isnan(high[3])


def test_torch_and_numpy_inputs_agree() -> None:
    probs, labels = random_probs(200, 3, 8)
    for fn in (
        expected_calibration_error,
        maximum_calibration_error,
        brier_score,
        negative_log_likelihood,
        accuracy,
    ):
        assert fn(torch.from_numpy(probs).float(), torch.from_numpy(labels)) == pytest.approx(
            fn(probs.astype(np.float32), labels), abs=1e-12
        )


# --------------------------------------------------------------------------------------------------------
# binning edge cases


def test_every_confidence_in_exactly_one_bin_including_edges() -> None:
    edges = np.linspace(0, 1, 11)
    conf = np.concatenate([edges, [0.05, 0.999]])
    idx = assign_bins(conf, edges)
    assert idx.min() == 0 and idx.max() == 9  # 0 in the first bin, 1.0 in the last, no extra bin
    assert idx[5] == 4  # 0.5 closes bin (0.4, 0.5]
    bins = calibration_bins(np.ones((3, 1)), np.zeros(3, dtype=int), 10)
    assert bins.counts.sum() == 3 and bins.counts[-1] == 3 and bins.n_bins == 10


def test_confidence_one_lands_in_last_bin() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4]])
    bins = calibration_bins(probs, np.array([0, 0, 0]), 10)
    assert bins.counts[-1] == 2 and bins.counts.sum() == 3 and len(bins.counts) == 10
    assert bins.accuracy[-1] == 0.5


def test_empty_bins_are_nan_with_zero_count() -> None:
    probs, labels = random_probs(100, 2, 9)
    bins = calibration_bins(probs, labels, 10, "uniform")
    assert (bins.counts[:5] == 0).all()  # binary top-label confidence >= 0.5
    assert np.isnan(bins.accuracy[:5]).all() and np.isnan(bins.confidence[:5]).all()
    assert np.isnan(bins.accuracy_low[:5]).all()
    assert np.isfinite(expected_calibration_error(probs, labels))


def test_quantile_bins_equal_mass_and_ties() -> None:
    probs, labels = random_probs(1000, 3, 10)
    bins = calibration_bins(probs, labels, 10, "quantile")
    assert bins.n_bins == 10 and (bins.counts == 100).all()
    constant = np.tile([0.5, 0.3, 0.2], (20, 1))
    tied = calibration_bins(constant, np.zeros(20, dtype=int), 10, "quantile")
    assert tied.n_bins == 1 and tied.counts.tolist() == [20]
    assert tied.ece == pytest.approx(0.5)


def test_one_class_all_correct() -> None:
    probs, labels = np.ones((5, 1)), np.zeros(5, dtype=int)
    for strategy in ("uniform", "quantile"):
        assert expected_calibration_error(probs, labels, strategy=strategy) == 0.0
    assert brier_score(probs, labels) == 0.0 and negative_log_likelihood(probs, labels) == 0.0
    assert accuracy(probs, labels) == 1.0


def test_all_wrong() -> None:
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.55, 0.45]])
    labels = np.ones(3, dtype=int)
    assert expected_calibration_error(probs, labels) == pytest.approx(np.mean([0.9, 0.7, 0.55]))
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.9)
    assert accuracy(probs, labels) == 0.0
    worst = np.array([[1.0, 0.0]])
    assert brier_score(worst, [1]) == 2.0
    assert negative_log_likelihood(worst, [1]) == pytest.approx(-np.log(1e-12))  # clipped, not inf


def test_single_example() -> None:
    probs = np.array([[0.2, 0.8]])
    for strategy in ("uniform", "quantile"):
        assert expected_calibration_error(probs, [1], strategy=strategy) == pytest.approx(0.2)
        assert maximum_calibration_error(probs, [1], strategy=strategy) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("probs", "labels", "kwargs", "match"),
    [
        (np.array([[np.nan, 1.0]]), [0], {}, "NaN"),
        (np.array([[0.5, 0.6]]), [0], {}, "sum to 1"),
        (np.array([[2.0, -1.0]]), [0], {}, r"\[0, 1\]"),
        (np.array([[0.5, 0.5]]), [2], {}, "out of range"),
        (np.array([[0.5, 0.5]]), [-1], {}, "out of range"),
        (np.array([[0.5, 0.5]]), [0, 1], {}, "entries"),
        (np.array([0.5, 0.5]), [0, 1], {}, r"\(N, C\)"),
        (np.zeros((0, 2)), [], {}, "empty"),
        (np.array([[0.5, 0.5]]), [0.5], {}, "integer"),
        (np.array([[0.5, 0.5]]), [0], {"n_bins": 0}, "n_bins"),
        (np.array([[0.5, 0.5]]), [0], {"strategy": "kmeans"}, "strategy"),
    ],
)
def test_bad_input_raises(probs: np.ndarray, labels: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, np.asarray(labels), **kwargs)


def test_bad_reduction_raises() -> None:
    with pytest.raises(ValueError, match="reduction"):
        brier_score(np.array([[0.5, 0.5]]), [0], reduction="sum")


# --------------------------------------------------------------------------------------------------------
# properties


@st.composite
def probs_and_labels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 5))
    raw = draw(arrays(np.float64, (n, c), elements=st.floats(0.0, 1.0)))
    raw = raw + 1e-3  # no all-zero row
    labels = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return raw / raw.sum(axis=1, keepdims=True), labels


@settings(max_examples=60, deadline=None)
@given(data=probs_and_labels(), n_bins=st.integers(1, 15), strategy=st.sampled_from(["uniform", "quantile"]))
def test_properties(data: tuple[np.ndarray, np.ndarray], n_bins: int, strategy: str) -> None:
    probs, labels = data
    bins = calibration_bins(probs, labels, n_bins, strategy)
    assert bins.counts.sum() == len(labels)
    assert 0.0 <= bins.ece <= 1.0
    assert bins.mce >= bins.ece - 1e-12
    assert 0.0 <= brier_score(probs, labels) <= 2.0
    assert 0.0 <= binary_brier_score(probs, labels, positive_index=0) <= 1.0
    ece, mce = paper_a(probs, labels, n_bins, strategy)
    assert bins.ece == pytest.approx(ece, abs=1e-12) and bins.mce == pytest.approx(mce, abs=1e-12)


def test_wilson_interval_always_contains_the_proportion():
    """Rounding at p = 0 or 1 must not put a bound inside p (reliability error bars would be negative)."""
    from trustequiv.functional.calibration import wilson_interval

    for n in (1, 2, 3, 7, 10, 97, 173, 1000, 1725):
        k = np.arange(n + 1)
        low, high = wilson_interval(k, np.full(n + 1, n))
        p = k / n
        assert np.all(low <= p) and np.all(p <= high)
        assert low[0] == 0.0 and high[-1] == 1.0
