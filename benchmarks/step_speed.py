"""Time of one training step per sparsity and dictionary at the default sizes (issue 14, "every sparsity on a
sparse path").

    .venv/bin/python benchmarks/step_speed.py                 # ~5 min on 2 cores; prints a Markdown table
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/step_speed.py   # the same rows, other code

Each row is `archsae.train` as a user runs it (streamed from a store, AuxK on the codes silent for 10,000 tokens,
gradient clipping, fused Adam, the dictionary's projection, adapted coefficients of ReLU / JumpReLU), in its own
process, at `archsae run`'s sizes: d = 1,280, k = 2,560, top_k = 32, batch 1,024, fp32, n' = 4,096 candidates
(a seeded subset of the tokens), W support 64. Tokens are synthetic sparse combinations of random directions: a
step's cost depends on L0, not on what the tokens mean, and every mechanism starts at L0 = top_k
(`init_from_data_`). Time per step from the training log's tokens/s, after the first 10 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

D, K, TOP_K, BATCH, N_PRIME = 1280, 2560, 32, 1024, 4096
METHODS = ["topk", "batchtopk", "jumprelu", "relu", "ra-topk", "ra-batchtopk", "ra-jumprelu", "ra-relu"]


def make_tokens(n: int, seed: int = 0) -> torch.Tensor:
    """(n, D) float32: each token 16 of 4 K random directions with positive weights, + noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4 * K, D)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = 0.05 * rng.normal(size=(n, D)).astype(np.float32)
    for start in range(0, n, 4096):
        idx = rng.integers(0, len(atoms), size=(min(4096, n - start), 16))
        x[start:start + len(idx)] += np.einsum("nm,nmd->nd", rng.uniform(0.5, 2.0, size=idx.shape), atoms[idx])
    return torch.from_numpy(x)


def time_method(work: Path, method: str, steps: int, extra: dict) -> dict:
    from archsae.config import TrainConfig
    from archsae.store import ActivationStore
    from archsae.train import train

    store = ActivationStore(work / "store")
    cfg = TrainConfig(method=method, k=K, top_k=TOP_K, batch_size=BATCH, epochs=steps * BATCH / store.n_split("train"),
                      checkpoint_every=10**9, **extra)
    candidates = torch.load(work / "candidates.pt", weights_only=True) if cfg.archetypal else None
    train(store, cfg, work / method, candidates)
    rows = [json.loads(line) for line in (work / method / "log.jsonl").read_text().splitlines()][1:]
    seconds = sum(10 * BATCH / r["tokens_per_s"] for r in rows)
    return {"ms_per_step": 1000 * seconds / (10 * len(rows)), "l0": float(np.mean([r["l0"] for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", choices=METHODS, help="rows to time (default: all)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--extra", default="{}", help='JSON of TrainConfig fields set for every row, e.g. \'{"kernel": '
                        '"rectangle"}\'')
    parser.add_argument("--row", help=argparse.SUPPRESS)  # child mode: time one method
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(time_method(args.work, args.row, args.steps, json.loads(args.extra))))
        return

    from archsae.store import import_matrix

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| method | ms per step | tokens/s | L0 |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokens = make_tokens((args.steps + 2) * BATCH)
        np.save(work / "tokens.npy", tokens.numpy())
        import_matrix(work / "tokens.npy", work / "store", shard_tokens=8192, holdout_every=10**9)
        torch.save(tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(1))[:N_PRIME]],
                   work / "candidates.pt")
        for method in args.method or METHODS:
            done = subprocess.run([sys.executable, __file__, "--row", method, "--work", str(work),
                                   "--steps", str(args.steps), "--extra", args.extra], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{method} failed:\n{done.stderr[-2000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {method} | {r['ms_per_step']:.0f} | {BATCH / r['ms_per_step'] * 1000:,.0f} | {r['l0']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
