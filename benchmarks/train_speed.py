"""Training speed and peak memory: archsae's TopK and RA-SAE beside overcomplete 0.3.0's TopKSAE and
RATopKSAE, on the same data in the same run (issue 3).

    bash benchmarks/setup.sh                                  # once: benchmarks/.venv with both libraries
    benchmarks/.venv/bin/python benchmarks/train_speed.py     # ~15 min on 2 cores; prints a Markdown table

Every row runs in its own child process (so its peak RSS is its own) on the same standardised tokens:
d = 768, k = 3,840, n' = 3,840, top_k = 32, batch 1,024, fp32, Adam, gradient clipping 1.0, plain MSE
(archsae's AuxK off: overcomplete's loop has none by default). Throughput is measured after a warm-up of
10 steps. The data are synthetic sparse combinations of 3,840 random directions plus noise, because the
cost of a step does not depend on what the tokens mean; C is a seeded random subset of the tokens for
both libraries (k-means of C is not what is timed). The memory rows train RA-SAE with k = 16,384 and
n' = 32,000 for a few steps.
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
import torch  # noqa: E402

from common import peak_rss_gb  # noqa: E402

D, K, N_PRIME, TOP_K, BATCH = 768, 3840, 3840, 32, 1024
WARMUP = 10


def make_tokens(n: int, seed: int = 0) -> np.ndarray:
    """(n, D) float32: each token 8 random directions of a 3,840-atom dictionary, positive weights, + noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(K, D)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    out = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 8192):
        m = min(8192, n - start)
        idx = rng.integers(0, K, size=(m, 8))
        w = rng.uniform(0.5, 2.0, size=(m, 8, 1)).astype(np.float32)
        out[start:start + m] = (atoms[idx] * w).sum(1) + 0.05 * rng.normal(size=(m, D)).astype(np.float32)
    return out


def run_archsae(work: Path, method: str, steps: int, k: int, n_prime: int, support: int) -> dict:
    from archsae.config import TrainConfig
    from archsae.store import ActivationStore
    from archsae.train import train

    store = ActivationStore(work / "store")
    candidates = torch.load(work / "candidates.pt", weights_only=True)[:n_prime] if method != "topk" else None
    cfg = TrainConfig(method=method, k=k, top_k=TOP_K, w_support=support, aux_k=0, batch_size=BATCH,
                      epochs=steps * BATCH / store.n_split("train"), warmup_steps=5, checkpoint_every=10**9)
    out = work / f"archsae-{method}-{k}-{n_prime}-{support}"
    train(store, cfg, out, candidates)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] >= WARMUP] or rows
    seconds = sum(BATCH * 10 / r["tokens_per_s"] for r in timed)
    return {"tokens_per_s": BATCH * 10 * len(timed) / seconds, "final_r2": rows[-1]["r2"]}


def run_overcomplete(work: Path, method: str, steps: int) -> dict:
    from archsae.models._compat import import_timm

    import_timm()  # the torchvision stub overcomplete needs on CPU torch
    from overcomplete.sae import RATopKSAE, TopKSAE, train_sae

    tokens = torch.load(work / "tokens.pt", weights_only=True)[: steps * BATCH]
    if method == "topk":
        model = TopKSAE(D, K, top_k=TOP_K)
    else:
        model = RATopKSAE(D, K, points=torch.load(work / "candidates.pt", weights_only=True)[:N_PRIME], top_k=TOP_K,
                          delta=0.01)
    times = []

    class Timed(torch.utils.data.DataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                times.append(time.perf_counter())
                yield batch

    loader = Timed(torch.utils.data.TensorDataset(tokens), batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = lambda x, x_hat, *rest: (x - x_hat).square().mean()
    logs = train_sae(model, loader, criterion, optimizer, nb_epochs=1, clip_grad=1.0, monitoring=1)
    times.append(time.perf_counter())
    return {"tokens_per_s": BATCH * (len(times) - 1 - WARMUP) / (times[-1] - times[WARMUP]),
            "final_r2": float(logs["r2"][-1])}


ROWS = [  # name, library, method, steps, k, n', W support
    ("archsae TopK", "archsae", "topk", 60, K, N_PRIME, 0),
    ("archsae RA-SAE (W support 64, default)", "archsae", "ra-topk", 60, K, N_PRIME, 64),
    ("archsae RA-SAE (dense W)", "archsae", "ra-topk", 40, K, N_PRIME, 0),
    ("overcomplete TopKSAE", "overcomplete", "topk", 40, K, N_PRIME, 0),
    ("overcomplete RATopKSAE", "overcomplete", "ra-topk", 25, K, N_PRIME, 0),
    ("archsae RA-SAE k=16,384, n'=32,000 (W support 64)", "archsae", "ra-topk", 20, 16_384, 32_000, 64),
    ("archsae RA-SAE k=16,384, n'=32,000 (dense W)", "archsae", "ra-topk", 12, 16_384, 32_000, 0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.json")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child mode: run one row
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row is not None:
        name, library, method, steps, k, n_prime, support = ROWS[args.row]
        torch.manual_seed(0)
        result = (run_archsae(args.work, method, steps, k, n_prime, support) if library == "archsae"
                  else run_overcomplete(args.work, method, steps))
        print(json.dumps({**result, "peak_rss_gb": peak_rss_gb()}))
        return

    from archsae.files import write_json
    from archsae.store import import_matrix

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokens = make_tokens(70_000)
        tokens = (tokens - tokens.mean(0)) / tokens.std(0)  # standardised, as both libraries then see it
        np.save(work / "tokens.npy", tokens)
        # holdout_every = 10**9: every token is a training token for archsae, as for overcomplete.
        import_matrix(work / "tokens.npy", work / "store", shard_tokens=8192, holdout_every=10**9)
        torch.save(torch.from_numpy(tokens), work / "tokens.pt")
        rng = np.random.default_rng(1)
        torch.save(torch.from_numpy(tokens[rng.choice(len(tokens), 32_000, replace=False)]), work / "candidates.pt")
        results = []
        for i, row in enumerate(ROWS):
            done = subprocess.run([sys.executable, __file__, "--row", str(i), "--work", str(work)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"row {row[0]!r} failed")
            results.append({"name": row[0], **json.loads(done.stdout.strip().splitlines()[-1])})
            print(f"{row[0]:<52} {results[-1]['tokens_per_s']:>9.0f} tok/s  {results[-1]['peak_rss_gb']:.2f} GB",
                  flush=True)
    by = {r["name"]: r for r in results}
    ratios = {
        "archsae RA-SAE / overcomplete RATopKSAE": by[ROWS[1][0]]["tokens_per_s"] / by[ROWS[4][0]]["tokens_per_s"],
        "archsae RA-SAE dense W / overcomplete RATopKSAE": by[ROWS[2][0]]["tokens_per_s"] / by[ROWS[4][0]]["tokens_per_s"],
        "archsae TopK / overcomplete TopKSAE": by[ROWS[0][0]]["tokens_per_s"] / by[ROWS[3][0]]["tokens_per_s"],
        "archsae TopK / archsae RA-SAE (slowdown)": by[ROWS[0][0]]["tokens_per_s"] / by[ROWS[1][0]]["tokens_per_s"],
    }
    write_json(args.out, {"rows": results, "ratios": ratios, "torch": torch.__version__,
                          "threads": torch.get_num_threads()})
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")


if __name__ == "__main__":
    main()
