"""Dictionary-learning metrics (Fel et al. 2025), pure functions: arrays in, a float out.

Shapes: activations A (n, d), reconstructions A_hat (n, d), codes Z (n, k), dictionaries D (k, d) with
atoms as rows. Inputs may be torch tensors or numpy arrays. Metrics on D normalise the atoms first
(the paper assumes unit-norm atoms, App. B). Large products are computed in chunks.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

CHUNK = 8192


def _t(x, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(dtype)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_2d(name: str, x: torch.Tensor, d: int | None = None) -> None:
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"(·, {d})" if d is not None else "2-D"
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {want}")


def r2(A, A_hat) -> float:
    """R^2 = 1 - ||A - A_hat||_F^2 / ||A - mean(A)||_F^2, mean per feature (eq. 5).

    1 is a perfect reconstruction; 0 is no better than the per-feature mean; negative is worse.
    Raises ValueError if the shapes differ.
    """
    A, A_hat = _t(A, torch.float64), _t(A_hat, torch.float64)
    if A.shape != A_hat.shape:
        raise ValueError(f"A {tuple(A.shape)} and A_hat {tuple(A_hat.shape)} must have the same shape")
    sse = sst = 0.0
    mean = A.mean(0)
    for i in range(0, len(A), CHUNK):
        sse += (A[i:i + CHUNK] - A_hat[i:i + CHUNK]).pow(2).sum().item()
        sst += (A[i:i + CHUNK] - mean).pow(2).sum().item()
    return 1.0 - sse / sst


def dead_codes(Z) -> float:
    """Fraction of codes never active on Z: 1 - (1/k) ||sum_i |Z_i| ||_0 (eq. 6). In [0, 1]; 0 = all used."""
    Z = _t(Z)
    _check_2d("Z", Z)
    return 1.0 - (Z.abs().sum(0) > 0).float().mean().item()


def l0(Z) -> float:
    """Mean number of non-zero codes per token. In [0, k]."""
    Z = _t(Z)
    _check_2d("Z", Z)
    return (Z != 0).float().sum(1).mean().item()


def ood_score(D, A) -> float:
    """1 - (1/k) sum_i max_j cos(D_i, A_j) (eq. 9). In [0, 2]; 0 = every atom is a data point's direction,
    large = atoms point away from the data. Raises ValueError on mismatched d."""
    D, A = _unit(_t(D)), _t(A)
    _check_2d("A", A, D.shape[1])
    best = torch.full((len(D),), -1.0)
    for i in range(0, len(A), CHUNK):
        best = torch.maximum(best, (D @ _unit(A[i:i + CHUNK]).T).max(1).values)
    return 1.0 - best.mean().item()


def match_atoms(D1, D2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The signed (partial) permutation between dictionaries (k1, d) and (k2, d) maximising the summed |cos|.

    Returns (rows, cols, cos), min(k1, k2) pairs: atom rows[i] of D1 matches atom cols[i] of D2 with
    signed cosine cos[i]. Hungarian matching on |cos| (scipy's linear_sum_assignment).
    Raises ValueError if d differs.
    """
    D1, D2 = _unit(_t(D1)), _unit(_t(D2))
    _check_2d("D2", D2, D1.shape[1])
    cos = (D1 @ D2.T).numpy()
    rows, cols = linear_sum_assignment(np.abs(cos), maximize=True)
    return rows, cols, cos[rows, cols]


def stability(D1, D2) -> float:
    """max over signed permutations P of (1/k) Tr(D1^T P D2), unit atoms (eqs. 2/7).

    In [0, 1]: 1 = the same dictionary up to order and sign; random directions in high d score near 0.
    Raises ValueError unless both are (k, d).
    """
    if np.shape(D1) != np.shape(D2):
        raise ValueError(f"dictionaries must share shape (k, d); got {tuple(np.shape(D1))} and {tuple(np.shape(D2))}")
    return float(np.abs(match_atoms(D1, D2)[2]).mean())
