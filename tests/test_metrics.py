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


def test_token_metrics_are_the_same_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    A, A_hat = rng.normal(size=(2, 1000, 8))
    Z = np.where(rng.random((1000, 6)) < 0.2, rng.random((1000, 6)), 0.0)
    whole = (metrics.r2(A, A_hat), metrics.connectivity(Z), metrics.negative_interference(Z, rng.normal(size=(6, 8))))
    monkeypatch.setattr(metrics, "CHUNK", 7)
    rng = np.random.default_rng(0)
    A, A_hat = rng.normal(size=(2, 1000, 8))
    Z = np.where(rng.random((1000, 6)) < 0.2, rng.random((1000, 6)), 0.0)
    chunked = (metrics.r2(A, A_hat), metrics.connectivity(Z), metrics.negative_interference(Z, rng.normal(size=(6, 8))))
    assert chunked == pytest.approx(whole, rel=1e-9)


def test_max_cosine_is_eq8_over_all_pairs_and_mmcs_the_mean_best_partner():
    D1 = np.array([[1.0, 0.0], [0.6, 0.8]])
    D2 = np.array([[0.0, -2.0], [1.0, 0.0]])
    # eq. 8: the largest |cos| over all pairs: D1_0 with D2_1 -> 1
    assert metrics.max_cosine(D1, D2) == pytest.approx(1.0)
    # MMCS: atom 0 of D1 best |cos| 1 (D2_1); atom 1: |cos| 0.8 with D2_0, 0.6 with D2_1 -> (1 + 0.8) / 2
    assert metrics.mmcs(D1, D2) == pytest.approx(0.9)
    assert metrics.max_cosine(np.array([[1.0, 0.0]]), np.array([[0.6, 0.8], [-0.8, 0.6]])) == pytest.approx(0.8)
    # one-to-one: D1_0-D2_1 (1) and D1_1-D2_0 (0.8) -> also 0.9 here; a crowded case differs:
    D3 = np.array([[1.0, 0.0], [1.0, 0.01]])
    assert metrics.mmcs(D3, D1) == pytest.approx(1.0, abs=1e-4)
    assert metrics.stability(D3, D1) < 0.85 <= metrics.mmcs(D3, D1)


def test_ranks_on_orthonormal_and_collinear_atoms():
    eye = np.eye(4, 6) * np.array([[1.0], [3.0], [0.5], [2.0]])  # orthogonal atoms of any norm
    assert metrics.stable_rank(eye) == pytest.approx(4.0)
    assert metrics.effective_rank(eye) == pytest.approx(4.0)
    line = np.outer([1.0, -2.0, 3.0], [1.0, 1.0, 0.0])
    assert metrics.stable_rank(line) == pytest.approx(1.0)
    assert metrics.effective_rank(line) == pytest.approx(1.0)
    # singular values of unit atoms e1, e1, e2: sqrt(2), 1 -> stable rank 3 / 2
    D = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.stable_rank(D) == pytest.approx(1.5)
    p = np.array([2**0.5, 1.0]) / (2**0.5 + 1)
    assert metrics.effective_rank(D) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_coherence_on_a_hand_case():
    D = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-3.0, 4.0, 0.0]])
    # |cos| pairs: (0,1) 0, (0,2) 0.6, (1,2) 0.8; an atom with itself does not count
    assert metrics.coherence(D) == pytest.approx(0.8)
    assert metrics.coherence(np.eye(3)) == 0.0
    with pytest.raises(ValueError):
        metrics.coherence(np.ones((1, 3)))


def test_connectivity_on_a_hand_case():
    Z = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    # co-firing pairs (with self): (0,0) (0,1) (1,0) (1,1) (2,2) = 5 of 16; code 3 is dead
    assert metrics.connectivity(Z) == pytest.approx(1 - 5 / 16)
    assert metrics.connectivity(np.ones((2, 4))) == 0.0
    assert metrics.connectivity(np.zeros((2, 4))) == 1.0


def test_sparse_codes_give_the_dense_values_and_lanczos_the_dense_eigenvalue():
    """Codes as a scipy sparse matrix (what evaluate gives, so k = 32,768 fits) score as the same dense codes, through
    the sparse co-firing matrix; the Lanczos eigenvalue of negative interference equals LAPACK's on the dense matrix."""
    import scipy.linalg
    import scipy.sparse

    rng = np.random.default_rng(0)
    n, k, d = 300, 500, 16
    dense = np.zeros((n, k))
    for i in range(n):  # 4 codes per token, some signed: sum_n L0^2 = 4,800 < k^2, the sparse path
        dense[i, rng.choice(k - 20, 4, replace=False)] = rng.normal(size=4)  # the last 20 codes are dead
    D = rng.normal(size=(k, d)) * rng.uniform(0.5, 2.0, size=(k, 1))
    sparse = scipy.sparse.csr_matrix(dense)
    dead = 1 - len(np.unique(sparse.indices)) / k
    assert metrics.dead_codes(sparse) == pytest.approx(metrics.dead_codes(dense)) == pytest.approx(dead)
    assert metrics.l0(sparse) == metrics.l0(dense) == 4
    assert metrics.connectivity(sparse) == metrics.connectivity(dense)
    assert scipy.sparse.issparse(metrics._cofiring(sparse, pattern=True))  # the sparse path was taken
    # eq. 14 written out densely, its 2-norm by LAPACK
    zu = dense * np.linalg.norm(D, axis=1)
    du = D / np.linalg.norm(D, axis=1, keepdims=True)
    m = np.maximum(-(zu.T @ zu / n) * (du @ du.T), 0)
    expected = np.linalg.norm(m, 2)
    assert expected == pytest.approx(scipy.linalg.eigvalsh(m)[-1])  # symmetric, non-negative: its top eigenvalue
    assert metrics.negative_interference(sparse, D) == pytest.approx(expected, rel=1e-5)
    assert metrics.negative_interference(dense, D) == pytest.approx(expected, rel=1e-5)


def test_negative_interference_on_a_hand_case_in_unit_atom_units_per_token():
    D = np.array([[1.0, 0.0], [-0.5, 3**0.5 / 2], [0.0, 5.0]])  # cos(0,1) = -0.5, cos(0,2) = 0, cos(1,2) > 0
    Z = np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    # codes in unit-atom units: column 2 times ||D_2|| = 5. Z^T Z / n (0,1) = (2 + 1) / 2 = 1.5;
    # -(1.5 * -0.5) = 0.75; the rest is <= 0 -> [[0, .75, 0], [.75, 0, 0], [0, 0, 0]], largest eigenvalue 0.75
    assert metrics.negative_interference(Z, D) == pytest.approx(0.75)
    assert metrics.negative_interference(Z, np.eye(3)) == 0.0  # orthogonal atoms never interfere
    # the same reconstruction Z D with atoms rescaled, and the same tokens twice, give the same value
    scale = np.array([2.0, 0.5, 3.0])
    assert metrics.negative_interference(Z / scale, D * scale[:, None]) == pytest.approx(0.75)
    assert metrics.negative_interference(np.concatenate([Z, Z]), D) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shape"):
        metrics.negative_interference(Z, np.eye(4))


def test_plausibility_is_signed_and_hits_its_ends():
    D = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # atoms (k, d); class directions V (c, d) below
    assert metrics.plausibility(D, np.array([[1.0, 0, 0], [0, 3.0, 0]])) == pytest.approx(1.0)
    assert metrics.plausibility(np.array([[1.0, 0, 0]]), np.array([[-1.0, 0, 0]])) == pytest.approx(-1.0)
    # v = (1, 1, 0)/sqrt2: best atom cos 1/sqrt2; v = e3: 0 -> mean 1/(2 sqrt2)
    assert metrics.plausibility(D, np.array([[1.0, 1.0, 0], [0, 0, 1.0]])) == pytest.approx(0.5 / 2**0.5)


def test_code_correlation_is_one_for_permuted_rescaled_codes_and_low_for_unrelated_ones():
    rng = np.random.default_rng(0)
    Z = np.where(rng.random((500, 20)) < 0.2, rng.random((500, 20)), 0.0)
    Z[:, 3] = 0  # a dead code: correlation 0 with everything, in both
    perm = rng.permutation(20)
    assert metrics.code_correlation(Z, Z[:, perm] * rng.uniform(1, 5, 20)) == pytest.approx(19 / 20)
    assert metrics.code_correlation(Z * 1e-9, Z[:, perm] * 1e-9) == pytest.approx(19 / 20)  # any units
    Z[:, 5] = 7.0  # a constant code is dead too, though its float64 variance need not be exactly 0
    assert metrics.code_correlation(Z, Z) == pytest.approx(18 / 20)
    assert metrics.code_correlation(Z, rng.permutation(Z)) < 0.2


@pytest.mark.parametrize("k1, k2, d, candidates", [(300, 300, 20, 32), (1500, 1500, 48, 4), (40, 90, 16, 32),
                                                   (90, 40, 16, 8), (20, 20, 8, 32)])
def test_matching_equals_scipys_exact_assignment_in_float64(k1, k2, d, candidates):
    """Random dictionaries are the hard case for the pruned solver: no atom has a clear partner, so many
    left-out pairs must be proven harmless or added; few candidates force both."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(k1 + k2)
    D1, D2 = rng.normal(size=(k1, d)), rng.normal(size=(k2, d))
    u1, u2 = D1 / np.linalg.norm(D1, axis=1, keepdims=True), D2 / np.linalg.norm(D2, axis=1, keepdims=True)
    cos = np.abs(u1 @ u2.T)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    best = cos[rows, cols].sum()
    r, c, signed = metrics.match_atoms(D1, D2)
    assert len(r) == min(k1, k2) and len(set(c)) == len(c) and (np.diff(r) > 0).all()
    assert cos[r, c].sum() == pytest.approx(best, rel=1e-7)
    assert np.allclose(signed, (u1 @ u2.T)[r, c], atol=1e-6)
    if k1 == k2:
        match = metrics.assign(metrics.unit_atoms(D1), metrics.unit_atoms(D2), candidates=candidates).numpy()
        assert sorted(match) == list(range(k1)) and cos[np.arange(k1), match].sum() == pytest.approx(best, rel=1e-7)


def test_matching_is_exact_when_many_atoms_are_duplicates():
    """Dead or collapsed atoms repeat one direction; rows that share all their candidates admit no full
    matching among them, which the solver must complete."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    D1 = rng.normal(size=(200, 16))
    D1[:60] = D1[0]  # 60 copies of one atom
    D2 = np.concatenate([rng.normal(size=(150, 16)), np.repeat(rng.normal(size=(1, 16)), 50, axis=0)])
    cos = np.abs(metrics.cosines(D1, D2).double().numpy())
    rows, cols = linear_sum_assignment(cos, maximize=True)
    match = metrics.assign(metrics.unit_atoms(D1), metrics.unit_atoms(D2), candidates=8).numpy()
    assert sorted(match) == list(range(200))
    assert cos[np.arange(200), match].sum() == pytest.approx(cos[rows, cols].sum(), rel=1e-7)


def test_matching_is_exact_when_a_kept_pair_is_recomputed_a_bit_larger():
    """Rechecking suspect rows recomputes their products over another number of rows, which can change the last
    float32 bit of a kept pair and make it look violated: it must not be added a second time (the sparse solver
    would see the sum of its two weights). Atoms matched one to one, but for a row that mixes three atoms."""
    from scipy.optimize import linear_sum_assignment

    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    for seed in (10, 49):  # seeds whose rounding triggered it on this machine before the fix
        torch.manual_seed(seed)
        B = unit(torch.randn(200, 768))
        perm = torch.randperm(200)
        A = unit(B[perm] + 0.05 * torch.randn(200, 768))
        A[0] = unit(0.6 * B[perm[0]] + 0.65 * B[perm[1]] + 0.62 * B[perm[2]] + 0.01 * torch.randn(768))
        cos = (A.double() @ B.double().T).abs().numpy()
        rows, cols = linear_sum_assignment(cos, maximize=True)
        match = metrics.assign(A, B, candidates=1).numpy()
        assert sorted(match) == list(range(200))
        assert cos[np.arange(200), match].sum() == pytest.approx(cos[rows, cols].sum(), rel=1e-7)


def test_a_shared_mean_direction_inflates_cosine_stability_and_projecting_it_out_removes_it():
    rng = np.random.default_rng(0)
    mean = 5 * rng.normal(size=256)
    D1, D2 = rng.normal(size=(2, 64, 256)) + mean  # unrelated atoms around the same far-away mean
    assert metrics.stability(D1, D2) > 0.9
    projected = metrics.stability(metrics.project_out(D1, mean), metrics.project_out(D2, mean))
    assert projected == pytest.approx(metrics.stability_null(64, 256), abs=0.05)


def test_soft_identifiability_matches_its_definition_by_brute_force():
    """eq. 18: per class, the (atom, percentile threshold) of best train accuracy, scored on test."""
    rng = np.random.default_rng(0)
    y_train, y_test = (rng.random((200, 3)) < 0.3).astype(float), (rng.random((150, 3)) < 0.3).astype(float)
    z_train = rng.normal(size=(200, 4)) + 2 * np.c_[y_train[:, 0], np.zeros((200, 3))]  # atom 0 ~ class 0
    z_test = rng.normal(size=(150, 4)) + 2 * np.c_[y_test[:, 0], np.zeros((150, 3))]
    got = metrics.soft_identifiability(z_train, y_train, z_test, y_test)
    for j in range(3):
        thresholds = np.percentile(z_train, np.arange(1, 101), axis=0)  # ties: lowest percentile, then atom
        best = max(((np.mean((z_train[:, i] > thresholds[p, i]) == y_train[:, j]), i, thresholds[p, i])
                    for p in range(100) for i in range(4)), key=lambda t: t[0])
        assert got["train"][j] == pytest.approx(best[0])
        assert got["test"][j] == pytest.approx(np.mean((z_test[:, best[1]] > best[2]) == y_test[:, j]))
    assert got["atom"][0] == 0 and got["test"][0] > 0.8  # the planted atom identifies its class


def test_soft_identifiability_is_one_for_codes_equal_to_the_labels_and_checks_shapes():
    y = np.eye(5)[np.arange(40) % 5]
    assert metrics.soft_identifiability(y, y, y, y)["test"].tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="expected codes"):
        metrics.soft_identifiability(y, y[:, :3], y[:10], y)


def test_candidate_cosine_and_project_out_by_definition_and_on_a_wrong_d():
    C = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    D = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, -5.0]])  # cos 1/sqrt2 with C_0; cos -1 with C_1, so its best is 0
    assert metrics.candidate_cosine(D, C) == pytest.approx((2 ** -0.5 + 0.0) / 2)
    assert torch.allclose(metrics.project_out(D, np.array([0.0, 2.0, 0.0])), torch.tensor([[1.0, 0, 0], [0, 0, -5]]))
    with pytest.raises(ValueError, match="shape"):
        metrics.candidate_cosine(D, np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        metrics.project_out(D, np.ones(4))
