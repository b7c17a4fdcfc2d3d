"""Sparsity mechanisms: pre-activations (n, k) -> codes Z (n, k), and each one's sparsity penalty.

Every activation has `forward(pre_nk) -> codes_nk` (float32, dense) and
`penalty(pre_nk, codes_nk, atom_norms_k, x_rms) -> scalar` added to the reconstruction loss in its units
(fractions of the batch's variance, see `SAE.losses`; `x_rms` is the batch's root mean squared distance to
its mean); 0 for the mechanisms that fix L0 by construction. `TopK` also has a fixed `top_k`, which lets the SAE take its
sparse fast path (only the chosen codes carry gradients, decoding gathers top_k atoms per token).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ReLU(nn.Module):
    """The "vanilla" SAE: Z = relu(pre), penalty l1 * mean_n sum_i z_ni ||D_i|| / x_rms (Bricken et al. 2023).

    Weighting by the atom norm stops the L1 term from being dodged by growing atoms (archetypal atoms
    are not unit-norm); dividing by the batch's RMS norm makes l1 unitless, like the FVU it is added to."""

    def __init__(self, l1: float):
        super().__init__()
        self.l1 = l1

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre_nk)

    def penalty(self, pre_nk, codes_nk, atom_norms_k, x_rms) -> torch.Tensor:
        return self.l1 * (codes_nk * atom_norms_k).sum(1).mean() / x_rms


class TopK(nn.Module):
    """Keep the `top_k` largest pre-activations of each token, ReLU them, zero the rest (Gao et al. 2025)."""

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        values, indices = pre_nk.topk(self.top_k, dim=-1)
        return torch.zeros_like(pre_nk).scatter(-1, indices, torch.relu(values))

    def penalty(self, pre_nk, codes_nk, atom_norms_k, x_rms) -> torch.Tensor:
        return pre_nk.new_zeros(())


class BatchTopK(nn.Module):
    """Keep the n * top_k largest pre-activations of the whole batch (Bussmann et al. 2024).

    In training mode the batch decides; in eval mode a fixed threshold does (`threshold`, a buffer set
    by `calibrate` after training so that the mean L0 on calibration tokens equals top_k)."""

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.register_buffer("threshold", torch.zeros(()))

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        pre_nk = torch.relu(pre_nk)
        if self.training:
            flat = pre_nk.flatten()
            keep = torch.zeros_like(flat).scatter(0, flat.topk(min(len(flat), self.top_k * len(pre_nk))).indices, 1.0)
            return pre_nk * keep.view_as(pre_nk)
        return pre_nk * (pre_nk > self.threshold)

    @torch.no_grad()
    def calibrate(self, pre_nk: torch.Tensor) -> None:
        """Set the inference threshold to the (n * top_k)-th largest positive pre-activation of `pre_nk`."""
        flat = torch.relu(pre_nk).flatten()
        self.threshold.fill_(flat.topk(min(len(flat), self.top_k * len(pre_nk))).values[-1].item())

    def penalty(self, pre_nk, codes_nk, atom_norms_k, x_rms) -> torch.Tensor:
        return pre_nk.new_zeros(())


def silverman_kernel(u: torch.Tensor) -> torch.Tensor:
    """Silverman's (1986) kernel K(u) = exp(-|u|/sqrt2) sin(|u|/sqrt2 + pi/4) / 2; integrates to 1."""
    a = u.abs() / math.sqrt(2)
    return 0.5 * torch.exp(-a) * torch.sin(a + math.pi / 4)


class _JumpFn(torch.autograd.Function):
    """H(pre - theta) with the straight-through pseudo-derivative d/dtheta = -K((pre - theta)/eps)/eps
    (Rajamanoharan et al. 2024, eqs. 11-12); no gradient flows to `pre` through the step."""

    @staticmethod
    def forward(ctx, pre_nk, theta_k, bandwidth):
        ctx.save_for_backward(pre_nk, theta_k)
        ctx.bandwidth = bandwidth
        return (pre_nk > theta_k).to(pre_nk.dtype)

    @staticmethod
    def backward(ctx, grad_nk):
        pre_nk, theta_k = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(grad_nk * silverman_kernel((pre_nk - theta_k) / eps) / eps).sum(0)
        return None, grad_theta, None


class JumpReLU(nn.Module):
    """Z = pre * H(pre - theta), a learned threshold theta_i > 0 per code (Rajamanoharan et al. 2024),
    trained through a straight-through estimator with a Silverman kernel of bandwidth `bandwidth`
    (1e-2, Fel et al. 2025, App. F); penalty l0 * mean_n ||z_n||_0 through the same estimator."""

    def __init__(self, k: int, l0: float, bandwidth: float = 1e-2, threshold: float = 1e-2):
        super().__init__()
        self.l0 = l0
        self.bandwidth = bandwidth
        self.log_threshold = nn.Parameter(torch.full((k,), math.log(threshold)))

    @torch.no_grad()
    def init_thresholds(self, pre_nk: torch.Tensor, l0: int) -> None:
        """Start each code's threshold at its (1 - l0/k) quantile over `pre_nk`, so the initial mean L0 is
        about l0 and no code starts dead. (A fixed small start, as in Rajamanoharan et al., needs far more
        steps than a few epochs: Adam moves log(theta) by about lr per step.)"""
        q = 1 - l0 / pre_nk.shape[1]
        self.log_threshold.copy_(torch.quantile(pre_nk.float(), q, dim=0).clamp_min(1e-3).log())

    def _gate(self, pre_nk: torch.Tensor) -> torch.Tensor:
        return _JumpFn.apply(pre_nk, self.log_threshold.exp(), self.bandwidth)

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        # pre * gate: the gradient to pre is the gate; the gradient to theta comes from the estimator.
        return pre_nk * self._gate(pre_nk)

    def penalty(self, pre_nk, codes_nk, atom_norms_k, x_rms) -> torch.Tensor:
        return self.l0 * self._gate(pre_nk).sum(1).mean()
