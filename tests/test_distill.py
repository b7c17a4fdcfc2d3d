"""The distillation methods of App. C: outlier scores find planted outliers, hull peeling returns hull
vertices layer by layer, and `distill` chooses real tokens for every method but k-means."""

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
