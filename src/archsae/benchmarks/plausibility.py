"""Do the atoms point where the classifier's classes do? (Fel et al. 2025, Sec. 5.2, Table 2)

Plausibility = (1/c) sum_i max_j <v_i, D_j> over the c unit class directions v_i of the model's head,
mapped into the standardised space the SAEs train in (v * std, DESIGN.md). Compared: a free dictionary
and archetypal ones with each delta (0 = A-SAE, > 0 = RA-SAE), at each dictionary size, all with one
sparsity; and two references that need no training: k Gaussian random atoms and the candidates C
themselves (n' atoms, the ceiling an A-SAE with k = n' and W = identity starts from).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import torch

from .. import metrics
from ..config import DistillConfig, PlausibilityBenchConfig, TrainConfig, to_dict
from ..distill import centroids_path_of, distill
from ..errors import ArchsaeError
from ..evaluate import atoms_of, class_directions
from ..files import write_json
from ..sae import check_candidate_count, load_sae
from ..store import ActivationStore
from ..train import Job, train_many


def method_label(sparsity: str, delta: float | None) -> str:
    """'topk' for a free dictionary (delta None), 'a-topk' for delta 0, 'ra-topk (delta 0.1)' otherwise."""
    return sparsity if delta is None else f"a-{sparsity}" if delta == 0 else f"ra-{sparsity} (delta {delta:g})"


def plausibility_benchmark(run_dir: str | Path, store: ActivationStore, cfg: PlausibilityBenchConfig,
                           train_cfg: TrainConfig, distill_cfg: DistillConfig = DistillConfig(),
                           device: torch.device | str | None = None) -> dict:
    """Train one SAE per (dictionary, k) (options from `train_cfg`; C from `distill_cfg`, reused from
    `run_dir/centroids/`) and score each against the head; results in `run_dir/benchmarks/plausibility/
    results.json` ({"rows": {label: {k: plausibility}}, "references": ...}). Its models are reused when rerun
    with the same settings and retrained otherwise. Raises ArchsaeError when the store's model has no
    classifier head over its features (e.g. an inner layer)."""
    dictionaries = [None, *cfg.delta]
    configs = {}
    for delta, k in itertools.product(dictionaries, cfg.k):
        method = cfg.sparsity if delta is None else ("a-" if delta == 0 else "ra-") + cfg.sparsity
        configs[delta, k] = replace(train_cfg, method=method, k=k, delta=delta or train_cfg.delta,
                                    top_k=min(train_cfg.top_k, k), centroids_seed=distill_cfg.seed).canonical()
        check_candidate_count(configs[delta, k], distill_cfg.n_centroids, "pass --distill-n-centroids k or more")
    heads, heads_from = class_directions(store)
    if heads is None:
        raise ArchsaeError(f"plausibility needs class directions: {heads_from}; extract the final "
                           "features (no --layer) of a pretrained classifier")
    out = Path(run_dir) / "benchmarks" / "plausibility"
    candidates = distill(store, distill_cfg, centroids_path_of(run_dir, distill_cfg))
    jobs = {}
    for (delta, k), tcfg in configs.items():
        name = tcfg.method + (f"-delta{delta:g}" if delta else "") + f"-k{k}"
        jobs[delta, k] = Job(tcfg, out / "models" / name, candidates if delta is not None else None, own_cache=True)
    train_many(store, list(jobs.values()), device)

    def score(delta: float | None, k: int) -> float:
        return metrics.plausibility(atoms_of(load_sae(jobs[delta, k].out_dir)), heads)

    rows = {method_label(cfg.sparsity, delta): {str(k): score(delta, k) for k in cfg.k} for delta in dictionaries}
    g = torch.Generator().manual_seed(0)
    references = {"random atoms": {str(k): metrics.plausibility(torch.randn(k, store.d, generator=g), heads)
                                   for k in cfg.k},
                  f"candidates C (n' = {len(candidates)})": metrics.plausibility(candidates, heads)}
    per_job = ("method", "k", "delta", "centroids_seed")  # set per model above, from cfg: not train_cfg's
    summary = {"config": to_dict(cfg), "train": {f: v for f, v in to_dict(train_cfg).items() if f not in per_job},
               "distill": to_dict(distill_cfg),
               "directions": heads_from, "rows": rows, "references": references}
    write_json(out / "results.json", summary)
    return summary
