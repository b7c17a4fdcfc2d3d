"""A -> C: the candidates of the archetypal dictionary: k-means centroids (Fel et al. 2025, Sec. 4), or the
other distillation methods of its App. C (outlier scores, convex-hull vertices)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm, trange

from .config import DistillConfig, from_dict, to_dict
from .errors import ArchsaeError
from .files import (differences, first_three, read_json, read_safetensors, refuse_if_different, write_json,
                    write_safetensors)
from .progress import quiet
from .store import ActivationStore, Subset


TWO_LEVEL_ABOVE = 10**12  # n n' d above which k-means is two-level (flat: ~1 min per 10 iterations at 1e12 here)


def kmeans(acts_nd: np.ndarray, n_centroids: int, seed: int, n_iter: int = 20) -> np.ndarray:
    """k-means centroids (n', d) float32 of the tokens (n, d): faiss's flat k-means, or above TWO_LEVEL_ABOVE
    (n n' d) its two-level form (`kmeans_two_level`), whose cost grows with sqrt(n') instead of n'. Raises
    ArchsaeError if n < n'."""
    acts_nd = np.ascontiguousarray(acts_nd, dtype=np.float32)
    n, d = acts_nd.shape
    if n < n_centroids:
        raise ArchsaeError(f"k-means needs at least n' = {n_centroids} tokens, got {n}; lower --n-centroids")
    if n * n_centroids * d > TWO_LEVEL_ABOVE:
        return kmeans_two_level(acts_nd, n_centroids, seed, n_iter)
    return _kmeans_flat(acts_nd, n_centroids, seed, n_iter)


def kmeans_two_level(acts_nd: np.ndarray, n_centroids: int, seed: int, n_iter: int = 20) -> np.ndarray:
    """Two-level k-means (after faiss's `contrib.clustering.two_level_clustering`, with a progress bar and exact n'):
    sqrt(n') coarse centroids by faiss k-means, every token assigned to its nearest, then faiss k-means inside each
    coarse cluster, with centroids allotted in proportion to the cluster's squared distances to its coarse centroid
    (largest remainders, at most one per token). Allotted by size instead, as faiss does, the objective on the
    default store was 19 % above flat k-means'; by squared distance it is below it (benchmarks/README.md). n n' d
    work per iteration becomes about 2 n sqrt(n') d: n' = 32,768 from 1,000,000 tokens at d = 1,280 in minutes
    instead of hours. (n, d) float32 -> (n', d) float32, seeded; n >= n' (`kmeans` checks it)."""
    import faiss  # loaded on first use, not by `import archsae`

    n, d = acts_nd.shape
    n_coarse = max(1, min(n_centroids, round(n_centroids ** 0.5)))
    coarse = _kmeans_flat(acts_nd, n_coarse, seed, n_iter)
    dist, assign = (a[:, 0] for a in faiss.knn(acts_nd, coarse, 1))
    sizes = np.bincount(assign, minlength=n_coarse)
    sse = np.bincount(assign, weights=dist, minlength=n_coarse)  # each coarse cluster's own k-means objective
    share = sse * n_centroids / sse.sum() if sse.sum() > 0 else sizes * n_centroids / n
    allot = np.minimum(np.floor(share).astype(np.int64), sizes)
    while allot.sum() < n_centroids:  # largest remainders first, never more centroids than tokens
        spare = np.where(allot < sizes, share - allot, -np.inf)
        allot[np.argsort(-spare, kind="stable")[:n_centroids - allot.sum()]] += 1
        allot = np.minimum(allot, sizes)
    order = np.argsort(assign, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for c in tqdm(range(n_coarse), desc=f"k-means, level 2 ({n_coarse} clusters, n' = {n_centroids:,})",
                  unit="cluster", **quiet(n * n_centroids * d < 10**10)):
        members = acts_nd[order[bounds[c]:bounds[c + 1]]]
        if allot[c] == len(members):
            out.append(members)  # as many centroids as tokens: the tokens themselves
        elif allot[c] > 0:
            out.append(_kmeans_flat(members, int(allot[c]), seed + c + 1, n_iter, progress=False))
    return np.concatenate(out)


def _kmeans_flat(acts_nd: np.ndarray, n_centroids: int, seed: int, n_iter: int, progress: bool = True) -> np.ndarray:
    """faiss's flat k-means on every token: (n, d) float32 -> (n', d) float32."""
    import faiss

    n, d = acts_nd.shape
    # Every token is used (max_points_per_centroid); min_points_per_centroid=1 only silences faiss's warning
    # below 39 tokens per centroid, which C's sizes (n' = 4,096 from 88,200 tokens) ask for knowingly.
    # One faiss call per iteration, each from the last one's centroids (the same centroids as one call with
    # niter = n_iter), so that a long k-means shows its progress.
    centroids = None
    for _ in trange(n_iter, desc=f"k-means ({n:,} tokens, n' = {n_centroids:,})", unit="iter",
                    **quiet(not progress or n * n_centroids * d < 10**10)):
        km = faiss.Kmeans(d, n_centroids, niter=1, seed=seed, max_points_per_centroid=n // n_centroids + 1,
                          min_points_per_centroid=1, verbose=False)
        km.train(acts_nd, init_centroids=centroids)
        centroids = km.centroids
    return centroids.copy()


def outlying(acts_nd: np.ndarray, n_points: int, method: str, seed: int) -> np.ndarray:
    """Indices of the `n_points` most outlying rows of `acts_nd` (n, d) under `method`: 'lof' (Local Outlier
    Factor, 20 neighbours), 'isolation_forest' or 'ocsvm' (One-Class SVM, RBF kernel, nu = 0.1), all
    scikit-learn's (Fel et al. 2025, App. C: points far from the bulk lie near the hull of the data)."""
    from sklearn.ensemble import IsolationForest  # the outlier detectors load only when chosen
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    if method == "lof":
        score = -LocalOutlierFactor(n_neighbors=20).fit(acts_nd).negative_outlier_factor_
    elif method == "isolation_forest":
        score = -IsolationForest(random_state=seed).fit(acts_nd).score_samples(acts_nd)
    else:
        score = -OneClassSVM(nu=0.1, gamma="scale").fit(acts_nd).decision_function(acts_nd)
    return np.argsort(-score, kind="stable")[:n_points]


def hull_vertices(acts_nd: np.ndarray, n_points: int, dims: int, seed: int) -> np.ndarray:
    """Indices of `n_points` rows of `acts_nd` (n, d) on the outer convex-hull layers of its PCA projection
    to `dims` dimensions (scipy's qhull): the hull's vertices, then those of the hull of the rest, and so on;
    the last layer is subsampled (seeded) to reach exactly `n_points`. Raises ArchsaeError if qhull fails."""
    from scipy.spatial import ConvexHull, QhullError
    from sklearn.decomposition import PCA

    proj = PCA(dims, random_state=seed).fit_transform(acts_nd)
    left, chosen = np.arange(len(acts_nd)), []
    while sum(map(len, chosen)) < n_points:
        if len(left) <= dims + 1:
            chosen.append(left)
            break
        try:
            layer = left[ConvexHull(proj[left], qhull_options="Qx").vertices]
        except QhullError as e:
            raise ArchsaeError(f"qhull failed on the PCA-{dims} projection ({str(e).splitlines()[0]}); "
                               "lower --hull-dims") from None
        need = n_points - sum(map(len, chosen))
        if len(layer) > need:
            layer = np.random.default_rng(seed).choice(layer, need, replace=False)
        chosen.append(layer)
        left = np.setdiff1d(left, layer)
    return np.concatenate(chosen)


def select_candidates(acts_nd: np.ndarray, cfg: DistillConfig) -> np.ndarray:
    """C (n', d) float32 from the tokens `acts_nd` (n, d) by `cfg.method`. Raises ArchsaeError if n < n'."""
    if len(acts_nd) < cfg.n_centroids:
        raise ArchsaeError(f"{cfg.method} needs at least n' = {cfg.n_centroids} tokens, got {len(acts_nd)}; "
                           "lower --n-centroids")
    if cfg.method == "kmeans":
        return kmeans(acts_nd, cfg.n_centroids, cfg.seed, cfg.n_iter)
    if cfg.method == "hull":
        rows = hull_vertices(acts_nd, cfg.n_centroids, cfg.hull_dims, cfg.seed)
    else:
        rows = outlying(acts_nd, cfg.n_centroids, cfg.method, cfg.seed)
    return np.ascontiguousarray(acts_nd[np.sort(rows)], dtype=np.float32)


def centroids_path(run_dir: str | Path, seed: int, subset: float = 1.0, subset_seed: int = 0,
                   method: str = "kmeans") -> Path:
    """Where the run keeps the C of a seed (and of a token subset, when subset < 1, and of a distillation
    method other than k-means)."""
    name = ("" if method == "kmeans" else f"{method}-") + f"seed{seed}" + \
        (f"-subset{subset}-{subset_seed}" if subset < 1 else "")
    return Path(run_dir) / "centroids" / f"{name}.safetensors"


def centroids_path_of(run_dir: str | Path, cfg: DistillConfig) -> Path:
    """Where the run keeps the C that `cfg` distils (its seed, token subset and method: `centroids_path`)."""
    return centroids_path(run_dir, cfg.seed, cfg.subset, cfg.subset_seed, cfg.method)


def distill(store: ActivationStore, cfg: DistillConfig, out: str | Path, own_cache: bool = False) -> torch.Tensor:
    """C (n', d) chosen by `cfg.method` (k-means by default) from up to `cfg.max_points` standardised
    (centred) train tokens; saved to `out` (+ a JSON of its configuration beside it). Reuses an existing
    result of the same configuration; raises ArchsaeError rather than overwrite one of another (unless
    `own_cache`: `out` is a benchmark's own cache, and is made again), or if n' exceeds the sampled tokens."""
    out = Path(out)
    meta_path = out.with_suffix(".json")
    record = {"config": to_dict(cfg), "store": store.fingerprint}
    if out.exists() and meta_path.exists():
        stored = read_json(meta_path)
        stored = {"config": to_dict(from_dict(DistillConfig, stored["config"])),  # fields added since: defaults
                  "store": stored.get("store")}
        changed = differences(stored, record)
        if changed and own_cache:  # a benchmark's own C: made again
            tqdm.write(f"distill: {out} was made with other settings ({first_three(changed)}); making it again",
                       file=sys.stderr)
            meta_path.unlink()  # first: if killed, no record describes the old or a half-written C
        else:
            made = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in stored["config"].items()
                            if record["config"][key] != value)
            refuse_if_different(stored, record, out, "centroids", f"to use it, pass {made} (with the --distill- prefix "
                                "in stability and the benchmarks); else use another run directory" if made else
                                "it was made from another store: use another run directory")
            return load_centroids(out)
    subset = Subset.of(cfg.subset, cfg.subset_seed)
    sample = store.standardise(store.sample(cfg.max_points, seed=cfg.seed, split="train", subset=subset), inplace=True)
    centroids = torch.from_numpy(select_candidates(sample.numpy(), cfg))
    write_safetensors(out, {"centroids": centroids})
    write_json(meta_path, {**record, "n_points": len(sample)})
    return centroids


def load_centroids(path: str | Path) -> torch.Tensor:
    """Centroids C (n', d) saved by `distill`. Raises ArchsaeError if missing."""
    path = Path(path)
    if not path.exists():
        raise ArchsaeError(f"no centroids at {path}: run `archsae distill` with that seed first")
    return read_safetensors(path, "delete it and run `archsae distill` again")["centroids"]
