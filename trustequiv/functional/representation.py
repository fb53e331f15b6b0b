"""Similarity of two models' representations of the same examples: mutual kNN overlap and linear CKA.

- Mutual kNN (Huh et al. 2024, "The Platonic Representation Hypothesis", ``platonic-rep`` metrics.py
  ``mutual_knn``): L2-normalise each model's features, find every example's ``k`` nearest neighbours by inner
  product (cosine) with the example itself excluded, and score ``mean_i |N_A(i) ∩ N_B(i)| / k``. Paper B
  (Rai, Pal, Awekar, arXiv 2407.13174) compares neighbour sets over several ``k``.
- Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"; the
  ``feature_space_linear_cka`` of google-research/representation_similarity): the biased HSIC estimator and,
  for small N, the unbiased one (Song et al. 2012), both computed in feature space in O(N D^2) without an
  N x N Gram matrix.
- Permutation null: shuffle the rows of one side so that example i of A meets a random example of B; the
  score distribution under shuffling is what "no shared structure" looks like at this N, D and k. Expected
  mutual kNN under the null is about ``k / (N - 1)``.

This module holds what both measures share: the input checks and :class:`NullSummary` (a statistic beside
its permutation null). The measures are in :mod:`trustequiv.functional.knn` (neighbour search and mutual kNN
overlap) and :mod:`trustequiv.functional.cka` (linear CKA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: default K list for the kNN curve (paper B varies K).
DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50, 100)


# --------------------------------------------------------------------------------------------------------
# input validation


def as_features(x: Any, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(N, D)`` finite float tensor on CPU."""
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {t.shape[0]}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} has no feature column")
    t = t.to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def feature_pair(a: Any, b: Any, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Two models' features of the same rows, checked as :func:`as_features` and for equal row counts."""
    x, y = as_features(a, "features_a", dtype), as_features(b, "features_b", dtype)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features_a and features_b must have the same rows, got {x.shape[0]}, {y.shape[0]}")
    return x, y


def check_ks(ks: int | Sequence[int], n: int) -> list[int]:
    """``ks`` (one ``k`` or a list) as a list of ints, each in ``[1, n - 1]``."""
    ks = [ks] if isinstance(ks, int | np.integer) else list(ks)
    if not ks:
        raise ValueError("ks is empty")
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if k > n - 1:
            raise ValueError(f"k={k} needs more than {k} other examples; only N - 1 = {n - 1} exist")
    return [int(k) for k in ks]


# --------------------------------------------------------------------------------------------------------
# permutation null


@dataclass(frozen=True)
class NullSummary:
    """A statistic beside its permutation null.

    Attributes:
        observed: the statistic on the paired rows.
        null_mean, null_std: mean and standard deviation (ddof=1; 0 with one permutation) under shuffling.
        null_q95: 95th percentile under shuffling.
        p_value: ``(1 + #{null >= observed}) / (1 + n_permutations)`` (one-sided, Phipson & Smyth 2010).
        n_permutations: shuffles drawn.
    """

    observed: float
    null_mean: float
    null_std: float
    null_q95: float
    p_value: float
    n_permutations: int


def null_summary(observed: float, null: np.ndarray) -> NullSummary:
    """:class:`NullSummary` of ``observed`` against the ``null`` statistics of the shuffles."""
    return NullSummary(
        observed=float(observed),
        null_mean=float(null.mean()),
        null_std=float(null.std(ddof=1)) if null.size > 1 else 0.0,
        null_q95=float(np.quantile(null, 0.95)),
        p_value=float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size)),
        n_permutations=int(null.size),
    )


def check_permutations(n_permutations: int) -> int:
    """``n_permutations`` as an int >= 1."""
    if isinstance(n_permutations, bool) or int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"n_permutations must be an integer >= 1, got {n_permutations!r}")
    return int(n_permutations)
