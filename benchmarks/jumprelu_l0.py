"""JumpReLU's L0 along training on a real store, with and without the proportional term of its L0 controller
(`archsae.sae.activations.PROPORTIONAL`; issue 11).

    .venv/bin/python benchmarks/jumprelu_l0.py --store RUN/store --centroids RUN/centroids/seed0.safetensors \\
        --method a-jumprelu --method ra-jumprelu [--proportional 0]

Each method at TrainConfig's defaults (k = 2,560, top_k = 32, 4 epochs), in one pass; prints the logged L0
every 10 steps, the held-out R² along training, and held-out R², dead codes and L0 on 20,000 held-out tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402

import archsae.sae.activations as activations  # noqa: E402
from archsae import metrics  # noqa: E402
from archsae.config import TrainConfig  # noqa: E402
from archsae.distill import load_centroids  # noqa: E402
from archsae.store import ActivationStore  # noqa: E402
from archsae.train import Job, train_many  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--centroids", type=Path, help="C for archetypal methods (an `archsae distill` output)")
    parser.add_argument("--method", action="append", required=True)
    parser.add_argument("--proportional", type=float, default=activations.PROPORTIONAL)
    args = parser.parse_args()
    activations.PROPORTIONAL = args.proportional
    store = ActivationStore(args.store)
    candidates = load_centroids(args.centroids) if args.centroids else None
    raw = store.sample(20_000, 0, "heldout")
    acts = store.standardise(raw)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [Job(TrainConfig(method=m), Path(tmp) / m, candidates) for m in args.method]
        for job, model in zip(jobs, train_many(store, jobs)):
            with torch.no_grad():
                codes = torch.cat([model.encode(r) for r in raw.split(2048)])
                acts_hat = store.standardise(model.decode(codes))
            rows = [json.loads(line) for line in (job.out_dir / "log.jsonl").read_text().splitlines()]
            print(f"{job.cfg.method} (proportional {args.proportional:g}): held-out R² {metrics.r2(acts, acts_hat):.4f}, "
                  f"dead {100 * metrics.dead_codes(codes):.2f} %, L0 {metrics.l0(codes):.1f}")
            print("  L0 every 10 steps:", " ".join(f"{r['l0']:.0f}" for r in rows))
            print("  held-out R²:", " ".join(f"{r['heldout_r2']:.3f}" for r in rows if "heldout_r2" in r))


if __name__ == "__main__":
    main()
