"""The `evaluate` step: each trained model's metrics on held-out tokens, and stability between runs."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .config import EvaluateConfig, to_dict
from .errors import ArchsaeError
from .files import write_json
from .sae import SAE, load_sae
from .store import ActivationStore


@torch.no_grad()
def reconstruct(model: SAE, acts_nd: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_hat (n, d), Z (n, k)) for standardised activations, in chunks."""
    atoms = model.atoms()
    hats, codes = [], []
    for a in acts_nd.split(chunk):
        z = model.encode(a)
        hats.append(model.decode(z, atoms))
        codes.append(z)
    return torch.cat(hats), torch.cat(codes)


def find_models(models_dir: str | Path) -> dict[str, Path]:
    """Trained model folders (holding model.safetensors) under `models_dir`, by name."""
    found = {p.parent.name: p.parent for p in sorted(Path(models_dir).glob("*/model.safetensors"))}
    if not found:
        raise ArchsaeError(f"no trained models under {models_dir}: run `archsae train` first")
    return found


def evaluate(store: ActivationStore, models_dir: str | Path, cfg: EvaluateConfig, out: str | Path) -> dict:
    """Metrics of every model under `models_dir` on up to `cfg.max_tokens` held-out tokens.

    Per model: R^2 (eq. 5, per-feature mean, standardised space), dead codes (eq. 6), mean L0,
    OOD score (eq. 9), and stability (eq. 2) against the other runs of its group (mean over pairs). A
    group is the models whose configurations differ only in their seeds (encoder, W, k-means); its
    label is the first one's folder name without its `-s{seed}`. Written to `out` (metrics.json) with
    the configuration beside it (evaluate.json).
    """
    acts = store.standardise(store.sample(cfg.max_tokens, cfg.seed, "heldout"))
    loaded = {name: load_sae(path) for name, path in find_models(models_dir).items()}
    results, atoms, labels = {}, {}, {}
    for name, (model, tcfg, _) in loaded.items():
        acts_hat, codes = reconstruct(model, acts)
        atoms[name] = model.atoms().detach()
        key = json.dumps(asdict(replace(tcfg.canonical(), seed=0, centroids_seed=-1)), sort_keys=True)
        labels.setdefault(key, re.sub(r"-s\d+$", "", name))
        results[name] = {"method": tcfg.method, "group": labels[key], "seed": tcfg.seed, "k": tcfg.k,
                         "r2": metrics.r2(acts, acts_hat), "dead_codes": metrics.dead_codes(codes),
                         "l0": metrics.l0(codes), "ood": metrics.ood_score(atoms[name], acts)}
    for group in {r["group"] for r in results.values()}:
        names = [n for n, r in results.items() if r["group"] == group]
        for name in names:
            others = [metrics.stability(atoms[name], atoms[o]) for o in names
                      if o != name and atoms[o].shape == atoms[name].shape]
            results[name]["stability"] = float(np.mean(others)) if others else None
    write_json(out, results)
    write_json(Path(out).with_name("evaluate.json"),
               {"config": to_dict(cfg), "held_out_tokens": len(acts), "space": "standardised"})
    return results
