"""Bootstrap linear CKA: the Gram-expansion of ``resampled_linear_cka`` vs CKA of each materialised resample.

Measured, not asserted. Random features of ``n`` rows and ``d`` columns per model (the candidate a noisy
linear map of the reference), ``R`` bootstrap resamples of the rows:

- ours: :func:`plugins.characteristics.representation.resampled_linear_cka` on the ``(R, n)`` row indices
  (what the verdict evaluates for ``cka_linear``);
- direct: :func:`trustequiv.functional.cka.linear_cka` on ``X[idx_r]``, ``Y[idx_r]`` per resample
  (timed on ``--direct`` resamples and scaled to R);
- the largest difference between the two on the directly computed resamples.

    flock /work/heavy.lock python benchmarks/resampled_cka.py [--n 2000] [--d 384] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.characteristics.representation import resampled_linear_cka
from trustequiv.functional.cka import linear_cka


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--direct", type=int, default=20, help="resamples timed the direct way")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.n, args.d)).astype(np.float32)
    y = (x @ rng.standard_normal((args.d, args.d)) / np.sqrt(args.d) + rng.standard_normal(x.shape)).astype(
        np.float32
    )
    idx = rng.integers(0, args.n, size=(args.resamples, args.n))
    print(f"n={args.n}, d={args.d}, R={args.resamples}, torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    ours = resampled_linear_cka(x, y, idx)
    t_ours = time.perf_counter() - t0
    k = min(args.direct, args.resamples)
    t0 = time.perf_counter()
    direct = np.array([linear_cka(x[i], y[i]) for i in idx[:k]])
    t_direct = (time.perf_counter() - t0) * args.resamples / k
    print(f"ours:   {t_ours:8.2f} s for {args.resamples} resamples")
    print(f"direct: {t_direct:8.2f} s (scaled from {k} resamples)")
    print(f"ratio direct / ours: {t_direct / t_ours:.1f}x; max |diff| {np.abs(ours[:k] - direct).max():.2e}")


if __name__ == "__main__":
    main()
