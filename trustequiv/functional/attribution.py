"""Agreement between two models' feature attributions for the same example.

Features are words (positions in the example, premise and hypothesis apart); both models' attribution vectors
index the same features, so position ``i`` of ``attr_a`` and ``attr_b`` is the same word.

- Paper A (Rai, Pal, Awekar, arXiv 2508.13533): top-K UNIQUE word strings for the explained class, Jaccard
  ``|A ∩ B| / |A ∪ B|``, 0 when both are empty; their NLI code ranks by |attribution|, their PI code by signed
  attribution (``rank_by``).
- Krishna et al. 2022, "The Disagreement Problem in Explainable ML": feature, rank, sign and signed-rank
  agreement over the top-k features, Spearman rank correlation over all features and pairwise rank agreement
  over all feature pairs. Krishna et al. rank by magnitude (``rank_by="abs"``, the default here).

When an example has fewer than ``k`` features the top-k metrics divide by ``min(k, n_features)``.
Ties are broken by position (stable sort), the same for both models.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

RankBy = Literal["abs", "signed"]

#: metric names returned by :func:`alignment_scores`, in report order.
ALIGNMENT_METRICS = (
    "jaccard",
    "feature_agreement",
    "rank_agreement",
    "sign_agreement",
    "signed_rank_agreement",
    "spearman",
    "pairwise_rank_agreement",
)


def _vec(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per feature), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or inf attributions")
    return a


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vec(a, "attr_a"), _vec(b, "attr_b")
    if x.shape != y.shape:
        raise ValueError(f"attributions must index the same features, got {x.shape} and {y.shape}")
    return x, y


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def ranking_score(attr: Any, rank_by: RankBy = "abs") -> np.ndarray:
    """The value features are ranked by: ``|attr|`` (``"abs"``) or ``attr`` (``"signed"``), shape ``(F,)``.

    Raises:
        ValueError: unknown ``rank_by``, non-1-D or non-finite input.
    """
    a = _vec(attr, "attr")
    if rank_by == "abs":
        return np.abs(a)
    if rank_by == "signed":
        return a
    raise ValueError(f"rank_by must be 'abs' or 'signed', got {rank_by!r}")


def top_k(attr: Any, k: int, rank_by: RankBy = "abs") -> np.ndarray:
    """Indices of the ``min(k, F)`` highest-ranked features, best first (ties: lower index first)."""
    k = _check_k(k)
    score = ranking_score(attr, rank_by)
    order = np.argsort(-score, kind="stable")
    return order[: min(k, score.shape[0])]


def top_k_unique_words(attr: Any, keys: Sequence[Hashable], k: int = 10, rank_by: RankBy = "abs") -> list:
    """Paper A's top-K: walk the features best first and keep the first ``k`` distinct word keys.

    Args:
        attr: ``(F,)`` attributions; keys: ``F`` word keys (e.g. ``"a:cat"``; special tokens are never
            features here, so none is dropped).

    Raises:
        ValueError: ``len(keys) != F`` or as :func:`ranking_score`.
    """
    k = _check_k(k)
    score = ranking_score(attr, rank_by)
    if len(keys) != score.shape[0]:
        raise ValueError(f"{len(keys)} keys for {score.shape[0]} attributions")
    out: list = []
    seen: set = set()
    for i in np.argsort(-score, kind="stable"):
        key = keys[int(i)]
        if key not in seen:
            seen.add(key)
            out.append(key)
            if len(out) == k:
                break
    return out


def topk_jaccard(
    attr_a: Any, attr_b: Any, keys: Sequence[Hashable], k: int = 10, rank_by: RankBy = "abs"
) -> float:
    """Paper A's alignment: Jaccard of the two models' top-K unique words, 0.0 when both are empty.

    Returns:
        float in [0, 1].
    """
    a, b = _pair(attr_a, attr_b)
    sa, sb = set(top_k_unique_words(a, keys, k, rank_by)), set(top_k_unique_words(b, keys, k, rank_by))
    union = len(sa | sb)
    return 0.0 if union == 0 else len(sa & sb) / union


def feature_agreement(attr_a: Any, attr_b: Any, k: int = 10, rank_by: RankBy = "abs") -> float:
    """Krishna et al.: ``|topk_A ∩ topk_B| / k`` (k capped at the number of features). In [0, 1]."""
    a, b = _pair(attr_a, attr_b)
    ta, tb = top_k(a, k, rank_by), top_k(b, k, rank_by)
    return len(set(ta.tolist()) & set(tb.tolist())) / max(len(ta), 1)


def rank_agreement(attr_a: Any, attr_b: Any, k: int = 10, rank_by: RankBy = "abs") -> float:
    """Krishna et al.: share of the k ranks holding the same feature in both top-k lists. In [0, 1]."""
    a, b = _pair(attr_a, attr_b)
    ta, tb = top_k(a, k, rank_by), top_k(b, k, rank_by)
    return float(np.mean(ta == tb)) if len(ta) else 0.0


def sign_agreement(attr_a: Any, attr_b: Any, k: int = 10, rank_by: RankBy = "abs") -> float:
    """Krishna et al.: features in both top-k lists with the same attribution sign, divided by k."""
    a, b = _pair(attr_a, attr_b)
    ta, tb = top_k(a, k, rank_by), top_k(b, k, rank_by)
    common = sorted(set(ta.tolist()) & set(tb.tolist()))
    same = sum(np.sign(a[i]) == np.sign(b[i]) for i in common)
    return same / max(len(ta), 1)


def signed_rank_agreement(attr_a: Any, attr_b: Any, k: int = 10, rank_by: RankBy = "abs") -> float:
    """Krishna et al.: ranks holding the same feature with the same sign in both top-k lists, divided by k."""
    a, b = _pair(attr_a, attr_b)
    ta, tb = top_k(a, k, rank_by), top_k(b, k, rank_by)
    if not len(ta):
        return 0.0
    same = (ta == tb) & (np.sign(a[ta]) == np.sign(b[tb]))
    return float(np.mean(same))


def rank_correlation(attr_a: Any, attr_b: Any, rank_by: RankBy = "abs") -> float:
    """Krishna et al.'s rank correlation: Spearman's rho (``scipy.stats.spearmanr``, average ranks for ties)
    of the two ranking scores over all features.

    Returns:
        float in [-1, 1]; 1.0 when the two vectors are identical (scipy: NaN for a constant vector), NaN when
        only one of them is constant or there are fewer than 2 features.
    """
    a, b = _pair(attr_a, attr_b)
    if np.array_equal(a, b):
        return 1.0
    sa, sb = ranking_score(a, rank_by), ranking_score(b, rank_by)
    if sa.shape[0] < 2 or np.all(sa == sa[0]) or np.all(sb == sb[0]):
        return float("nan")
    return float(spearmanr(sa, sb).statistic)


def pairwise_rank_agreement(attr_a: Any, attr_b: Any, rank_by: RankBy = "abs") -> float:
    """Krishna et al.: share of feature pairs ``i < j`` whose relative order is the same for both models
    (``sign(s_a[i] - s_a[j]) == sign(s_b[i] - s_b[j])``, a tie agreeing only with a tie).

    Returns:
        float in [0, 1]; NaN with fewer than 2 features.
    """
    a, b = _pair(attr_a, attr_b)
    sa, sb = ranking_score(a, rank_by), ranking_score(b, rank_by)
    n = sa.shape[0]
    if n < 2:
        return float("nan")
    iu = np.triu_indices(n, k=1)
    da = np.sign(sa[:, None] - sa[None, :])[iu]
    db = np.sign(sb[:, None] - sb[None, :])[iu]
    return float(np.mean(da == db))


def alignment_scores(
    attr_a: Any, attr_b: Any, keys: Sequence[Hashable], k: int = 10, rank_by: RankBy = "abs"
) -> dict[str, float]:
    """All metrics of :data:`ALIGNMENT_METRICS` for one example (see the module docstring)."""
    a, b = _pair(attr_a, attr_b)
    return {
        "jaccard": topk_jaccard(a, b, keys, k, rank_by),
        "feature_agreement": feature_agreement(a, b, k, rank_by),
        "rank_agreement": rank_agreement(a, b, k, rank_by),
        "sign_agreement": sign_agreement(a, b, k, rank_by),
        "signed_rank_agreement": signed_rank_agreement(a, b, k, rank_by),
        "spearman": rank_correlation(a, b, rank_by),
        "pairwise_rank_agreement": pairwise_rank_agreement(a, b, rank_by),
    }


def aggregate_to_words(token_attr: Any, token_word: Any, n_words: int) -> np.ndarray:
    """Sum sub-token attributions into word attributions.

    Args:
        token_attr: ``(T,)`` per-token attributions; token_word: ``(T,)`` int word index of each token, ``-1``
            for tokens that belong to no word feature ([CLS], [SEP], padding); n_words: number of words W.

    Returns:
        ``(W,)`` float64; a word no token maps to (truncated away) gets 0.

    Raises:
        ValueError: shapes differ or a word index is outside ``[-1, W)``.
    """
    attr = _vec(token_attr, "token_attr")
    idx = np.asarray(token_word, dtype=np.int64)
    if idx.shape != attr.shape:
        raise ValueError(f"token_word has shape {idx.shape}, token_attr {attr.shape}")
    if idx.size and (idx.min() < -1 or idx.max() >= n_words):
        raise ValueError(f"word indices must lie in [-1, {n_words}), got {idx.min()}..{idx.max()}")
    keep = idx >= 0
    return np.bincount(idx[keep], weights=attr[keep], minlength=n_words).astype(np.float64)
