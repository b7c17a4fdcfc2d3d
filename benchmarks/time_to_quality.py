"""Time to quality: the seconds and steps archsae and overcomplete 0.3.0 need to reach the same held-out R²,
and the held-out R² each reaches in the same wall time, for TopK and RA-SAE (issue 14, item 5).

    bash benchmarks/setup.sh                                               # once: benchmarks/.venv
    benchmarks/.venv/bin/python benchmarks/time_to_quality.py --run-dir RUN   # ~20 min on 2 cores

RUN is an `archsae run` directory: its store (the train tokens, standardised as archsae standardises them)
and its seed-0 candidates C (`centroids/seed0.safetensors`). Both libraries see the same tokens in the same
standardised space, k, top_k and batch of the archsae defaults (2,560, 32, 1,024), the same number of steps
(the default 4 epochs), Adam with gradient clipping 1.0 and no learning-rate decay; RA-SAE with the same C
and δ. archsae runs its own `train` (its recipe: tied encoder, AuxK, W support 64, checkpoints every 100
steps); overcomplete its own `train_sae` on an in-memory DataLoader with the loss of its README (plain MSE),
at its README's learning rate (5e-4) and, to give it every chance, at archsae's (0.06 / sqrt(d)).

Every `--every` steps each run's held-out R² is measured on the same 4,096 held-out tokens archsae logs
(`archsae.config.HELDOUT_TOKENS`, seed 0) with the clock stopped: the seconds are training seconds (for
archsae the sum of its log's windows, data loading and checkpoints included; for overcomplete the time
inside `train_sae`, with its monitoring off). Each row runs in its own process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402

from common import peak_rss_gb  # noqa: E402

BATCH = 1024
ROWS = [  # name, library, method, learning rate (None: archsae's default, 0.06 / sqrt(d))
    ("archsae TopK", "archsae", "topk", None),
    ("archsae RA-TopK", "archsae", "ra-topk", None),
    ("overcomplete TopKSAE, lr 5e-4", "overcomplete", "topk", 5e-4),
    ("overcomplete TopKSAE, archsae's lr", "overcomplete", "topk", None),
    ("overcomplete RATopKSAE, lr 5e-4", "overcomplete", "ra-topk", 5e-4),
    ("overcomplete RATopKSAE, archsae's lr", "overcomplete", "ra-topk", None),
]


def run_archsae(run_dir: Path, work: Path, method: str, steps: int, every: int) -> list[dict]:
    from archsae.config import TrainConfig
    from archsae.distill import centroids_path, load_centroids
    from archsae.store import ActivationStore
    from archsae.train import train

    store = ActivationStore(run_dir / "store")
    candidates = load_centroids(centroids_path(run_dir, 0)) if method != "topk" else None
    steps_per_epoch = store.n_split("train") // BATCH
    cfg = TrainConfig(method=method, epochs=steps / steps_per_epoch, heldout_every=every)
    train(store, cfg, work / f"archsae-{method}", candidates)
    rows = [json.loads(line) for line in (work / f"archsae-{method}" / "log.jsonl").read_text().splitlines()]
    curve, seconds, tokens = [], 0.0, 0
    for r in rows:  # each line: the tokens and tokens/s of the window since the previous line
        seconds += (r["tokens"] - tokens) / r["tokens_per_s"]
        tokens = r["tokens"]
        if "heldout_r2" in r:
            curve.append({"step": r["step"] + 1, "seconds": seconds, "r2": r["heldout_r2"]})
    return curve


def run_overcomplete(run_dir: Path, method: str, steps: int, every: int, lr: float | None) -> list[dict]:
    from archsae.config import HELDOUT_TOKENS, TrainConfig
    from archsae.metrics import r2
    from archsae.models._compat import import_timm
    from archsae.distill import centroids_path, load_centroids
    from archsae.store import ActivationStore

    import_timm()  # the torchvision stub overcomplete needs on CPU torch
    from overcomplete.sae import RATopKSAE, TopKSAE, train_sae

    store = ActivationStore(run_dir / "store")
    defaults = TrainConfig()
    tokens = store.standardise(store.sample(store.n_split("train"), 0, "train"))
    test = store.standardise(store.sample(HELDOUT_TOKENS, 0, "heldout"))  # the tokens archsae's log uses
    d = store.d
    if method == "topk":
        model = TopKSAE(d, defaults.k, top_k=defaults.top_k)
    else:
        model = RATopKSAE(d, defaults.k, points=load_centroids(centroids_path(run_dir, 0)), top_k=defaults.top_k,
                          delta=defaults.delta)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr or defaults.peak_lr(d))
    criterion = lambda x, x_hat, *rest: (x - x_hat).square().mean()  # noqa: E731  (their README's loss)
    steps_per_epoch = len(tokens) // BATCH
    generator = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(tokens), generator=generator)[: steps_per_epoch * BATCH]
                       for _ in range(math.ceil(steps / steps_per_epoch))])
    curve, seconds = [], 0.0
    for start in range(0, steps, every):
        chunk = tokens[order[start * BATCH: min(steps, start + every) * BATCH]]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(chunk), batch_size=BATCH)
        began = time.perf_counter()
        train_sae(model, loader, criterion, optimizer, nb_epochs=1, clip_grad=1.0, monitoring=0)
        seconds += time.perf_counter() - began
        model.eval()
        with torch.no_grad():
            score = r2(test, torch.cat([model(x)[2] for x in test.split(BATCH)]))
        model.train()
        curve.append({"step": min(steps, start + every), "seconds": seconds, "r2": score})
    return curve


def reach(curve: list[dict], level: float) -> dict | None:
    """Seconds and steps at which a curve first reaches `level`: linearly interpolated between the measurements
    on either side, or the first measurement's if that one already reaches it; None if none does."""
    previous = None
    for point in curve:
        if point["r2"] >= level:
            if previous is None:
                return {key: point[key] for key in ("step", "seconds")}
            f = (level - previous["r2"]) / (point["r2"] - previous["r2"])
            return {key: previous[key] + f * (point[key] - previous[key]) for key in ("step", "seconds")}
        previous = point
    return None


def at_time(curve: list[dict], seconds: float) -> float | None:
    """The last held-out R² measured within `seconds` of training (None if none was)."""
    before = [p["r2"] for p in curve if p["seconds"] <= seconds * (1 + 1e-9)]
    return before[-1] if before else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="an `archsae run` directory")
    parser.add_argument("--steps", type=int, default=0, help="steps per run; 0 = archsae's default 4 epochs")
    parser.add_argument("--every", type=int, default=20, help="steps between held-out R² measurements (x 10)")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))), help="rows to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "time_to_quality.json")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child mode: run one row
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row is not None:
        name, library, method, lr = ROWS[args.row]
        torch.manual_seed(0)
        began = time.perf_counter()
        curve = (run_archsae(args.run_dir, args.work, method, args.steps, args.every) if library == "archsae"
                 else run_overcomplete(args.run_dir, method, args.steps, args.every, lr))
        print(json.dumps({"curve": curve, "wall_s": time.perf_counter() - began, "peak_rss_gb": peak_rss_gb()}))
        return

    from archsae.config import TrainConfig
    from archsae.files import write_json
    from archsae.store import ActivationStore

    store = ActivationStore(args.run_dir / "store")
    steps = args.steps or math.ceil(TrainConfig().epochs * (store.n_split("train") // BATCH))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in (int(r) for r in args.rows.split(",")):
            name = ROWS[i][0]
            done = subprocess.run([sys.executable, __file__, "--row", str(i), "--work", tmp, "--run-dir",
                                   str(args.run_dir), "--steps", str(steps), "--every", str(args.every)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"row {name!r} failed")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            curve = results[name]["curve"]
            print(f"{name:<40} {curve[-1]['seconds']:7.1f} s training  final held-out R² {curve[-1]['r2']:.4f}  "
                  f"{results[name]['peak_rss_gb']:.2f} GB", flush=True)
    comparisons = []
    for method, ours in (("topk", "archsae TopK"), ("ra-topk", "archsae RA-TopK")):
        theirs = [name for name, library, m, _ in ROWS if library == "overcomplete" and m == method and name in results]
        if ours not in results or not theirs:
            continue
        a = results[ours]["curve"]
        best = max(theirs, key=lambda n: results[n]["curve"][-1]["r2"])  # overcomplete at its better rate
        o = results[best]["curve"]
        level = min(a[-1]["r2"], o[-1]["r2"])  # a level both reach
        ra, ro = reach(a, level), reach(o, level)
        comparisons.append({
            "method": method, "archsae": ours, "overcomplete": best, "level_r2": level,
            "archsae_to_level": ra, "overcomplete_to_level": ro, "speedup_to_level": ro["seconds"] / ra["seconds"],
            "archsae_r2_at_its_end": a[-1]["r2"], "archsae_seconds": a[-1]["seconds"],
            "overcomplete_r2_at_archsae_seconds": at_time(o, a[-1]["seconds"]),
        })
        c = comparisons[-1]
        print(f"{method}: both reach held-out R² {level:.4f}: archsae in {ra['seconds']:.1f} s ({ra['step']:.0f} steps), "
              f"{best} in {ro['seconds']:.1f} s ({ro['step']:.0f} steps): {c['speedup_to_level']:.2f}x; in archsae's "
              f"{a[-1]['seconds']:.1f} s: {a[-1]['r2']:.4f} against {c['overcomplete_r2_at_archsae_seconds']}")
    write_json(args.out, {"steps": steps, "every": args.every, "batch": BATCH, "rows": results,
                          "comparisons": comparisons, "torch": torch.__version__, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
