"""Representation characteristic: do the two models embed the same examples alike?

Mutual kNN overlap over a list of K (Huh et al. 2024; paper B, Rai, Pal, Awekar, arXiv 2407.13174, compares
cosine neighbour sets over K) and linear CKA, biased and unbiased (Kornblith et al. 2019), each beside a
permutation null (one side's rows shuffled), on the pooled embeddings the pipeline caches per model
(``predict.pooling`` = cls | mean, ``predict.layer``), so no model is needed here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from trustequiv.characteristic import Characteristic, PairStatistic, all_pairs, pair_name
from trustequiv.functional.cka import linear_cka_null
from trustequiv.functional.knn import (
    FAISS_MIN_N,
    knn_indices,
    mutual_knn_null,
    neighbour_overlap,
    resolve_knn_backend,
)
from trustequiv.functional.representation import DEFAULT_KS, NullSummary
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align
from trustequiv.report.figures import matrix_heatmap

log = logging.getLogger(__name__)

#: K of the mutual kNN overlap the verdict judges (the headline ``knn_k10``).
VERDICT_K = 10


def _embeddings(out: ModelOutputs) -> torch.Tensor:
    if out.embeddings is None:
        raise ValueError(
            f"{out.name}: no embeddings in its outputs; the representation characteristic needs the pooled "
            "embeddings the pipeline caches (predict.pooling / predict.layer)"
        )
    return out.embeddings.detach().cpu().float()


def _fingerprint(out: ModelOutputs) -> str:
    """Content hash of the example ids and embeddings (memo key; the same name may carry other data)."""
    h = hashlib.sha1(out.example_ids.detach().cpu().numpy().tobytes())
    h.update(_embeddings(out).numpy().tobytes())
    return h.hexdigest()


class RepresentationCharacteristic(Characteristic):
    """Mutual kNN overlap over K and linear CKA of reference vs candidate embeddings, with permutation nulls.

    Args:
        ks: neighbourhood sizes for the kNN curve (paper B varies K); values >= N are dropped with a note.
        n_permutations: shuffles for each null (>= 1).
        seed: seed of the shuffles.
        cka: compute linear CKA (biased) and its unbiased-HSIC version.
        matrix_k: K of the all-pairs kNN matrix (must be in ``ks``; the nearest smaller one is used if not).
        block_size: torch kNN search block size (extra memory ~ 8 * block_size^2 bytes).
        knn_backend: exact kNN search: ``auto`` (faiss from ``faiss_min_n`` examples on when installed, else
            blocked torch), ``torch`` or ``faiss`` (needs ``pip install faiss-cpu``).
        faiss_min_n: example count from which ``auto`` uses faiss.
        faiss_gpu: faiss on a GPU: ``None`` = when faiss has GPU support and sees one, ``False`` = CPU.
    """

    name = "representation"
    headline_pair = ("knn_k10", "cka_linear")

    def __init__(
        self,
        ks: Sequence[int] = DEFAULT_KS,
        n_permutations: int = 100,
        seed: int = 42,
        cka: bool = True,
        matrix_k: int = 10,
        block_size: int = 4096,
        knn_backend: str = "auto",
        faiss_min_n: int = FAISS_MIN_N,
        faiss_gpu: bool | None = None,
    ) -> None:
        self.ks = sorted({int(k) for k in ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be integers >= 1, got {list(ks)}")
        if int(n_permutations) < 1:
            raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
        self.n_permutations = int(n_permutations)
        self.seed = int(seed)
        self.cka = bool(cka)
        self.matrix_k = int(matrix_k)
        self.search = {
            "block_size": int(block_size),
            "backend": str(knn_backend),
            "faiss_min_n": faiss_min_n,
            "faiss_gpu": faiss_gpu,
        }
        resolve_knn_backend(self.search["backend"], 0, self.search["faiss_min_n"])  # bad settings fail here
        self._knn: dict[tuple[str, str], torch.Tensor] = {}
        self._pairs: dict[tuple[str, str, str], dict[str, Any]] = {}

    # ------------------------------------------------------------------ helpers
    def _usable_ks(self, n: int) -> list[int]:
        ks = [k for k in self.ks if k <= n - 1]
        if not ks:
            raise ValueError(f"no K in {self.ks} fits N={n} examples (K must be <= N - 1)")
        return ks

    def _neighbours(self, out: ModelOutputs, kmax: int) -> torch.Tensor:
        """(N, kmax) neighbour indices of ``out``'s embeddings, memoised per model, examples and content."""
        key = (out.name, _fingerprint(out))
        found = self._knn.get(key)
        if found is None or found.shape[1] < kmax:
            found = knn_indices(_embeddings(out), kmax, **self.search)
            self._knn[key] = found
        return found[:, :kmax]

    def _pair_stats(self, reference: ModelOutputs, candidate: ModelOutputs) -> dict[str, Any]:
        ref, cand = align(reference, candidate)
        key = (ref.name, cand.name, _fingerprint(ref) + _fingerprint(cand))
        if key in self._pairs:
            return self._pairs[key]
        n = len(ref)
        ks = self._usable_ks(n)
        idx_a, idx_b = self._neighbours(ref, max(ks)), self._neighbours(cand, max(ks))
        stats: dict[str, Any] = {
            "n": n,
            "ks": ks,
            "knn": mutual_knn_null(idx_a, idx_b, ks, self.n_permutations, self.seed),
        }
        if self.cka:
            ea, eb = _embeddings(ref), _embeddings(cand)
            stats["cka"] = linear_cka_null(ea, eb, n_permutations=self.n_permutations, seed=self.seed)
            if n >= 4:
                stats["cka_debiased"] = linear_cka_null(
                    ea, eb, debiased=True, n_permutations=self.n_permutations, seed=self.seed
                )
        self._pairs[key] = stats
        return stats

    def _notes(self, dropped: list[int]) -> list[str]:
        notes = [
            "Mutual kNN overlap (Huh et al. 2024): cosine neighbours, the example itself excluded, score "
            "mean_i |N_ref(i) ∩ N_cand(i)| / K over the shared examples; chance level ≈ K / (N - 1). Linear "
            "CKA (Kornblith et al. 2019) on column-centred embeddings, biased and with the unbiased HSIC "
            "estimator (Song et al. 2012; use it for small N). Each is reported beside a permutation null "
            f"(candidate rows shuffled, {self.n_permutations} shuffles, seed {self.seed}): null mean, 95th "
            "percentile and one-sided p = (1 + #null >= observed) / (1 + shuffles). Embeddings are the "
            "pooled ones cached per model (predict.pooling, predict.layer).",
        ]
        if dropped:
            notes.append(f"K values {dropped} dropped: K must be at most N - 1.")
        return notes

    # ------------------------------------------------------------------ interface
    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """``<model>/embedding_dim`` and ``<model>/n_examples``.

        Raises:
            ValueError: the outputs carry no embeddings.
        """
        emb = _embeddings(outputs)
        return CharacteristicResult(
            metrics={
                f"{outputs.name}/embedding_dim": float(emb.shape[1]),
                f"{outputs.name}/n_examples": float(emb.shape[0]),
            }
        )

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """``<pair>/knn_k<K>`` (+ ``_null_mean``, ``_null_q95``, ``_p``, ``_chance``) for each K, and
        ``<pair>/cka_linear``, ``<pair>/cka_linear_debiased`` with the same null entries; table
        ``knn_curve_<pair>``.

        Raises:
            ValueError: no embeddings, no shared examples, no K below N.
        """
        stats = self._pair_stats(reference, candidate)
        pair = pair_name(reference.name, candidate.name)
        n = stats["n"]
        metrics: dict[str, float] = {f"{pair}/n_examples": float(n)}
        rows = []
        for k, s in stats["knn"].items():
            metrics.update(_null_metrics(f"{pair}/knn_k{k}", s))
            metrics[f"{pair}/knn_k{k}_chance"] = k / (n - 1)
            rows.append(
                {
                    "k": k,
                    "overlap": s.observed,
                    "null_mean": s.null_mean,
                    "null_q95": s.null_q95,
                    "chance": k / (n - 1),
                    "p_value": s.p_value,
                }
            )
        for label in ("cka", "cka_debiased"):
            if label in stats:
                metrics.update(_null_metrics(f"{pair}/{label.replace('cka', 'cka_linear')}", stats[label]))
        dropped = [k for k in self.ks if k not in stats["ks"]]
        return CharacteristicResult(
            metrics=metrics, tables={f"knn_curve_{pair}": rows}, notes=self._notes(dropped)
        )

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """``knn_k10`` and ``cka_linear`` (both alike = higher) on the shared examples, for the verdict.

        ``knn_k10``: each example's neighbourhood overlap ``|N_ref(i) ∩ N_cand(i)| / 10`` is computed once on
        all shared rows (the neighbour lists :meth:`compare` uses) and the statistic is the mean of the
        resampled rows' overlaps. The neighbourhoods are not recomputed per resample: a bootstrap resample
        repeats examples, so every copy would become its copies' nearest neighbour (cosine 1) and the
        overlap would measure the duplication, not the models; and it would cost a kNN search per resample.
        The interval thus reflects which examples are drawn, given the neighbourhood graph of all shared rows
        (when the verdict keeps only the ids it shares with other pairs, each kept row's overlap is still the
        one found among this pair's shared rows).

        ``cka_linear``: exact linear CKA of the resampled rows (:func:`resampled_linear_cka`, duplicates
        counted). Its only array holds each row's position in the pair's aligned embeddings, which the
        statistic reads from its closure, so the verdict's ``a[idx]`` never copies ``(R, n, D)`` features.

        A statistic is left out when it cannot be computed: no embeddings or shared example, no K = 10
        (``ks``, or N <= 10), ``cka`` off, or CKA undefined (a side with zero variance).
        """
        try:
            ref, cand = align(reference, candidate)
            ea, eb = _embeddings(ref), _embeddings(cand)
        except ValueError:
            return []
        n = len(ref)
        ids = ref.example_ids.detach().cpu().numpy().astype(np.int64)
        stats = []
        usable = [k for k in self.ks if k <= n - 1]
        if VERDICT_K in usable:
            kmax = max(usable)  # compare's neighbour lists (memoised), whose prefixes give every K
            overlap = neighbour_overlap(
                self._neighbours(ref, kmax)[:, :VERDICT_K], self._neighbours(cand, kmax)[:, :VERDICT_K]
            )
            stats.append(
                PairStatistic(
                    name=f"knn_k{VERDICT_K}",
                    alike="higher",
                    example_ids=ids,
                    arrays=(overlap / VERDICT_K,),
                    statistic=_row_mean,
                )
            )
        if self.cka and n >= 2:
            cka = PairStatistic(
                name="cka_linear",
                alike="higher",
                example_ids=ids,
                arrays=(np.arange(n, dtype=np.int64),),
                statistic=functools.partial(resampled_linear_cka, ea.numpy(), eb.numpy()),
            )
            if np.isfinite(cka.estimate()):
                stats.append(cka)
        return stats

    def summarize(self, outputs: Sequence[ModelOutputs]) -> CharacteristicResult:
        """Figure ``knn_curve`` (reference vs each candidate over K, with the null's 95th percentile and the
        chance line) and, with >= 2 models, all-pairs tables and heatmaps ``knn_matrix`` (at ``matrix_k``)
        and ``cka_matrix``."""
        result = CharacteristicResult()
        if len(outputs) < 2:
            return result
        reference = outputs[0]
        curves = {o.name: self._pair_stats(reference, o) for o in outputs[1:]}
        result.figures["knn_curve"] = _curve_figure(reference.name, curves)
        names = [o.name for o in outputs]
        k = len(names)
        knn_mat, cka_mat = np.eye(k), np.eye(k)
        used_k = None
        for a, b in all_pairs(outputs):
            stats = self._pair_stats(a, b)
            mk = max([x for x in stats["ks"] if x <= self.matrix_k] or stats["ks"][:1])
            used_k = mk
            i, j = names.index(a.name), names.index(b.name)
            knn_mat[i, j] = knn_mat[j, i] = stats["knn"][mk].observed
            if "cka" in stats:
                cka_mat[i, j] = cka_mat[j, i] = stats["cka"].observed
        tables = {"knn_matrix": knn_mat, **({"cka_matrix": cka_mat} if self.cka else {})}
        for table, mat in tables.items():
            result.tables[table] = [
                {"model": n, **{m: float(mat[i, j]) for j, m in enumerate(names)}}
                for i, n in enumerate(names)
            ]
        result.figures["knn_matrix"] = matrix_heatmap(knn_mat, names, f"Mutual kNN overlap, K={used_k}")
        if self.cka:
            result.figures["cka_matrix"] = matrix_heatmap(cka_mat, names, "Linear CKA")
        return result


#: Gram elements formed at once by :func:`resampled_linear_cka` (five ``(N, block)`` float64 arrays, 64 MB).
_GRAM_ELEMENTS = 1 << 23
#: HSIC below this share of its uncentred term counts as zero variance (rounding of a constant side).
_ZERO_VARIANCE = 1e-12


def _row_mean(values: np.ndarray) -> np.ndarray:
    """``(R, n)`` resampled per-example values -> ``(R,)`` means."""
    return values.mean(axis=-1)


def resampled_linear_cka(
    features_a: np.ndarray, features_b: np.ndarray, rows: np.ndarray, block_size: int = 512
) -> np.ndarray:
    """Linear CKA (biased, Kornblith et al. 2019) of ``features_a[rows[r]]`` vs ``features_b[rows[r]]`` for
    every resample ``r``, without forming the ``(R, m, D)`` resampled features or an ``N x N`` Gram matrix.

    A resample that repeats rows is a weighted sample: with ``w`` the count of each row in ``rows[r]`` and
    ``m = len(rows[r])``, the resample's column-centred cross-covariance is ``Σ_i w_i (x_i - μ)(y_i - ν)^T``
    (μ, ν the resample's means), and its squared Frobenius norm expands in the Gram matrices
    ``K = X X^T``, ``L = Y Y^T``::

        HSIC_w(K, L) = wᵀ(K∘L)w - (2/m) Σ_i w_i (Kw)_i (Lw)_i + (wᵀKw)(wᵀLw) / m²

    and ``CKA = HSIC_w(K, L) / sqrt(HSIC_w(K, K) HSIC_w(L, L))``, equal to
    :func:`trustequiv.functional.cka.linear_cka` of the resampled rows. The features are first
    centred on all N rows (CKA is translation invariant; this keeps the expansion's terms small). The Gram
    matrices are formed ``block_size`` columns at a time.

    Cost: time ``O(N² (D_a + D_b) + R N²)`` (the five ``(R, N) @ (N, block)`` products dominate), extra
    memory ``O(R N)`` float64 plus about 64 MB of Gram columns (``block_size`` is lowered to keep them there).
    Each call forms the Gram columns again, so pass many resamples per call (``benchmarks/resampled_cka.py``
    measures it against CKA of each materialised resample).

    Args:
        features_a, features_b: ``(N, D_a)``, ``(N, D_b)`` features of the same N rows.
        rows: ``(R, m)`` int row indices of each resample (``m >= 2``).
        block_size: Gram columns formed at once.

    Returns:
        ``(R,)`` float64 in [0, 1]; NaN for a resample on which one side has zero variance.

    Raises:
        ValueError: row counts differ, ``rows`` not 2-D or out of range.
    """
    x = np.asarray(features_a, dtype=np.float64)
    y = np.asarray(features_b, dtype=np.float64)
    idx = np.asarray(rows)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features must be (N, D) with the same N, got {x.shape} and {y.shape}")
    n = x.shape[0]
    if idx.ndim != 2 or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"rows must be a non-empty (R, m) array of indices in [0, {n}), got {idx.shape}")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    r, m = idx.shape
    w = np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n).astype(float)
    q_kl, q_kk, q_ll, s_uv, s_uu, s_vv, s_u, s_v = np.zeros((8, r))
    block_size = max(16, min(int(block_size), _GRAM_ELEMENTS // (5 * n)))
    for start in range(0, n, block_size):
        cols = slice(start, start + block_size)
        k, l_ = x @ x[cols].T, y @ y[cols].T  # (N, b) Gram columns
        wb = w[:, cols]
        u, v, kl, kk, ll = np.split(w @ np.hstack([k, l_, k * l_, k * k, l_ * l_]), 5, axis=1)
        q_kl += (kl * wb).sum(axis=1)
        q_kk += (kk * wb).sum(axis=1)
        q_ll += (ll * wb).sum(axis=1)
        s_uv += (wb * u * v).sum(axis=1)
        s_uu += (wb * u * u).sum(axis=1)
        s_vv += (wb * v * v).sum(axis=1)
        s_u += (wb * u).sum(axis=1)
        s_v += (wb * v).sum(axis=1)
    hsic_kl = q_kl - 2.0 / m * s_uv + s_u * s_v / m**2
    hsic_kk = q_kk - 2.0 / m * s_uu + s_u**2 / m**2
    hsic_ll = q_ll - 2.0 / m * s_vv + s_v**2 / m**2
    # a side with no variance in the resample: its HSIC is 0 up to rounding of the uncentred terms
    varies = (hsic_kk > _ZERO_VARIANCE * q_kk) & (hsic_ll > _ZERO_VARIANCE * q_ll)
    norm = np.sqrt(np.where(varies, hsic_kk * hsic_ll, 1.0))
    return np.where(varies, hsic_kl / norm, np.nan)


def _null_metrics(prefix: str, s: NullSummary) -> dict[str, float]:
    return {
        prefix: s.observed,
        f"{prefix}_null_mean": s.null_mean,
        f"{prefix}_null_q95": s.null_q95,
        f"{prefix}_p": s.p_value,
    }


def _curve_figure(reference: str, curves: dict[str, dict[str, Any]]) -> Figure:
    """Mutual kNN overlap over K (log axis) for reference vs each candidate; dashed = null 95th percentile,
    dotted = chance K / (N - 1)."""
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for i, (name, stats) in enumerate(curves.items()):
        color = f"C{i}"
        ks = list(stats["knn"])
        ax.plot(ks, [stats["knn"][k].observed for k in ks], "o-", color=color, label=f"vs {name}")
        null = [stats["knn"][k].null_q95 for k in ks]
        ax.plot(ks, null, "--", color=color, alpha=0.6, label=f"null q95 ({name})")
    any_stats = next(iter(curves.values()))
    ks, n = list(any_stats["knn"]), any_stats["n"]
    ax.plot(ks, [k / (n - 1) for k in ks], ":", color="grey", label="chance K/(N-1)")
    ax.set_xscale("log")
    ax.set_xlabel("K (neighbours)")
    ax.set_ylabel("mutual kNN overlap")
    ax.set_ylim(0, 1)
    ax.set_title(f"Mutual kNN overlap with {reference} (N={n})")
    ax.legend(fontsize=7)
    return fig
