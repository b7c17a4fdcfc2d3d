"""Multi-run stability experiments: can a user tell stability from a shared start on their own model?

Fel et al. 2025 (Sec. 3, Table 1) report that archetypal SAEs are more stable across runs; Brzozowski &
Chung 2026 answer that their runs share one k-means C with W = identity, so the dictionaries agree before
training starts, and that cosine between atoms trained on uncentred data is inflated by the data mean.
`run_stability` trains R runs of each configuration under each initialisation mode (config.STABILITY_MODES),
keeps each run's dictionary along training (TrainConfig.snapshot_every), and reports:

- stability (eq. 2) between runs at t = 0 and at every kept step: a trajectory against tokens seen, so
  stabilisation (runs that converge) is told apart from agreement present at the start;
- for runs trained on uncentred data (A / std), the same with the data-mean direction projected out of
  the atoms; runs on centred data (the default) are the other side of that comparison;
- null levels: two random Gaussian dictionaries, and two differently seeded k-means dictionaries of k
  atoms on as many tokens as C's k-means (agreement any method confined to the data's hull gets for free),
  and each score minus them;
- matching by the correlation of the runs' codes on the same held-out tokens (metrics.code_correlation),
  which does not look at the atoms at all.

Layout under the run directory: `stability/models/{configuration}-{mode}-r{run}/` (`folder_label`; one folder per
distinct configuration: run 0 of a free dictionary's `shared` mode is run 0 of its `independent` mode, trained once),
and `stability/results.json`, which `report.plots.stability_plots` draws (trajectories, Fel et al. Fig. 3
and Fig. 4).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .config import DistillConfig, StabilityConfig, TrainConfig, sweep_labels, to_dict
from .distill import centroids_path_of, distill, kmeans
from .errors import ArchsaeError
from .evaluate import reconstruct
from .files import read_safetensors_with_metadata, write_json
from .progress import quiet
from .sae import check_candidate_count, load_sae
from .store import ActivationStore
from .train import Job, total_steps, train_many


MARGIN = 0.01  # stability differences smaller than this are read as no difference


def verdict(t0: float, final: float, null: float, null_name: str = "k-means") -> str:
    """One sentence on where a configuration's final stability comes from, read from its stability at t = 0,
    at the end of training, and its null: for an archetypal dictionary the k-means null (two k-means
    dictionaries of k atoms, different seeds: what confinement to the data's hull gives for free), for a free
    one the random null. "no better than the null" when final <= null + MARGIN; else "inherited from the
    start" when training added less than MARGIN to t = 0 (saying how much it lost, if more than MARGIN); else
    "stabilised by training"."""
    if final <= null + MARGIN:
        return f"no better than the {null_name} null: final {final:.3f} against {null:.3f} for two {null_name} dictionaries"
    if final <= t0 + MARGIN:
        lost = f" (training lost {t0 - final:.3f} of it)" if final < t0 - MARGIN else ""
        return f"inherited from the start: the runs agreed at {t0:.3f} before training and end at {final:.3f}{lost}"
    return (f"stabilised by training: {t0:.3f} at t = 0 to {final:.3f}, "
            f"{final - max(t0, null):+.3f} over the larger of t = 0 and the {null_name} null")


def folder_label(base: TrainConfig) -> str:
    """The name of a configuration's run folders under stability/models: its method and every option it uses
    that is off its default (e.g. 'ra-topk-delta16.0'), whatever else the call sweeps, so that a later call
    adding a configuration finds the earlier runs under their names (the table's labels name only what a
    call sweeps)."""
    default = TrainConfig(method=base.method)
    fields = [f.name for f in dataclasses.fields(base) if f.name not in ("method", "snapshot_every", "checkpoint_every")
              and f.name not in base.unused_fields() and getattr(base, f.name) != getattr(default, f.name)]
    return "-".join([base.method] + [f"{f.replace('_', '')}{getattr(base, f)}" for f in fields])


def run_config(base: TrainConfig, mode: str, run: int, centre: bool, cfg: StabilityConfig,
               snapshot_every: int) -> TrainConfig:
    """The training configuration of run `run` of `base` under an initialisation mode (STABILITY_MODES)."""
    seed = base.seed + run
    # Every mode varies the data order: with a tied encoder, shared runs would otherwise be one run repeated.
    common = dict(seed=seed, data_seed=base.data_seed + run, centre=centre, snapshot_every=snapshot_every)
    if mode == "shared" and base.archetypal:  # one C, W = identity: every run's dictionary starts at the same atoms
        return replace(base, **common, centroids_seed=base.seed, w_init="identity").canonical()
    if mode == "shared":  # a free dictionary: the same seed, so the same initial atoms (run 0 is independent's)
        return replace(base, **{**common, "seed": base.seed}).canonical()
    if mode == "perturbed":
        return replace(base, **common, centroids_seed=seed, subset=cfg.perturb_subset, subset_seed=run).canonical()
    if mode == "same-c":  # one C, each run's own W start and encoder (run 0 is independent's)
        return replace(base, **common, centroids_seed=base.seed).canonical()
    return replace(base, **common, centroids_seed=seed).canonical()


def _snapshots(model_dir: Path) -> dict[int, torch.Tensor]:
    out = {}
    for path in sorted((model_dir / "snapshots").glob("step*.safetensors")):
        tensors, metadata = read_safetensors_with_metadata(path, f"delete {model_dir} to train the run again")
        out[int(metadata["step"])] = tensors["atoms"]
    return out


def _mean_pairwise(score, items: list) -> tuple[float, float, float]:
    values = [score(a, b) for a, b in itertools.combinations(items, 2)]
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def run_stability(run_dir: str | Path, store: ActivationStore, bases: list[TrainConfig], cfg: StabilityConfig,
                  distill_cfg: DistillConfig = DistillConfig(), device: torch.device | str | None = None) -> dict:
    """Train `cfg.runs` runs of each configuration in `bases` under each of `cfg.mode` (and uncentred
    twins with `cfg.uncentred`), then measure their stability along training; see the module docstring.

    Returns the results (also written to `run_dir/stability/results.json`): `groups`, one per
    (configuration, mode, space), each with its runs' folders, the trajectory [{step, tokens, stability,
    min, max, stability_projected}], `t0` and `final` stability, R² (mean over runs, held-out tokens),
    `code_correlation`, and the nulls subtracted; and `nulls` per (k, space). Finished runs are reused, so
    an interrupted experiment resumes. Raises ArchsaeError on an impossible setting (e.g. k-means with
    fewer tokens than k).
    """
    out = Path(run_dir) / "stability"
    labels = dict(zip(bases, sweep_labels(bases)))
    spaces = [True, False] if cfg.uncentred else [True]
    # same-c varies nothing a free dictionary has beyond independent's seeds: it would be independent relabelled
    modes = [(base, mode) for base, mode in itertools.product(bases, cfg.mode) if base.archetypal or mode != "same-c"]
    if not modes:
        raise ArchsaeError("nothing to train: --mode same-c applies to archetypal methods only (a-..., ra-...); add "
                           "one with --method, or another --mode")
    for base, mode in modes:  # before any k-means
        check_candidate_count(run_config(base, mode, 0, True, cfg, 1), distill_cfg.n_centroids,
                              "pass --distill-n-centroids k or more")
    jobs: dict[TrainConfig, Job] = {}
    centroids: dict[DistillConfig, torch.Tensor] = {}
    groups = []
    for (base, mode), centre in itertools.product(modes, spaces):
        subset = cfg.perturb_subset if mode == "perturbed" else 1.0
        steps = total_steps(store, replace(base, subset=subset))
        label = labels[base]
        folders = []
        snapshot_every = max(1, steps // cfg.snapshots)
        for r in range(cfg.runs):
            tcfg = run_config(base, mode, r, centre, cfg, snapshot_every)
            if tcfg not in jobs:
                # a run that is also an independent run (run 0 of shared free and same-c) is named as one, so a
                # later call with --mode independent finds it, whichever call trained it first
                also = tcfg == run_config(base, "independent", r, centre, cfg, snapshot_every)
                named = "independent" if also else mode
                name = f"{folder_label(base)}-{named}{'' if centre else '-uncentred'}-r{r}"
                candidates = None
                if tcfg.archetypal:
                    dcfg = replace(distill_cfg, seed=tcfg.kmeans_seed, subset=tcfg.subset, subset_seed=tcfg.subset_seed)
                    if dcfg not in centroids:  # one C per k-means seed and subset, shared by the runs using it
                        centroids[dcfg] = distill(store, dcfg, centroids_path_of(run_dir, dcfg))
                    candidates = centroids[dcfg]
                jobs[tcfg] = Job(tcfg, out / "models" / name, candidates)
            folders.append(jobs[tcfg].out_dir)
        groups.append({"label": label, "method": base.method, "mode": mode,
                       "space": "centred" if centre else "uncentred", "k": base.k,
                       "params": {f: getattr(base, f) for f in ("top_k", "delta", "l1", "l0", "kernel")
                                  if f not in base.unused_fields()},
                       "runs": [str(f.relative_to(out)) for f in folders]})
    train_many(store, list(jobs.values()), device)

    acts = store.sample(cfg.max_tokens, 0, "heldout")
    nulls, null_tokens = _nulls(store, sorted({g["k"] for g in groups}), spaces, cfg, distill_cfg)
    for group in tqdm(groups, desc="stability", unit="group", **quiet(False)):
        group.update(_group_scores(out, group["runs"], store, acts))
        null = nulls[f"{group['k']}-{group['space']}"]
        group["final_minus_null"] = {n: group["final"] - null[n] for n in ("random", "kmeans")}
        if group["final_projected"] is not None:
            group["projected_minus_null"] = {"random": group["final_projected"] - null["random"],
                                             "kmeans": group["final_projected"] - null["kmeans_projected"]}
    results = {"config": to_dict(cfg), "train": [to_dict(b) for b in bases], "held_out_tokens": len(acts),
               "nulls": nulls, "null_tokens": null_tokens, "groups": groups}
    write_json(out / "results.json", results)
    return results


def run_pairs(run_dir: str | Path, store: ActivationStore, groups: dict[str, list[str]], cfg: StabilityConfig,
              distill_cfg: DistillConfig = DistillConfig()) -> dict:
    """`archsae run`'s stability of independently initialised runs, at t = 0 and along training, against the
    k-means null: per group (label -> run folders under `run_dir`/models, trained with snapshots) of two or
    more runs, the scores of `run_stability`'s groups (mode "independent"), and `nulls` per k. Written to
    `run_dir`/run_stability.json in the schema of stability/results.json; {} groups when no group has two
    runs with snapshots."""
    models = Path(run_dir) / "models"
    kept = {label: runs for label, runs in groups.items()
            if len(runs) >= 2 and all((models / r / "snapshots").is_dir() for r in runs)}
    acts = store.sample(cfg.max_tokens, 0, "heldout")
    out = []
    for label, runs in tqdm(kept.items(), desc="stability of the runs", unit="group", **quiet(False)):
        tcfg = load_sae(models / runs[0]).config
        out.append({"label": label, "method": tcfg.method, "mode": "independent", "space": "centred", "k": tcfg.k,
                    "runs": runs, **_group_scores(models, runs, store, acts)})
    nulls, null_tokens = _nulls(store, sorted({g["k"] for g in out}), [True], cfg, distill_cfg) if out else ({}, 0)
    for g in out:
        g["final_minus_null"] = {n: g["final"] - nulls[f"{g['k']}-centred"][n] for n in ("random", "kmeans")}
    results = {"held_out_tokens": len(acts), "nulls": nulls, "null_tokens": null_tokens, "groups": out}
    write_json(Path(run_dir) / "run_stability.json", results)
    return results


def _group_scores(out: Path, runs: list[str], store: ActivationStore, acts_nd: torch.Tensor) -> dict:
    """Stability along training (and with the data mean projected out, for uncentred runs), R² and code
    correlation on the held-out raw tokens `acts_nd` of one group of runs; the
    share of near-duplicate atoms at t = 0 and at the end, and, for archetypal runs, how close the atoms
    stay to their candidates (mean best cos)."""
    trajectories = [_snapshots(out / run) for run in runs]
    r2, codes, near = [], [], []
    for run in runs:
        model = load_sae(out / run)
        tcfg = model.config
        acts_hat, z = reconstruct(model, acts_nd)
        r2.append(metrics.r2(store.standardise(acts_nd), store.standardise(acts_hat)))
        codes.append(z)
        if tcfg.archetypal:
            near.append(metrics.candidate_cosine(model.atoms().detach(), model.dictionary.candidates))
    rows = []
    for step in sorted(set.intersection(*(set(t) for t in trajectories))):
        atoms = [t[step] for t in trajectories]
        mean, lo, hi = _mean_pairwise(metrics.stability, atoms)
        row = {"step": step, "tokens": step * tcfg.batch_size, "stability": mean, "min": lo, "max": hi}
        if not tcfg.centre:  # the data mean, seen from the uncentred space
            row["stability_projected"] = _mean_pairwise(
                metrics.stability, [metrics.project_out(a, store.uncentred_mean_d) for a in atoms])[0]
        rows.append(row)
    first, last = rows[0]["step"], rows[-1]["step"]  # steps every run kept
    return {"trajectory": rows, "t0": rows[0]["stability"], "final": rows[-1]["stability"],
            "final_projected": rows[-1].get("stability_projected"), "r2": float(np.mean(r2)),
            "code_correlation": _mean_pairwise(metrics.code_correlation, codes)[0],
            "duplicates_t0": float(np.mean([metrics.duplicate_share(t[first]) for t in trajectories])),
            "duplicates_final": float(np.mean([metrics.duplicate_share(t[last]) for t in trajectories])),
            "candidate_cosine": float(np.mean(near)) if near else None}


def _nulls(store: ActivationStore, ks: list[int], spaces: list[bool], cfg: StabilityConfig,
           distill_cfg: DistillConfig) -> tuple[dict[str, dict[str, float]], int]:
    """Per 'k-space': stability of two random Gaussian dictionaries, and of two k-means dictionaries of k
    atoms with different seeds (in the uncentred space: the same centroids shifted by the data mean), on
    `cfg.null_points` train tokens or, at 0, as many as C's k-means: two k-means agree more the more tokens
    they see (k = 256 on the default store: 0.70 on 5,000 tokens, 0.77 on 30,000), so by default the null sees
    as many as C. Returns (nulls, the number of tokens they saw)."""
    n_points = cfg.null_points or distill_cfg.max_points
    sample = store.standardise(store.sample(n_points, 1, "train")).numpy()
    nulls = {}
    for k in tqdm(ks, desc="null levels", unit="size", **quiet(False)):  # one per dictionary size k
        c0, c1 = (torch.from_numpy(kmeans(sample, k, seed, distill_cfg.n_iter)) for seed in (0, 1))
        random = metrics.stability_null(k, store.d)  # the same in every space
        for centre in spaces:
            shift = torch.zeros(store.d) if centre else store.uncentred_mean_d
            null = {"random": random, "kmeans": metrics.stability(c0 + shift, c1 + shift)}
            if not centre:
                null["kmeans_projected"] = metrics.stability(metrics.project_out(c0 + shift, shift),
                                                             metrics.project_out(c1 + shift, shift))
            nulls[f"{k}-{'centred' if centre else 'uncentred'}"] = null
    return nulls, len(sample)
