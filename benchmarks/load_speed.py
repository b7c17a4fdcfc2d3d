"""What loading a saved archetypal SAE costs (`archsae.load_sae`, used by evaluate, stability, report, serve).

    .venv/bin/python benchmarks/load_speed.py                                   # this commit
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/load_speed.py        # git worktree add /tmp/before REV

Saves an RA-TopK model (W support 64, random C standing in for k-means centroids: the load does not depend on
them) at `archsae run`'s sizes and at the paper's (k = 5 d, n' = 32,768), then times `load_sae` from a fresh
folder, best of `--repeats`.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from archsae import TrainConfig
from archsae.sae.model import build_sae, load_sae, sae_config, save_sae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=2)
args = parser.parse_args()
d = 1280
with tempfile.TemporaryDirectory() as tmp:
    for k, n_prime in [(2560, 4096), (5 * d, 32768)]:
        cfg = TrainConfig(method="ra-topk", k=k)
        folder = Path(tmp) / f"k{k}"
        save_sae(build_sae(cfg, d, torch.randn(n_prime, d, generator=torch.Generator().manual_seed(0))), folder,
                 sae_config(cfg, d))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            load_sae(folder)
            times.append(time.perf_counter() - start)
        print(f"ra-topk k = {k:,}, n' = {n_prime:,}, d = {d:,}: load_sae best of {args.repeats} {min(times):.2f} s")
