import numpy as np
import pytest
import torch

from archsae import metrics


def test_r2_matches_its_definition_on_a_hand_case():
    A = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    A_hat = np.array([[1.0, 2.0], [3.0, 3.0], [4.0, 0.0]])
    # per-feature mean (3, 2): SST = (4+0+4) + (0+4+4) = 16; SSE = 1 + 1 = 2
    assert metrics.r2(A, A_hat) == pytest.approx(1 - 2 / 16)
    assert metrics.r2(A, A) == 1.0
    assert metrics.r2(A, np.tile(A.mean(0), (3, 1))) == pytest.approx(0.0)


def test_dead_codes_and_l0_on_a_hand_case():
    Z = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.5, 3.0, 0.0, 0.0]])
    assert metrics.dead_codes(Z) == pytest.approx(0.5)  # codes 2 and 3 never fire
    assert metrics.l0(Z) == pytest.approx(4 / 3)  # 1, 1 and 2 active codes
    assert metrics.dead_codes(torch.zeros(3, 4)) == 1.0


def test_ood_score_is_zero_for_atoms_on_data_and_grows_away_from_it():
    A = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics.ood_score(A[:2] * 5, A) == pytest.approx(0.0, abs=1e-6)
    # atom -e1 has best cos 0 with the data: score = 1 - (1 + 0)/2
    assert metrics.ood_score(np.array([[1.0, 0, 0], [-1.0, 0, 0]]), A) == pytest.approx(0.5)


def test_stability_is_one_for_a_permuted_sign_flipped_rescaled_copy():
    D = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    signs = torch.where(torch.rand(50, generator=torch.Generator().manual_seed(2)) < 0.5, -1.0, 1.0)
    copy = D[perm] * signs[:, None] * torch.rand(50, 1) * 10
    assert metrics.stability(D, copy) == pytest.approx(1.0, abs=1e-6)
    rows, cols, cos = metrics.match_atoms(D, copy)
    assert (perm[cols] == torch.from_numpy(rows)).all() and np.allclose(np.sign(cos), signs[cols].numpy())


def test_stability_of_independent_random_dictionaries_is_low_and_shapes_are_checked():
    D1, D2 = np.random.default_rng(0).normal(size=(2, 64, 512))
    assert 0 < metrics.stability(D1, D2) < 0.25
    with pytest.raises(ValueError, match="shape"):
        metrics.stability(D1, D2[:10])
