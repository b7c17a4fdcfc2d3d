"""Dictionaries D (k, d): free unit-norm atoms, or archetypal atoms in (near) the convex hull of C.

Each dictionary builds D with `forward()` (once per step) and restores its constraint with
`project_()`, called once after each optimiser step.
"""

from __future__ import annotations

import torch
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


def init_weights(k: int, n_prime: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """A row-stochastic W (k, n').

    identity: atom i starts as C_{i mod n'} (the paper's eye(k, n'), extended so k > n' has no zero atom);
    permuted: atom i starts as C_{pi(i)}, pi a seeded permutation (repeated blocks when k > n');
    random: rows drawn from a flat Dirichlet (seeded).
    """
    if mode == "random":
        w = -torch.rand(k, n_prime, generator=generator).clamp_min(1e-12).log()
        return w / w.sum(1, keepdim=True)
    if mode == "identity":
        cols = torch.arange(k) % n_prime
    elif mode == "permuted":
        blocks = [torch.randperm(n_prime, generator=generator) for _ in range(-(-k // n_prime))]
        cols = torch.cat(blocks)[:k]
    else:
        raise ValueError(f"unknown W init {mode!r}")
    w = torch.zeros(k, n_prime)
    w[torch.arange(k), cols] = 1.0
    return w


class ArchetypalDictionary(nn.Module):
    """D = W C + Lambda, Fel et al. 2025, eq. 4 (RA-SAE; delta = 0 is A-SAE).

    C (n', d) fixed candidates (k-means centroids of the activations), W (k, n') row-stochastic
    (W >= 0, W 1 = 1), ||Lambda_i||_2 <= delta. With delta = 0 there is no Lambda at all, so the
    constraint is exact and no 0/0 arises. As in the authors' implementation, D is multiplied by a learned
    positive scalar exp(log_scale) (it changes no atom's direction); we start it at 1 / mean ||C_i|| so the
    initial atoms have unit mean norm like a free dictionary's, instead of spending the first steps
    shrinking codes against centroids of norm ~ sqrt(d) in standardised units.
    """

    def __init__(self, candidates_nd: torch.Tensor, k: int, delta: float, w_init: str, generator: torch.Generator):
        super().__init__()
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.register_buffer("candidates", candidates_nd.float().contiguous())
        self.weights = nn.Parameter(init_weights(k, candidates_nd.shape[0], w_init, generator))
        self.delta = float(delta)
        self.relax = nn.Parameter(torch.zeros(k, candidates_nd.shape[1])) if delta > 0 else None
        mean_norm = candidates_nd.float().norm(dim=1).mean().clamp_min(1e-12)
        self.log_scale = nn.Parameter(-mean_norm.log().reshape(()))

    @property
    def k(self) -> int:
        return self.weights.shape[0]

    def forward(self) -> torch.Tensor:
        atoms = self.weights @ self.candidates
        if self.relax is not None:
            atoms = atoms + self.relax
        return atoms * self.log_scale.exp()

    @torch.no_grad()
    def project_(self) -> None:
        """W <- relu(W), rows renormalised to sum 1 (an all-zero row becomes uniform); Lambda_i scaled to norm <= delta."""
        w = self.weights.clamp_(min=0)
        sums = w.sum(1, keepdim=True)
        w.copy_(torch.where(sums > 0, w / sums.clamp_min(1e-30), torch.full_like(w, 1.0 / w.shape[1])))
        if self.relax is not None:
            norms = self.relax.norm(dim=1, keepdim=True)
            self.relax *= (self.delta / norms.clamp_min(1e-30)).clamp(max=1.0)
