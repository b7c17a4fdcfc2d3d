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


ADAPT_RATE = 0.05  # per step, at most: see Penalised


class Penalised(nn.Module):
    """A sparsity mechanism with a penalty coefficient `coeff` (a buffer, saved with the model), fixed, or, with
    target_l0 > 0, adapted after every step so that the mean L0 settles at target_l0 (dual ascent on the
    constraint E[L0] = target_l0), by at most ADAPT_RATE per step in proportion to clip(log(L0 / target_l0),
    -1, 1): multiplied by exp of that (ReLU: the L1 coefficient stays positive and may need to change by
    orders of magnitude), or, for a `signed` multiplier, moved by that times max(|coeff|, its start), which
    may cross 0 (JumpReLU: its L0 penalty only moves the thresholds, and when training alone lowers L0 past
    the target, only a negative multiplier brings it back). This compares ReLU and JumpReLU with TopK at
    equal L0 without a sweep of their coefficient on every dataset."""

    signed = False

    def __init__(self, coeff: float, target_l0: float = 0.0):
        super().__init__()
        self.target_l0, self.start = target_l0, coeff
        self.register_buffer("coeff", torch.tensor(float(coeff)))

    @torch.no_grad()
    def adapt_(self, l0: torch.Tensor | float) -> None:
        """After an optimiser step whose batch had mean L0 `l0` (codes per token, a scalar, on any device):
        move the coefficient (no-op when it is fixed). Tensor ops only: a step never waits for the device."""
        if self.target_l0 > 0:
            l0 = torch.as_tensor(l0, dtype=self.coeff.dtype, device=self.coeff.device)
            error = torch.log(l0.clamp_min(1e-3) / self.target_l0).clamp(-1.0, 1.0)
            if self.signed:
                self.coeff.add_(ADAPT_RATE * self.coeff.abs().clamp_min(self.start) * error)
            else:
                self.coeff.mul_(torch.exp(ADAPT_RATE * error))


class ReLU(Penalised):
    """The "vanilla" SAE: Z = relu(pre), penalty coeff * mean_n sum_i z_ni ||D_i|| / x_rms (Bricken et al. 2023).

    Weighting by the atom norm stops the L1 term from being dodged by growing atoms (archetypal atoms
    are not unit-norm); dividing by the batch's RMS norm makes the coefficient unitless, like the FVU it is
    added to."""

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre_nk)

    def penalty(self, pre_nk, codes_nk, atom_norms_k, x_rms) -> torch.Tensor:
        return self.coeff * (codes_nk * atom_norms_k).sum(1).mean() / x_rms


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


class JumpReLU(Penalised):
    """Z = pre * H(pre - theta), a learned threshold theta_i > 0 per code (Rajamanoharan et al. 2024),
    trained through a straight-through estimator with a Silverman kernel of bandwidth `bandwidth`
    (Fel et al. 2025, App. F); penalty coeff * mean_n ||z_n||_0 through the same estimator.

    The paper's bandwidth, 1e-2, is narrow against pre-activations of order 1 in the standardised space:
    few tokens inform a threshold, and one that drifts above all of its code's pre-activations never comes
    back (5 % dead codes on the default store); TrainConfig's default is 0.5. The trainer also lets the
    log-thresholds move sqrt(d) times faster than the other parameters (see `train`): as fast, relatively,
    as the pre-activations they are compared with."""

    signed = True

    def __init__(self, k: int, coeff: float, target_l0: float = 0.0, bandwidth: float = 1e-2,
                 threshold: float = 1e-2):
        super().__init__(coeff, target_l0)
        self.bandwidth = bandwidth
        self.log_threshold = nn.Parameter(torch.full((k,), math.log(threshold)))

    @torch.no_grad()
    def init_thresholds(self, pre_nk: torch.Tensor, l0: int) -> None:
        """Start each code's threshold at its (1 - l0/k) quantile over `pre_nk`, so the initial mean L0 is
        about l0 and no code starts dead. (A fixed small start, as in Rajamanoharan et al., needs far more
        steps than a few epochs.)"""
        q = 1 - l0 / pre_nk.shape[1]
        self.log_threshold.copy_(torch.quantile(pre_nk.float(), q, dim=0).clamp_min(1e-3).log())

    def _gate(self, pre_nk: torch.Tensor) -> torch.Tensor:
        return _JumpFn.apply(pre_nk, self.log_threshold.exp(), self.bandwidth)

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        # pre * gate: the gradient to pre is the gate; the gradient to theta comes from the estimator.
        return pre_nk * self._gate(pre_nk)

    def penalty(self, pre_nk, codes_nk, atom_norms_k, x_rms) -> torch.Tensor:
        return self.coeff * self._gate(pre_nk).sum(1).mean()
