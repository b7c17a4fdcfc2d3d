"""Peak memory of training as the store grows: the default store, and one 10x larger (issue 3).

    .venv/bin/archsae run --run-dir /tmp/default-run    # the main job's default store, if not there yet
    .venv/bin/python benchmarks/store_scaling.py --store /tmp/default-run/store

The 10x store lists every shard of the given store ten times (hard links, so it costs no disk space); to
the trainer it is a store of 10x the tokens. Each row trains TopK and RA-SAE (k = 2,560, n' = 1,024)
in one pass for the same number of steps, in its own child process, and reports its peak RSS. The
shuffle buffer holds `shuffle_shards` shards per stream, so the peak should not grow with the store.
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
from common import peak_rss_gb  # noqa: E402


def repeat_store(src: Path, dst: Path, times: int) -> None:
    """A store whose shard list is `times` copies of src's (hard-linked files, same statistics)."""
    from archsae.store import read_meta, write_meta

    meta = read_meta(src)
    dst.mkdir(parents=True)
    shards = []
    for r in range(times):
        for s in meta["shards"]:
            name = f"r{r}-{s['file']}"
            os.link(src / s["file"], dst / name)
            shards.append({**s, "file": name})
    write_meta(dst, {**meta, "shards": shards, "n": meta["n"] * times})


def child(store_dir: Path, steps: int) -> None:
    import torch

    from archsae.config import TrainConfig
    from archsae.distill import kmeans
    from archsae.store import ActivationStore
    from archsae.train import Job, train_many

    store = ActivationStore(store_dir)
    sample = store.standardise(store.sample(20_000, seed=0, split="train"))
    candidates = torch.from_numpy(kmeans(sample.numpy(), 1024, seed=0, n_iter=5))
    epochs = steps * 1024 / store.n_split("train")
    jobs = [Job(TrainConfig(method=m, epochs=epochs, checkpoint_every=10**9), store_dir.parent / m, candidates)
            for m in ("topk", "ra-topk")]
    start = time.perf_counter()
    train_many(store, jobs)
    print(json.dumps({"tokens": store.n, "shards": store.n_shards, "steps": steps, "seconds": time.perf_counter() - start,
                      "peak_rss_gb": peak_rss_gb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="an archsae store (e.g. the default run's)")
    parser.add_argument("--steps", type=int, default=150, help="training steps per row")
    parser.add_argument("--times", type=int, default=10, help="size of the large store, in copies")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store_scaling.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)

    from archsae.files import write_json

    rows = []
    with tempfile.TemporaryDirectory(dir=args.store.parent) as tmp:
        for times in (1, args.times):
            store_dir = Path(tmp) / f"x{times}" / "store"
            repeat_store(args.store.resolve(), store_dir, times)
            done = subprocess.run([sys.executable, __file__, "--store", str(args.store), "--child", str(store_dir),
                                   "--steps", str(args.steps)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            rows.append({"store": f"{times}x", **json.loads(done.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    write_json(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
