"""Time and peak memory of `archsae evaluate` at the paper's dictionary size (issue 14): k = 32,768 atoms,
20,000 held-out tokens, d = 1,280.

    .venv/bin/python benchmarks/evaluate_scale.py             # ~10 min on 2 cores; prints a Markdown table

A synthetic store (40,000 tokens, every second one held out: sparse combinations of 8,192 random directions
plus noise, d = 1,280) and two TopK SAEs (k = 32,768, top_k = 32, seeds 0 and 1) trained for 30 steps, so their
atoms and codes are those of a model that has started learning, not of its initialisation. Then `evaluate` runs
in its own process, as `archsae evaluate` does: every metric of Table 1 for both models (negative interference
included) and the pair's stability, MMCS and max cosine (the exact matching of two 32,768-atom dictionaries).
Reported: its wall time and its peak RSS (which includes the Python process and torch, ~0.4 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np  # noqa: E402

from common import peak_rss_gb  # noqa: E402

D, K, TOP_K, TOKENS = 1280, 32_768, 32, 40_000


def make_tokens(n: int, seed: int = 0) -> np.ndarray:
    """(n, D) float32: each token 16 of 8,192 random directions with positive weights, + noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(8192, D)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = 0.05 * rng.normal(size=(n, D)).astype(np.float32)
    for start in range(0, n, 4096):
        idx = rng.integers(0, len(atoms), size=(min(4096, n - start), 16))
        x[start:start + len(idx)] += np.einsum("nm,nmd->nd", rng.uniform(0.5, 2.0, size=idx.shape), atoms[idx])
    return x


def run_evaluate(work: Path) -> dict:
    from archsae.config import EvaluateConfig
    from archsae.evaluate import evaluate
    from archsae.store import ActivationStore

    t0 = time.perf_counter()
    summary = evaluate(ActivationStore(work / "store"), work / "models", EvaluateConfig(max_tokens=20_000),
                       work / "metrics.json")
    return {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb(), "metrics": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="keep the store and models here (default: a temporary folder)")
    parser.add_argument("--evaluate-only", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.evaluate_only:
        print(json.dumps(run_evaluate(args.work)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        from archsae.config import TrainConfig
        from archsae.store import ActivationStore, import_matrix
        from archsae.train import Job, train_many

        if not (work / "store").exists():
            work.mkdir(parents=True, exist_ok=True)
            np.save(work / "tokens.npy", make_tokens(TOKENS))
            import_matrix(work / "tokens.npy", work / "store", holdout_every=2)
            (work / "tokens.npy").unlink()
        store = ActivationStore(work / "store")
        t0 = time.perf_counter()
        epochs = 30 * 1024 / store.n_split("train")
        train_many(store, [Job(TrainConfig(method="topk", k=K, top_k=TOP_K, seed=s, epochs=epochs),
                               work / "models" / f"topk-s{s}") for s in (0, 1)])
        print(f"trained 2 x 30 steps at k = {K:,} in {time.perf_counter() - t0:.0f} s", flush=True)
        done = subprocess.run([sys.executable, __file__, "--evaluate-only", "--work", str(work)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
    m, pair = r["metrics"]["models"]["topk-s0"], r["metrics"]["groups"]["topk"]
    print("\n| k | held-out tokens | wall time | peak RSS | R² | L0 | neg. interf. | stability |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {K:,} | 20,000 | {r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB | {m['r2']:.3f} | {m['l0']:.1f} | "
          f"{m['negative_interference']:.4g} | {pair['stability']['mean']:.3f} |")


if __name__ == "__main__":
    main()
