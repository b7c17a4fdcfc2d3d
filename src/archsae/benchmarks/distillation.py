"""Which candidates C make the best archetypal dictionary? (Fel et al. 2025, App. C, Fig. 11)

Each distillation method (config.DISTILL_METHODS) chooses n' candidates from the same number of train
tokens; an A-SAE (delta = 0) is trained on each, `runs` times with independent seeds (token sample,
method seed, W initialisation and encoder all differ between runs). Reported per method: R² and OOD
score (eq. 9) on held-out tokens, stability (eq. 2) between the runs' dictionaries, and the stability
of the candidate sets themselves (the same matching between the runs' C).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..config import DistillationBenchConfig, DistillConfig, TrainConfig, to_dict
from ..distill import centroids_path, distill
from ..evaluate import atoms_of, reconstruct
from ..files import write_json
from ..sae import check_candidate_count, load_sae
from ..store import ActivationStore
from ..train import Job, train_many


def distillation_benchmark(run_dir: str | Path, store: ActivationStore, cfg: DistillationBenchConfig,
                           train_cfg: TrainConfig, device: torch.device | str | None = None) -> dict:
    """Train an A-SAE (`a-{cfg.sparsity}`, its other options from `train_cfg`, whose method is ignored) on the C
    of each method in `cfg.method`, `cfg.runs` times, and score them; results in `run_dir/benchmarks/distillation/
    results.json` ({"methods": {method: {r2, stability, ood, candidates_stability, ...}}}). Finished
    models and candidate sets are reused, and made again when their settings change. Raises ArchsaeError
    on an impossible setting (n' > tokens, or n' < k)."""
    out = Path(run_dir) / "benchmarks" / "distillation"
    base = replace(train_cfg, method="a-" + cfg.sparsity).canonical()
    check_candidate_count(base, cfg.n_centroids, "pass --n-centroids k or more")  # before any distillation
    jobs, candidates = {}, {}
    for method, run in itertools.product(cfg.method, range(cfg.runs)):
        seed = base.seed + run
        dcfg = DistillConfig(n_centroids=cfg.n_centroids, seed=seed, method=method, max_points=cfg.max_points)
        candidates[method, run] = distill(store, dcfg, centroids_path(out, seed, method=method), own_cache=True)
        tcfg = replace(base, seed=seed, centroids_seed=seed)
        jobs[method, run] = Job(tcfg, out / "models" / f"{method}-r{run}", candidates[method, run], own_cache=True)
    train_many(store, list(jobs.values()), device)

    raw = store.sample(cfg.max_tokens, 0, "heldout")
    acts = store.standardise(raw)
    results = {}
    for method in cfg.method:
        r2, ood, atoms = [], [], []
        for run in range(cfg.runs):
            model = load_sae(jobs[method, run].out_dir)
            acts_hat, _ = reconstruct(model, raw)
            atoms.append(atoms_of(model))
            r2.append(metrics.r2(acts, store.standardise(acts_hat)))
            ood.append(metrics.ood_score(atoms[-1], acts))
        pairs = list(itertools.combinations(range(cfg.runs), 2))
        results[method] = {
            "r2": float(np.mean(r2)), "ood": float(np.mean(ood)),
            "stability": float(np.mean([metrics.stability(atoms[i], atoms[j]) for i, j in pairs])),
            "candidates_stability": float(np.mean([metrics.stability(candidates[method, i], candidates[method, j])
                                                   for i, j in pairs])),
            "candidates_ood": float(np.mean([metrics.ood_score(candidates[method, r], acts)
                                             for r in range(cfg.runs)])),
            "r2_runs": r2, "ood_runs": ood}
    summary = {"config": to_dict(cfg), "train": to_dict(base), "held_out_tokens": len(acts), "methods": results}
    write_json(out / "results.json", summary)
    return summary
