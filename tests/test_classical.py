"""Classical baselines: one interface, each method checked against what it must find on planted data."""

import numpy as np
import pytest
import torch

from archsae import metrics
from archsae.classical import CLASSICAL, ConvexNMF, build_baseline, fit_baseline, load_baseline, nonneg_lasso
from archsae.config import ClassicalConfig
from archsae.errors import ArchsaeError
from conftest import planted_data, recovery


@pytest.fixture(scope="module")
def planted():
    acts, atoms = planted_data(n=4000, d=32, n_base=8)
    return torch.from_numpy(acts[:3000]), torch.from_numpy(acts[3000:]), atoms


@pytest.mark.parametrize("name", CLASSICAL)
def test_every_method_fits_encodes_and_decodes_through_one_interface(planted, name):
    train, test, _ = planted
    model = build_baseline(name, k=16, seed=0, l1=0.01).fit(train)
    codes = model.encode(test)
    assert model.dictionary.shape == (16, 32) and codes.shape == (1000, 16)
    assert torch.isfinite(codes).all()
    # the data has rank 8 (+ noise): every method but the one-hot k-means reconstructs it well
    assert metrics.r2(test, model.decode(codes)) > (0.5 if name == "kmeans" else 0.9)


def test_pca_atoms_are_the_top_right_singular_vectors(planted):
    train, _, _ = planted
    model = build_baseline("pca", k=8).fit(train)
    centred = train.double() - train.double().mean(0)
    top = torch.linalg.svd(centred, full_matrices=False).Vh[:8]
    assert metrics.stability(model.dictionary, top) == pytest.approx(1.0, abs=1e-5)


def test_kmeans_codes_are_one_hot_and_decode_to_the_nearest_centroid(planted):
    train, test, _ = planted
    model = build_baseline("kmeans", k=16).fit(train)
    codes = model.encode(test)
    assert set(codes.unique().tolist()) == {0.0, 1.0} and (codes.sum(1) == 1).all()
    nearest = torch.cdist(test, model.dictionary).argmin(1)
    assert torch.equal(model.decode(codes), model.dictionary[nearest])


def test_semi_nmf_recovers_the_planted_atoms_with_sparse_nonnegative_codes(planted):
    train, test, atoms = planted
    model = build_baseline("semi_nmf", k=16, l1=0.3).fit(train)
    codes = model.encode(test)
    assert (codes >= 0).all() and metrics.l0(codes) < 3  # tokens hold 1 or 2 planted atoms
    # unit atoms: l1 keeps its units (an unconstrained D grows as the L1 shrinks Z, and the penalty fades)
    assert torch.allclose(model.dictionary.norm(dim=1), torch.ones(16), atol=1e-5)
    # alternating minimisation has local minima: half or more of the planted atoms are found exactly (a
    # random dictionary finds none), the others blended (seeds 0, 1, 2 find 9, 14 and 16 of 16)
    _, _, cos = metrics.match_atoms(atoms, model.dictionary)
    assert (np.abs(cos) > 0.99).sum() >= 8 and recovery(model.dictionary, atoms) > 0.85


def test_convex_nmf_atoms_are_nonnegative_mixtures_of_its_basis(planted):
    train, test, _ = planted
    basis = train[:200]
    model = ConvexNMF(k=16, l1=0.01, basis_nd=basis).fit(train)
    assert (model.weights_km >= 0).all()
    assert torch.allclose(model.dictionary, model.weights_km @ basis, atol=1e-5)
    assert torch.allclose(model.dictionary.norm(dim=1), torch.ones(16), atol=1e-5)
    assert (model.encode(test) >= 0).all()


def test_nonneg_lasso_on_orthonormal_atoms_is_soft_thresholding():
    acts = torch.tensor([[1.0, -2.0, 0.3], [0.05, 0.5, 2.0]])
    codes = nonneg_lasso(acts, torch.eye(3), l1=0.1, iters=50)
    assert torch.allclose(codes, torch.relu(acts - 0.1), atol=1e-6)


def test_bad_names_and_shapes_are_user_errors(planted):
    train, _, _ = planted
    with pytest.raises(ArchsaeError, match="must be one of"):
        build_baseline("nmf", k=4)
    model = build_baseline("pca", k=4).fit(train)
    with pytest.raises(ArchsaeError, match="d = 32"):
        model.encode(np.zeros((3, 5), np.float32))
    with pytest.raises(ArchsaeError, match="at most"):
        build_baseline("svd", k=64).fit(train)


@pytest.mark.parametrize("name", ["pca", "ica", "sparse_pca", "svd"])
def test_sklearn_methods_keep_their_transform_as_one_linear_map(planted, name):
    """Z = (A - mean) E^T reproduces scikit-learn's own transform, so E is all a saved model needs."""
    train, test, _ = planted
    model = build_baseline(name, k=8, seed=0, l1=0.5).fit(train)
    expected = torch.as_tensor(model.estimator.transform(test.numpy())).float()
    assert torch.allclose(model.encode(test), expected, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name", CLASSICAL)
def test_a_saved_model_encodes_and_decodes_as_the_fitted_one(planted, name, tmp_path):
    train, test, _ = planted
    cfg = ClassicalConfig(method=name, k=8, l1=0.01, n_iter=5, max_tokens=3000)
    fitted = fit_baseline(train, cfg, tmp_path / name)
    loaded = load_baseline(tmp_path / name)
    assert loaded.config == cfg
    # equal up to float rounding (saved tensors are contiguous copies; FISTA iterates amplify it to ~1e-4)
    assert torch.allclose(loaded.encode(test), fitted.encode(test), atol=1e-3)
    assert torch.allclose(loaded.decode(loaded.encode(test)), fitted.decode(fitted.encode(test)), atol=1e-3)
    assert fit_baseline(train, cfg, tmp_path / name).dictionary.equal(fitted.dictionary)  # reused, not refitted
    with pytest.raises(ArchsaeError, match=r"another configuration \(config.k: 8 there, 4 now; "):
        fit_baseline(train, ClassicalConfig(method=name, k=4, max_tokens=3000), tmp_path / name)
    if name in ("pca", "ica", "sparse_pca", "svd"):  # an impossible k is said before the folder's other k
        with pytest.raises(ArchsaeError, match="finds at most min.n, d. = 32 components; got k = 40"):
            fit_baseline(train, ClassicalConfig(method=name, k=40, max_tokens=3000), tmp_path / name)
