"""The distillation methods of App. C: outlier scores find planted outliers, hull peeling returns hull
vertices layer by layer, and `distill` chooses real tokens for every method but k-means."""

import importlib

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from archsae.config import DistillConfig
from archsae.distill import centroids_path, distill, hull_vertices, outlying, select_candidates
from archsae.errors import ArchsaeError


def _blob_with_outliers(seed=0):
    rng = np.random.default_rng(seed)
    bulk = rng.normal(size=(400, 6))
    far = rng.normal(size=(8, 6))
    far = 8 * far / np.linalg.norm(far, axis=1, keepdims=True)
    return np.concatenate([bulk, far]).astype(np.float32), set(range(400, 408))


@pytest.mark.parametrize("method", ["lof", "isolation_forest", "ocsvm"])
def test_outlier_methods_choose_the_planted_outliers_first(method):
    acts, planted = _blob_with_outliers()
    assert set(outlying(acts, 8, method, seed=0).tolist()) == planted


def test_hull_peeling_takes_the_hull_then_the_hull_of_the_rest():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(300, 2)).astype(np.float32)
    first = set(ConvexHull(acts).vertices.tolist())
    rest = np.setdiff1d(np.arange(300), list(first))
    second = set(rest[ConvexHull(acts[rest]).vertices].tolist())
    chosen = hull_vertices(acts, len(first) + 3, dims=2, seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == len(first) + 3
    assert first <= set(chosen.tolist()) and set(chosen.tolist()) - first <= second


def test_every_method_but_kmeans_chooses_real_tokens_and_saves_them_apart(demo_store, tmp_path):
    sample = demo_store.standardise(demo_store.sample(600, seed=0, split="train")).numpy()
    for method in ("lof", "isolation_forest", "ocsvm", "hull"):
        cfg = DistillConfig(n_centroids=40, method=method, max_points=600)
        C = distill(demo_store, cfg, centroids_path(tmp_path, 0, method=method)).numpy()
        assert C.shape == (40, demo_store.d)
        nearest = np.min(((C[:, None] - sample[None]) ** 2).sum(-1), axis=1)
        assert nearest.max() < 1e-6, method  # each candidate is one of the sampled tokens
        assert centroids_path(tmp_path, 0, method=method).exists()
    assert not centroids_path(tmp_path, 0).exists()  # the k-means file is another one
    with pytest.raises(ArchsaeError, match="at least n'"):
        select_candidates(sample[:10], DistillConfig(n_centroids=20, method="lof", max_points=20))
    with pytest.raises(ArchsaeError, match="distillation method"):
        DistillConfig(method="dbscan")


def _objective(acts, centroids):
    """Mean squared distance of each token to its nearest centroid (k-means' objective)."""
    import faiss

    return float(faiss.knn(acts, centroids, 1)[0].mean())


def test_two_level_kmeans_is_within_a_few_percent_of_flat_kmeans_and_used_above_its_size(monkeypatch):
    """Two unevenly sized, anisotropic blobs: two-level k-means returns exactly n' centroids, seeded, at an objective
    within 4 % of flat k-means'; with as many centroids as tokens it returns the tokens; `kmeans`
    switches to it above TWO_LEVEL_ABOVE."""
    module = importlib.import_module("archsae.distill")  # (archsae.distill is the function)
    rng = np.random.default_rng(0)
    acts = (rng.normal(size=(6000, 12)) * rng.uniform(0.5, 2, size=12)).astype(np.float32)
    acts[:1500] += 3
    flat = module._kmeans_flat(acts, 100, seed=0, n_iter=20)
    two = module.kmeans_two_level(acts, 100, seed=0, n_iter=20)
    assert two.shape == (100, 12) and np.array_equal(two, module.kmeans_two_level(acts, 100, seed=0, n_iter=20))
    assert _objective(acts, two) < 1.04 * _objective(acts, flat)
    every_token = module.kmeans_two_level(acts[:50], 50, seed=0)
    assert np.array_equal(np.unique(every_token, axis=0), np.unique(acts[:50], axis=0))
    monkeypatch.setattr(module, "TWO_LEVEL_ABOVE", 0)
    assert np.array_equal(module.kmeans(acts, 100, seed=0, n_iter=20), two)
