"""Data-distribution characteristic: do the two models flag the same inputs as out-of-distribution?

Per model and OOD set: an OOD score (maximum softmax probability, Hendrycks & Gimpel 2017, by default; the
negative free energy of Liu et al. 2020 as an option) on the in-distribution (ID) split and the OOD split,
AUROC, AUPR-In, AUPR-Out and FPR at 95% TPR. Per pair (paper B, Rai, Pal, Awekar, arXiv 2407.13174, compares
the models' OOD decisions, SQuAD2 vs NewsQA): each model flags inputs below its own threshold set on ID data
(95% of ID inputs kept), and the flags are compared by agreement, Jaccard of the flagged sets (beside the
Jaccard two independent flaggers would reach), Cohen's kappa, and the scores by Spearman correlation.

The ID split is the evaluated split; the OOD sets come from the pipeline in ``outputs.ood``
(``task.ood`` or ``ood=[...]``), each the same model's cached outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from trustequiv.characteristic import Characteristic, PairStatistic, pair_name
from trustequiv.functional.ood import (
    SCORES,
    decision_agreement,
    detection_metrics,
    id_threshold,
    ood_score,
)
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align

log = logging.getLogger(__name__)


def set_label(ood_name: str) -> str:
    """Metric-safe label of an OOD set: ``"snli/test"`` -> ``"snli_test"``."""
    return ood_name.replace("/", "_")


def _ood_sets(out: ModelOutputs) -> Mapping[str, ModelOutputs]:
    return out.ood


@dataclass(frozen=True)
class _Pooled:
    """Two models' scores and OOD flags on the pooled ID + OOD inputs of one OOD set (ID rows first)."""

    ids: np.ndarray  # (n,) example ids as in each split (an ID and an OOD id may be equal)
    is_ood: np.ndarray  # (n,) bool
    scores_ref: np.ndarray
    scores_cand: np.ndarray
    flags_ref: np.ndarray  # (n,) bool, True = flagged OOD
    flags_cand: np.ndarray


class DistributionCharacteristic(Characteristic):
    """OOD detection of each model and the agreement of two models' OOD decisions.

    Args:
        score: ``"msp"`` (default, Hendrycks & Gimpel 2017) or ``"energy"`` (Liu et al. 2020).
        temperature: energy temperature (> 0).
        tpr: share of ID inputs each model's threshold keeps (default 0.95, the FPR@95TPR convention).
    """

    name = "distribution"
    needs_ood = True

    def __init__(self, score: str = "msp", temperature: float = 1.0, tpr: float = 0.95) -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 < tpr <= 1.0:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        self.score = score
        self.temperature = float(temperature)
        self.tpr = float(tpr)

    def _scores(self, out: ModelOutputs) -> np.ndarray:
        return ood_score(out.logits, self.score, self.temperature)

    def _notes(self) -> list[str]:
        score = "maximum softmax probability" if self.score == "msp" else "negative free energy"
        tpr = f"{self.tpr:.0%}"
        return [
            f"OOD score: {score} (higher = in-distribution). In-distribution (ID) = the evaluated split, "
            "positive class of AUROC / AUPR-In; AUPR-Out takes OOD as positive. Each model flags an input as "
            f"OOD when its score is below its own threshold that keeps {tpr} of its ID inputs "
            f"(FPR@{tpr}TPR = share of OOD inputs not flagged). Pair metrics compare the two models' flags "
            "on the ID and OOD inputs together (prefix ood_only_: the OOD inputs alone); "
            "flag_jaccard_independent is the Jaccard two independent flaggers with the same flag rates "
            "would reach.",
        ]

    def _missing(self, out: ModelOutputs) -> CharacteristicResult:
        msg = (
            f"{out.name}: no out-of-distribution outputs; the task names no OOD set (task.ood) and none was "
            "given with ood=[...]"
        )
        log.warning(msg)
        return CharacteristicResult(notes=[msg])

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """``<model>/<set>/{auroc, aupr_in, aupr_out, fpr_at_tpr, threshold, flagged_id, flagged_ood,
        n_id, n_ood}`` for each OOD set (``<set>`` = ``"<task>_<split>"``)."""
        sets = _ood_sets(outputs)
        if not sets:
            return self._missing(outputs)
        s_in = self._scores(outputs)
        metrics: dict[str, float] = {}
        for name, ood in sets.items():
            m = detection_metrics(s_in, self._scores(ood), self.tpr)
            prefix = f"{outputs.name}/{set_label(name)}"
            metrics.update({f"{prefix}/{k}": float(v) for k, v in vars(m).items() if k != "tpr"})
            metrics[f"{prefix}/n_id"] = float(len(outputs))
            metrics[f"{prefix}/n_ood"] = float(len(ood))
        return CharacteristicResult(metrics=metrics, notes=self._notes())

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """For each OOD set both models were scored on: ``<pair>/<set>/{flag_agreement, flag_jaccard,
        flag_jaccard_independent, flag_kappa, score_spearman}`` on ID + OOD inputs, the same with prefix
        ``ood_only_`` on the OOD inputs, ``auroc_diff`` and ``fpr_at_tpr_diff`` (candidate − reference);
        per-example scores and flags; a scatter figure per set.

        Raises:
            ValueError: from :func:`trustequiv.outputs.align` (ID or OOD sets of the two models differ).
        """
        ref_sets, cand_sets = _ood_sets(reference), _ood_sets(candidate)
        if not ref_sets or not cand_sets:
            return self._missing(reference if not ref_sets else candidate)
        ref_in, cand_in = align(reference, candidate)
        pair = pair_name(reference.name, candidate.name)
        s_ref_in, s_cand_in = self._scores(ref_in), self._scores(cand_in)
        t_ref, t_cand = id_threshold(s_ref_in, self.tpr), id_threshold(s_cand_in, self.tpr)
        result = CharacteristicResult(notes=self._notes())
        for name in [n for n in ref_sets if n in cand_sets]:
            ref_out, cand_out = align(ref_sets[name], cand_sets[name])
            p = self._pooled(ref_in, cand_in, ref_out, cand_out)
            sa, sb, fa, fb, is_ood = p.scores_ref, p.scores_cand, p.flags_ref, p.flags_cand, p.is_ood
            both = decision_agreement(fa, fb, sa, sb)
            only = decision_agreement(fa[is_ood], fb[is_ood], sa[is_ood], sb[is_ood])
            prefix = f"{pair}/{set_label(name)}"
            for tag, d in (("", both), ("ood_only_", only)):
                result.metrics.update(
                    {
                        f"{prefix}/{tag}flag_agreement": d.agreement,
                        f"{prefix}/{tag}flag_jaccard": d.flag_jaccard,
                        f"{prefix}/{tag}flag_jaccard_independent": d.flag_jaccard_independent,
                        f"{prefix}/{tag}flag_kappa": d.cohen_kappa,
                        f"{prefix}/{tag}score_spearman": d.score_spearman,
                    }
                )
            m_ref = detection_metrics(s_ref_in, sa[is_ood], self.tpr)
            m_cand = detection_metrics(s_cand_in, sb[is_ood], self.tpr)
            result.metrics[f"{prefix}/auroc_diff"] = m_cand.auroc - m_ref.auroc
            result.metrics[f"{prefix}/fpr_at_tpr_diff"] = m_cand.fpr_at_tpr - m_ref.fpr_at_tpr
            result.metrics[f"{prefix}/n_id"] = float(len(s_ref_in))
            result.metrics[f"{prefix}/n_ood"] = float(is_ood.sum())
            result.per_example[f"distribution_{prefix.replace('/', '_')}"] = {
                "example_id": p.ids,
                "is_ood": is_ood,
                "reference_score": sa,
                "candidate_score": sb,
                "reference_flag": fa,
                "candidate_flag": fb,
            }
            result.figures[f"scatter_{prefix.replace('/', '_')}"] = _scatter(
                sa, sb, is_ood, t_ref, t_cand, reference.name, candidate.name, name, self.score
            )
        return result

    def _pooled(
        self, ref_in: ModelOutputs, cand_in: ModelOutputs, ref_out: ModelOutputs, cand_out: ModelOutputs
    ) -> _Pooled:
        """Scores and flags of two models on aligned ID and aligned OOD outputs; each model's threshold keeps
        :attr:`tpr` of its own ID scores."""
        s_ref_in, s_cand_in = self._scores(ref_in), self._scores(cand_in)
        t_ref, t_cand = id_threshold(s_ref_in, self.tpr), id_threshold(s_cand_in, self.tpr)
        sa = np.r_[s_ref_in, self._scores(ref_out)]
        sb = np.r_[s_cand_in, self._scores(cand_out)]
        return _Pooled(
            ids=np.r_[ref_in.example_ids.numpy(), ref_out.example_ids.numpy()].astype(np.int64),
            is_ood=np.r_[np.zeros(len(ref_in), bool), np.ones(len(ref_out), bool)],
            scores_ref=sa,
            scores_cand=sb,
            flags_ref=sa < t_ref,
            flags_cand=sb < t_cand,
        )

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """``<set>/flag_kappa`` per OOD set both models were scored on (alike = higher), for the verdict.

        Rows are the pooled in-distribution and OOD inputs on which :meth:`compare` compares the two models'
        flags, and the statistic is Cohen's kappa of the resampled rows' flags. The thresholds stay the
        ones set on all ID rows (the flags are resampled, not re-derived). An ID and an OOD input may carry
        the same id (each split numbers its own rows), so ``example_ids`` are ``2 * id`` for ID rows and
        ``2 * id + 1`` for OOD rows: unique, and the same for every pair evaluated on the same splits. A set
        is left out when the outputs carry no OOD sets, the splits do not align, or an id is too large for
        that encoding (``|id| >= 2**62``).
        """
        ref_sets, cand_sets = _ood_sets(reference), _ood_sets(candidate)
        stats = []
        for name in [n for n in ref_sets if n in cand_sets]:
            try:
                ref_in, cand_in = align(reference, candidate)
                ref_out, cand_out = align(ref_sets[name], cand_sets[name])
            except ValueError:
                continue
            p = self._pooled(ref_in, cand_in, ref_out, cand_out)
            if p.ids.size and np.abs(p.ids).max() >= 2**62:
                log.warning("%s: example ids too large to tell ID from OOD rows; no verdict statistic", name)
                continue
            stats.append(
                PairStatistic(
                    name=f"{set_label(name)}/flag_kappa",
                    alike="higher",
                    example_ids=2 * p.ids + p.is_ood,
                    arrays=(p.flags_ref, p.flags_cand),
                    statistic=_flag_kappa,
                )
            )
        return stats

    def summarize(self, outputs: Sequence[ModelOutputs]) -> CharacteristicResult:
        """Figure ``roc_<set>`` per OOD set: every model's ROC curve (ID positive)."""
        result = CharacteristicResult()
        if not outputs:
            return result
        names = [n for n in _ood_sets(outputs[0]) if all(n in _ood_sets(o) for o in outputs)]
        for name in names:
            curves = {}
            for o in outputs:
                s_in, s_out = self._scores(o), self._scores(_ood_sets(o)[name])
                curves[o.name] = (s_in, s_out)
            result.figures[f"roc_{set_label(name)}"] = _roc_figure(curves, name, self.tpr)
        return result


def _flag_kappa(flags_a: np.ndarray, flags_b: np.ndarray) -> np.ndarray:
    """Cohen's kappa of two ``(R, n)`` boolean flag arrays per resample, ``(R,)``; 1.0 where both flag one
    and the same constant, as :func:`trustequiv.functional.agreement.cohen_kappa`."""
    pa, pb = flags_a.mean(axis=-1), flags_b.mean(axis=-1)
    p_o = (flags_a == flags_b).mean(axis=-1)
    p_e = pa * pb + (1.0 - pa) * (1.0 - pb)
    degenerate = np.isclose(p_e, 1.0, rtol=0.0, atol=1e-15)
    return np.where(degenerate, 1.0, (p_o - p_e) / np.where(degenerate, 1.0, 1.0 - p_e))


def _roc(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold t (kept = score >= t), ID positive, highest t first."""
    thresholds = np.unique(np.r_[s_in, s_out])[::-1]
    tpr = 1.0 - np.searchsorted(np.sort(s_in), thresholds, side="left") / s_in.size
    fpr = 1.0 - np.searchsorted(np.sort(s_out), thresholds, side="left") / s_out.size
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def _roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], ood_name: str, tpr: float) -> Figure:
    fig = Figure(figsize=(5.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, (s_in, s_out) in curves.items():
        fpr_curve, tpr_curve = _roc(s_in, s_out)
        ax.plot(fpr_curve, tpr_curve, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.axhline(tpr, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate (OOD kept)")
    ax.set_ylabel("true-positive rate (ID kept)")
    ax.set_title(f"ROC, ID vs {ood_name}")
    ax.legend(fontsize=8)
    return fig


def _scatter(
    sa: np.ndarray,
    sb: np.ndarray,
    is_ood: np.ndarray,
    t_ref: float,
    t_cand: float,
    ref: str,
    cand: str,
    ood_name: str,
    score: str,
) -> Figure:
    fig = Figure(figsize=(5.0, 4.5), layout="constrained")
    ax = fig.subplots()
    kw: dict[str, Any] = {"s": 6, "alpha": 0.5, "linewidths": 0}
    ax.scatter(sa[~is_ood], sb[~is_ood], label="in-distribution", **kw)
    ax.scatter(sa[is_ood], sb[is_ood], label=ood_name, **kw)
    ax.axvline(t_ref, color="k", lw=0.8, ls="--")
    ax.axhline(t_cand, color="k", lw=0.8, ls="--")
    ax.set_xlabel(f"{ref} {score}")
    ax.set_ylabel(f"{cand} {score}")
    ax.set_title("OOD scores; dashed = each model's threshold")
    ax.legend(fontsize=8, markerscale=2)
    return fig
