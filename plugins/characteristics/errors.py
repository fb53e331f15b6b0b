"""Prediction-errors characteristic: do the two models get the same examples wrong?

Paper B (Rai, Pal, Awekar, arXiv 2407.13174) compares models by the Jaccard similarity of their error sets,
over all pairs. Beside it: label agreement and Jensen-Shannon distance ("label / probability loyalty",
Xu et al. 2021), flips (Dutta et al. 2024), Cohen's kappa and McNemar's exact test.

Outputs without scores (a released error set, ``logits`` None, see ``plugins/sources/predictions/``) carry
only ``correct``: for them the error-set Jaccard (with its interval), flips and McNemar are computed, and
agreement, Cohen's kappa and JS distance are left out with a note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trustequiv.characteristic import Characteristic, PairStatistic, all_pairs, pair_name
from trustequiv.functional.agreement import (
    agreement_rate,
    cohen_kappa,
    error_set,
    flips,
    jaccard,
    jensen_shannon_distance,
    mcnemar_exact_p,
)
from trustequiv.functional.bootstrap import BootstrapResult, paired_bootstrap
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align, paired_correct
from trustequiv.report.figures import matrix_heatmap


def _jaccard_rows(wrong_a: np.ndarray, wrong_b: np.ndarray) -> np.ndarray:
    """Error-set Jaccard along the last axis of ``(R, N)`` error masks, counting repeated rows (resamples)
    with their multiplicity; 1.0 when neither model errs (as :func:`trustequiv.functional.jaccard`)."""
    union = np.sum(wrong_a | wrong_b, axis=-1)
    inter = np.sum(wrong_a & wrong_b, axis=-1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _agreement_rows(same: np.ndarray) -> np.ndarray:
    return np.mean(same, axis=-1)


def _flip_rows(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
    """Flip rate along the last axis of ``(R, N)`` correctness masks (as ``functional.flips``)."""
    return np.mean(correct_a != correct_b, axis=-1)


def correctness(outputs: ModelOutputs) -> tuple[np.ndarray, np.ndarray]:
    """``(correct (n,) bool, example_ids (n,))`` over the rows that count
    (:meth:`~trustequiv.outputs.ModelOutputs.correct_rows`): the labelled rows of outputs with scores, every
    row of outputs without.

    Raises:
        ValueError: outputs with scores and no labelled example.
    """
    correct, usable = outputs.correct_rows()
    return correct[usable], outputs.example_ids.detach().cpu().numpy()[usable]


def _error_ids(correct: np.ndarray, ids: np.ndarray) -> frozenset[int]:
    """Paper B's error set: the ids of the rows not ``correct`` (validated by :func:`error_set`)."""
    return error_set(correct.astype(np.int64), np.ones(correct.shape[0], dtype=np.int64), ids)


class ErrorsCharacteristic(Characteristic):
    """Overlap of two models' errors and agreement of their predictions.

    Args:
        n_bootstrap: paired bootstrap resamples for the Jaccard and agreement intervals (>= 1).
        confidence: interval level.
        seed: bootstrap seed (paper A's 42).
    """

    name = "errors"
    needs_scores = False  # the error-set metrics need only per-example correctness
    headline_model = ("accuracy", "n_errors")
    headline_pair = ("error_jaccard", "agreement", "flip_rate", "cohen_kappa", "mcnemar_p", "js_distance")

    def __init__(self, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 42) -> None:
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.seed = int(seed)
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    def _notes(self) -> list[str]:
        return [
            "Error-set Jaccard |E_ref ∩ E_cand| / |E_ref ∪ E_cand| as in paper B (arXiv 2407.13174), 1.0 "
            "when neither model errs; error Jaccard, flips and McNemar use the labelled shared examples, "
            "while agreement, Cohen's kappa and JS distance (base 2) use every shared example. Flip rate = "
            "share of examples whose correctness changes (Dutta et al. 2024). Cohen's kappa is 1.0 (sklearn: "
            "NaN) when both models predict one and the same class. McNemar p is the exact two-sided binomial "
            "test on "
            "discordant pairs. Where the task defines correctness itself (extractive QA: exact match), the "
            "error set is the examples it marks wrong and agreement/kappa/JS are on the argmax of the logits "
            f"(QA: answer vs abstain). Intervals: {self.confidence:.0%} paired bootstrap percentile, "
            f"{self.n_bootstrap} resamples, seed {self.seed}.",
        ]

    #: said once for any pair with a model that carries no scores.
    UNSCORED_NOTE = (
        "A model without scores (an error set: only which examples are wrong) has no agreement, Cohen's "
        "kappa or JS distance with any other; its error set is every evaluated example not marked correct, "
        "gold label or not."
    )

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """``<model>/accuracy``, ``<model>/n_errors``, ``<model>/n_examples`` over the rows that count
        (labelled rows; every row of outputs without scores).

        Raises:
            ValueError: outputs with scores and no labelled example.
        """
        correct, ids = correctness(outputs)
        wrong = ~correct
        return CharacteristicResult(
            metrics={
                f"{outputs.name}/accuracy": float(1.0 - wrong.mean()),
                f"{outputs.name}/n_errors": float(wrong.sum()),
                f"{outputs.name}/n_examples": float(ids.shape[0]),
            }
        )

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """Pair metrics on the shared examples (see the class notes) and per-example correctness. When
        either model carries no scores, ``agreement`` (and its interval), ``cohen_kappa`` and
        ``js_distance`` are absent and a note says why.

        Raises:
            ValueError: from :func:`trustequiv.outputs.align`, or no shared labelled example.
        """
        ref, cand = align(reference, candidate)
        pair = pair_name(ref.name, cand.name)
        correct_ref, correct_cand, ids = paired_correct(ref, cand)

        jac = jaccard(_error_ids(correct_ref, ids), _error_ids(correct_cand, ids))
        jac_boot = self._bootstrap(_jaccard_rows, ~correct_ref, ~correct_cand)
        fl = flips(correct_ref, correct_cand)
        metrics = {
            f"{pair}/error_jaccard": jac,
            f"{pair}/error_jaccard_ci_low": jac_boot.low,
            f"{pair}/error_jaccard_ci_high": jac_boot.high,
            f"{pair}/flip_rate": fl.flip_rate,
            f"{pair}/correct_to_wrong": float(fl.correct_to_wrong),
            f"{pair}/wrong_to_correct": float(fl.wrong_to_correct),
            f"{pair}/mcnemar_p": mcnemar_exact_p(correct_ref, correct_cand),
        }
        notes = self._notes()
        if not (ref.has_scores and cand.has_scores):
            notes.append(self.UNSCORED_NOTE)
        else:  # prediction agreement needs both models' scores
            pred_ref = ref.predictions.detach().cpu().numpy()
            pred_cand = cand.predictions.detach().cpu().numpy()
            agree_boot = self._bootstrap(_agreement_rows, pred_ref == pred_cand)
            metrics.update(
                {
                    f"{pair}/agreement": agreement_rate(pred_ref, pred_cand),
                    f"{pair}/agreement_ci_low": agree_boot.low,
                    f"{pair}/agreement_ci_high": agree_boot.high,
                    f"{pair}/cohen_kappa": cohen_kappa(pred_ref, pred_cand),
                    f"{pair}/js_distance": float(jensen_shannon_distance(ref.probs, cand.probs)),
                }
            )
        per_example = {
            f"errors_{pair}": {
                "example_id": ids,
                "reference_correct": correct_ref,
                "candidate_correct": correct_cand,
            }
        }
        return CharacteristicResult(metrics=metrics, per_example=per_example, notes=notes)

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """For the verdict: ``error_jaccard`` (higher = alike) and ``flip_rate`` (lower) on the labelled
        shared examples, and ``agreement`` (higher) on every shared example when both models carry scores;
        their estimates equal :meth:`compare`'s metrics of the same name.

        Raises:
            ValueError: from :func:`trustequiv.outputs.align`, or no shared labelled example.
        """
        ref, cand = align(reference, candidate)
        correct_ref, correct_cand, ids = paired_correct(ref, cand)
        ids = ids.astype(np.int64)
        stats = [
            PairStatistic("error_jaccard", "higher", ids, (~correct_ref, ~correct_cand), _jaccard_rows),
            PairStatistic("flip_rate", "lower", ids, (correct_ref, correct_cand), _flip_rows),
        ]
        if ref.has_scores and cand.has_scores:
            same = ref.predictions.detach().cpu().numpy() == cand.predictions.detach().cpu().numpy()
            all_ids = ref.example_ids.detach().cpu().numpy().astype(np.int64)
            stats.append(PairStatistic("agreement", "higher", all_ids, (same,), _agreement_rows))
        return stats

    def _bootstrap(self, statistic: Callable[..., np.ndarray], *arrays: np.ndarray) -> BootstrapResult:
        return paired_bootstrap(
            statistic,
            *arrays,
            n_resamples=self.n_bootstrap,
            confidence=self.confidence,
            seed=self.seed,
            vectorized=True,
        )

    def summarize(self, outputs: Sequence[ModelOutputs]) -> CharacteristicResult:
        """With >= 2 models, over every unordered pair (paper B's all-pairs comparison):

        - table ``error_jaccard_matrix`` (rows ``{"model": name, <other>: value, ...}``, diagonal 1) and an
          annotated heatmap of it;
        - metrics ``matrix/<a>_vs_<b>/error_jaccard`` with ``_ci_low`` / ``_ci_high`` (paired bootstrap, as
          in :meth:`compare`), ``a`` before ``b`` in the given model order;
        - table ``agreement_matrix`` when every model carries scores (else a note says why it is absent).

        Raises:
            ValueError: duplicate model names, or a pair without shared labelled examples.
        """
        result = CharacteristicResult()
        if len(outputs) < 2:
            return result
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique for the pairwise matrix, got {names}")
        k = len(names)
        scored = all(o.has_scores for o in outputs)
        jac, agr = np.eye(k), np.eye(k)
        index = {n: i for i, n in enumerate(names)}
        for a, b in all_pairs(outputs):
            ra, rb = align(a, b)
            ca, cb, ids = paired_correct(ra, rb)
            i, j = index[a.name], index[b.name]
            jac[i, j] = jac[j, i] = jaccard(_error_ids(ca, ids), _error_ids(cb, ids))
            boot = self._bootstrap(_jaccard_rows, ~ca, ~cb)
            scope = f"matrix/{pair_name(a.name, b.name)}"
            result.metrics[f"{scope}/error_jaccard"] = float(jac[i, j])
            result.metrics[f"{scope}/error_jaccard_ci_low"] = boot.low
            result.metrics[f"{scope}/error_jaccard_ci_high"] = boot.high
            if scored:
                pa, pb = ra.predictions.detach().cpu().numpy(), rb.predictions.detach().cpu().numpy()
                agr[i, j] = agr[j, i] = agreement_rate(pa, pb)
        tables = (
            (("error_jaccard_matrix", jac), ("agreement_matrix", agr))
            if scored
            else (("error_jaccard_matrix", jac),)
        )
        for table, mat in tables:
            result.tables[table] = [
                {"model": n, **{m: float(mat[i, j]) for j, m in enumerate(names)}}
                for i, n in enumerate(names)
            ]
        if not scored:
            lacking = ", ".join(o.name for o in outputs if not o.has_scores)
            result.notes.append(f"No scores for {lacking}: the agreement matrix is left out.")
        result.figures["error_jaccard_matrix"] = matrix_heatmap(jac, names, "Jaccard of error sets")
        return result
