"""Knowledge distillation losses, and terms that keep a student's trust characteristics near its teacher's.

All functions are differentiable torch code: ``(B, C)`` logits in one class order for student and teacher,
``(B,)`` int64 gold labels, ``(B, D)`` pooled embeddings, ``(B, T)`` per-token attributions. Each returns a
scalar tensor (the batch mean) unless a ``reduction`` says otherwise.

- :func:`kd_loss`, :func:`distillation_loss`: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a
  Neural Network": ``T^2 KL(softmax(t / T) || softmax(s / T))``, mixed with the hard-label cross-entropy.
- :func:`hidden_cosine_loss`: DistilBERT's cosine embedding loss (Sanh et al. 2019,
  ``nn.CosineEmbeddingLoss`` with target 1 on hidden states), ``1 - cos``, through a learned projection when
  the widths differ.
- :func:`focal_distillation_weights`, :func:`focal_distillation_loss`: positive-congruent training (Yan et
  al., CVPR 2021): the distillation term weighted ``alpha + beta * 1[teacher correct]``, against negative
  flips.
- :func:`mmce`: maximum mean calibration error (Kumar, Sarawagi, Jain, ICML 2018), a kernel calibration
  penalty; :func:`confidence_gap`: ``|max p_s - max p_t|``, match the teacher's confidence.
- :func:`explanation_alignment_loss`: e2KD (Parchami-Araghi et al. 2024, arXiv 2402.03119): ``1 - cos``
  between teacher and student attributions over the input tokens.
- :func:`linear_cka_torch`, :func:`cka_loss`: linear CKA (Kornblith et al. 2019), differentiable, the same
  biased estimator as :func:`trustequiv.functional.cka.linear_cka`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "none"]
#: Kumar et al.'s Laplacian kernel width for MMCE.
MMCE_KERNEL_WIDTH = 0.4


def _check_logits(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher logits must both be (B, C), got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0, reduction: Reduction = "mean"
) -> Tensor:
    """Hinton et al. (2015) soft-target loss: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` per example.

    The ``T^2`` keeps the gradient's size independent of ``T`` (Hinton et al., section 2). The teacher side
    is treated as a constant (pass teacher logits without a graph, or they get gradients too).

    Args:
        student_logits, teacher_logits: ``(B, C)``, the same class order.
        temperature: ``T > 0``.
        reduction: ``"mean"`` (scalar, the batch mean; ``F.kl_div(..., reduction="batchmean")``) or
            ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes differ or are not ``(B, C)``; ``T <= 0``; unknown reduction.
    """
    _check_logits(student_logits, teacher_logits)
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_example = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * t * t
    return _reduce(per_example, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> Tensor:
    """``alpha * kd_loss + (1 - alpha) * cross_entropy(student, labels)`` (Hinton et al. 2015's weighted
    average of the soft- and hard-target objectives).

    Args:
        labels: ``(B,)`` int64 gold labels.
        alpha: in [0, 1]; 1 is pure distillation, 0 plain fine-tuning.

    Raises:
        ValueError: as :func:`kd_loss`; ``alpha`` outside [0, 1]; labels not ``(B,)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    soft = kd_loss(student_logits, teacher_logits, temperature)
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * soft + (1.0 - alpha) * hard


def hidden_cosine_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    mask: Tensor | None = None,
    projection: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """DistilBERT's hidden-state loss (Sanh et al. 2019): mean over positions of ``1 - cos(h_s, h_t)``.

    Args:
        student_hidden: ``(..., D_s)``, e.g. ``(B, T, D_s)`` token states or ``(B, D_s)`` pooled ones.
        teacher_hidden: ``(..., D_t)`` with the same leading shape.
        mask: optional ``(...)`` (e.g. the attention mask); positions where it is 0 are left out.
        projection: maps ``D_s`` to ``D_t`` (a learned ``nn.Linear``) when the widths differ.

    Raises:
        ValueError: leading shapes differ; widths differ and no projection; an all-zero mask.
    """
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student and teacher states must share their leading shape, got {tuple(student_hidden.shape)} "
            f"and {tuple(teacher_hidden.shape)}"
        )
    s = projection(student_hidden) if projection is not None else student_hidden
    if s.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"student width {s.shape[-1]} differs from the teacher's {teacher_hidden.shape[-1]}: "
            "pass a projection (nn.Linear(D_s, D_t))"
        )
    distance = 1.0 - F.cosine_similarity(s.float(), teacher_hidden.float(), dim=-1)
    if mask is None:
        return distance.mean()
    m = mask.to(distance.dtype)
    if not m.sum() > 0:
        raise ValueError("mask selects no position")
    return (distance * m).sum() / m.sum()


def focal_distillation_weights(
    teacher_logits: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 5.0
) -> Tensor:
    """Yan et al. (2021) focal distillation weights ``alpha + beta * 1[argmax t == label]``, ``(B,)``.

    Examples the teacher gets right weigh more, so the student is pushed hardest to keep those right:
    fewer negative flips (teacher right, student wrong). Yan et al. use ``alpha=1, beta=5``.

    Raises:
        ValueError: ``alpha`` or ``beta`` negative, or shapes that do not fit.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"focal distillation weights must be >= 0, got alpha={alpha}, beta={beta}")
    if teacher_logits.ndim != 2 or labels.shape != teacher_logits.shape[:1]:
        raise ValueError(
            f"need (B, C) teacher logits and (B,) labels, got {tuple(teacher_logits.shape)}, "
            f"{tuple(labels.shape)}"
        )
    correct = (teacher_logits.argmax(dim=-1) == labels).to(torch.float32)
    return alpha + beta * correct


def focal_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 1.0,
    beta: float = 5.0,
) -> Tensor:
    """Positive-congruent training's focal distillation (Yan et al., CVPR 2021): the batch mean of
    :func:`focal_distillation_weights` times the per-example :func:`kd_loss`.

    Raises:
        ValueError: as :func:`kd_loss` and :func:`focal_distillation_weights`.
    """
    weights = focal_distillation_weights(teacher_logits, labels, alpha, beta)
    per_example = kd_loss(student_logits, teacher_logits, temperature, reduction="none")
    return (weights.to(per_example.device) * per_example).mean()


def confidence_gap(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean ``|max_k p_s,k - max_k p_t,k|``: the student's top-label confidence against the teacher's.

    Zero when the two confidences agree example by example (the student then inherits the teacher's
    calibration wherever it also predicts the same class).

    Raises:
        ValueError: shapes differ or are not ``(B, C)``.
    """
    _check_logits(student_logits, teacher_logits)
    conf_s = F.softmax(student_logits.float(), dim=-1).amax(dim=-1)
    conf_t = F.softmax(teacher_logits.float(), dim=-1).amax(dim=-1)
    return (conf_s - conf_t).abs().mean()


def mmce(logits: Tensor, labels: Tensor, kernel_width: float = MMCE_KERNEL_WIDTH) -> Tensor:
    """Maximum mean calibration error (Kumar et al., ICML 2018), the differentiable calibration penalty.

    ``MMCE^2 = sum_{i,j} (c_i - r_i)(c_j - r_j) k(r_i, r_j) / B^2`` with ``r_i`` the top-label confidence,
    ``c_i = 1[argmax = label]`` and the Laplacian kernel ``k(r, r') = exp(-|r - r'| / width)``
    (width 0.4, the paper's). Returns ``sqrt(MMCE^2)``, the term Kumar et al. add to the NLL (their eq. 6);
    the square is clamped at 1e-12 first, so a perfectly calibrated batch gives 1e-6 and finite gradients.
    Gradients flow through the confidences only (correctness is a step function).

    Args:
        logits: ``(B, C)``; labels: ``(B,)`` int64.
        kernel_width: the Laplacian kernel's width, > 0.

    Raises:
        ValueError: bad shapes or width.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"need (B, C) logits and (B,) labels, got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width}")
    probs = F.softmax(logits.float(), dim=-1)
    confidence, predicted = probs.max(dim=-1)
    gap = (predicted == labels).to(confidence.dtype) - confidence
    kernel = torch.exp(-(confidence[:, None] - confidence[None, :]).abs() / kernel_width)
    squared = (gap[:, None] * gap[None, :] * kernel).sum() / gap.numel() ** 2
    return squared.clamp_min(1e-12).sqrt()


def explanation_alignment_loss(
    student_attr: Tensor, teacher_attr: Tensor, mask: Tensor | None = None
) -> Tensor:
    """e2KD's explanation term (Parchami-Araghi et al. 2024): mean over examples of ``1 - cos(a_s, a_t)``,
    the cosine taken over an example's input tokens.

    Args:
        student_attr, teacher_attr: ``(B, T)`` attributions over the same tokens (e.g. gradient x input of
            the teacher's predicted class).
        mask: ``(B, T)``; tokens where it is 0 (padding) are left out.

    Raises:
        ValueError: shapes differ or are not ``(B, T)``.
    """
    if student_attr.ndim != 2 or student_attr.shape != teacher_attr.shape:
        raise ValueError(
            f"attributions must both be (B, T), got {tuple(student_attr.shape)} and "
            f"{tuple(teacher_attr.shape)}"
        )
    s, t = student_attr.float(), teacher_attr.float()
    if mask is not None:
        m = mask.to(s.dtype)
        s, t = s * m, t * m
    return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-12)).mean()


def linear_cka_torch(features_a: Tensor, features_b: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019), differentiable: ``||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` on
    column-centred ``(N, D_a)`` and ``(N, D_b)`` features (the biased HSIC estimator of
    :func:`trustequiv.functional.cka.linear_cka`, in float32). In [0, 1].

    Raises:
        ValueError: not 2-D, row counts differ, or fewer than 2 rows.
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[0] != features_b.shape[0]:
        raise ValueError(
            f"need (N, D_a) and (N, D_b) features, got {tuple(features_a.shape)} and "
            f"{tuple(features_b.shape)}"
        )
    if features_a.shape[0] < 2:
        raise ValueError(f"linear CKA needs at least 2 rows, got {features_a.shape[0]}")
    x = features_a.float() - features_a.float().mean(dim=0, keepdim=True)
    y = features_b.float() - features_b.float().mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return cross / norm.clamp_min(1e-12)


def cka_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """``1 - linear_cka_torch(student, teacher)`` over the batch's rows: 0 when the two representations
    agree up to rotation and isotropic scaling (the widths may differ; no projection needed).

    Raises:
        ValueError: as :func:`linear_cka_torch`.
    """
    return 1.0 - linear_cka_torch(student_features, teacher_features)
