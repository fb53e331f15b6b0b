"""Time and peak memory of the exact kNN search behind mutual kNN overlap, per backend (blocked torch, faiss),
against the GEMM bound, for N = 10k and 100k embeddings.

Measured, not asserted. Each (N, backend) runs in a fresh subprocess so its peak resident memory
(ru_maxrss, which sees faiss's and BLAS's C allocations, unlike tracemalloc) is its own; "extra peak" is
the peak minus the resident memory once the two embedding matrices exist. The bound is the multiply-adds of a
full scan, models * N^2 * D, at the float32 GEMM throughput of ``torch.mm`` ((4096, D) @ (D, 4096)) on the
same threads, measured in a subprocess just before each configuration and in it just after the search (the
mean of the two: other jobs on the machine move both), per wall second and per CPU second of the process:
with other jobs on the cores the CPU-time ratio is the steadier one. The torch search computes each
symmetric block once (half the multiply-adds), so it could in principle go below 1x; faiss scans everything.
At N <= 10k the dense way (N x N similarity matrix, one top-k) runs too, for the ratio to the naive way; at
100k it would need 40 GB.

The search is quadratic in N, so 1M is extrapolated from the largest N measured per backend (x (1M / N)^2);
``--n 1000000`` measures it (hours on 2 cores; memory stays at the embeddings plus the (N, K) lists).

    uptime  # 2 threads only when nothing else heavy runs
    flock /work/heavy.lock python benchmarks/knn_overlap.py --threads 1     # N = 10k, 100k; D = 384; K = 100
    python benchmarks/knn_overlap.py --n 2000 5000 --dim 64                    # quick
    python benchmarks/knn_overlap.py --n 100000 --backend torch --models 1     # one model's search
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
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


def _gemm_rate(dim: int, seconds: float = 2.0) -> tuple[float, float]:
    """Median float32 multiply-adds per second of (4096, dim) @ (dim, 4096) with torch on these threads, per
    wall second and per CPU second of this process (the latter barely moves when other jobs share the cores).
    """
    import torch

    a, b = torch.randn(4096, dim), torch.randn(dim, 4096)
    out = torch.empty(4096, 4096)
    for _ in range(2):
        torch.mm(a, b, out=out)
    wall, cpu, t_end = [], [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(wall) < 5:
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b, out=out)
        wall.append(4096 * 4096 * dim / (time.perf_counter() - t0))
        cpu.append(4096 * 4096 * dim / max(time.process_time() - c0, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def _gemm_child(dim: int, threads: int, q) -> None:
    import torch

    torch.set_num_threads(threads)
    q.put(_gemm_rate(dim))


def _buffers_bytes(backend: str, n: int, dim: int, k: int, block: int, query_block: int, models: int) -> int:
    """The search's own memory: torch, a block, its transpose and the top-k merge buffers; faiss, the
    normalised float32 copy, its 4096 x 1024 product tile and a query block's k + 1 results; both, the
    running (N, k) float32 values and int64 indices and the finished lists of the other model."""
    lists = 12 * n * k + (models - 1) * 8 * n * k
    if backend == "torch":
        return 8 * block * block + 3 * 12 * block * 2 * k + lists
    return 4 * n * dim + 4 * 4096 * 1024 + 2 * 12 * query_block * (k + 1) + lists


def _run(cfg: dict, q) -> None:
    import torch

    from trustequiv.functional.knn import knn_search, mutual_knn_from_indices, mutual_knn_null

    torch.set_num_threads(cfg["threads"])
    n, dim, k, backend = cfg["n"], cfg["dim"], cfg["k"], cfg["backend"]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, dim, generator=gen)
    b = a + 0.5 * torch.randn(n, dim, generator=gen)
    search = {
        "backend": backend,
        "faiss_min_n": 0,
        "block_size": cfg["block"],
        "query_block": cfg["query_block"],
    }
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    idx = [knn_search(x, k, **search)[1] for x in (a, b)[: cfg["models"]]]
    t_search, c_search = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_mb() - base
    out = {
        "n": n,
        "dim": dim,
        "k": k,
        "backend": backend,
        "threads": torch.get_num_threads(),
        "models": cfg["models"],
        "search_s": round(t_search, 2),
        "search_cpu_s": round(c_search, 2),
        "extra_peak_mb": round(peak, 1),
        "buffers_mb": round(
            _buffers_bytes(backend, n, dim, k, cfg["block"], cfg["query_block"], cfg["models"]) / 2**20, 1
        ),
    }
    ks = [x for x in KS if x <= k]
    if cfg["models"] == 2:
        t0 = time.perf_counter()
        scores = mutual_knn_from_indices(idx[0], idx[1], ks)
        out["overlap_s_all_k"] = round(time.perf_counter() - t0, 3)
        out["knn_k10"] = round(scores.get(10, float("nan")), 4)
        out["knn_k100"] = round(scores.get(100, float("nan")), 4)
    out["gemm_gmadd_s_after"], out["gemm_gmadd_cpu_s_after"] = (round(r / 1e9, 2) for r in _gemm_rate(dim))
    if cfg["null"] and cfg["models"] == 2:
        t0 = time.perf_counter()
        mutual_knn_null(idx[0], idx[1], ks, n_permutations=100, seed=0)
        out["null_100_perm_s"] = round(time.perf_counter() - t0, 2)
    if cfg["dense"]:
        before = _peak_mb()
        t0 = time.perf_counter()
        for x in (a, b)[: cfg["models"]]:
            xn = torch.nn.functional.normalize(x, dim=1)
            sim = xn @ xn.T
            sim.fill_diagonal_(-torch.inf)
            sim.topk(k, dim=1)
            del sim
        out["dense_s"] = round(time.perf_counter() - t0, 2)
        out["dense_extra_peak_mb"] = round(max(_peak_mb() - before, 0) + peak, 1)
    q.put(out)


def _in_child(ctx, target, *args):
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _memory_1m_gib(backend: str, dim: int, k: int, block: int, query_block: int, models: int) -> float:
    """Buffers plus the embedding matrices (and torch's normalised copy, which faiss's buffers count)."""
    extra = 4 * 1_000_000 * dim if backend == "torch" else 0
    return (
        _buffers_bytes(backend, 1_000_000, dim, k, block, query_block, models)
        + extra
        + 2 * 4 * 1_000_000 * dim
    ) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384, help="embedding width (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--k", type=int, default=100, help="largest K (smaller K use prefixes of its lists)")
    parser.add_argument("--backend", nargs="+", default=["torch", "faiss"], choices=["torch", "faiss"])
    parser.add_argument("--threads", type=int, default=1, help="torch, OpenMP and faiss threads")
    parser.add_argument("--models", type=int, default=2, choices=[1, 2], help="searches per configuration")
    parser.add_argument("--block", type=int, default=4096, help="block size of the torch search")
    parser.add_argument("--query-block", type=int, default=16384, help="query rows per faiss call")
    parser.add_argument("--dense-max", type=int, default=10_000, help="also time the dense N x N way up to N")
    parser.add_argument("--null-max", type=int, default=10_000, help="also time a 100-shuffle null up to N")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the children's OpenMP runtimes at start
    ctx = mp.get_context("spawn")
    rows = []
    for n in args.n:
        for i, backend in enumerate(args.backend):
            rate_before = _in_child(ctx, _gemm_child, args.dim, args.threads)
            cfg = {
                "n": n,
                "dim": args.dim,
                "k": args.k,
                "backend": backend,
                "threads": args.threads,
                "models": args.models,
                "block": args.block,
                "query_block": args.query_block,
                "dense": i == 0 and n <= args.dense_max,
                "null": i == 0 and n <= args.null_max,
            }
            row = _in_child(ctx, _run, cfg)
            row["gemm_gmadd_s_before"], row["gemm_gmadd_cpu_s_before"] = (
                round(r / 1e9, 2) for r in rate_before
            )
            madds = args.models * n * n * args.dim
            rate = (rate_before[0] + row["gemm_gmadd_s_after"] * 1e9) / 2
            rate_cpu = (rate_before[1] + row["gemm_gmadd_cpu_s_after"] * 1e9) / 2
            row["bound_s"] = round(madds / rate, 2)
            row["ratio_to_bound"] = round(row["search_s"] / row["bound_s"], 2)
            row["bound_cpu_s"] = round(madds / rate_cpu, 2)
            row["cpu_ratio_to_bound"] = round(row["search_cpu_s"] / row["bound_cpu_s"], 2)
            if "dense_s" in row:
                row["ratio_to_dense"] = round(row["search_s"] / row["dense_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\nD={args.dim}, K={args.k}, {args.threads} thread(s), {args.models} model(s) per search time")
    print(
        "| N | backend | search s | bound s | x bound | search CPU s | CPU bound s | x bound (CPU) "
        "| extra peak MB | buffers MB | knn_k10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['backend']} | {r['search_s']} | {r['bound_s']} | {r['ratio_to_bound']} | "
            f"{r['search_cpu_s']} | {r['bound_cpu_s']} | {r['cpu_ratio_to_bound']} | "
            f"{r['extra_peak_mb']} | {r['buffers_mb']} | {r.get('knn_k10', '-')} |"
        )
    for backend in args.backend:
        last = [r for r in rows if r["backend"] == backend][-1]
        factor = (1_000_000 / last["n"]) ** 2
        hours, cpu_hours = last["search_s"] * factor / 3600, last["search_cpu_s"] * factor / 3600
        mem = _memory_1m_gib(backend, args.dim, args.k, args.block, args.query_block, args.models)
        print(
            f"extrapolated N=1M, {backend}: ~{hours:.1f} h ({cpu_hours:.1f} CPU-h) for {args.models} "
            f"model(s) on {last['threads']} thread(s) (x{factor:.0f} the N={last['n']:,} time: quadratic; "
            f"{last['ratio_to_bound']}x the bound); "
            f"memory ~{mem:.1f} GiB (embeddings, copies, (N, K) lists; a dense N x N matrix would need 4 TB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
