"""A -> C: the candidates of the archetypal dictionary (Fel et al. 2025, Sec. 4: k-means centroids)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors.torch import load_file

from .config import DistillConfig, from_dict, to_dict
from .errors import ArchsaeError
from .files import read_json, write_json, write_safetensors
from .store import ActivationStore, Subset


def kmeans(acts_nd: np.ndarray, n_centroids: int, seed: int, n_iter: int = 20) -> np.ndarray:
    """faiss k-means: (n, d) float32 -> centroids (n', d) float32. Raises ArchsaeError if n < n'."""
    acts_nd = np.ascontiguousarray(acts_nd, dtype=np.float32)
    n, d = acts_nd.shape
    if n < n_centroids:
        raise ArchsaeError(f"k-means needs at least n' = {n_centroids} tokens, got {n}; lower --n-centroids")
    km = faiss.Kmeans(d, n_centroids, niter=n_iter, seed=seed, max_points_per_centroid=n // n_centroids + 1,
                      verbose=False)
    km.train(acts_nd)
    return km.centroids.copy()


def centroids_path(run_dir: str | Path, seed: int, subset: float = 1.0, subset_seed: int = 0) -> Path:
    """Where the run keeps the C of a k-means seed (and of a token subset, when subset < 1)."""
    name = f"seed{seed}" + (f"-subset{subset}-{subset_seed}" if subset < 1 else "")
    return Path(run_dir) / "centroids" / f"{name}.safetensors"


def distill(store: ActivationStore, cfg: DistillConfig, out: str | Path) -> torch.Tensor:
    """k-means of up to `cfg.max_points` standardised (centred) train tokens into C (n', d); saved to `out`
    (+ a JSON of its configuration beside it). Reuses an existing result of the same configuration;
    raises ArchsaeError rather than overwrite one of another, or if n' exceeds the sampled tokens."""
    out = Path(out)
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        if from_dict(DistillConfig, read_json(meta_path)["config"]) == cfg:  # fields added since default
            return load_centroids(out)
        raise ArchsaeError(f"{out} holds centroids of another configuration; delete it or use another run directory")
    subset = Subset.of(cfg.subset, cfg.subset_seed)
    sample = store.standardise(store.sample(cfg.max_points, seed=cfg.seed, split="train", subset=subset))
    centroids = torch.from_numpy(kmeans(sample.numpy(), cfg.n_centroids, cfg.seed, cfg.n_iter))
    write_safetensors(out, {"centroids": centroids})
    write_json(meta_path, {"config": to_dict(cfg), "n_points": len(sample), "store": str(store.root)})
    return centroids


def load_centroids(path: str | Path) -> torch.Tensor:
    """Centroids C (n', d) saved by `distill`. Raises ArchsaeError if missing."""
    path = Path(path)
    if not path.exists():
        raise ArchsaeError(f"no centroids at {path}: run `archsae distill` with that seed first")
    return load_file(str(path))["centroids"]
