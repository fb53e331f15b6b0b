"""Alignment metrics on hand-made attributions with known answers, checked against scipy/sklearn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import jaccard_score

from trustequiv.functional.attribution import (
    ALIGNMENT_METRICS,
    aggregate_to_words,
    alignment_scores,
    feature_agreement,
    pairwise_rank_agreement,
    rank_agreement,
    rank_correlation,
    sign_agreement,
    signed_rank_agreement,
    top_k,
    top_k_unique_words,
    topk_jaccard,
)


def test_topk_jaccard_known_answers():
    a, b = [5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5]
    keys = list("abcde")
    assert topk_jaccard(a, b, keys, k=2) == 0.0
    assert topk_jaccard(a, b, keys, k=3) == pytest.approx(1 / 5)  # {a,b,c} vs {e,d,c}
    assert topk_jaccard(a, b, keys, k=5) == 1.0
    assert topk_jaccard([], [], [], k=3) == 0.0  # paper A: 0 when both are empty


def test_unique_words_and_rank_by():
    attr = [-9.0, 8, 7, 1]
    keys = ["a:x", "a:x", "b:x", "a:y"]  # the same word twice in text_a, once in text_b
    assert top_k_unique_words(attr, keys, k=2) == ["a:x", "b:x"]  # |.|: -9, 8 -> one word; then b:x
    assert top_k_unique_words(attr, keys, k=2, rank_by="signed") == ["a:x", "b:x"]
    assert top_k_unique_words([-9.0, 1, 8, 7], keys, k=2, rank_by="signed") == ["b:x", "a:y"]
    assert list(top_k([-9.0, 1, 8], 2, "abs")) == [0, 2]
    assert list(top_k([-9.0, 1, 8], 2, "signed")) == [2, 1]


def test_jaccard_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.normal(size=12), rng.normal(size=12)
        keys = [f"w{i}" for i in range(12)]
        ia, ib = np.zeros(12, bool), np.zeros(12, bool)
        ia[top_k(a, 4)] = True
        ib[top_k(b, 4)] = True
        assert topk_jaccard(a, b, keys, k=4) == pytest.approx(jaccard_score(ia, ib))


def test_krishna_agreements_known_answers():
    a = [3.0, -2.0, 1.0, 0.0]
    b = [3.0, 1.0, -2.0, 0.0]  # top-2 by |.|: a -> [0, 1], b -> [0, 2]
    assert feature_agreement(a, b, k=2) == 0.5
    assert rank_agreement(a, b, k=2) == 0.5
    assert sign_agreement(a, b, k=2) == 0.5
    assert signed_rank_agreement(a, b, k=2) == 0.5
    flipped = [-3.0, 1.0, -2.0, 0.0]
    assert feature_agreement(a, flipped, k=2) == 0.5
    assert sign_agreement(a, flipped, k=2) == 0.0
    assert signed_rank_agreement(a, flipped, k=2) == 0.0
    # same features, other order: feature agreement 1, rank agreement 0
    assert feature_agreement([2.0, 1.0, 0.0], [1.0, 2.0, 0.0], k=2) == 1.0
    assert rank_agreement([2.0, 1.0, 0.0], [1.0, 2.0, 0.0], k=2) == 0.0
    # k larger than the number of features: divide by the number of features
    assert feature_agreement([1.0, 2.0], [2.0, 1.0], k=10) == 1.0


def test_rank_correlation_and_pairwise_against_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=9), rng.normal(size=9)
        assert rank_correlation(a, b) == pytest.approx(spearmanr(np.abs(a), np.abs(b)).statistic)
        assert rank_correlation(a, b, "signed") == pytest.approx(spearmanr(a, b).statistic)
        brute = np.mean(
            [
                np.sign(abs(a[i]) - abs(a[j])) == np.sign(abs(b[i]) - abs(b[j]))
                for i, j in itertools.combinations(range(9), 2)
            ]
        )
        assert pairwise_rank_agreement(a, b) == pytest.approx(brute)
        # without ties, pairwise rank agreement = (Kendall's tau + 1) / 2
        assert pairwise_rank_agreement(a, b) == pytest.approx(
            (kendalltau(np.abs(a), np.abs(b)).statistic + 1) / 2
        )
    assert rank_correlation([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "signed") == pytest.approx(-1.0)


def test_model_compared_with_itself_scores_one():
    rng = np.random.default_rng(2)
    a = rng.normal(size=15)
    keys = [f"a:w{i % 7}" for i in range(15)]  # repeated words
    scores = alignment_scores(a, a.copy(), keys, k=10)
    assert set(scores) == set(ALIGNMENT_METRICS)
    assert all(v == 1.0 for v in scores.values()), scores
    zeros = np.zeros(5)
    assert rank_correlation(zeros, zeros) == 1.0  # identical (even constant) vectors


def test_bad_inputs():
    with pytest.raises(ValueError):
        topk_jaccard([1.0, 2.0], [1.0], ["a", "b"])
    with pytest.raises(ValueError):
        feature_agreement([1.0], [1.0], k=0)
    with pytest.raises(ValueError):
        top_k([1.0, np.nan], 1)
    with pytest.raises(ValueError):
        top_k([1.0], 1, rank_by="square")


def test_aggregate_to_words():
    # [CLS] un ##believ ##able cat [SEP] cat [SEP]
    tokens = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 9.0, 5.0, 9.0])
    word_of = np.array([-1, 0, 0, 0, 1, -1, 2, -1])
    np.testing.assert_allclose(aggregate_to_words(tokens, word_of, 4), [6.0, 4.0, 5.0, 0.0])
    with pytest.raises(ValueError):
        aggregate_to_words(tokens, word_of, 2)
