"""k-means at the paper's scale (issue 14): two-level k-means against faiss's flat k-means.

    .venv/bin/python benchmarks/kmeans_scale.py --store /tmp/default-run/store   # ~10 min on 2 cores

(a) Quality, where flat k-means is affordable: n' = 4,096 centroids from 88,200 standardised train tokens of
    the store (d = 1,280), 10 iterations, seed 0: time and objective (mean squared distance of every token to
    its nearest centroid) of flat and of two-level k-means.
(b) Scale: n' = 32,768 centroids from 1,000,000 tokens at d = 1,280 by two-level k-means, 10 iterations. No
    store of a million tokens ships here, so the tokens are the store's train tokens, each repeated about 11
    times with its own Gaussian noise of 0.3 times the features' standard deviation (a realistic geometry, and
    no two tokens equal). Flat k-means at this size is ~100 TFLOP per iteration: not run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np  # noqa: E402


def objective(acts: np.ndarray, centroids: np.ndarray) -> float:
    import faiss

    return float(np.mean([faiss.knn(a, centroids, 1)[0].mean() for a in np.array_split(acts, 20)]))


def timed(fn, *args) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--skip-flat", action="store_true", help="only (b)")
    args = parser.parse_args()
    from archsae.distill import _kmeans_flat, kmeans_two_level
    from archsae.store import ActivationStore

    store = ActivationStore(args.store)
    acts = store.standardise(store.sample(store.n_split("train"), seed=0, split="train")).numpy()
    print("| case | method | seconds | objective |\n|---|---|---:|---:|")
    if not args.skip_flat:
        flat, t_flat = timed(_kmeans_flat, acts, 4096, 0, 10)
        two, t_two = timed(kmeans_two_level, acts, 4096, 0, 10)
        o_flat, o_two = objective(acts, flat), objective(acts, two)
        print(f"| n' = 4,096 from {len(acts):,} | flat | {t_flat:.0f} | {o_flat:.2f} |")
        gap = 100 * (o_two / o_flat - 1)
        print(f"| n' = 4,096 from {len(acts):,} | two-level | {t_two:.0f} | {o_two:.2f} ({gap:+.1f} %) |", flush=True)
    rng = np.random.default_rng(0)
    big = np.empty((1_000_000, acts.shape[1]), dtype=np.float32)
    for start in range(0, len(big), 50_000):
        rows = rng.integers(0, len(acts), 50_000)
        big[start:start + 50_000] = acts[rows] + 0.3 * rng.standard_normal((50_000, acts.shape[1]), dtype=np.float32)
    centroids, t_big = timed(kmeans_two_level, big, 32_768, 0, 10)
    sample = big[rng.choice(len(big), 50_000, replace=False)]  # the objective over all 1e6 tokens costs 40 TMAC
    o_big = objective(sample, centroids)
    print(f"| n' = 32,768 from 1,000,000 | two-level | {t_big:.0f} | {o_big:.2f} (50,000 of the tokens) |")


if __name__ == "__main__":
    main()
