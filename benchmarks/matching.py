"""Stability (Hungarian matching) between two 16,384-atom dictionaries: time, peak memory, and equality
with scipy's exact assignment on the float64 cosine matrix.

    .venv/bin/python benchmarks/matching.py [--k 16384] [--d 1280]

Two pairs: a "trained-like" pair (D2 = D1 permuted, sign-flipped, rescaled and noised so matched atoms
have cos ~0.7, as between two runs of one SAE) and an "independent" pair (two random dictionaries: the
null, where no atom has a clear partner and the assignment is hardest). The reference builds the cosine
matrix in float64 with numpy and solves it with scipy; archsae builds it in float32 with torch.
Writes benchmarks/results/matching.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from archsae import metrics
from common import peak_rss_gb


def pairs(k: int, d: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    d1 = rng.standard_normal((k, d), dtype=np.float32)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    noise = rng.standard_normal((k, d), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    signs = rng.choice([-1.0, 1.0], size=(k, 1)).astype(np.float32)
    trained = ((0.7 * d1 + 0.71 * noise) * signs * rng.uniform(0.5, 2, (k, 1)).astype(np.float32))[rng.permutation(k)]
    return {"trained-like": (d1, trained), "independent": (d1, rng.standard_normal((k, d), dtype=np.float32))}


def reference(d1: np.ndarray, d2: np.ndarray) -> float:
    u1 = d1.astype(np.float64) / np.linalg.norm(d1.astype(np.float64), axis=1, keepdims=True)
    u2 = d2.astype(np.float64) / np.linalg.norm(d2.astype(np.float64), axis=1, keepdims=True)
    cos = np.abs(u1 @ u2.T)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=16384)
    parser.add_argument("--d", type=int, default=1280)
    args = parser.parse_args()
    rows = []
    for name, (d1, d2) in pairs(args.k, args.d).items():
        t0 = time.perf_counter()
        ours = metrics.stability(d1, d2)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = reference(d1, d2)
        t_ref = time.perf_counter() - t0
        rows.append({"pair": name, "k": args.k, "d": args.d, "archsae_s": round(t_ours, 2), "stability": ours,
                     "scipy_float64_s": round(t_ref, 2), "scipy_float64_stability": ref,
                     "abs_difference": abs(ours - ref)})
        print(json.dumps(rows[-1]))
    result = {"rows": rows, "peak_rss_gb": round(peak_rss_gb(), 2),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__}
    out = Path(__file__).parent / "results" / "matching.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
