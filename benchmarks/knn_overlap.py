"""Time and peak memory of mutual kNN overlap (blocked top-k) for N = 10k and 100k embeddings.

Measured, not asserted. Each N runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own;
"extra peak" is the peak minus the resident memory after the two embedding matrices exist. At N = 10k the
dense way (N x N similarity matrix, one top-k) runs beside it for the ratio; at 100k the dense matrix alone
would need 4 N^2 bytes = 40 GB. The search is quadratic in N, so 1M is extrapolated from the largest N
measured (x (1M / N)^2 time; memory stays at the block size plus the (N, K) index lists).

    flock /work/heavy.lock python benchmarks/knn_overlap.py            # N = 10k, 100k; D = 384; K = 100
    python benchmarks/knn_overlap.py --n 2000 5000 --dim 64            # quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KS = (1, 5, 10, 20, 50, 100)


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bound_bytes(n: int, k: int, block: int) -> int:
    """The search's own buffers: a block, its transpose and the top-k merge buffers, the running (N, k)
    float32 values and int64 indices of one model and the finished lists of the other. The measured peak
    also holds the normalised copy of the embeddings (4 N D bytes), temporaries and allocator slack."""
    return 8 * block * block + 3 * 12 * block * 2 * k + 12 * n * k + 8 * n * k


def _run(n: int, dim: int, k: int, block: int, dense: bool, n_perm: int, q) -> None:
    import torch

    from trustequiv.functional.representation import knn_indices, mutual_knn_from_indices, mutual_knn_null

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, dim, generator=gen)
    b = a + 0.5 * torch.randn(n, dim, generator=gen)
    base = _rss_mb()
    t0 = time.perf_counter()
    idx_a = knn_indices(a, k, block_size=block)
    idx_b = knn_indices(b, k, block_size=block)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = mutual_knn_from_indices(idx_a, idx_b, [x for x in KS if x <= k])
    t_overlap = time.perf_counter() - t0
    peak = _peak_mb() - base
    out = {
        "n": n,
        "dim": dim,
        "k": k,
        "threads": torch.get_num_threads(),
        "search_s_two_models": round(t_search, 2),
        "overlap_s_all_k": round(t_overlap, 3),
        "extra_peak_mb": round(peak, 1),
        "buffers_mb": round(_bound_bytes(n, k, block) / 2**20, 1),
        "knn_k10": round(scores.get(10, float("nan")), 4),
    }
    if n_perm:
        t0 = time.perf_counter()
        mutual_knn_null(idx_a, idx_b, [x for x in KS if x <= k], n_permutations=n_perm, seed=0)
        out[f"null_{n_perm}_perm_s"] = round(time.perf_counter() - t0, 2)
    if dense:
        before = _peak_mb()
        t0 = time.perf_counter()
        for x in (a, b):
            xn = torch.nn.functional.normalize(x, dim=1)
            sim = xn @ xn.T
            sim.fill_diagonal_(-torch.inf)
            sim.topk(k, dim=1)
            del sim
        out["dense_search_s_two_models"] = round(time.perf_counter() - t0, 2)
        out["dense_extra_peak_mb"] = round(max(_peak_mb() - before, 0) + peak, 1)
    q.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384, help="embedding width (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--k", type=int, default=100, help="largest K (smaller K use prefixes of its lists)")
    parser.add_argument("--block", type=int, default=4096, help="block size of the search")
    parser.add_argument("--dense-max", type=int, default=10_000, help="also time the dense N x N way up to N")
    parser.add_argument("--null-max", type=int, default=10_000, help="also time a 100-shuffle null up to N")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for n in args.n:
        q = ctx.Queue()
        p = ctx.Process(
            target=_run,
            args=(
                n,
                args.dim,
                args.k,
                args.block,
                n <= args.dense_max,
                100 if n <= args.null_max else 0,
                q,
            ),
        )
        p.start()
        row = q.get()
        p.join()
        rows.append(row)
        print(json.dumps(row), flush=True)
    last = rows[-1]
    factor = (1_000_000 / last["n"]) ** 2
    hours = last["search_s_two_models"] * factor / 3600
    # buffers + the two embedding matrices + the normalised copy the search makes
    mem = (_bound_bytes(1_000_000, args.k, args.block) + 3 * 1_000_000 * args.dim * 4) / 2**30
    print(
        f"extrapolated N=1M, D={args.dim}, K={args.k}, {last['threads']} threads: search of both models "
        f"~{hours:.1f} h (x{factor:.0f} the N={last['n']} time: quadratic); memory ~{mem:.1f} GiB "
        "(embeddings, their normalised copy, blocks, (N, K) lists; a dense N x N matrix would need 4 TB)",
        flush=True,
    )


if __name__ == "__main__":
    main()
