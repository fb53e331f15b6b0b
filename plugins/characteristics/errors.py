"""Prediction-errors characteristic: do the two models get the same examples wrong?

Paper B (Rai, Pal, Awekar, arXiv 2407.13174) compares models by the Jaccard similarity of their error sets,
over all pairs. Beside it: label agreement and Jensen-Shannon distance ("label / probability loyalty",
Xu et al. 2021), flips (Dutta et al. 2024), Cohen's kappa and McNemar's exact test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from plugins.characteristics.calibration import labelled
from trustequiv.characteristic import Characteristic, all_pairs, pair_name
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
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align


def _jaccard_rows(wrong_a: np.ndarray, wrong_b: np.ndarray) -> np.ndarray:
    """Error-set Jaccard along the last axis of ``(R, N)`` error masks, counting repeated rows (resamples)
    with their multiplicity; 1.0 when neither model errs (as :func:`trustequiv.functional.jaccard`)."""
    union = np.sum(wrong_a | wrong_b, axis=-1)
    inter = np.sum(wrong_a & wrong_b, axis=-1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _agreement_rows(same: np.ndarray) -> np.ndarray:
    return np.mean(same, axis=-1)


def correctness(outputs: ModelOutputs) -> tuple[np.ndarray, np.ndarray]:
    """``(correct (n,) bool, example_ids (n,))`` over the labelled rows: ``outputs.correct`` when the task
    sets it (extractive QA: exact match), else ``argmax(logits) == label``.

    Raises:
        ValueError: no labelled example.
    """
    probs, labels, ids = labelled(outputs)
    if outputs.correct is None:
        return probs.argmax(axis=1) == labels, ids
    keep = outputs.labels.detach().cpu().numpy() >= 0
    return outputs.correct.detach().cpu().numpy().astype(bool)[keep], ids


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

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """``<model>/accuracy``, ``<model>/n_errors``, ``<model>/n_examples`` over the labelled rows.

        Raises:
            ValueError: no labelled example.
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
        """Pair metrics on the shared examples (see the class notes) and per-example correctness.

        Raises:
            ValueError: from :func:`trustequiv.outputs.align`, or no shared labelled example.
        """
        ref, cand = align(reference, candidate)
        pair = pair_name(ref.name, cand.name)
        pred_ref, pred_cand = ref.predictions.detach().cpu().numpy(), cand.predictions.detach().cpu().numpy()
        (correct_ref, ids), (correct_cand, _) = correctness(ref), correctness(cand)  # same rows after align

        jac = jaccard(_error_ids(correct_ref, ids), _error_ids(correct_cand, ids))
        jac_boot = self._bootstrap(_jaccard_rows, ~correct_ref, ~correct_cand)
        agree = agreement_rate(pred_ref, pred_cand)
        agree_boot = self._bootstrap(_agreement_rows, pred_ref == pred_cand)
        fl = flips(correct_ref, correct_cand)

        metrics = {
            f"{pair}/error_jaccard": jac,
            f"{pair}/error_jaccard_ci_low": jac_boot.low,
            f"{pair}/error_jaccard_ci_high": jac_boot.high,
            f"{pair}/agreement": agree,
            f"{pair}/agreement_ci_low": agree_boot.low,
            f"{pair}/agreement_ci_high": agree_boot.high,
            f"{pair}/flip_rate": fl.flip_rate,
            f"{pair}/correct_to_wrong": float(fl.correct_to_wrong),
            f"{pair}/wrong_to_correct": float(fl.wrong_to_correct),
            f"{pair}/cohen_kappa": cohen_kappa(pred_ref, pred_cand),
            f"{pair}/mcnemar_p": mcnemar_exact_p(correct_ref, correct_cand),
            f"{pair}/js_distance": float(jensen_shannon_distance(ref.probs, cand.probs)),
        }
        per_example = {
            f"errors_{pair}": {
                "example_id": ids,
                "reference_correct": correct_ref,
                "candidate_correct": correct_cand,
            }
        }
        return CharacteristicResult(metrics=metrics, per_example=per_example, notes=self._notes())

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
        """With >= 2 models: tables ``error_jaccard_matrix`` and ``agreement_matrix`` (rows
        ``{"model": name, <other>: value, ...}``, diagonal 1) and an annotated heatmap
        ``error_jaccard_matrix``.

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
        jac, agr = np.eye(k), np.eye(k)
        index = {n: i for i, n in enumerate(names)}
        for a, b in all_pairs(outputs):
            ra, cb = align(a, b)
            pa, pb = ra.predictions.detach().cpu().numpy(), cb.predictions.detach().cpu().numpy()
            (ca, ids), (cb_correct, _) = correctness(ra), correctness(cb)
            i, j = index[a.name], index[b.name]
            jac[i, j] = jac[j, i] = jaccard(_error_ids(ca, ids), _error_ids(cb_correct, ids))
            agr[i, j] = agr[j, i] = agreement_rate(pa, pb)
        for table, mat in (("error_jaccard_matrix", jac), ("agreement_matrix", agr)):
            result.tables[table] = [
                {"model": n, **{m: float(mat[i, j]) for j, m in enumerate(names)}}
                for i, n in enumerate(names)
            ]
        result.figures["error_jaccard_matrix"] = _heatmap(jac, names, "Jaccard of error sets")
        return result


def _heatmap(mat: np.ndarray, names: list[str], title: str) -> Figure:
    """Annotated heatmap of a symmetric [0, 1] matrix (pyplot-free Figure)."""
    k = len(names)
    side = 1.2 + 0.9 * k
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=names)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig
