"""Does one atom per object find the objects? (Fel et al. 2025, Sec. 5.3, App. G, Tables 3 and 4)

For each theme (data.collages.THEMES), `n_train + n_test` collages of 4 distinct objects are rendered and
read by the model (its pooled features, what its classifier head reads). Each method learns a dictionary of
k = number of objects on the standardised train features: the SAEs through the usual training loop (a
store of the train features, k-means C of n_centroids for a-/ra-), the classical methods in memory. Each
object's atom and threshold are chosen on the train codes and its accuracy reported on the test codes
(metrics.soft_identifiability, eq. 18). The accuracy of the rule "never present", 1 - 4 / n_objects, is
reported beside it as the chance level: eq. 18's accuracy counts true negatives.

Layout: `RUN/benchmarks/identifiability/{theme}/` holds the features (features.safetensors), the store,
the SAEs (models/) and an example collage; `results.json` the accuracies (per theme: Table 4; mean over
themes: Table 3).
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import metrics
from ..classical import build_baseline
from ..config import (CLASSICAL, METHODS, DistillConfig, ExtractConfig, IdentifiabilityBenchConfig, TrainConfig,
                      is_archetypal, to_dict)
from ..data.collages import OBJECTS_PER_IMAGE, THEMES, collage_labels, render, sprites_root, theme_sprites
from ..distill import distill
from ..errors import ArchsaeError
from ..evaluate import reconstruct
from ..files import read_json, read_safetensors_with_metadata, save_image, write_json, write_safetensors
from ..models import load_backbone
from ..progress import quiet
from ..sae import load_sae
from ..store import ActivationStore, matrix_store
from ..train import Job, total_steps, train_many


def multi_hot(objects_n4: np.ndarray, n_objects: int) -> np.ndarray:
    """(n, 4) object indices -> (n, n_objects) labels in {0, 1}."""
    labels = np.zeros((len(objects_n4), n_objects), dtype=np.float32)
    np.put_along_axis(labels, objects_n4, 1.0, axis=1)
    return labels


def collage_features(backbone, sprites, objects_n4: np.ndarray, seed: int, batch_size: int = 32,
                     desc: str = "") -> torch.Tensor:
    """Pooled features (n, d) of the collages of `objects_n4` (data.collages.render with `seed`)."""
    feats, images = [], render(sprites, objects_n4, seed)
    with tqdm(total=len(objects_n4), desc=desc, unit="img", **quiet(False)) as bar:
        for start in range(0, len(objects_n4), batch_size):
            batch = list(itertools.islice(images, batch_size))
            feats.append(backbone.pooled(torch.stack([backbone.transform(im) for im in batch])).float())
            bar.update(len(batch))
    return torch.cat(feats)


def _theme_features(out: Path, theme: str, cfg: IdentifiabilityBenchConfig, backbone, root: Path) -> dict:
    """The theme's train/test features and labels, from features.safetensors when made with these settings."""
    path = out / "features.safetensors"
    key = {"theme": theme, "n_train": cfg.n_train, "n_test": cfg.n_test, "seed": cfg.seed,
           "model": backbone.name, "objects": THEMES[theme]}
    if path.exists():
        try:
            split, stored = read_safetensors_with_metadata(path, "")
            if stored == {k: str(v) for k, v in key.items()}:
                return split
        except ArchsaeError:  # a damaged cache: extracted again
            pass
    shutil.rmtree(out / "store", ignore_errors=True)  # new features: a new store (its models are remade: own_cache)
    sprites = theme_sprites(root, theme)
    split = {}
    for name, n, seed in (("train", cfg.n_train, cfg.seed), ("test", cfg.n_test, cfg.seed + 1)):
        objects = collage_labels(len(sprites), n, seed)
        split[name] = collage_features(backbone, sprites, objects, seed, desc=f"{theme} {name}")
        split[name + "_labels"] = torch.from_numpy(multi_hot(objects, len(sprites)))
        if name == "train":  # an example for the report: the first 4 train collages
            sheet = _contact_sheet(list(itertools.islice(render(sprites, objects, seed), 4)))
            save_image(out / "example.png", sheet)
    write_safetensors(path, split, metadata={k: str(v) for k, v in key.items()})
    return split


def _contact_sheet(images: list[Image.Image]) -> Image.Image:
    w, h = images[0].size
    sheet = Image.new("RGB", (w * len(images) + 4 * (len(images) - 1), h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, (i * (w + 4), 0))
    return sheet


def _sae_codes(out: Path, store: ActivationStore, cfg: IdentifiabilityBenchConfig, methods: list[str],
               n_objects: int, train_nd: torch.Tensor, test_nd: torch.Tensor,
               device: torch.device | str | None) -> dict:
    """Train the SAE `methods` (k = n_objects) on `store` (the train features); {method: (train codes, test
    codes)} of the raw features `train_nd`, `test_nd`."""
    base = TrainConfig(k=n_objects, top_k=cfg.top_k, epochs=cfg.epochs, batch_size=min(64, store.n_split("train")),
                       seed=cfg.seed, w_init=cfg.w_init, w_support=0, aux_k=n_objects // 2,
                       dead_tokens=10 * store.n_split("train"), checkpoint_every=10**6, shuffle_shards=1)
    base = replace(base, warmup_steps=max(1, total_steps(store, base) // 20))
    dcfg = DistillConfig(n_centroids=cfg.n_centroids, seed=cfg.seed, max_points=len(train_nd))
    candidates = distill(store, dcfg, out / "centroids.safetensors", own_cache=True) \
        if any(is_archetypal(m) for m in methods) else None
    jobs = []
    for method in methods:
        tcfg = replace(base, method=method).canonical()
        name = method if not tcfg.archetypal or cfg.w_init == "spread" else f"{method}-w-{cfg.w_init}"
        jobs.append(Job(tcfg, out / "models" / name, candidates if tcfg.archetypal else None, own_cache=True))
    train_many(store, jobs, device)
    return {method: tuple(reconstruct(load_sae(job.out_dir), a)[1].toarray() for a in (train_nd, test_nd))
            for method, job in zip(methods, jobs)}


def identifiability_benchmark(run_dir: str | Path, cfg: IdentifiabilityBenchConfig, model: str = "",
                              device: torch.device | str | None = None) -> dict:
    """Soft identifiability of every method in `cfg.method` on every theme in `cfg.theme` (see the module
    docstring) with the timm `model` (default: the one RUN/store was extracted with, else the embedded
    EfficientNet-Lite0). Returns and writes `RUN/benchmarks/identifiability/results.json`: per theme its
    objects and the mean test accuracy of each method (Table 4), and the mean over themes (Table 3).
    Features and trained SAEs are reused when rerun with the same settings, and made again otherwise.
    Raises ArchsaeError when the sprites are missing or a method cannot run (e.g. k-means with fewer
    collages than n_centroids)."""
    run_dir = Path(run_dir)
    out = run_dir / "benchmarks" / "identifiability"
    if not model:
        store_json = run_dir / "store" / "store.json"
        model = (read_json(store_json)["header"].get("model") if store_json.exists() else "") or ExtractConfig.model
    root = sprites_root(cfg.sprites or None)
    backbone = load_backbone(model, pretrained=True)
    sae_methods = [m for m in cfg.method if m in METHODS]
    themes = {}
    for theme in cfg.theme:
        folder = out / theme
        feats = _theme_features(folder, theme, cfg, backbone, root)
        n_objects = feats["train_labels"].shape[1]
        store = matrix_store(feats["train"].numpy(), folder / "store", "collage train features",
                             holdout_every=len(feats["train"]) + 1)  # only row 0 held out: SAEs see all of train
        train_acts, test_acts = feats["train"], feats["test"]  # raw: every model carries its normalisation
        codes = _sae_codes(folder, store, cfg, sae_methods, n_objects, train_acts, test_acts, device) \
            if sae_methods else {}
        for method in (m for m in cfg.method if m in CLASSICAL):
            baseline = build_baseline(method, n_objects, cfg.seed, cfg.l1).fit(store.standardise(train_acts))
            baseline.set_normalisation_(*store.normalisation())
            codes[method] = baseline.encode(train_acts), baseline.encode(test_acts)
        scores = {m: metrics.soft_identifiability(codes[m][0], feats["train_labels"], codes[m][1], feats["test_labels"])
                  for m in cfg.method}
        themes[theme] = {"n_objects": n_objects, "objects": THEMES[theme].split(),
                         "chance": 1 - float(feats["test_labels"].mean()),  # the rule "never present"
                         "accuracy": {m: float(s["test"].mean()) for m, s in scores.items()},
                         "per_object": {m: s["test"].round(4).tolist() for m, s in scores.items()}}
    mean = {m: float(np.mean([t["accuracy"][m] for t in themes.values()])) for m in cfg.method}
    results = {"config": to_dict(cfg), "model": model, "objects_per_image": OBJECTS_PER_IMAGE, "themes": themes,
               "mean": mean, "chance": float(np.mean([t["chance"] for t in themes.values()]))}
    write_json(out / "results.json", results)
    return results
