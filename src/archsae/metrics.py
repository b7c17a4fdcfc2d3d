"""The dictionary-learning metrics of Fel et al. 2025 (Sec. 3 and App. B), pure functions: arrays in, a float out.

Shapes: activations A (n, d), reconstructions A_hat (n, d), codes Z (n, k), dictionaries D (k, d) with
atoms as rows, class directions V (c, d). Inputs may be torch tensors or numpy arrays (memory-mapped
ones too), and codes also scipy sparse matrices (what `evaluate.reconstruct` gives: at k = 32,768 dense codes
of 20,000 tokens would take 2.6 GB): token-wise metrics read them CHUNK rows at a time, so memory stays bounded
on millions of tokens, and k x k products are chunked, or sparse when the codes are. Metrics on D normalise the
atoms first (the paper assumes unit-norm atoms, App. B). Shape mismatches raise ValueError.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

CHUNK = 8192  # rows per chunk of A, A_hat, Z (k x k products: _rows_per_chunk)
DENSE_MAX = 4096  # matching: dense scipy assignment up to this many atoms, the pruned exact one above


def _chunks(x, dtype=torch.float32, size: int = CHUNK) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], size):
        part = x[i:i + size]
        part = part.toarray() if scipy.sparse.issparse(part) else part
        yield torch.as_tensor(np.asarray(part) if not torch.is_tensor(part) else part).to(dtype)


def _rows_per_chunk(k: int) -> int:
    """Rows of a k-column product to compute at once: 2^24 entries (64 MB in float32), at least 1."""
    return max(1, 2**24 // k)


def _csr(Z) -> scipy.sparse.csr_matrix:
    """Codes Z (n, k) as a float64 CSR matrix of their nonzeros (a dense Z converted CHUNK rows at a time)."""
    if scipy.sparse.issparse(Z):
        Z = scipy.sparse.csr_matrix(Z, dtype=np.float64, copy=True)
    else:
        Z = scipy.sparse.vstack([scipy.sparse.csr_matrix(z.numpy()) for z in _chunks(Z, torch.float64)], format="csr")
    Z.eliminate_zeros()
    return Z


def _shape(name: str, x, d: int | None = None) -> tuple[int, int]:
    shape = tuple(x.shape)
    if len(shape) != 2 or (d is not None and shape[1] != d):
        raise ValueError(f"{name} has shape {shape}; expected {'(·, %d)' % d if d is not None else 'a 2-D array'}")
    return shape  # type: ignore[return-value]


def unit_atoms(D) -> torch.Tensor:
    """D (k, d) as float32 with each row scaled to norm 1 (zero rows stay zero)."""
    _shape("D", D)
    D = torch.as_tensor(np.asarray(D) if not torch.is_tensor(D) else D).float()
    return D / D.norm(dim=1, keepdim=True).clamp_min(1e-12)


def r2(A, A_hat) -> float:
    """R^2 = 1 - ||A - A_hat||_F^2 / ||A - mean(A)||_F^2, mean per feature (Fel et al. 2025, eq. 5).

    At most 1: 1 is a perfect reconstruction, 0 no better than the per-feature mean, negative worse.
    Accumulated in float64. Raises ValueError if the shapes differ.
    """
    n, d = _shape("A", A)
    if tuple(A_hat.shape) != (n, d):
        raise ValueError(f"A {(n, d)} and A_hat {tuple(A_hat.shape)} must have the same shape")
    mean = sum(a.sum(0) for a in _chunks(A, torch.float64)) / n
    sse = sum((a - b).pow(2).sum().item() for a, b in zip(_chunks(A, torch.float64), _chunks(A_hat, torch.float64)))
    sst = sum((a - mean).pow(2).sum().item() for a in _chunks(A, torch.float64))
    return 1.0 - sse / sst


def dead_codes(Z) -> float:
    """Fraction of codes never active on the codes Z (n, k): 1 - (1/k) || sum_i |Z_i| ||_0 (Fel et al. 2025, eq. 6).

    In [0, 1]: 0 = every code fires on some token, 1 = none ever does. Raises ValueError if Z is not 2-D.
    """
    _, k = _shape("Z", Z)
    if scipy.sparse.issparse(Z):
        return 1.0 - np.count_nonzero(np.bincount(_csr(Z).indices, minlength=k)) / k
    fired = torch.zeros(k, dtype=torch.bool)
    for z in _chunks(Z):
        fired |= (z != 0).any(0)
    return 1.0 - fired.float().mean().item()


def l0(Z) -> float:
    """Mean number of non-zero codes per token of the codes Z (n, k). In [0, k]. Raises ValueError if Z is not
    2-D."""
    n, _ = _shape("Z", Z)
    if scipy.sparse.issparse(Z):
        return _csr(Z).nnz / n
    return sum((z != 0).sum().item() for z in _chunks(Z)) / n


def ood_score(D, A) -> float:
    """OOD = 1 - (1/k) sum_i max_j cos(D_i, A_j) (Fel et al. 2025, eq. 9): the mean of `atom_ood`.

    In [0, 2]: 0 = every atom is the direction of some data point; 1 = atoms orthogonal to all data;
    up to 2 for atoms opposite to every data point. Raises ValueError if d differs.
    """
    return atom_ood(D, A).mean().item()


def atom_ood(D, A) -> torch.Tensor:
    """Each atom's OOD score, 1 - max_j cos(D_i, A_j) over the data points A (n, d): (k,) float32 in [0, 2]
    (the per-atom term of Fel et al. 2025, eq. 9). Raises ValueError if d differs."""
    D = unit_atoms(D)
    _shape("A", A, D.shape[1])
    best = torch.full((len(D),), -1.0)
    for a in _chunks(A, size=_rows_per_chunk(len(D))):
        best = torch.maximum(best, (D @ unit_atoms(a).T).max(1).values)
    return 1.0 - best


def cosines(D1, D2) -> torch.Tensor:
    """The (k1, k2) float32 matrix of cosines between the atoms of D1 (k1, d) and D2 (k2, d).
    Raises ValueError if d differs."""
    D1, D2 = unit_atoms(D1), unit_atoms(D2)
    _shape("D2", D2, D1.shape[1])
    return D1 @ D2.T


def match_atoms(D1, D2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The signed (partial) permutation between D1 (k1, d) and D2 (k2, d) that maximises the summed |cos|.

    Returns (rows, cols, cos): min(k1, k2) pairs, rows ascending, atom rows[i] of D1 matched to atom
    cols[i] of D2, with their signed cosine cos[i]. The smaller dictionary is padded with zero atoms,
    and the square problem solved exactly: by scipy's `linear_sum_assignment` on the dense |cos| matrix up
    to DENSE_MAX atoms (under a second at 4,096), by `assign` above. Raises ValueError if d differs.
    """
    A, B = unit_atoms(D1), unit_atoms(D2)
    _shape("D2", B, A.shape[1])
    k1, k2 = len(A), len(B)
    k = max(k1, k2)
    A, B = (torch.cat([X, X.new_zeros(k - len(X), X.shape[1])]) for X in (A, B))
    cols = assign(A, B) if k > DENSE_MAX else _assign_dense((A @ B.T).abs_())
    rows = torch.arange(k)
    keep = (rows < k1) & (cols < k2)
    rows, cols = rows[keep], cols[keep]
    return rows.numpy(), cols.numpy(), (A[rows] * B[cols]).sum(1).numpy()


def assign(A, B, candidates: int = 32, tol: float = 1e-7) -> torch.Tensor:
    """The permutation matching the rows of A (k, d) to the rows of B (k, d) with the largest summed |<a_i, b_j>|:
    cols (k,) int64, row i to B[cols[i]]. Exact, proven by linear-programming duality, without forming the
    k x k matrix for the solver:

    1. one chunked pass keeps each row's `candidates` largest |<a_i, b_j>| (and tau_i, the next one), plus
       enough pairs for a full matching to exist (rows of near-duplicate atoms share their candidates);
    2. scipy's sparse assignment solver (`min_weight_full_bipartite_matching`, LAPJVsp) solves the
       problem restricted to those pairs, giving the match M and its values m_i;
    3. dual potentials p_j (one per column) come from shortest paths (Bellman-Ford) in the graph with an
       edge M(i) -> j of weight m_i - |<a_i, b_j>| for every kept pair: the weight of swapping row i
       from M(i) to j. The duals u_i = -m_i - p_{M(i)}, v_j = p_j are feasible for every kept pair and tight
       on M, so the restricted match is optimal overall iff every left-out pair satisfies
       |<a_i, b_j>| <= m_i + p_{M(i)} - p_j (no left-out pair shortens a path). Rows with
       tau_i <= m_i + p_{M(i)} - max_j p_j pass at once; the others are recomputed exactly, and any
       violating pair is added to the candidates and the problem solved again.

    Equal to scipy's `linear_sum_assignment` on the dense |A B^T| up to `tol` per pair (float32 products);
    two 16,384-atom dictionaries take seconds instead of a minute (benchmarks/README.md). When more
    left-out pairs violate the bound than were kept (tight clusters of near-duplicate atoms, as in
    archetypal dictionaries with k > n'), it solves the dense problem with scipy instead. Raises
    ValueError unless A and B are both (k, d).
    """
    if A.shape != B.shape:
        raise ValueError(f"A {tuple(A.shape)} and B {tuple(B.shape)} must have the same shape")
    k, n = len(A), min(candidates, len(A))
    values, index = [], []
    for a in A.split(CHUNK // 2):
        top = (a @ B.T).abs_().topk(min(n + 1, k), dim=1)
        values.append(top.values.double())
        index.append(top.indices)
    values, index = torch.cat(values), torch.cat(index)
    tau = values[:, n] if n < k else torch.full((k,), -np.inf, dtype=torch.float64)
    r, c = torch.arange(k).repeat_interleave(n), index[:, :n].flatten()
    # Near-duplicate atoms share their candidates, which may then admit no full matching: pair the rows a
    # maximum matching of the candidates leaves free with the free columns, in any order.
    pattern = scipy.sparse.csr_matrix((np.ones(len(r)), (r.numpy(), c.numpy())), shape=(k, k))
    partial = torch.from_numpy(maximum_bipartite_matching(pattern, perm_type="column")).long()
    free_rows = torch.nonzero(partial < 0).flatten()
    free_cols = torch.from_numpy(np.setdiff1d(np.arange(k), partial[partial >= 0].numpy()))
    w = torch.cat([values[:, :n].flatten(), (A[free_rows] * B[free_cols]).sum(1).abs().double()])
    r, c = torch.cat([r, free_rows]), torch.cat([c, free_cols])
    while True:
        graph = scipy.sparse.csr_matrix((2.0 - w.numpy(), (r.numpy(), c.numpy())), shape=(k, k))  # costs > 0
        match = torch.from_numpy(min_weight_full_bipartite_matching(graph)[1]).long()
        matched = c == match[r]
        m = torch.zeros(k, dtype=torch.float64).index_put_((r[matched],), w[matched])
        p = _potentials(match[r], c, m[r] - w, k)
        bound = m + p[match]  # a left-out pair (i, j) is harmless iff |<a_i, b_j>| <= bound_i - p_j
        suspects = torch.nonzero(tau > bound - p.max() + tol).flatten()
        extra, kept = [], r * k + c
        for rows in suspects.split(CHUNK // 2):
            dots = (A[rows] @ B.T).abs_().double()
            i, j = torch.nonzero(dots > bound[rows, None] - p[None, :] + tol, as_tuple=True)
            # A kept pair recomputed over another number of rows may differ in its last float32 bit and look
            # violated; added twice, the sparse matrix would sum its two weights.
            new = ~torch.isin(rows[i] * k + j, kept)
            extra.append((rows[i][new], j[new], dots[i, j][new]))
        added = sum(len(e[0]) for e in extra)
        if added == 0:
            return match
        if added > len(r):  # tightly clustered atoms (e.g. near-duplicates): the dense solver is faster
            return _assign_dense(torch.cat([(a @ B.T).abs_() for a in A.split(CHUNK // 2)]))
        r, c, w = (torch.cat([x, *parts]) for x, parts in zip((r, c, w), zip(*extra)))


def _assign_dense(cost_kk: torch.Tensor) -> torch.Tensor:
    """scipy's exact assignment maximising the summed entries of a (k, k) matrix: cols (k,) int64."""
    return torch.from_numpy(linear_sum_assignment(cost_kk.numpy(), maximize=True)[1]).long()


def _potentials(src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """Shortest-path distances (k,) float64 from a source joined to every node by a 0-weight edge, over the
    edges src -> dst (Bellman-Ford, one vectorised relaxation of all edges per round)."""
    dist = torch.zeros(k, dtype=torch.float64)
    for _ in range(k + 1):
        new = dist.clone().scatter_reduce_(0, dst, dist[src] + weight, reduce="amin")
        if (dist - new).max() <= 1e-12:
            return new
        dist = new
    raise RuntimeError("negative cycle: the restricted assignment was not optimal")


def stability(D1, D2) -> float:
    """Stability = max over signed permutations P of (1/k) Tr(D1^T P D2), unit atoms (Fel et al. 2025, eqs. 2, 7).

    In [0, 1]: 1 = the same dictionary up to the order, sign and norm of its atoms; two random
    dictionaries of k atoms in d dimensions score about sqrt(2 log k / d), not 0 (see `stability_null`).
    The matching is `match_atoms`. Raises ValueError unless both are (k, d).
    """
    if tuple(D1.shape) != tuple(D2.shape):
        raise ValueError(f"dictionaries must share shape (k, d); got {tuple(D1.shape)} and {tuple(D2.shape)}")
    return float(np.abs(match_atoms(D1, D2)[2]).mean())


def best_cosines(D1, D2) -> tuple[torch.Tensor, torch.Tensor]:
    """For each atom of D1 (k1, d) the largest |cos| with an atom of D2 (k2, d), and for each atom of D2 the largest
    with an atom of D1: ((k1,), (k2,)) float32, from one chunked pass over the k1 x k2 cosines (at k = 32,768, ~25 s
    per pass here; `mmcs` both ways round and `max_cosine` all follow from it). Raises ValueError if d differs."""
    D1, D2 = unit_atoms(D1), unit_atoms(D2)
    _shape("D2", D2, D1.shape[1])
    best1, best2 = [], torch.zeros(len(D2))
    for d in D1.split(_rows_per_chunk(len(D2))):
        cos = (d @ D2.T).abs_()
        best1.append(cos.max(1).values)
        best2 = torch.maximum(best2, cos.max(0).values)
    return torch.cat(best1), best2


def max_cosine(D1, D2) -> float:
    """Max cosine = max_{i,j} |cos(D1_i, D2_j)| over all pairs of atoms of D1 (k1, d) and D2 (k2, d), as printed
    in Fel et al. 2025, eq. 8.

    In [0, 1]: 1 = some atom appears (up to sign) in both dictionaries. It reports the single best-shared
    direction, so it is close to 1 for almost any two trained dictionaries; `mmcs` averages over atoms.
    Raises ValueError if d differs.
    """
    return best_cosines(D1, D2)[0].max().item()


def mmcs(D1, D2) -> float:
    """Mean max cosine similarity: MMCS = (1/k1) sum_i max_j |cos(D1_i, D2_j)| (Sharkey et al. 2022): how many
    atoms of D1 reappear in D2, stability without the one-to-one constraint (several atoms of D1 may claim
    the same atom of D2).

    In [0, 1], and >= stability(D1, D2) for dictionaries of equal size: 1 = every atom of D1 appears (up to
    sign) in D2. Raises ValueError if d differs.
    """
    return best_cosines(D1, D2)[0].mean().item()


def stability_null(k: int, d: int, seed: int = 0) -> float:
    """Stability of two independent random dictionaries of k Gaussian atoms in d dimensions: the
    level a stability score must beat to mean anything (float)."""
    g = torch.Generator().manual_seed(seed)
    return stability(torch.randn(k, d, generator=g), torch.randn(k, d, generator=g))


def project_out(D, direction_d) -> torch.Tensor:
    """D (k, d) with the component along `direction_d` (d,) removed from each atom: the atoms as seen
    once the data-mean direction is discounted (Brzozowski & Chung 2026's check of uncentred cosine). Raises
    ValueError if d differs."""
    u = torch.as_tensor(np.asarray(direction_d)).float()
    _shape("D", D, u.shape[0])
    D = torch.as_tensor(np.asarray(D) if not torch.is_tensor(D) else D).float()
    u = u / u.norm().clamp_min(1e-12)
    return D - (D @ u)[:, None] * u


def stable_rank(D) -> float:
    """Stable rank = ||D||_F^2 / ||D||_2^2 on unit atoms (Fel et al. 2025, eq. 10).

    In [1, min(k, d)]: 1 = all atoms collinear; min(k, d) = singular values all equal (atoms spread evenly).
    """
    D = unit_atoms(D).double()
    return (D.pow(2).sum() / torch.linalg.matrix_norm(D, ord=2).pow(2)).item()


def effective_rank(D) -> float:
    """Effective rank = exp(-sum_i s_i log s_i), s the singular values of the unit-atom D normalised to
    sum 1 (Fel et al. 2025, eq. 11; Roy & Vetterli 2007).

    In [1, min(k, d)]: 1 = rank one; min(k, d) = all singular values equal.
    """
    s = torch.linalg.svdvals(unit_atoms(D).double())
    p = s[s > 0] / s.sum()
    return torch.exp(-(p * p.log()).sum()).item()


def coherence(D) -> float:
    """Coherence = max_{i != j} |<D_i, D_j>| on unit atoms (Fel et al. 2025, eq. 12): the largest `nearest_atom`.

    In [0, 1]: 0 = mutually orthogonal atoms; 1 = two atoms share a direction (up to sign).
    Raises ValueError if D has fewer than 2 atoms.
    """
    return nearest_atom(D).max().item()


def duplicate_share(D, threshold: float = 0.99) -> float:
    """The share of atoms of D (k, d) that have another atom at |cos| > `threshold`: near-duplicates, which
    an archetypal dictionary gets when two atoms start on (nearly) the same candidate. In [0, 1]."""
    return (nearest_atom(D) > threshold).float().mean().item()


def nearest_atom(D) -> torch.Tensor:
    """Each atom's largest |cos| with another atom of D (k, d): (k,) float32 in [0, 1], chunked (no k x k matrix).
    Raises ValueError if D has fewer than 2 atoms."""
    D = unit_atoms(D)
    if len(D) < 2:
        raise ValueError("an atom's nearest other atom needs at least 2 atoms")
    best, rows = torch.zeros(len(D)), _rows_per_chunk(len(D))
    for i, d in enumerate(D.split(rows)):
        g = (d @ D.T).abs_()
        g[torch.arange(len(d)), torch.arange(len(d)) + i * rows] = 0  # the atom itself
        best[i * rows:i * rows + len(d)] = g.max(1).values
    return best


def candidate_cosine(D, C) -> float:
    """How far archetypal atoms D (k, d) moved from the candidates C (n', d): the mean over atoms of the
    largest cos with a candidate. 1 = every atom is (the direction of) a candidate. Raises ValueError if d
    differs."""
    _shape("C", C, _shape("D", D)[1])
    C = unit_atoms(C)
    return torch.cat([(d @ C.T).max(1).values for d in unit_atoms(D).split(_rows_per_chunk(len(C)))]).mean().item()


def _cofiring(Z, pattern: bool):
    """Z^T Z (k, k) in float64, of the codes or (pattern=True) of their nonzero pattern (for each pair of codes, the
    number of tokens on which both fire). A scipy CSR matrix when that is the smaller form, i.e. when the codes
    are sparse enough that sum_n L0_n^2 < k^2 (k = 32,768 at L0 = 32 on 20,000 tokens: 2 % of the k^2 entries),
    else a dense torch tensor accumulated over chunks of tokens."""
    n, k = _shape("Z", Z)
    if scipy.sparse.issparse(Z):
        Z = _csr(Z)
        if np.square(np.diff(Z.indptr), dtype=np.float64).sum() < k * k:
            if pattern:
                Z.data[:] = 1.0
            return (Z.T @ Z).tocsr()
    gram = torch.zeros(k, k, dtype=torch.float64)
    for z in _chunks(Z, torch.float64):
        z = (z != 0).double() if pattern else z
        gram += z.T @ z
    return gram


def connectivity(Z) -> float:
    """Connectivity = 1 - ||Z^T Z||_0 / k^2 (Fel et al. 2025, eq. 13, whose d^2 is a typo for k^2):
    the fraction of code pairs (i, j) that never fire on the same token (i = j counts: a live code
    pairs with itself).

    In [0, 1]: 0 = every pair of codes co-fires somewhere (dense, entangled codes); 1 = no code ever
    fires. Co-firing is counted on the non-zero pattern, so signed codes cannot cancel to a false 0. It
    falls as tokens are added (more pairs get a chance to co-fire): compare it on equal numbers of tokens
    (`evaluate` uses CONNECTIVITY_TOKENS).
    """
    _, k = _shape("Z", Z)
    pairs = _cofiring(Z, pattern=True)
    nonzero = pairs.nnz if scipy.sparse.issparse(pairs) else int((pairs > 0).sum())
    return 1.0 - nonzero / k**2


def negative_interference(Z, D) -> float:
    """Negative interference = ||relu(-(Z^T Z / n) * (D D^T))||_2 on unit atoms, the matrix 2-norm (largest
    singular value) as printed in Fel et al. 2025, eq. 14; * is element-wise.

    The codes are taken in unit-atom units, Z_i ||D_i|| (so Z D is unchanged while the atoms are normalised),
    and Z^T Z is divided by the number of tokens n: dictionaries of any scale, and sets of any size, compare.
    >= 0, in squared activation units per token: 0 = no two co-firing codes have atoms at an obtuse angle
    (their reconstructions never cancel); it grows with how often and how strongly co-active atoms oppose
    each other. The matrix is symmetric and non-negative, so its 2-norm is its largest eigenvalue
    (Perron-Frobenius), found by Lanczos iteration (scipy's `eigsh`) on the matrix, which is sparse when the
    codes are (only co-firing pairs enter it; see `_cofiring`): no k x k dense matrix or O(k^3) solver at
    k = 32,768. Raises ValueError unless Z is (n, k) and D (k, d).
    """
    n, _ = _shape("Z", Z)
    norms_k = torch.as_tensor(np.asarray(D) if not torch.is_tensor(D) else D).double().norm(dim=1).numpy()
    Du = unit_atoms(D)
    _shape("Z", Z, len(Du))
    gram = _cofiring(Z, pattern=False)
    if scipy.sparse.issparse(gram):  # the cosines of the co-firing pairs only, a block of rows at a time
        rows = np.repeat(np.arange(gram.shape[0]), np.diff(gram.indptr))
        cos = np.empty(gram.nnz)
        step = _rows_per_chunk(len(Du))
        for start in range(0, len(Du), step):
            lo, hi = gram.indptr[start], gram.indptr[min(start + step, len(Du))]
            block = (Du[start:start + step] @ Du.T).numpy()
            cos[lo:hi] = block[rows[lo:hi] - start, gram.indices[lo:hi]]
        gram.data *= -cos * norms_k[rows] * norms_k[gram.indices] / n
        m = gram.maximum(0)  # relu, sparse
    else:
        norms = torch.from_numpy(norms_k)
        m = torch.relu(-gram * torch.outer(norms, norms) / n * (Du @ Du.T).double()).numpy()
    return _largest_eigenvalue(m)


def _largest_eigenvalue(m) -> float:
    """The largest eigenvalue of a symmetric matrix (dense numpy or scipy sparse): Lanczos (ARPACK), started from
    the all-ones vector, which a non-negative matrix's leading eigenvector is never orthogonal to; dense LAPACK
    below 64 rows, where ARPACK does not apply."""
    if (m.nnz if scipy.sparse.issparse(m) else np.count_nonzero(m)) == 0:
        return 0.0
    if m.shape[0] < 64:
        m = m.toarray() if scipy.sparse.issparse(m) else m
        return float(scipy.linalg.eigh(m, eigvals_only=True, subset_by_index=[len(m) - 1, len(m) - 1])[0])
    v0 = np.full(m.shape[0], m.shape[0] ** -0.5)
    return float(scipy.sparse.linalg.eigsh(m, k=1, which="LA", v0=v0, return_eigenvectors=False)[0])


def plausibility(D, V) -> float:
    """Plausibility = (1/c) sum_i max_j <v_i, D_j> over the unit class directions V (c, d) of a classifier
    head and the unit atoms of D (k, d) (Fel et al. 2025, Sec. 5.2, Table 2).

    In [-1, 1]: 1 = every class direction is an atom of D; about 0 = atoms unrelated to the classes.
    Signed: an atom pointing away from a class does not explain it. Raises ValueError if d differs.
    """
    V, D = unit_atoms(V), unit_atoms(D)
    _shape("D", D, V.shape[1])
    return torch.cat([(v @ D.T).max(1).values for v in V.split(CHUNK)]).mean().item()


def code_correlation(Z1, Z2) -> float:
    """Stability of two models measured on their codes rather than their atoms: the Pearson correlation of
    one-to-one matched codes, Z1 (n, k1) and Z2 (n, k2) on the same n tokens, summed over the matched pairs and
    divided by max(k1, k2) (a code left unmatched counts 0).

    The matching maximises the summed correlation (scipy's `linear_sum_assignment`, on the dense (k1, k2)
    correlation matrix in float64: 8 k1 k2 bytes, 8.6 GB at k = 32,768); dead codes (zero
    variance) correlate 0 with everything. In [-1, 1]: 1 = the codes are the same up to order and
    positive scale, whatever the atoms; about 0 = unrelated. Unlike decoder cosine it does not depend
    on where the data's mean sits. Accumulated over chunks of tokens in float64. Raises ValueError if
    the numbers of tokens differ.
    """
    n, k1 = _shape("Z1", Z1)
    if Z2.shape[0] != n:
        raise ValueError(f"Z1 and Z2 must hold codes of the same tokens; got {n} and {Z2.shape[0]} rows")
    _, k2 = _shape("Z2", Z2)
    s1, s2 = torch.zeros(k1, dtype=torch.float64), torch.zeros(k2, dtype=torch.float64)
    q1, q2 = torch.zeros_like(s1), torch.zeros_like(s2)
    cross = torch.zeros(k1, k2, dtype=torch.float64)
    for a, b in zip(_chunks(Z1, torch.float64), _chunks(Z2, torch.float64)):
        s1, s2, q1, q2 = s1 + a.sum(0), s2 + b.sum(0), q1 + a.pow(2).sum(0), q2 + b.pow(2).sum(0)
        cross += a.T @ b
    cov = cross / n - torch.outer(s1 / n, s2 / n)
    sd1, sd2 = (q1 / n - (s1 / n) ** 2).clamp_min(0).sqrt(), (q2 / n - (s2 / n) ** 2).clamp_min(0).sqrt()
    # Constant up to rounding: a standard deviation below 1e-6 of the code's own RMS (a scale-free test, so codes
    # of any units are treated alike; an all-zero code has RMS 0 and is dead too).
    live1, live2 = sd1 > 1e-6 * (q1 / n).sqrt(), sd2 > 1e-6 * (q2 / n).sqrt()
    corr = torch.where(torch.outer(live1, live2), cov / torch.outer(sd1, sd2).clamp_min(1e-300), 0.0).numpy()
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return float(corr[rows, cols].sum() / max(k1, k2))


def soft_identifiability(train_codes_nk, train_labels_nc, test_codes_mk, test_labels_mc) -> dict[str, np.ndarray]:
    """Soft identifiability (Fel et al. 2025, eq. 18): for each class j, the atom i and threshold lambda (the
    1st to 100th percentiles of z_i on the train codes) that best predict y_j as (z_i > lambda), chosen by
    train accuracy and reported on the test split.

    Codes (n, k) / (m, k) float, labels (n, c) / (m, c) in {0, 1}. Returns float64/int64 arrays of (c,):
    `test` (the accuracy per class, in [0, 1]; the benchmark's score is its mean), `train`, `atom`,
    `threshold`. Ties go to the lowest percentile, then the lowest atom. Memory n * 100 * k floats. Raises
    ValueError for mismatched shapes.
    """
    z, y = np.asarray(train_codes_nk, dtype=np.float64), np.asarray(train_labels_nc, dtype=np.float64)
    zt, yt = np.asarray(test_codes_mk, dtype=np.float64), np.asarray(test_labels_mc, dtype=np.float64)
    if z.ndim != 2 or y.shape != (len(z), y.shape[-1]) or zt.shape[1:] != z.shape[1:] or \
            yt.shape != (len(zt), y.shape[1]):
        raise ValueError(f"expected codes (n, k), labels (n, c) for train and test; got {z.shape}, {y.shape}, "
                         f"{zt.shape}, {yt.shape}")
    n, k = z.shape
    thresholds_pk = np.percentile(z, np.arange(1, 101), axis=0)
    pred = (z[:, None, :] > thresholds_pk[None]).reshape(n, -1).astype(np.float64)  # (n, 100 k)
    accuracy = (pred.T @ y + (1 - pred).T @ (1 - y)) / n  # (100 k, c): agreement of each rule with each class
    best = accuracy.argmax(0)
    pct, atom = np.divmod(best, k)
    threshold = thresholds_pk[pct, atom]
    test = ((zt[:, atom] > threshold) == (yt > 0.5)).mean(0)
    return {"test": test, "train": accuracy[best, np.arange(y.shape[1])], "atom": atom, "threshold": threshold}
