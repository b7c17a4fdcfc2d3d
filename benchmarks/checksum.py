"""What verifying a store costs: sha256 of every shard, as a process does on its first read (issue 12).

    .venv/bin/python benchmarks/checksum.py --store /tmp/default-run/store
"""

import argparse
import time

from archsae.store import ActivationStore

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--store", required=True)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()
store = ActivationStore(args.store)
size = sum((store.root / s["file"]).stat().st_size for s in store.meta["shards"])
times = []
for _ in range(args.repeats):
    start = time.perf_counter()
    store.verify()  # hashes every shard again (files in the page cache after the first pass)
    times.append(time.perf_counter() - start)
best = min(times)
print(f"{size / 1e9:.3f} GB in {store.n_shards} shards: best of {args.repeats} {best:.2f} s, "
      f"{best / (size / 1e9):.2f} s per GB ({size / 1e9 / best:.2f} GB/s)")
