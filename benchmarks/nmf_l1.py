"""What `--l1` means for Semi-NMF and Convex-NMF: L0 and held-out R² per L1 coefficient on a store.

    .venv/bin/python benchmarks/nmf_l1.py --store /tmp/drun/store                     # ~4 min on 2 cores
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/nmf_l1.py ...  # the same, other code

Each method is fitted (`archsae.classical`, as `archsae classical` does) on `--max-tokens` standardised train
tokens of the store at k atoms, then encodes `--heldout` standardised held-out tokens: L0 is the mean number of
non-zero codes there, R² (eq. 5) the reconstruction's, in the standardised space. A Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
from archsae import metrics  # noqa: E402
from archsae.classical import build_baseline  # noqa: E402
from archsae.store import ActivationStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="an archsae store folder (e.g. RUN/store)")
    parser.add_argument("--method", action="append", choices=["semi_nmf", "convex_nmf"],
                        help="default: both")
    parser.add_argument("--l1", action="append", type=float, help="default: 0.3, 1, 3, 10")
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=10_000)
    parser.add_argument("--heldout", type=int, default=5_000)
    args = parser.parse_args()
    store = ActivationStore(args.store)
    train = store.standardise(store.sample(args.max_tokens, seed=0, split="train"))
    heldout = store.standardise(store.sample(args.heldout, seed=0, split="heldout"))
    print(f"k = {args.k}, {len(train):,} train / {len(heldout):,} held-out tokens of {args.store}\n")
    print("| method | l1 | L0 | held-out R² | mean atom norm | seconds |\n|---|---:|---:|---:|---:|---:|")
    for method in args.method or ["semi_nmf", "convex_nmf"]:
        for l1 in args.l1 or [0.3, 1.0, 3.0, 10.0]:
            start = time.perf_counter()
            model = build_baseline(method, args.k, seed=0, l1=l1).fit(train)
            codes = model.encode(heldout)
            print(f"| {method} | {l1:g} | {metrics.l0(codes):.1f} | {metrics.r2(heldout, model.decode(codes)):.3f} | "
                  f"{model.dictionary.norm(dim=1).mean():.3g} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
