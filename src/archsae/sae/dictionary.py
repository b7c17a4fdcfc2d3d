"""Dictionaries D (k, d): free unit-norm atoms, or archetypal atoms in (near) the convex hull of C.

Each dictionary builds D with `forward()` (once per step) and restores its constraint with
`project_()`, called once after each optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FreeDictionary(nn.Module):
    """k free atoms of R^d, kept unit-norm by renormalising after each step."""

    def __init__(self, k: int, d: int, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, d, generator=generator))
        self.project_()

    @property
    def k(self) -> int:
        return self.weight.shape[0]

    def forward(self) -> torch.Tensor:
        return self.weight

    @torch.no_grad()
    def project_(self) -> None:
        self.weight /= self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def resample_(self, rows_m: torch.Tensor, directions_md: torch.Tensor, live_k: torch.Tensor) -> None:
        """Atoms rows_m (m,) int64 become the unit directions_md (m, d) (`SAE.resample_dead_`; live_k unused)."""
        self.weight[rows_m] = F.normalize(directions_md, dim=1)

    def code_parameters(self) -> list[nn.Parameter]:
        """The parameters whose first axis indexes atoms."""
        return [self.weight]

    def code_buffers(self) -> list[torch.Tensor]:
        """The buffers whose first axis indexes atoms: none."""
        return []


def _simplex_threshold(v_nm: torch.Tensor, theta_n1: torch.Tensor) -> torch.Tensor:
    """Michelot's (1986) fixed point: from theta below each row's threshold, theta <- (sum of the entries above
    theta - 1) / their count until the set above theta stops shrinking. In exact arithmetic theta only grows;
    rounding can lower it (the sum cancels against 1), which could cycle between two sets, so it is kept
    non-decreasing: the set then only shrinks, and the loop ends within m passes."""
    count = None
    for _ in range(v_nm.shape[1] + 2):
        above = v_nm > theta_n1
        new_count = above.sum(1, keepdim=True)
        if count is not None and torch.equal(new_count, count):
            return theta_n1
        count = new_count
        theta_n1 = torch.maximum(theta_n1, torch.where(above, v_nm, 0).sum(1, keepdim=True).sub_(1) / count)
    raise RuntimeError("simplex projection did not converge (a bug: the set above theta must shrink)")


@torch.no_grad()
def project_simplex_(w_nm: torch.Tensor, warm: int = 64, chunk_entries: int = 1 << 22) -> torch.Tensor:
    """Each row of w (n, m) replaced, in place, by its Euclidean projection onto the probability simplex
    {w >= 0, sum w = 1}: (w - theta) clamped at 0, with the row's theta that makes it sum to 1 (Held et al.
    1974; Duchi et al. 2008, eq. 3). theta comes from `_simplex_threshold`, started at max - 1 on the row's
    `warm` largest entries, whose theta is a lower bound of the whole row's: a near-simplex W then takes one
    or two passes over the full row instead of ~30. Rows in chunks of about `chunk_entries` entries bound the
    temporary memory. w: float tensor (n, m), any device. Returns w. Raises RuntimeError only if the fixed point
    fails to converge, which its monotone threshold rules out (a bug, not a user error).

    Unlike clamping at 0 and dividing by the row sum (the authors' implementation), the projection subtracts
    one threshold from every entry: entries that the optimiser's noise lifts from 0 fall back to 0 instead of
    accumulating, and the large entries are not shrunk by the others' growth, so W stays sparse and atoms do
    not drift to the mean of their candidates (benchmarks/README.md, "The simplex projection")."""
    m = w_nm.shape[1]
    for rows in w_nm.split(max(1, chunk_entries // max(1, m))):
        top = rows.topk(warm, dim=1).values if m > warm else rows
        theta = _simplex_threshold(top, top.max(1, keepdim=True).values - 1)
        if m > warm:
            theta = _simplex_threshold(rows, theta)
        rows.sub_(theta).clamp_(min=0)
    return w_nm


def spread_columns(candidates_nd: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """m <= n' distinct candidates, (m,) int64: a seeded first one, then each the candidate whose largest |cos|
    with those chosen so far is smallest (farthest-point sampling in angle; Gonzalez 1985). The atoms start
    on the most distinct directions of C, rare ones included, instead of a random m of the k-means centroids,
    which, like the tokens, crowd where the data is dense (|cos|, as in the stability metric: a candidate and
    its opposite count as one direction). Costs m products of (n', d) by (d,), bound by memory: on 2 cores at
    d = 1,280, 2.5 s for m = 2,560 of n' = 4,096, and 11 ms per atom at the paper's n' = 32,768 (70 s for
    m = 5 d = 6,400; it would take 6 min for m = n' = 32,768, where it picks every candidate and
    `_initial_columns` uses a permutation instead)."""
    unit = F.normalize(candidates_nd.float(), dim=1)
    cols = torch.empty(m, dtype=torch.long)
    cols[0] = int(torch.randint(len(unit), (1,), generator=generator))
    closest_n = (unit @ unit[cols[0]]).abs()
    for i in range(1, m):
        cols[i] = int(closest_n.argmin())
        closest_n = torch.maximum(closest_n, (unit @ unit[cols[i]]).abs())
    return cols


def _initial_columns(k: int, candidates_nd: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """The candidate each atom starts on (identity / permuted / spread init), (k,) int64; for k > n' the
    order repeats in blocks."""
    n_prime = len(candidates_nd)
    if mode == "identity":
        return torch.arange(k) % n_prime
    if mode == "permuted" or (mode == "spread" and k >= n_prime):  # spread would take every candidate: same set
        blocks = [torch.randperm(n_prime, generator=generator) for _ in range(-(-k // n_prime))]
        return torch.cat(blocks)[:k]
    if mode == "spread":
        return spread_columns(candidates_nd, k, generator)
    raise ValueError(f"unknown W init {mode!r}")


def _dirichlet(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    w = -torch.rand(*shape, generator=generator).clamp_min(1e-12).log()  # flat Dirichlet via exponentials
    return w / w.sum(1, keepdim=True)


def init_weights(k: int, candidates_nd: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """A dense row-stochastic W (k, n') over the candidates C (n', d).

    identity: atom i starts as C_{i mod n'} (the paper's eye(k, n'), extended so k > n' has no zero atom);
    permuted: atom i starts as C_{pi(i)}, pi a seeded permutation (repeated blocks when k > n');
    spread: atom i starts on the i-th candidate of `spread_columns` (a seeded first, then farthest in angle;
    with k >= n' every candidate is taken, so as permuted);
    random: rows drawn from a flat Dirichlet (seeded).
    """
    n_prime = len(candidates_nd)
    if mode == "random":
        return _dirichlet((k, n_prime), generator)
    w = torch.zeros(k, n_prime)
    w[torch.arange(k), _initial_columns(k, candidates_nd, mode, generator)] = 1.0
    return w


def nearest_candidates(candidates_nd: torch.Tensor, cols_k: torch.Tensor, m: int, chunk: int = 1024) -> torch.Tensor:
    """(k, m) int64: for each atom, its starting candidate cols_k[i] then that candidate's m - 1 nearest
    other candidates (Euclidean), in chunks of `chunk` atoms."""
    out = []
    sq = candidates_nd.pow(2).sum(1)
    for cols in cols_k.split(chunk):
        dist = sq[cols, None] - 2 * candidates_nd[cols] @ candidates_nd.T + sq[None, :]
        dist[torch.arange(len(cols)), cols] = -float("inf")  # the atom's own candidate comes first
        out.append(dist.topk(m, dim=1, largest=False).indices)
    return torch.cat(out)


def init_support(k: int, n_prime: int, m: int, mode: str, candidates_nd: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse row-stochastic W as (support (k, m) int64 candidate indices, weights (k, m)).

    identity / permuted / spread: atom i starts exactly on the same candidate as with a dense W, and may move
    within the convex hull of that candidate and its m - 1 nearest neighbours; random: m seeded random
    candidates per atom with flat-Dirichlet weights.
    """
    if mode == "random":
        support = torch.cat([torch.rand(len(rows), n_prime, generator=generator).topk(m, dim=1).indices
                             for rows in torch.arange(k).split(1024)])
        return support, _dirichlet((k, m), generator)
    support = nearest_candidates(candidates_nd, _initial_columns(k, candidates_nd, mode, generator), m)
    weights = torch.zeros(k, m)
    weights[:, 0] = 1.0
    return support, weights


def _tangent(grad_km: torch.Tensor) -> torch.Tensor:
    """W's gradient (k, m) with each row's mean removed: its part in the plane {sum w = 1} of the simplex.

    The rest, a constant per row, is a null direction of the projected step (`project_simplex_` of w + c 1
    is that of w), yet it is the largest part of the gradient: W's candidates are nearby and nearly parallel,
    so <dL/dD_i, C_j> is nearly the same for every candidate j of a row. Left in, it fills Adam's second
    moment and shrinks the steps that move the atom within its hull, by a factor that grows with C's distance
    from the origin (RA-TopK, planted `large`: recovery 0.855 -> 0.909; benchmarks/README.md, "W's gradient in
    the simplex's plane"). With plain SGD (and the gradient-norm clip inactive) it changes nothing."""
    return grad_km - grad_km.mean(1, keepdim=True)


class ArchetypalDictionary(nn.Module):
    """D = (W C + Lambda) exp(s), Fel et al. 2025, eq. 4 (RA-SAE; delta = 0 is A-SAE).

    C (n', d) fixed candidates (k-means centroids of the standardised activations), W (k, n') row-stochastic
    (W >= 0, W 1 = 1), Lambda = delta U with ||U_i||_2 <= 1, so ||Lambda_i||_2 <= delta in the units of C
    (standardised activations, as in the paper; a centroid's norm is about sqrt(d) times the share of
    variance it keeps). Learning U rather than Lambda makes Lambda's step scale with delta: Adam moves
    each coordinate of U by about lr per step, so Lambda can reach its bound in about 1 / (lr sqrt(d)) steps
    whatever delta, and a sweep of delta (Fel et al. Fig. 4) changes how far atoms may leave the hull, not
    how fast. With delta = 0 there is no U at all, so the constraint is exact and no 0/0 arises.

    W's gradient reaches the optimiser with each row's mean removed (`_tangent`), then each row of W is
    projected onto the simplex after the step (`project_`).

    `support` = m > 0 keeps only m candidates per row of W (the atom's starting candidate and its
    nearest neighbours; see `init_support`): W is stored as (k, m) weights over a fixed (k, m) index
    buffer, and D is built by gathering, which costs k m d instead of k n' d and holds k m instead of
    k n' parameters (+ Adam state). support = 0 (or >= n') is the paper's dense W.

    As in the authors' implementation, D is multiplied by a learned positive scalar exp(s) (it changes no
    atom's direction); we start it at 1 / mean ||C_i|| so the initial atoms have unit mean norm like a free
    dictionary's, instead of spending the first steps shrinking codes against centroids of norm ~ sqrt(d)
    in standardised units.
    """

    def __init__(self, candidates_nd: torch.Tensor, k: int, delta: float, w_init: str, generator: torch.Generator,
                 support: int = 0):
        super().__init__()
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        n_prime, d = candidates_nd.shape
        self.register_buffer("candidates", candidates_nd.float().contiguous())
        empty = w_init == "empty"  # shapes only, for load_state_dict: W's init takes seconds to minutes
        if 0 < support < n_prime:
            idx, weights = ((torch.zeros(k, support, dtype=torch.int64), torch.zeros(k, support)) if empty
                            else init_support(k, n_prime, support, w_init, self.candidates, generator))
            self.register_buffer("support", idx)
        else:
            weights = torch.zeros(k, n_prime) if empty else init_weights(k, self.candidates, w_init, generator)
            self.support = None
        self.weights = nn.Parameter(weights)
        self.weights.register_hook(_tangent)  # kept by load_state_dict (copies into W), lost with assign=True
        # delta is a buffer, so a model saved with a delta resolved from a relative setting reloads as is.
        self.register_buffer("delta", torch.tensor(float(delta)))
        self.relax = nn.Parameter(torch.zeros(k, d)) if delta > 0 else None  # U, with Lambda = delta U
        mean_norm = self.candidates.norm(dim=1).mean().clamp_min(1e-12)
        self.log_scale = nn.Parameter(-mean_norm.log().reshape(()))

    @property
    def k(self) -> int:
        return self.weights.shape[0]

    def dense_weights(self) -> torch.Tensor:
        """W as a dense (k, n') matrix (for analysis; training never builds it when W is sparse)."""
        if self.support is None:
            return self.weights.detach()
        w = torch.zeros(self.k, len(self.candidates), device=self.weights.device)
        return w.scatter_add_(1, self.support, self.weights.detach())

    def relaxation(self) -> torch.Tensor | None:
        """Lambda = delta U (k, d), in the units of C; None for an A-SAE (delta = 0)."""
        return None if self.relax is None else self.delta * self.relax

    def forward(self) -> torch.Tensor:
        if self.support is None:
            atoms = self.weights @ self.candidates
        else:
            atoms = F.embedding_bag(self.support, self.candidates, per_sample_weights=self.weights, mode="sum")
        if self.relax is not None:
            atoms = atoms + self.delta * self.relax
        return atoms * self.log_scale.exp()

    @torch.no_grad()
    def project_(self) -> None:
        """Each row of W projected onto the probability simplex (`project_simplex_`); U_i scaled to norm <= 1."""
        project_simplex_(self.weights)
        if self.relax is not None:
            self.relax /= self.relax.norm(dim=1, keepdim=True).clamp_min(1.0)

    @torch.no_grad()
    def resample_(self, rows_m: torch.Tensor, directions_md: torch.Tensor, live_k: torch.Tensor) -> None:
        """Atoms rows_m (m,) int64 restart on candidates of C, each the one closest in angle to its direction
        (directions_md (m, d)) among those no other atom of this call and no live atom (live_k bool (k,)) has as
        its main candidate, so no duplicate is made: W one-hot on it (with a support, its nearest neighbours
        as `init_support`), Lambda = 0, so the atom stays in the hull (`SAE.resample_dead_`)."""
        score_mn = directions_md @ F.normalize(self.candidates, dim=1).T
        main_k = self.weights.argmax(1) if self.support is None else self.support.gather(
            1, self.weights.argmax(1, keepdim=True)).squeeze(1)
        taken_n = torch.zeros(len(self.candidates), dtype=torch.bool, device=score_mn.device)
        taken_n[main_k[live_k]] = True
        cols = []
        for score_n in score_mn:  # greedy, in row order (m <= n / 4 per call); all taken (n' = k): any goes
            cols.append(score_n.masked_fill(taken_n & ~taken_n.all(), -torch.inf).argmax())
            taken_n[cols[-1]] = True
        cols_m = torch.stack(cols)
        self.weights[rows_m] = 0.0
        if self.support is None:
            self.weights[rows_m, cols_m] = 1.0
        else:
            self.support[rows_m] = nearest_candidates(self.candidates, cols_m, self.support.shape[1])
            self.weights[rows_m, 0] = 1.0
        if self.relax is not None:
            self.relax[rows_m] = 0.0

    def code_parameters(self) -> list[nn.Parameter]:
        """The parameters whose first axis indexes atoms (W, and U for an RA-SAE)."""
        return [self.weights] + ([self.relax] if self.relax is not None else [])

    def code_buffers(self) -> list[torch.Tensor]:
        """The buffers whose first axis indexes atoms: W's support (k, m) int64, when W is sparse."""
        return [self.support] if self.support is not None else []
