"""`archsae run`: every step on one configuration into one run directory.

Layout of a run directory:
  run.json                 the resolved RunConfig (+ the image folder)
  images/                  the demo set, when no image folder is given
  store/                   the activation store
  centroids/seed{s}.*      k-means candidates C, one per k-means seed
  models/{method}-s{s}/    one folder per trained SAE (method as in TrainConfig, e.g. ra-topk)
  metrics.json, evaluate.json
  run_stability.json       stability of each method's runs at t = 0, along training, and the k-means null
  report/index.html
Each step reuses a finished result of the same configuration, so a killed run is resumed by re-running it.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from .config import RunConfig, StabilityConfig, stored_train_config, to_dict
from .data import build_demo, list_images
from .distill import centroids_path_of, distill
from .evaluate import evaluate
from .extract import extract
from .files import read_json, refuse_if_different, write_json
from .report import write_report
from .stability import run_pairs
from .train import Job, total_steps, train_many

def run(run_dir: str | Path, cfg: RunConfig = RunConfig(), images: str | Path | None = None) -> Path:
    """Run demo/images -> extract -> distill -> train (each of `cfg.methods`, `cfg.n_runs` independently
    initialised runs each, all in one pass of the store, with snapshots of the dictionary) -> evaluate ->
    stability of the runs (`stability.run_pairs`) -> report. Returns the report's path.

    Raises ArchsaeError if `run_dir` holds a run of another configuration, or on any step's bad input.
    """
    run_dir = Path(run_dir)
    resolved = {"config": to_dict(cfg), "images": str(Path(images).resolve()) if images else None}
    if (run_dir / "run.json").exists():
        refuse_if_different(_comparable(read_json(run_dir / "run.json"), cfg), _comparable(resolved, cfg), run_dir,
                            "a run", "choose another --run-dir")
    items = list_images(images) if images else build_demo(run_dir / "images", cfg.demo)
    write_json(run_dir / "run.json", resolved)  # once the inputs are good: a refused folder blocks no retry
    store = extract(items, run_dir / "store", cfg.extract)
    jobs = []
    # Four snapshots along training (and t = 0): stability at the start tells a shared start from stabilisation.
    train_cfg = replace(cfg.train, snapshot_every=max(1, total_steps(store, cfg.train) // 4))
    for r in range(cfg.n_runs):
        # Runs differ in every initialisation seed: encoder, W, and the k-means of C.
        kmeans_seed = cfg.distill.seed + r
        candidates = None
        for method in cfg.methods:
            tcfg = replace(train_cfg, method=method, seed=cfg.train.seed + r, centroids_seed=kmeans_seed)
            if tcfg.archetypal and candidates is None:
                dcfg = replace(cfg.distill, seed=kmeans_seed)
                candidates = distill(store, dcfg, centroids_path_of(run_dir, dcfg))
            jobs.append(Job(tcfg, run_dir / "models" / f"{method}-s{tcfg.seed}", candidates if tcfg.archetypal else None))
    train_many(store, jobs)
    evaluated = evaluate(store, run_dir / "models", cfg.evaluate, run_dir / "metrics.json")
    pairs = {label: [n for n in g["runs"] if n not in g.get("repeats", [])] for label, g in evaluated["groups"].items()}
    run_pairs(run_dir, store, pairs, StabilityConfig(), cfg.distill)
    return write_report(run_dir, cfg.report)


def _comparable(record: dict, cfg: RunConfig) -> dict:
    """A run.json `record` with its training options read as a model's are (a field added since takes the value
    that reproduces the old run: `stored_train_config`) and without those that none of `cfg.methods` uses, so an
    option added later for one sparsity (JumpReLU's kernel) does not refuse a run that never trained it."""
    train = asdict(stored_train_config(record["config"]["train"]))
    unused = set(train)
    for method in cfg.methods:
        unused &= replace(cfg.train, method=method).unused_fields()
    return {**record, "config": {**record["config"], "train": {k: v for k, v in train.items() if k not in unused}}}
