"""Adversarial-attack outcome metrics: per model (TextAttack's attack summary) and per pair of models.

Per model, following TextAttack 0.3.11's ``textattack.metrics`` (``AttackSuccessRate``, ``WordsPerturbed``,
``AttackQueries``): each attacked example ends ``"success"``, ``"failed"`` or ``"skipped"`` (the model already
misclassifies the clean input, so it is not attacked);

- attack success rate = successes / (successes + failures)          (skipped excluded)
- accuracy under attack = failures / (successes + failures + skipped)
- original accuracy = (successes + failures) / all
- mean perturbed share = mean over SUCCESSFUL attacks of (words changed / words in the original text)
- mean queries = mean model queries over non-skipped attacks.

Per pair, two models' success rates have different denominators (each skips its own misclassified inputs), so
the pair metrics use only the examples BOTH models classify correctly and both attacked (REFERENCES.md):
the success-rate gap, the Jaccard of the successfully attacked sets, transfer rates (adversarial texts found
against one model replayed on the other: the share that also fool it; Papernot et al. 2016's transferability)
and the mean Jaccard of the perturbed word positions on examples both attacks broke.

Inputs are plain Python/numpy sequences; outputs are floats (``nan`` where a rate has no denominator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from trustequiv.functional.agreement import jaccard

STATUSES = ("success", "failed", "skipped")


def _check_status(statuses: Sequence[str]) -> list[str]:
    bad = sorted({s for s in statuses if s not in STATUSES})
    if bad:
        raise ValueError(f"unknown attack status(es) {bad}; expected one of {STATUSES}")
    return list(statuses)


def success_rate(n_success: int, n_failed: int) -> float:
    """Attack success rate successes / (successes + failures); ``nan`` when nothing was attacked.

    Raises:
        ValueError: a negative count.
    """
    if n_success < 0 or n_failed < 0:
        raise ValueError("counts must be >= 0")
    total = n_success + n_failed
    return float(n_success / total) if total else float("nan")


def attack_summary(
    statuses: Sequence[str],
    n_queries: Sequence[float] | None = None,
    perturbed_shares: Sequence[float] | None = None,
) -> dict[str, float]:
    """TextAttack's attack summary from per-example outcomes.

    Args:
        statuses: ``(N,)`` each ``"success"``, ``"failed"`` or ``"skipped"``.
        n_queries: ``(N,)`` model queries per example (read only where not skipped), or None.
        perturbed_shares: ``(N,)`` fraction in [0, 1] of the original words changed (read only where
            successful), or None.

    Returns:
        ``success_rate``, ``accuracy_under_attack``, ``original_accuracy``, ``mean_perturbed_share``,
        ``mean_queries``, ``n_success``, ``n_failed``, ``n_skipped``, ``n_examples`` (nan where undefined).

    Raises:
        ValueError: an unknown status, or lengths that differ.
    """
    st = np.asarray(_check_status(statuses), dtype=object)
    n = st.shape[0]
    for name, seq in (("n_queries", n_queries), ("perturbed_shares", perturbed_shares)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, statuses {n}")
    succ, fail, skip = (int((st == s).sum()) for s in STATUSES)
    attacked = st != "skipped"
    out = {
        "success_rate": success_rate(succ, fail),
        "accuracy_under_attack": float(fail / n) if n else float("nan"),
        "original_accuracy": float((succ + fail) / n) if n else float("nan"),
        "n_success": float(succ),
        "n_failed": float(fail),
        "n_skipped": float(skip),
        "n_examples": float(n),
        "mean_perturbed_share": float("nan"),
        "mean_queries": float("nan"),
    }
    if perturbed_shares is not None and succ:
        out["mean_perturbed_share"] = float(
            np.mean(np.asarray(perturbed_shares, dtype=float)[st == "success"])
        )
    if n_queries is not None and attacked.any():
        out["mean_queries"] = float(np.mean(np.asarray(n_queries, dtype=float)[attacked]))
    return out


def common_attacked(status_a: Mapping[Any, str], status_b: Mapping[Any, str]) -> list[Any]:
    """Ids both models attacked (neither skipped: both classify the clean input correctly), sorted.

    Args:
        status_a, status_b: id -> status; ids present in only one mapping are left out.
    """
    _check_status(list(status_a.values()))
    _check_status(list(status_b.values()))
    return sorted(i for i in status_a if i in status_b and "skipped" not in (status_a[i], status_b[i]))


def success_set(status: Mapping[Any, str], ids: Iterable[Any]) -> set[Any]:
    """The ids among ``ids`` whose attack succeeded."""
    return {i for i in ids if status.get(i) == "success"}


def attacked_set_jaccard(
    status_a: Mapping[Any, str], status_b: Mapping[Any, str], empty: float = 1.0
) -> float:
    """Jaccard of the two models' successfully attacked sets on their common attacked examples.

    ``empty`` is returned when neither attack succeeded anywhere (default 1.0, as for error sets); ``nan``
    when they share no attacked example.
    """
    common = common_attacked(status_a, status_b)
    if not common:
        return float("nan")
    return jaccard(success_set(status_a, common), success_set(status_b, common), empty=empty)


def transfer_rate(fooled: Sequence[bool]) -> float:
    """Share of transferred adversarial texts that also fool the target model; ``nan`` for none.

    Args:
        fooled: ``(M,)`` bool, one per adversarial text found against the source model (on examples the
            target classifies correctly when clean): whether the target's prediction on it differs from the
            gold label.
    """
    arr = np.asarray(list(fooled), dtype=bool)
    return float(arr.mean()) if arr.size else float("nan")


def perturbed_word_overlap(
    indices_a: Sequence[Iterable[int]], indices_b: Sequence[Iterable[int]], empty: float = 1.0
) -> float:
    """Mean over examples of the Jaccard of the word positions two attacks changed; ``nan`` for none.

    Args:
        indices_a, indices_b: ``(M,)`` sequences of word-index sets (positions in the original text), one per
            example both attacks broke, in the same order.

    Raises:
        ValueError: lengths differ.
    """
    if len(indices_a) != len(indices_b):
        raise ValueError(f"{len(indices_a)} vs {len(indices_b)} examples")
    if not len(indices_a):
        return float("nan")
    return float(
        np.mean([jaccard(set(a), set(b), empty=empty) for a, b in zip(indices_a, indices_b, strict=True)])
    )
