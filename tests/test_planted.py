"""The planted-dictionary generator that the quality benchmark and the recipe's regression tests rest on."""

import numpy as np
import pytest

from archsae.data.planted import planted_dictionary
from archsae.errors import ArchsaeError


def test_planted_tokens_are_sums_of_known_unit_atoms_with_the_asked_frequencies():
    p = planted_dictionary(20_000, d=16, k=40, active=3, zipf=1.0, seed=2)
    assert p.acts_nd.shape == (20_000, 16) and p.acts_nd.dtype == np.float32
    assert np.allclose(np.linalg.norm(p.atoms_kd, axis=1), 1, atol=1e-6)
    assert p.frequency_k.sum() == pytest.approx(3.0)  # 3 atoms per token
    # Zipf: the frequencies span about the ratio the law sets (drawn without replacement, a little less)
    assert p.frequency_k.max() / p.frequency_k.min() > 10
    # without noise or offset each token lies in the span of 3 atoms: least squares on all 40 leaves no residual
    coef, *_ = np.linalg.lstsq(p.atoms_kd.T, p.acts_nd[:50].T, rcond=None)
    assert np.abs(p.atoms_kd.T @ coef - p.acts_nd[:50].T).max() < 1e-4
    same = planted_dictionary(20_000, d=16, k=40, active=3, zipf=1.0, seed=2)
    assert np.array_equal(same.acts_nd, p.acts_nd)  # deterministic in the seed


def test_offset_noise_and_varying_counts():
    clean = planted_dictionary(10_000, d=32, k=50, active=4, seed=0)
    shifted = planted_dictionary(10_000, d=32, k=50, active=4, offset=7.0, noise=0.1, seed=0)
    assert np.linalg.norm(shifted.mean_d) == pytest.approx(7.0)
    # noise 0.1 of the signal's per-feature std: 1 % of its energy
    residual = shifted.acts_nd - clean.acts_nd - shifted.mean_d
    assert residual.var() / clean.acts_nd.var() == pytest.approx(0.01, rel=0.1)
    varying = planted_dictionary(10_000, d=32, k=50, active=4, varying=True, seed=0)
    assert varying.frequency_k.sum() == pytest.approx(4.0, rel=0.05)  # 1..7 atoms, mean 4
    with pytest.raises(ArchsaeError, match="active"):
        planted_dictionary(10, d=4, k=3, active=5)
