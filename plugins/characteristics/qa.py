"""Extractive-QA scores characteristic: SQuAD 2.0 exact match and F1 per model, and their change.

Reads the per-question columns ``prediction``, ``exact``, ``f1``, ``has_answer`` of the outputs, which the
``extractive_qa`` task kind (:mod:`plugins.tasks.extractive_qa`) fills. The error-set comparison of
two QA models is the ``errors`` characteristic's (EM = 0 is an error there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trustequiv.characteristic import Characteristic, PairStatistic, pair_name
from trustequiv.functional.bootstrap import paired_bootstrap
from trustequiv.functional.squad import normalize_answer
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align


def qa_columns(outputs: ModelOutputs) -> dict[str, Any]:
    """The QA columns of ``outputs`` with their lists as arrays, rows in ``outputs.example_ids`` order.

    Raises:
        ValueError: the outputs are not from an extractive QA task.
    """
    qa = outputs.columns
    if "exact" not in qa or "prediction" not in qa:
        raise ValueError(
            f"{outputs.name}: no QA predictions in its outputs; the qa characteristic needs a task with "
            "kind: extractive_qa (e.g. task=qa/squad2)"
        )
    # predictions read back from a CSV carry no has_answer column: the gold label says it (1 = answerable)
    has = qa["has_answer"] if "has_answer" in qa else (outputs.labels == 1).tolist()
    return {
        "prediction": list(qa["prediction"]),
        "exact": np.asarray(qa["exact"], dtype=float),
        "f1": np.asarray(qa["f1"], dtype=float),
        "has_answer": np.asarray(has, dtype=bool),
    }


class QACharacteristic(Characteristic):
    """SQuAD 2.0 EM and F1 (official definitions, in [0, 1] here) per model; per pair their differences
    (candidate - reference) with paired-bootstrap intervals and the share of questions whose normalised
    predicted answers are identical.

    Args:
        n_bootstrap: paired bootstrap resamples (>= 1). confidence: interval level. seed: bootstrap seed.
    """

    name = "qa"
    headline_model = ("exact", "f1")

    def __init__(self, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 42) -> None:
        if int(n_bootstrap) < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
        self.n_bootstrap, self.confidence, self.seed = int(n_bootstrap), float(confidence), int(seed)

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """``<model>/exact``, ``/f1`` (all questions), ``/has_ans_exact``, ``/no_ans_exact``,
        ``/n_examples``."""
        qa = qa_columns(outputs)
        has = qa["has_answer"]
        m = {
            f"{outputs.name}/exact": float(qa["exact"].mean()),
            f"{outputs.name}/f1": float(qa["f1"].mean()),
            f"{outputs.name}/n_examples": float(has.shape[0]),
        }
        if has.any():
            m[f"{outputs.name}/has_ans_exact"] = float(qa["exact"][has].mean())
        if (~has).any():
            m[f"{outputs.name}/no_ans_exact"] = float(qa["exact"][~has].mean())
        notes = []
        threshold = outputs.info.get("qa_threshold")
        if threshold:
            m[f"{outputs.name}/null_threshold"] = float(threshold["null_score_diff_threshold"])
            m[f"{outputs.name}/answered_share"] = float(np.mean([bool(p) for p in qa["prediction"]]))
            if "validation_f1" in threshold:
                m[f"{outputs.name}/validation_f1"] = float(threshold["validation_f1"])
                t, f1, f1_0 = (
                    threshold["null_score_diff_threshold"],
                    threshold["validation_f1"],
                    threshold["validation_f1_at_0"],
                )
                notes.append(
                    f"{outputs.name}: no-answer threshold {t:.3f} (null score - best span score), chosen on "
                    f"the validation split as the official SQuAD 2.0 evaluation's best-F1 threshold "
                    f"(validation F1 {f1:.3f}; {f1_0:.3f} at 0)"
                )
        return CharacteristicResult(metrics=m, notes=notes)

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """``<pair>/exact_diff``, ``/f1_diff`` (+ ``_ci_low`` / ``_ci_high``), ``/answer_agreement`` and
        ``/exact_agreement`` (share of questions both models get right or both wrong by exact match)."""
        ref, cand = align(reference, candidate)
        ids = ref.example_ids.numpy()
        a, b = qa_columns(ref), qa_columns(cand)  # aligned rows (select reorders the columns)
        pair = pair_name(ref.name, cand.name)
        metrics: dict[str, float] = {}
        for key in ("exact", "f1"):
            boot = paired_bootstrap(
                lambda x, y: np.mean(y, axis=-1) - np.mean(x, axis=-1),
                a[key],
                b[key],
                n_resamples=self.n_bootstrap,
                confidence=self.confidence,
                seed=self.seed,
                vectorized=True,
            )
            metrics[f"{pair}/{key}_diff"] = float(b[key].mean() - a[key].mean())
            metrics[f"{pair}/{key}_diff_ci_low"] = boot.low
            metrics[f"{pair}/{key}_diff_ci_high"] = boot.high
        same = np.array(
            [
                normalize_answer(x) == normalize_answer(y)
                for x, y in zip(a["prediction"], b["prediction"], strict=True)
            ]
        )
        metrics[f"{pair}/answer_agreement"] = float(same.mean())
        metrics[f"{pair}/exact_agreement"] = float(_exact_agreement(a["exact"][None], b["exact"][None])[0])
        per_example = {
            f"qa_{pair}": {
                "example_id": ids,
                "reference_answer": a["prediction"],
                "candidate_answer": b["prediction"],
                "reference_f1": a["f1"],
                "candidate_f1": b["f1"],
            }
        }
        notes = [
            "EM and F1: official SQuAD 2.0 definitions (normalised answers; max over gold answers; an "
            "unanswerable question scores 1 only for an empty prediction), reported in [0, 1]. Answer "
            "agreement: identical normalised predictions; exact agreement: the same EM (both right or both "
            "wrong). Intervals: "
            f"{self.confidence:.0%} paired bootstrap percentile, "
            f"{self.n_bootstrap} resamples, seed {self.seed}."
        ]
        return CharacteristicResult(metrics=metrics, per_example=per_example, notes=notes)

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """``exact_agreement`` (alike = higher) over the shared questions, for the verdict: arrays are both
        models' per-question exact match. None when the outputs carry no QA columns or share no question."""
        try:
            ref, cand = align(reference, candidate)
            a, b = qa_columns(ref), qa_columns(cand)
        except ValueError:
            return []
        return [
            PairStatistic(
                name="exact_agreement",
                alike="higher",
                example_ids=ref.example_ids.numpy().astype(np.int64),
                arrays=(a["exact"], b["exact"]),
                statistic=_exact_agreement,
            )
        ]


def _exact_agreement(exact_a: np.ndarray, exact_b: np.ndarray) -> np.ndarray:
    """``(R, n)`` exact match (0/1) of each model -> ``(R,)`` share of questions with the same EM."""
    return (exact_a == exact_b).mean(axis=-1)
