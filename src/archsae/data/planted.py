"""Planted dictionaries: activations A = Z D* + mean + noise whose atoms D* are known, to measure how well a
learner recovers them (the check every result rests on: Fel et al. 2025 and Brzozowski & Chung 2026 both
score learners on such synthetic data before trusting them on a model's activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ArchsaeError


@dataclass(frozen=True)
class Planted:
    """Synthetic activations with known atoms.

    acts_nd: (n, d) float32, the activations; atoms_kd: (k, d) float32 unit-norm planted atoms D*;
    frequency_k: (k,) float64, the share of tokens each atom is active on; mean_d: (d,) float32, the offset
    added to every token.
    """

    acts_nd: np.ndarray
    atoms_kd: np.ndarray
    frequency_k: np.ndarray
    mean_d: np.ndarray


def planted_dictionary(n: int, d: int, k: int, active: int, *, varying: bool = False, zipf: float = 0.0,
                       offset: float = 0.0, noise: float = 0.0, seed: int = 0, chunk: int = 8192) -> Planted:
    """n tokens, each the sum of `active` distinct planted atoms out of k, with weights uniform in [0.5, 1.5];
    with `varying`, each token has its own number of atoms, uniform in 1 .. 2 active - 1 (mean `active`), so
    some tokens are nearly pure atoms, as images show some concepts alone.

    k unit atoms D* drawn uniformly on the sphere of R^d. Atom i is drawn with probability proportional to
    r_i^-zipf, r a seeded random ranking (zipf = 0: every atom equally frequent; 1: Zipf's law, the rarest
    atom about k times rarer than the most common), without replacement within a token (Gumbel top-k).
    `offset`: the norm of a constant vector added to every token (a data mean far from the origin, as in
    uncentred activations); `noise`: the standard deviation of isotropic Gaussian noise, per feature, as a
    fraction of the signal's (so 0.1 is a 1 % noise energy). Deterministic in `seed`.

    Returns a `Planted`. Raises ArchsaeError unless 1 <= active <= k and n, d >= 1.
    """
    if not (n >= 1 and d >= 1 and 1 <= active <= k):
        raise ArchsaeError(f"planted data needs n, d >= 1 and 1 <= active <= k; got n={n}, d={d}, k={k}, "
                           f"active={active}")
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(k, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    weight = rng.permutation(np.arange(1, k + 1)).astype(np.float64) ** -zipf
    log_p = np.log(weight / weight.sum())
    direction = rng.normal(size=d)
    mean = offset * direction / np.linalg.norm(direction)
    signal_std = np.sqrt(active * (1 + 1 / 12) / d)  # E[w^2] = 1 + 1/12 for w ~ U(0.5, 1.5)
    acts = np.empty((n, d), dtype=np.float32)
    counts = np.zeros(k)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        top = 2 * active - 1 if varying else active
        idx = np.argpartition(-(log_p + rng.gumbel(size=(m, k))), top - 1, axis=1)[:, :top]
        w = rng.uniform(0.5, 1.5, size=(m, top, 1))
        if varying:  # keep the first c of each token's atoms, c uniform in 1 .. top
            w *= (np.arange(top)[None, :] < rng.integers(1, top + 1, size=(m, 1)))[..., None]
        np.add.at(counts, idx[w[..., 0] > 0], 1)
        acts[start:start + m] = (w * atoms[idx]).sum(1) + mean + noise * signal_std * rng.normal(size=(m, d))
    return Planted(acts, atoms.astype(np.float32), counts / n, mean.astype(np.float32))
