"""Linear CKA between two models' representations of the same examples, and its permutation null.

- Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"; the
  ``feature_space_linear_cka`` of google-research/representation_similarity): the biased HSIC estimator and,
  for small N, the unbiased one (Song et al. 2012), both computed in feature space in O(N D^2) without an
  N x N Gram matrix.
- Permutation null: shuffle the rows of one side so that example i of A meets a random example of B.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustequiv.functional.representation import (
    NullSummary,
    check_permutations,
    feature_pair,
    null_summary,
)


def _centered(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    x, y = feature_pair(a, b, torch.float64)
    return x - x.mean(dim=0, keepdim=True), y - y.mean(dim=0, keepdim=True)


def _debiased_dot(xty: Tensor, rows_x: Tensor, rows_y: Tensor, n: int) -> Tensor:
    """Kornblith et al.'s ``_debiased_dot_product_similarity_helper`` on centered features: the unbiased
    HSIC estimator (Song et al. 2012) times ``n (n - 3)``."""
    return xty - n / (n - 2.0) * (rows_x @ rows_y) + rows_x.sum() * rows_y.sum() / ((n - 1) * (n - 2))


def _cka_parts(x: Tensor, y: Tensor, debiased: bool) -> tuple[float, float]:
    """(cross term for the given row pairing, normaliser) of linear CKA on centered features."""
    n = x.shape[0]
    xty = torch.linalg.matrix_norm(x.T @ y) ** 2
    xtx = torch.linalg.matrix_norm(x.T @ x) ** 2
    yty = torch.linalg.matrix_norm(y.T @ y) ** 2
    if debiased:
        rx, ry = (x * x).sum(dim=1), (y * y).sum(dim=1)
        xty = _debiased_dot(xty, rx, ry, n)
        xtx, yty = _debiased_dot(xtx, rx, rx, n), _debiased_dot(yty, ry, ry, n)
    norm = torch.sqrt(xtx * yty)
    return float(xty), float(norm)


def linear_cka(features_a: Any, features_b: Any, *, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) between ``(N, D_a)`` and ``(N, D_b)`` features of the same rows.

    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred X, Y (float64). With ``debiased`` the
    three HSIC terms use the unbiased estimator (Song et al. 2012), as Kornblith et al.'s
    ``feature_space_linear_cka(..., debiased=True)``; recommended for small N relative to D (the biased
    estimator drifts towards 1 there). Invariant to orthogonal transforms and isotropic scaling.

    Returns:
        float; the biased one is in [0, 1], the debiased one can fall slightly below 0. NaN when one side has
        zero variance.

    Raises:
        ValueError: row counts differ, bad shapes, NaN/inf; ``debiased`` with ``N < 4``.
    """
    x, y = _centered(features_a, features_b)
    if debiased and x.shape[0] < 4:
        raise ValueError(f"the unbiased HSIC estimator needs N >= 4, got {x.shape[0]}")
    num, norm = _cka_parts(x, y, debiased)
    return num / norm if norm > 0 else float("nan")


def linear_cka_null(
    features_a: Any,
    features_b: Any,
    *,
    debiased: bool = False,
    n_permutations: int = 100,
    seed: int = 0,
) -> NullSummary:
    """Linear CKA beside its permutation null (rows of B shuffled; the normaliser does not change).

    Args:
        features_a, features_b, debiased: as :func:`linear_cka`.
        n_permutations: shuffles (>= 1); each costs one ``D_a x D_b`` product over N rows.
        seed: seed of the shuffles.

    Raises:
        ValueError: as :func:`linear_cka`, or ``n_permutations < 1``.
    """
    x, y = _centered(features_a, features_b)
    n = x.shape[0]
    if debiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs N >= 4, got {n}")
    n_permutations = check_permutations(n_permutations)
    num, norm = _cka_parts(x, y, debiased)
    if not norm > 0:
        nan = float("nan")
        return NullSummary(nan, nan, nan, nan, nan, n_permutations)
    gen = torch.Generator().manual_seed(int(seed))
    rx, ry = (x * x).sum(dim=1), (y * y).sum(dim=1)
    null = np.empty(n_permutations)
    for p in range(n_permutations):
        perm = torch.randperm(n, generator=gen)
        xty = torch.linalg.matrix_norm(x.T @ y[perm]) ** 2
        if debiased:
            xty = _debiased_dot(xty, rx, ry[perm], n)
        null[p] = float(xty) / norm
    return null_summary(num / norm, null)
