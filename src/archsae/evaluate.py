"""The `evaluate` step: each trained model's metrics on held-out tokens, and stability between runs."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from tqdm import tqdm

from . import metrics
from .classical import Baseline, load_baseline
from .config import ClassicalConfig, EvaluateConfig, TrainConfig, is_archetypal, to_dict
from .errors import ArchsaeError
from .files import read_json, write_json
from .progress import quiet
from .sae import SAE, load_sae
from .store import ActivationStore


def atoms_of(model: SAE | Baseline) -> torch.Tensor:
    """The dictionary (k, d) of an SAE or a classical model."""
    return model.dictionary if isinstance(model, Baseline) else model.atoms().detach()


@torch.no_grad()
def reconstruct(model: SAE | Baseline, acts_nd: torch.Tensor) -> tuple[torch.Tensor, scipy.sparse.csr_matrix]:
    """(A_hat (n, d) float32 tensor, Z (n, k) float32 scipy CSR matrix) for raw activations A (n, d), in chunks of
    2^24 / k tokens. The codes are kept sparse (values and indices): dense, 20,000 tokens at k = 32,768 would take
    2.6 GB; `metrics` takes them as they are, `.toarray()` gives the dense matrix."""
    atoms_kd = atoms_of(model)
    hats, codes = [], []
    for a in acts_nd.split(max(1, 2**24 // len(atoms_kd))):
        z = model.encode(a)
        hats.append(model.decode(z) if isinstance(model, Baseline) else model.decode(z, atoms_kd))
        codes.append(scipy.sparse.csr_matrix(z.cpu().numpy()))
    return torch.cat(hats), scipy.sparse.vstack(codes, format="csr")


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> SAE | Baseline:
    """A trained SAE (`archsae train`, see `load_sae`) or a fitted classical model (`archsae classical`),
    either of which encodes raw activations (n, d) and decodes back to them; `config` is its
    configuration. Classical models run on the CPU. Raises ArchsaeError when the folder holds no
    finished model or its files are damaged."""
    config = Path(model_dir) / "config.json"
    if config.exists() and "classical" in read_json(config):
        return load_baseline(model_dir)
    return load_sae(model_dir, device)


def model_space(store: ActivationStore, cfg: TrainConfig | ClassicalConfig) -> torch.Tensor:
    """The shift (d,) from the centred standardised space to the space `cfg` trained in (0 if centred;
    classical models are fitted centred)."""
    return torch.zeros(store.d) if getattr(cfg, "centre", True) else store.uncentred_mean_d


def find_models(models_dir: str | Path) -> dict[str, Path]:
    """Trained model folders (holding model.safetensors) under `models_dir`, by name."""
    found = {p.parent.name: p.parent for p in sorted(Path(models_dir).glob("*/model.safetensors"))}
    if not found:
        raise ArchsaeError(f"no trained models under {models_dir}: run `archsae train` first")
    return found


def class_directions(store: ActivationStore, backbone=None) -> tuple[torch.Tensor | None, str]:
    """The classifier head's class directions (c, d) mapped into the standardised space (v * std,
    DESIGN.md), when the store holds the pooled-feature space the head reads (its model's
    forward_features); else None. Returns (V, where they came from or why there are none). `backbone`: the
    store's backbone (`load_backbone` of its config), when the caller has it loaded already."""
    config = store.header.get("config", {})
    if not config.get("model") or config.get("layer") or not config.get("pretrained", True):
        return None, "no pretrained classifier head reads this store's layer"
    from .models import load_backbone

    try:
        heads = (backbone or load_backbone(config["model"], pretrained=True)).head_directions()
    except ArchsaeError as e:
        return None, f"head of {config['model']} unavailable: {e}"
    if heads is None or heads.shape[1] != store.d:
        return None, f"{config['model']} has no linear head over d = {store.d} features"
    return heads.float() * store.std_d, f"head of {config['model']} ({heads.shape[0]} classes), v * std"


# Fields that change no model: when a run logs, saves and snapshots, and how many streams read the data (a resume
# is exact at any cadence, and streams see the same batches).
BOOKKEEPING = ("snapshot_every", "heldout_every", "checkpoint_every", "streams")
# Fields runs of one configuration may differ in: their seeds, and the bookkeeping.
SAME_MODEL = ("seed", "data_seed", "centroids_seed", "subset_seed", *BOOKKEEPING)


def training_key(cfg: TrainConfig | ClassicalConfig, candidates_sha256: str | None) -> str:
    """Equal for two runs that are one training (under two names, or trained twice): the whole configuration but
    its `BOOKKEEPING`, seeds included, and C (`candidates_sha256` of config.json; None for a free dictionary)."""
    if isinstance(cfg, TrainConfig):
        cfg = replace(cfg.canonical(), **{f: getattr(TrainConfig(), f) for f in BOOKKEEPING})
    return json.dumps({"config": asdict(cfg), "candidates": candidates_sha256}, sort_keys=True)


def group_label(cfg: TrainConfig | ClassicalConfig, name: str, labels: dict[str, tuple[str, dict]]) -> str:
    """The label of the group of runs `cfg` belongs to: configurations equal but for their seeds (and for
    `SAME_MODEL`'s fields) share one (the first model's folder name without its -s{seed}); a configuration whose
    folder names a label already taken gets the fields in which it differs from that one ("topk (k=256)"), then
    a number if need be. `labels` maps each configuration seen to its (label, fields)."""
    same = {f: getattr(TrainConfig(), f) for f in SAME_MODEL} if isinstance(cfg, TrainConfig) else dict(seed=0)
    fields = {"kind": type(cfg).__name__, **asdict(replace(cfg.canonical(), **same))}
    key = json.dumps(fields, sort_keys=True)
    if key not in labels:
        taken = {label: theirs for label, theirs in labels.values()}
        label = re.sub(r"-s\d+$", "", name)
        if label in taken:  # another configuration's runs carry the same name (e.g. trained at another k)
            label += " (" + ", ".join(f"{f}={v}" for f, v in fields.items() if taken[label].get(f) != v) + ")"
        unique, i = label, 1
        while unique in taken:  # a folder was named like the label this makes
            i += 1
            unique = f"{label} #{i}"
        labels[key] = (unique, fields)
    return labels[key][0]


CONNECTIVITY_TOKENS = 8192  # connectivity falls as tokens are added: always counted on this many (or all, if fewer)


def dictionary_metrics(atoms_kd: torch.Tensor, codes_nk: torch.Tensor, acts_nd: torch.Tensor) -> dict[str, float]:
    """The metrics of one model that need no other run (Fel et al. 2025, eqs. 6, 9-14), codes (n, k) and
    atoms (k, d) on the same held-out tokens acts (n, d)."""
    return {"dead_codes": metrics.dead_codes(codes_nk), "l0": metrics.l0(codes_nk),
            "ood": metrics.ood_score(atoms_kd, acts_nd), "stable_rank": metrics.stable_rank(atoms_kd),
            "effective_rank": metrics.effective_rank(atoms_kd), "coherence": metrics.coherence(atoms_kd),
            "connectivity": metrics.connectivity(codes_nk[:CONNECTIVITY_TOKENS]),
            "negative_interference": metrics.negative_interference(codes_nk, atoms_kd)}


def pair_metrics(atoms: list[torch.Tensor]) -> dict[str, dict[str, float]] | None:
    """Stability (eq. 2), MMCS (`metrics.mmcs`) and max cosine (eq. 8) between every pair of runs' dictionaries
    (k, d): per metric its mean, standard deviation, min and max over the pairs (MMCS both ways round). None for
    fewer than 2 runs."""
    pairs = list(itertools.combinations(range(len(atoms)), 2))
    if not pairs:
        return None
    values = {"stability": [], "mmcs": [], "max_cosine": []}
    for i, j in pairs:
        values["stability"].append(metrics.stability(atoms[i], atoms[j]))
        best_i, best_j = metrics.best_cosines(atoms[i], atoms[j])  # one pass over the k x k cosines for both
        values["mmcs"] += [best_i.mean().item(), best_j.mean().item()]
        values["max_cosine"].append(best_i.max().item())
    return {key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                  "pairs": len(pairs)} for key, v in values.items()}


def evaluate(store: ActivationStore, models_dir: str | Path, cfg: EvaluateConfig, out: str | Path) -> dict:
    """The paper's metric suite (its Table 1) for every model under `models_dir`, on up to `cfg.max_tokens`
    held-out tokens. Each model takes the raw tokens (it carries its normalisation); R^2 compares its
    reconstruction with them in the store's standardised space, the paper's, so `load_model(path)` on raw
    tokens gives the same R^2 (shift-invariant: uncentred models too).

    Returns (and writes to `out`, metrics.json, with the configuration in evaluate.json beside it):
    `models`: per model, R^2 (eq. 5; `r2_raw` the same on raw activations, where high-variance features
    weigh more), dead codes (eq. 6), mean L0, OOD score (eq. 9), stable rank (eq. 10),
    effective rank (eq. 11), coherence (eq. 12), connectivity (eq. 13, on CONNECTIVITY_TOKENS tokens),
    negative interference (eq. 14) and plausibility (Sec. 5.2, when the store's model has a classifier head
    over these features); `groups`: per group of runs (models whose configurations differ only in their
    seeds, see `group_label`), its runs, the `repeats` left out of its pairs (each the same training as an
    earlier run of the group, `training_key`) and, with two or more runs trained apart, stability, MMCS and
    max cosine over pairs of runs (`pair_metrics`): properties of pairs, not of one run; `skipped`, if any, the
    models that could not be scored (a damaged file, ...) with the reason, the others being scored. Raises
    ArchsaeError when no model can be scored.
    """
    raw = store.sample(cfg.max_tokens, cfg.seed, "heldout")
    acts = store.standardise(raw)
    heads, heads_from = class_directions(store)
    found = find_models(models_dir)
    results, atoms, labels, trainings = {}, {}, {}, {}
    skipped = {p.parent.name: "its training did not finish (a checkpoint, no model): run its train command again"
               for p in sorted(Path(models_dir).glob("*/checkpoint.safetensors")) if p.parent.name not in found}
    for name, reason in skipped.items():
        tqdm.write(f"evaluate: skipped {name}: {reason}")
    for name, path in tqdm(found.items(), desc="evaluate", unit="model", **quiet(len(found) < 2)):
        try:
            info = read_json(path / "config.json")
            if info.get("store") not in (None, store.fingerprint):
                raise ArchsaeError("it was trained on another store (its config.json's fingerprint differs)")
            model = load_model(path)
            results[name] = _model_metrics(store, model, name, raw, acts, heads, labels)
            trainings[name] = training_key(model.config, info.get("candidates_sha256"))
        except (ArchsaeError, ValueError) as e:  # one model that cannot be scored does not sink the others
            skipped[name] = str(e)
            tqdm.write(f"evaluate: skipped {name}: {e}")
            continue
        atoms[name] = results[name].pop("atoms")
    if not results:
        raise ArchsaeError(f"no model under {models_dir} could be scored: "
                           + "; ".join(f"{n}: {e}" for n, e in skipped.items()))
    groups = {}
    for group in dict.fromkeys(r["group"] for r in results.values()):
        names = [n for n, r in results.items() if r["group"] == group]
        # Stability is between runs trained apart: a run that is the same training as an earlier one (one model
        # under two names, or trained twice with the same seeds) would pair with it at 1.0; it is left out.
        paired, repeats = {}, []
        for n in names:
            if atoms[n].shape != atoms[names[0]].shape:
                continue
            if trainings[n] in paired:
                repeats.append(n)
                tqdm.write(f"evaluate: {n} is the same training as {paired[trainings[n]]} (configuration, seeds"
                           f"{' and C' if is_archetypal(results[n]['method']) else ''} equal): left out of {group}'s "
                           "stability pairs")
            else:
                paired[trainings[n]] = n
        groups[group] = {"runs": names, **({"repeats": repeats} if repeats else {}),
                         **(pair_metrics([atoms[n] for n in paired.values()]) or {})}
    summary = {"models": results, "groups": groups, **({"skipped": skipped} if skipped else {})}
    write_json(out, summary)
    write_json(Path(out).with_name("evaluate.json"),
               {"config": to_dict(cfg), "held_out_tokens": len(acts), "space": "standardised",
                "connectivity_tokens": min(len(acts), CONNECTIVITY_TOKENS), "plausibility_directions": heads_from})
    return summary


def _model_metrics(store: ActivationStore, model: SAE | Baseline, name: str, raw: torch.Tensor, acts: torch.Tensor,
                   heads: torch.Tensor | None, labels: dict) -> dict:
    """One model's row of metrics.json (and its atoms, under "atoms", for the metrics of pairs)."""
    tcfg = model.config
    shift = model_space(store, tcfg)
    acts_hat, codes = reconstruct(model, raw)
    atoms = atoms_of(model)
    return {"method": tcfg.method, "group": group_label(tcfg, name, labels), "seed": tcfg.seed, "k": tcfg.k,
            "centre": getattr(tcfg, "centre", True), "r2": metrics.r2(acts, store.standardise(acts_hat)),
            "r2_raw": metrics.r2(raw, acts_hat),
            **dictionary_metrics(atoms, codes, acts + shift),
            "plausibility": metrics.plausibility(atoms, heads) if heads is not None else None, "atoms": atoms}
