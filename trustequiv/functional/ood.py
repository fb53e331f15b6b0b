"""Out-of-distribution (OOD) scores, detection metrics and the agreement of two models' OOD decisions.

Convention throughout: a score is *higher for in-distribution* (ID) inputs, ID is the positive class of the
detection metrics, and an input is flagged OOD when its score falls below a threshold set on ID data.

- Scores: maximum softmax probability (MSP; Hendrycks & Gimpel 2017, "A Baseline for Detecting Misclassified
  and Out-of-Distribution Examples") and the negative free energy ``T logsumexp(f / T)`` (Liu et al. 2020,
  "Energy-based Out-of-distribution Detection").
- AUROC (ties count 1/2, as ``sklearn.metrics.roc_auc_score``), AUPR as average precision (step-wise, as
  ``sklearn.metrics.average_precision_score``) with ID positive ("AUPR-In") or OOD positive ("AUPR-Out", the
  score negated), FPR at 95% TPR (share of OOD inputs kept by the threshold that keeps 95% of ID inputs).
- Decision agreement of two models, each at its own ID threshold (paper B, Rai, Pal, Awekar,
  arXiv 2407.13174, compares the models' OOD decisions): agreement rate, Jaccard of the flagged sets,
  Cohen's kappa, and the Spearman correlation of the scores.

Inputs may be numpy arrays or torch tensors; computation is in float64 and results are Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax
from scipy.stats import rankdata, spearmanr

from trustequiv.functional.agreement import cohen_kappa
from trustequiv.functional.calibration import _to_numpy

SCORES: tuple[str, ...] = ("msp", "energy")


def _as_scores(x: Any, name: str) -> np.ndarray:
    s = _to_numpy(x)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or inf")
    return s


def _as_logits(x: Any) -> np.ndarray:
    z = _to_numpy(x)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 1:
        raise ValueError(f"logits must be a non-empty (N, C) array, got shape {z.shape}")
    z = z.astype(np.float64, copy=False)
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or inf")
    return z


def msp_score(logits: Any) -> np.ndarray:
    """Maximum softmax probability per row (Hendrycks & Gimpel 2017).

    Args:
        logits: ``(N, C)`` unnormalised logits.

    Returns:
        ``(N,)`` float64 in [1/C, 1]; higher = more in-distribution.

    Raises:
        ValueError: bad shape, empty, NaN/inf.
    """
    return softmax(_as_logits(logits), axis=1).max(axis=1)


def energy_score(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` per row (Liu et al. 2020; their score is -E(x)).

    Args:
        logits: ``(N, C)`` logits; temperature: ``T > 0`` (paper default 1).

    Returns:
        ``(N,)`` float64 (units of logits); higher = more in-distribution.

    Raises:
        ValueError: bad shape, NaN/inf, ``T <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return temperature * logsumexp(_as_logits(logits) / temperature, axis=1)


def ood_score(logits: Any, method: str = "msp", temperature: float = 1.0) -> np.ndarray:
    """:func:`msp_score` (``"msp"``, default) or :func:`energy_score` (``"energy"``).

    Raises:
        ValueError: unknown method, or as the chosen score.
    """
    if method == "msp":
        return msp_score(logits)
    if method == "energy":
        return energy_score(logits, temperature)
    raise ValueError(f"unknown OOD score {method!r}; choose one of {SCORES}")


def _id_ood(scores_id: Any, scores_ood: Any) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(scores_id, "scores_id"), _as_scores(scores_ood, "scores_ood")


def auroc(scores_id: Any, scores_ood: Any) -> float:
    """Area under the ROC curve with ID positive: P(score_id > score_ood) + P(tie) / 2 (Mann-Whitney U
    from average ranks; equals ``roc_auc_score`` on labels 1 = ID).

    Args:
        scores_id: ``(N_in,)`` scores of ID inputs; scores_ood: ``(N_out,)`` scores of OOD inputs.

    Returns:
        float in [0, 1]; 0.5 = no separation.

    Raises:
        ValueError: empty, not 1-D, NaN/inf.
    """
    s_in, s_out = _id_ood(scores_id, scores_ood)
    ranks = rankdata(np.concatenate([s_in, s_out]))  # average ranks over ties
    n_in, n_out = s_in.shape[0], s_out.shape[0]
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_out))


def average_precision(scores: Any, positive: Any) -> float:
    """Average precision ``Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds, highest first (the
    step-wise area under the precision-recall curve of ``sklearn.metrics.average_precision_score``).

    Args:
        scores: ``(N,)`` scores (higher = more likely positive); positive: ``(N,)`` bool.

    Returns:
        float in [0, 1].

    Raises:
        ValueError: shapes differ, NaN/inf, no positive example.
    """
    s = _as_scores(scores, "scores")
    y = _to_numpy(positive).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"positive must have shape {s.shape}, got {y.shape}")
    if not y.any():
        raise ValueError("average precision needs at least one positive example")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.shape[0] - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr(scores_id: Any, scores_ood: Any, positive: str = "in") -> float:
    """Area under the precision-recall curve (average precision) for ID-vs-OOD detection.

    Args:
        scores_id, scores_ood: as :func:`auroc`.
        positive: ``"in"`` (AUPR-In: ID positive, score as is) or ``"out"`` (AUPR-Out: OOD positive, score
            negated), the two numbers Hendrycks & Gimpel report.

    Raises:
        ValueError: as :func:`auroc`, or an unknown ``positive``.
    """
    s_in, s_out = _id_ood(scores_id, scores_ood)
    scores = np.concatenate([s_in, s_out])
    is_in = np.r_[np.ones(s_in.shape[0], bool), np.zeros(s_out.shape[0], bool)]
    if positive == "in":
        return average_precision(scores, is_in)
    if positive == "out":
        return average_precision(-scores, ~is_in)
    raise ValueError(f"positive must be 'in' or 'out', got {positive!r}")


def id_threshold(scores_id: Any, tpr: float = 0.95) -> float:
    """The largest threshold ``t`` that keeps at least ``tpr`` of the ID inputs (``score >= t``): the
    ``ceil(tpr * N_in)``-th largest ID score. Inputs with ``score < t`` are flagged OOD.

    Raises:
        ValueError: empty/NaN scores, ``tpr`` outside (0, 1].
    """
    s = _as_scores(scores_id, "scores_id")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    k = int(np.ceil(tpr * s.shape[0] - 1e-9))
    return float(np.sort(s)[::-1][max(k, 1) - 1])


def fpr_at_tpr(scores_id: Any, scores_ood: Any, tpr: float = 0.95) -> float:
    """Share of OOD inputs not flagged (``score >= t``) at the ID threshold ``t`` of :func:`id_threshold`
    (FPR at 95% TPR for the default; equals sklearn ``roc_curve``'s FPR at the first point with
    TPR >= ``tpr``).

    Raises:
        ValueError: as :func:`auroc` and :func:`id_threshold`.
    """
    s_in, s_out = _id_ood(scores_id, scores_ood)
    return float(np.mean(s_out >= id_threshold(s_in, tpr)))


@dataclass(frozen=True)
class DetectionMetrics:
    """One model's OOD detection on one (ID, OOD) pair of sets.

    Attributes:
        auroc, aupr_in, aupr_out: see :func:`auroc`, :func:`aupr`.
        fpr_at_tpr: :func:`fpr_at_tpr` at ``tpr``.
        threshold: the ID threshold (:func:`id_threshold`).
        flagged_id, flagged_ood: share of ID / OOD inputs flagged (``score < threshold``).
        tpr: the target true-positive rate.
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_tpr: float
    threshold: float
    flagged_id: float
    flagged_ood: float
    tpr: float


def detection_metrics(scores_id: Any, scores_ood: Any, tpr: float = 0.95) -> DetectionMetrics:
    """All of :class:`DetectionMetrics` at once.

    Raises:
        ValueError: as :func:`auroc` and :func:`id_threshold`.
    """
    s_in, s_out = _id_ood(scores_id, scores_ood)
    t = id_threshold(s_in, tpr)
    return DetectionMetrics(
        auroc=auroc(s_in, s_out),
        aupr_in=aupr(s_in, s_out, "in"),
        aupr_out=aupr(s_in, s_out, "out"),
        fpr_at_tpr=float(np.mean(s_out >= t)),
        threshold=t,
        flagged_id=float(np.mean(s_in < t)),
        flagged_ood=float(np.mean(s_out < t)),
        tpr=float(tpr),
    )


@dataclass(frozen=True)
class DecisionAgreement:
    """Agreement of two models' OOD flags on the same inputs.

    Attributes:
        agreement: share of inputs flagged by both or by neither.
        flag_jaccard: |F_a ∩ F_b| / |F_a ∪ F_b| of the flagged sets (1.0 when neither flags anything).
        flag_jaccard_independent: the Jaccard expected if the two models flagged independently at their own
            rates, ``p_a p_b / (p_a + p_b − p_a p_b)`` (a chance level to read ``flag_jaccard`` against).
        cohen_kappa: Cohen's kappa of the binary flags (1.0 when both flag the same constant).
        score_spearman: Spearman correlation of the two scores (NaN when one is constant).
        flagged_a, flagged_b: share flagged by each model.
        n: inputs compared.
    """

    agreement: float
    flag_jaccard: float
    flag_jaccard_independent: float
    cohen_kappa: float
    score_spearman: float
    flagged_a: float
    flagged_b: float
    n: int


def decision_agreement(flags_a: Any, flags_b: Any, scores_a: Any, scores_b: Any) -> DecisionAgreement:
    """Compare two models' OOD decisions (``flags``, True = flagged OOD) and scores on the same inputs.

    Raises:
        ValueError: lengths differ, empty, NaN scores.
    """
    fa, fb = _to_numpy(flags_a).astype(bool), _to_numpy(flags_b).astype(bool)
    sa, sb = _as_scores(scores_a, "scores_a"), _as_scores(scores_b, "scores_b")
    n = fa.shape[0]
    if not (fa.shape == fb.shape == sa.shape == sb.shape == (n,)) or n == 0:
        raise ValueError(
            "flags and scores must be four non-empty (N,) arrays, got "
            f"{fa.shape}, {fb.shape}, {sa.shape}, {sb.shape}"
        )
    union = int(np.sum(fa | fb))
    pa, pb = float(fa.mean()), float(fb.mean())
    denom = pa + pb - pa * pb
    with np.errstate(invalid="ignore"):
        rho = spearmanr(sa, sb).statistic if np.ptp(sa) > 0 and np.ptp(sb) > 0 else np.nan
    return DecisionAgreement(
        agreement=float(np.mean(fa == fb)),
        flag_jaccard=1.0 if union == 0 else int(np.sum(fa & fb)) / union,
        flag_jaccard_independent=1.0 if denom == 0 else pa * pb / denom,
        cohen_kappa=cohen_kappa(fa.astype(np.int64), fb.astype(np.int64)),
        score_spearman=float(rho),
        flagged_a=pa,
        flagged_b=pb,
        n=int(n),
    )
