"""Nearest neighbours by cosine similarity and the mutual kNN overlap of two models' representations.

- Mutual kNN (Huh et al. 2024, "The Platonic Representation Hypothesis", ``platonic-rep`` metrics.py
  ``mutual_knn``): L2-normalise each model's features, find every example's ``k`` nearest neighbours by inner
  product (cosine) with the example itself excluded, and score ``mean_i |N_A(i) ∩ N_B(i)| / k``. Paper B
  (Rai, Pal, Awekar, arXiv 2407.13174) compares neighbour sets over several ``k``.
- Permutation null: shuffle the rows of one side (:func:`permute_neighbours`, no new search). Expected
  mutual kNN under the null is about ``k / (N - 1)``.

The exact kNN search never forms the N x N similarity matrix: below ``faiss_min_n`` rows (or without the
optional faiss) it is blocked over rows and columns in torch (running top-k merge, each symmetric block once,
memory ``O(block_size^2 + N * k)``); from there on it is faiss's exhaustive inner-product search in query
blocks (``faiss.knn``; on a GPU build with a GPU, ``GpuIndexFlatIP``), about 1.8x faster at N = 10^5. Features
may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustequiv.functional.representation import (
    DEFAULT_KS,
    NullSummary,
    as_features,
    check_ks,
    check_permutations,
    feature_pair,
    null_summary,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# kNN


def _merge_top(vals: Tensor, idxs: Tensor, sim: Tensor, col0: int, k: int) -> tuple[Tensor, Tensor]:
    """Merge a ``(R, C)`` similarity block whose columns start at ``col0`` into running ``(R, k)`` tops."""
    top = torch.topk(sim, min(k, sim.shape[1]), dim=1, largest=True, sorted=False)
    cand_v = torch.cat([vals, top.values], dim=1)  # (R, <= 2k)
    cand_i = torch.cat([idxs, top.indices + col0], dim=1)
    best = torch.topk(cand_v, k, dim=1, largest=True, sorted=True)
    return best.values, torch.gather(cand_i, 1, best.indices)


def _check_knn_args(n: int, k: int, exclude_self: bool, block_size: int) -> tuple[int, int]:
    if exclude_self:
        check_ks(k, n)
    elif isinstance(k, bool) or int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}], got {k!r}")
    if isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    return int(k), int(block_size)


def _knn_torch(x: Tensor, k: int, block_size: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
    """Blocked symmetric search on L2-normalised ``x``; see :func:`knn_search`."""
    n = x.shape[0]
    vals = torch.full((n, k), -torch.inf)
    idxs = torch.zeros((n, k), dtype=torch.long)
    starts = list(range(0, n, block_size))
    with torch.inference_mode():
        for bi, r0 in enumerate(starts):
            r1 = min(r0 + block_size, n)
            for c0 in starts[bi:]:
                c1 = min(c0 + block_size, n)
                sim = x[r0:r1] @ x[c0:c1].T  # (R, C)
                if c0 == r0 and exclude_self:
                    sim.fill_diagonal_(-torch.inf)
                vals[r0:r1], idxs[r0:r1] = _merge_top(vals[r0:r1], idxs[r0:r1], sim, c0, k)
                if c0 != r0:
                    sim_t = sim.T.contiguous()
                    vals[c0:c1], idxs[c0:c1] = _merge_top(vals[c0:c1], idxs[c0:c1], sim_t, r0, k)
    return vals, idxs


# faiss is optional: exact inner-product search through its BLAS + heap kernels runs at 1.1x the N^2 D GEMM
# bound at N = 10^5, D = 384, k = 100, where the blocked torch search (torch.topk merges) takes 2.3x it
# (benchmarks/knn_overlap.py). Its heap costs more relative to the products at small N (1.7x at 10^4).

#: search backends; ``auto`` = faiss from ``faiss_min_n`` rows on when installed, else blocked torch.
KNN_BACKENDS: tuple[str, ...] = ("auto", "torch", "faiss")
#: default row count from which ``auto`` uses faiss. The two break even near N = 3k (D = 384, k = 100, one
#: thread) and differ by about a second below 10k, where torch keeps results identical to earlier runs.
FAISS_MIN_N = 10_000
#: faiss GPU k-selection limit (``GPU_MAX_SELECTION_K``: 1024 or 2048 by build); above it, the CPU.
_FAISS_GPU_MAX_K = 1024
_FAISS_MISSING = "faiss is not installed: pip install faiss-cpu (or faiss-gpu-cu12 on a CUDA machine)"
_warned_no_faiss = False


def _import_faiss() -> Any:
    """The faiss module, or None when it is not installed (looked up on each call: cheap, and patchable)."""
    try:
        # optional dependency (the [knn] extra): imported when used
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_available() -> bool:
    """Whether the optional faiss backend can be used."""
    return _import_faiss() is not None


def resolve_knn_backend(backend: str, n: int, faiss_min_n: int = FAISS_MIN_N) -> str:
    """The backend that :func:`knn_search` uses for ``n`` rows: ``"torch"`` or ``"faiss"``.

    ``auto`` picks faiss for ``n >= faiss_min_n`` when it is installed; when it is not, it picks torch and
    logs one warning per process.

    Raises:
        ValueError: unknown backend, ``faiss_min_n`` not an integer >= 0.
        ImportError: ``backend="faiss"`` without faiss installed (one line naming ``pip install faiss-cpu``).
    """
    global _warned_no_faiss
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn backend must be one of {KNN_BACKENDS}, got {backend!r}")
    if isinstance(faiss_min_n, bool) or int(faiss_min_n) != faiss_min_n or faiss_min_n < 0:
        raise ValueError(f"faiss_min_n must be an integer >= 0, got {faiss_min_n!r}")
    if backend == "torch" or (backend == "auto" and n < faiss_min_n):
        return "torch"
    if faiss_available():
        return "faiss"
    if backend == "faiss":
        raise ImportError(f"knn_backend='faiss': {_FAISS_MISSING}")
    if not _warned_no_faiss:
        _warned_no_faiss = True
        log.warning(
            "kNN of %d rows (>= faiss_min_n=%d) falls back to the blocked torch search, ~1.8x slower: %s",
            n,
            faiss_min_n,
            _FAISS_MISSING,
        )
    return "torch"


@functools.cache
def _faiss_gpu_resources() -> Any:
    """One ``StandardGpuResources`` per process (it reserves GPU scratch memory; creating it is slow)."""
    return _import_faiss().StandardGpuResources()


def _use_faiss_gpu(faiss: Any, k: int, gpu: bool | None) -> bool:
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu and not has_gpu:
        raise ValueError("faiss_gpu=True but this faiss has no GPU support or sees no GPU")
    if gpu is False or not has_gpu:
        return False
    if k > _FAISS_GPU_MAX_K:
        log.info(
            "k=%d is above faiss's GPU k-selection limit (%d): searching on the CPU", k, _FAISS_GPU_MAX_K
        )
        return False
    return True


def _knn_faiss(
    x: Tensor, k: int, exclude_self: bool, query_block: int, gpu: bool | None
) -> tuple[Tensor, Tensor]:
    """Exact inner-product search of every row of L2-normalised ``x`` against all rows, in query blocks, with
    faiss (flat, float32); see :func:`knn_search`.

    The self match is removed by searching ``k + 1`` and dropping the row's own index, or, when ties at the
    top push it out (duplicate rows), the last of the ``k + 1``: the same set as top-k with the diagonal at
    -inf, up to ties.
    """
    faiss = _import_faiss()
    xb = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    n, d = xb.shape
    kk = k + 1 if exclude_self else k
    vals = np.empty((n, k), dtype=np.float32)
    idxs = np.empty((n, k), dtype=np.int64)
    if _use_faiss_gpu(faiss, kk, gpu):
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False  # exact float32 products
        index = faiss.GpuIndexFlatIP(_faiss_gpu_resources(), d, cfg)
        index.add(xb)
        search = index.search
    else:
        index = None

        def search(q: np.ndarray, kq: int) -> tuple[np.ndarray, np.ndarray]:
            # faiss.knn searches xb in place (an IndexFlatIP would copy its N x D floats)
            return faiss.knn(q, xb, kq, metric=faiss.METRIC_INNER_PRODUCT)

    # faiss threads (its own OpenMP runtime and BLAS) follow torch's setting for the duration of the search
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    t0 = last = time.monotonic()
    try:
        for r0 in range(0, n, query_block):
            r1 = min(r0 + query_block, n)
            dist, lab = search(xb[r0:r1], kk)
            if exclude_self:
                drop = lab == np.arange(r0, r1)[:, None]
                drop[~drop.any(axis=1), -1] = True  # self not among the k + 1: ties at the top
                keep = ~drop  # exactly k per row (faiss returns no repeated ids)
                dist, lab = dist[keep].reshape(r1 - r0, k), lab[keep].reshape(r1 - r0, k)
            vals[r0:r1], idxs[r0:r1] = dist, lab
            now = time.monotonic()
            if now - last > 60 and r1 < n:
                last = now
                log.info(
                    "faiss kNN: %d / %d rows in %.0f s, ~%.0f s to go",
                    r1,
                    n,
                    now - t0,
                    (now - t0) * (n - r1) / r1,
                )
    finally:
        faiss.omp_set_num_threads(threads)
        del index
    return torch.from_numpy(vals), torch.from_numpy(idxs)


def knn_search(
    features: Any,
    k: int,
    *,
    backend: str = "auto",
    faiss_min_n: int = FAISS_MIN_N,
    block_size: int = 4096,
    query_block: int = 16384,
    faiss_gpu: bool | None = None,
    exclude_self: bool = True,
) -> tuple[Tensor, Tensor]:
    """Every row's ``k`` nearest neighbours by cosine similarity, most similar first, with the similarities.

    Rows are L2-normalised (zero rows stay zero: similarity 0 to everything) and compared by float32 inner
    product, exactly (no approximate index), through one of two backends with the same result up to ties
    and float rounding (products of other block shapes differ by a few ulps, which may swap near-equal
    neighbours):

    - ``torch``: ``block_size`` square blocks. The similarity matrix is symmetric, so each block pair
      (i <= j) is computed once and merged into the running top-k of both row blocks (half the multiply-adds
      of a full scan, but ``torch.topk`` merges cost about as much again). Peak extra memory about
      ``8 * block_size^2`` bytes (a block and its transpose) plus the ``(N, k)`` results.
    - ``faiss`` (optional, ``pip install faiss-cpu``): ``faiss.knn`` exhaustive inner-product search (BLAS
      products in 4096 x 1024 tiles, a heap or reservoir per query) over ``query_block`` query rows at a
      time, all N rows scanned (no symmetry), self match removed from ``k + 1`` results. Extra memory: the
      normalised float32 copy (``4 N D`` bytes), the ``(N, k)`` results and ``O(query_block * k)``; the N x N
      matrix is never formed. On a GPU build of faiss with a GPU visible (``faiss.StandardGpuResources``)
      the same search runs on the GPU (``faiss.GpuIndexFlatIP``, float32) unless ``faiss_gpu=False``.
      Threads: ``torch.get_num_threads()``.

    The result is ``O(N k)``: at N = 1M, k = 100 the int64 indices and float32 values take 1.2 GB.

    Args:
        features: ``(N, D)`` float embeddings (numpy or torch; converted to float32 on the CPU).
        k: neighbours per row, ``1 <= k <= N - 1`` (``<= N`` if ``exclude_self`` is false).
        backend: ``auto`` (faiss when installed and ``N >= faiss_min_n``, else torch), ``torch`` or ``faiss``.
        faiss_min_n: row count from which ``auto`` uses faiss.
        block_size: torch backend, rows and columns per block (>= 1).
        query_block: faiss backend, query rows per search call (>= 1).
        faiss_gpu: faiss backend, ``None`` = GPU when available, ``False`` = CPU, ``True`` = GPU or error.
        exclude_self: drop the example itself (Huh et al.: its similarity is set to -inf before top-k).

    Returns:
        ``(values, indices)``: ``(N, k)`` float32 cosine similarities, descending, and ``(N, k)`` int64 row
        indices. Ties are broken by ``torch.topk`` or faiss's heap (unspecified order).

    Raises:
        ValueError: bad shape, NaN/inf, ``k`` out of range, bad block sizes, unknown backend.
        ImportError: ``backend="faiss"`` without faiss installed.
    """
    x = as_features(features, "features")
    n = x.shape[0]
    k, block_size = _check_knn_args(n, k, exclude_self, block_size)
    if isinstance(query_block, bool) or int(query_block) != query_block or query_block < 1:
        raise ValueError(f"query_block must be an integer >= 1, got {query_block!r}")
    chosen = resolve_knn_backend(backend, n, faiss_min_n)
    x = torch.nn.functional.normalize(x, dim=1)
    t0 = time.perf_counter()
    if chosen == "faiss":
        out = _knn_faiss(x, k, exclude_self, int(query_block), faiss_gpu)
    else:
        out = _knn_torch(x, k, block_size, exclude_self)
    log.debug("kNN: N=%d, D=%d, k=%d via %s in %.2f s", n, x.shape[1], k, chosen, time.perf_counter() - t0)
    return out


def knn_indices(features: Any, k: int, **search: Any) -> Tensor:
    """Indices of every row's ``k`` nearest neighbours by cosine similarity, most similar first.

    Args:
        features, k: as :func:`knn_search`.
        **search: ``backend``, ``faiss_min_n``, ``block_size``, ``query_block``, ``faiss_gpu``,
            ``exclude_self`` of :func:`knn_search`.

    Returns:
        ``(N, k)`` int64 tensor of row indices, by descending similarity.

    Raises:
        As :func:`knn_search`.
    """
    return knn_search(features, k, **search)[1]


def _as_index(idx: Any, name: str) -> np.ndarray:
    a = idx.detach().cpu().numpy() if isinstance(idx, Tensor) else np.asarray(idx)
    if a.ndim != 2 or a.shape[1] < 1 or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a non-empty (N, K) integer array, got shape {a.shape}, {a.dtype}")
    return a.astype(np.int64, copy=False)


def neighbour_ranks(idx_a: Any, idx_b: Any) -> np.ndarray:
    """For each entry of A's neighbour lists, its rank (column) in B's list of the same row, or ``K_b`` if
    absent.

    One row-wise sort for all rows: each row of ``[2 b, 2 a + 1]`` is argsorted, so an entry of A lands right
    after the equal entry of B when there is one; O(N K log K) time, O(N K) memory.

    Args:
        idx_a: ``(N, K_a)``, idx_b: ``(N, K_b)`` non-negative integer neighbour indices (no repeats within a
            row).

    Returns:
        ``(N, K_a)`` int64 ranks in ``[0, K_b]``. ``|N_A^k(i) ∩ N_B^k(i)| = sum_j<k [ranks[i, j] < k]`` for
        lists sorted by similarity.

    Raises:
        ValueError: not 2-D integer arrays, negative entries, or different row counts.
    """
    a, b = _as_index(idx_a, "idx_a"), _as_index(idx_b, "idx_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"idx_a and idx_b must have the same rows, got {a.shape[0]} and {b.shape[0]}")
    if a.min() < 0 or b.min() < 0:
        raise ValueError("neighbour indices must be >= 0")
    kb = b.shape[1]
    key = np.concatenate([b * 2, a * 2 + 1], axis=1)
    order = np.argsort(key, axis=1)
    sk = np.take_along_axis(key, order, axis=1)
    match = (sk[:, 1:] & 1).astype(bool) & (sk[:, 1:] - 1 == sk[:, :-1])  # an A entry right after its B twin
    rows, cols = np.nonzero(match)
    cols = cols + 1
    ranks = np.full(a.shape, kb, dtype=np.int64)
    ranks[rows, order[rows, cols] - kb] = order[rows, cols - 1]
    return ranks


def neighbour_overlap(idx_a: Any, idx_b: Any) -> np.ndarray:
    """Per-row size of ``set(idx_a[i]) ∩ set(idx_b[i])`` for two ``(N, k)`` neighbour-index arrays.

    Returns:
        ``(N,)`` int64 counts in ``[0, k]``.

    Raises:
        ValueError: as :func:`neighbour_ranks`.
    """
    ranks = neighbour_ranks(idx_a, idx_b)
    return np.sum(ranks < np.asarray(idx_b).shape[1], axis=1)


def mutual_knn_from_indices(idx_a: Any, idx_b: Any, ks: int | Sequence[int]) -> dict[int, float]:
    """Mutual kNN overlap for each ``k`` from neighbour lists sorted by similarity (``k`` = their prefix).

    Args:
        idx_a, idx_b: ``(N, K)`` neighbour indices from :func:`knn_indices`, ``K >= max(ks)``.
        ks: neighbourhood sizes.

    Returns:
        ``{k: mean_i |N_A(i) ∩ N_B(i)| / k}`` with values in [0, 1].

    Raises:
        ValueError: shapes differ, a ``k`` larger than the lists.
    """
    if tuple(idx_a.shape) != tuple(idx_b.shape) or len(idx_a.shape) != 2:
        raise ValueError(f"neighbour indices must be two (N, K) arrays, got {idx_a.shape}, {idx_b.shape}")
    ks = [ks] if isinstance(ks, int | np.integer) else list(ks)
    if not ks or min(ks) < 1 or max(ks) > idx_a.shape[1]:
        raise ValueError(f"every k must be in [1, {idx_a.shape[1]}], got {ks}")
    kmax = max(ks)
    ranks = neighbour_ranks(idx_a[:, :kmax], idx_b[:, :kmax])
    return {int(k): float(np.mean(np.sum(ranks[:, :k] < k, axis=1))) / int(k) for k in ks}


def mutual_knn(
    features_a: Any, features_b: Any, ks: int | Sequence[int] = DEFAULT_KS, **search: Any
) -> dict[int, float]:
    """Mutual kNN overlap (Huh et al. 2024) of two models' ``(N, D_a)`` and ``(N, D_b)`` embeddings of the
    same N examples, row i = example i in both.

    Args:
        features_a, features_b: embeddings (numpy or torch); D may differ.
        ks: one ``k`` or a list; each ``1 <= k <= N - 1``.
        **search: ``backend``, ``faiss_min_n``, ``block_size``, ... of :func:`knn_search`.

    Returns:
        ``{k: overlap}``, overlap in [0, 1]; 1 = identical neighbour sets (e.g. B a rotated or rescaled A).

    Raises:
        ValueError: row counts differ, bad shapes, NaN/inf, bad ``k``, bad search settings.
        ImportError: ``backend="faiss"`` without faiss installed.
    """
    x, y = feature_pair(features_a, features_b)
    ks = check_ks(ks, x.shape[0])
    kmax = max(ks)
    return mutual_knn_from_indices(knn_indices(x, kmax, **search), knn_indices(y, kmax, **search), ks)


def permute_neighbours(idx: Tensor, perm: Tensor) -> Tensor:
    """Neighbour lists of the row-shuffled features ``features[perm]`` without a new search.

    Row i of ``features[perm]`` is example ``perm[i]``; its neighbours, as row numbers of the shuffled
    matrix, are ``inv_perm[idx[perm[i]]]``.
    """
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.shape[0])
    return inv[idx[perm]]


def mutual_knn_null(
    idx_a: Tensor,
    idx_b: Tensor,
    ks: int | Sequence[int],
    n_permutations: int = 100,
    seed: int = 0,
) -> dict[int, NullSummary]:
    """Mutual kNN overlap of each ``k`` beside its permutation null (rows of B shuffled).

    The shuffled neighbour lists come from :func:`permute_neighbours`, so the null costs no extra search.

    Args:
        idx_a, idx_b: ``(N, K)`` neighbour indices (:func:`knn_indices`), ``K >= max(ks)``.
        ks: neighbourhood sizes.
        n_permutations: shuffles (>= 1).
        seed: seed of the shuffles (``torch.Generator``).

    Returns:
        ``{k: NullSummary}``.

    Raises:
        ValueError: as :func:`mutual_knn_from_indices`, or ``n_permutations < 1``.
    """
    observed = mutual_knn_from_indices(idx_a, idx_b, ks)
    n_permutations = check_permutations(n_permutations)
    gen = torch.Generator().manual_seed(int(seed))
    a, b = _as_index(idx_a, "idx_a"), _as_index(idx_b, "idx_b")
    null = {k: np.empty(n_permutations) for k in observed}
    for p in range(n_permutations):
        perm = torch.randperm(b.shape[0], generator=gen).numpy()
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.shape[0])
        shuffled = inv[b[perm]]  # = permute_neighbours(idx_b, perm)
        for k, v in mutual_knn_from_indices(a, shuffled, list(observed)).items():
            null[k][p] = v
    return {k: null_summary(observed[k], null[k]) for k in observed}
