"""Sparsity mechanisms: pre-activations (n, k) -> codes Z (n, k), and each one's sparsity penalty.

Every activation has
- `forward(pre_nk) -> codes_nk` (float32, dense): the definition, used at inference;
- `select(pre_nk) -> (cols_e, counts_n)`: the codes it keeps nonzero (or may: TopK keeps a negative pre-activation
  as a zero), token-major: `counts_n[i]` entries for token i, `cols_e` their code indices (int64). Training uses it
  to take the sparse path (`SAE.losses`): codes relu(pre) on these entries only, decoding by gathering their atoms;
- `sparse_terms(x_hat_nd, pre_nk, cols_e, vals_e, atoms_kd, x_rms) -> (x_hat_nd, penalty)`: the sparsity penalty,
  added to the reconstruction loss in its units (fractions of the batch's variance; `x_rms` is the batch's root
  mean squared distance to its mean), 0 for the mechanisms that fix L0 by construction; and x_hat, unchanged in
  value, which for JumpReLU also carries its thresholds' straight-through gradient. Together they give the
  gradients of the dense definition exactly (tests/test_sae.py);
- `dead_gate_loss(pre_nm, dead_m, bias_k)`: for the mechanisms that gate codes with a learned level (JumpReLU's
  threshold, ReLU's encoder bias), how far the dead codes' pre-activations `pre_nm` (no gradient) fall short of
  their gate, with gradient to the gate only; 0 for TopK and BatchTopK, which choose codes by rank.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


ADAPT_RATE = 0.05  # per step, at most: see Penalised
PROPORTIONAL = 4.0  # see Penalised.penalty_coeff


def _where(mask_nk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cols_e, counts_n) of the True entries of a (n, k) mask, token-major. (Counted from the entries: a sum
    over the bool mask casts all n k of them to int64, 24 ms a step at the default sizes.)"""
    rows_e, cols_e = mask_nk.nonzero().unbind(1)
    return cols_e, torch.bincount(rows_e, minlength=len(mask_nk))


def gather_sum(table: torch.Tensor, idx_e: torch.Tensor, crow: torch.Tensor, weights_e: torch.Tensor) -> torch.Tensor:
    """(len(crow) - 1, d) in table's dtype: row r = sum of weights_e * table[idx_e] over its entries
    crow[r]:crow[r + 1]. table (V, d) float; idx_e (e,) int64 rows of table, grouped by r; crow (r + 1,) int64 CSR
    pointers (`csr_pointers`); weights_e (e,) any float dtype. Differentiable in table and weights_e
    (`F.embedding_bag`, the sparse path's gather for decoding, the encoder's backward and JumpReLU's window)."""
    return F.embedding_bag(idx_e, table, crow, per_sample_weights=weights_e.to(table.dtype), mode="sum",
                           include_last_offset=True)


def csr_pointers(counts_n: torch.Tensor) -> torch.Tensor:
    """CSR row pointers (n + 1,) int64 of n rows holding counts_n (n,) int64 entries: 0, then their cumulative sums."""
    return F.pad(counts_n.cumsum(0), (1, 0))


def _no_penalty(x_hat_nd, pre_nk, cols_e, vals_e, atoms_kd, x_rms):
    return x_hat_nd, pre_nk.new_zeros(())


def _no_gate(pre_nm, dead_m, bias_k):
    return pre_nm.new_zeros(())


class Penalised(nn.Module):
    """A sparsity mechanism with a penalty coefficient `coeff` (a buffer, saved with the model), fixed, or, with
    target_l0 > 0, adapted after every step so that the mean L0 settles at target_l0 (dual ascent on the
    constraint E[L0] = target_l0), by at most ADAPT_RATE per step in proportion to clip(log(L0 / target_l0),
    -1, 1): multiplied by exp of that (ReLU: the L1 coefficient stays positive and may need to change by
    orders of magnitude), or, for a `signed` multiplier, moved by that times max(|coeff|, its start), which
    may cross 0 (JumpReLU: its L0 penalty only moves the thresholds, and when training alone lowers L0 past
    the target, only a negative multiplier brings it back). A signed multiplier's batch penalty also carries a
    proportional term on the batch's own L0 (`penalty_coeff`): with the integral alone, archetypal JumpReLU's
    L0 swung between 8 and 140 around a target of 32 on the default store (Adam moves the thresholds at a
    speed that ignores the coefficient's size, so the loop was an integrator on an integrator); with it, L0
    settles (benchmarks/README.md). This compares ReLU and JumpReLU with TopK at equal L0 without a sweep of
    their coefficient on every dataset."""

    signed = False

    def __init__(self, coeff: float, target_l0: float = 0.0):
        super().__init__()
        self.target_l0, self.start = target_l0, coeff
        self.register_buffer("coeff", torch.tensor(float(coeff)))

    def _error(self, l0: torch.Tensor | float) -> torch.Tensor:
        l0 = torch.as_tensor(l0, dtype=self.coeff.dtype, device=self.coeff.device)
        return torch.log(l0.clamp_min(1e-3) / self.target_l0).clamp(-1.0, 1.0)

    def penalty_coeff(self, l0: torch.Tensor | float) -> torch.Tensor:
        """The coefficient of a batch's penalty, given the batch's own mean L0: `coeff`, plus, for an adapted
        signed multiplier, PROPORTIONAL * max(|coeff|, start) * clip(log(l0 / target_l0), -1, 1)."""
        if not (self.signed and self.target_l0 > 0):
            return self.coeff
        return self.coeff + PROPORTIONAL * self.coeff.abs().clamp_min(self.start) * self._error(l0)

    @torch.no_grad()
    def adapt_(self, l0: torch.Tensor | float) -> None:
        """After an optimiser step whose batch had mean L0 `l0` (codes per token, a scalar, on any device):
        move the coefficient (no-op when it is fixed). Tensor ops only: a step never waits for the device."""
        if self.target_l0 > 0:
            error = self._error(l0)
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

    def select(self, pre_nk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _where(pre_nk > 0)

    def sparse_terms(self, x_hat_nd, pre_nk, cols_e, vals_e, atoms_kd, x_rms):
        norms_e = atoms_kd.norm(dim=1)[cols_e]
        return x_hat_nd, self.coeff * (vals_e * norms_e).sum() / len(pre_nk) / x_rms

    @staticmethod
    def dead_gate_loss(pre_nm: torch.Tensor, dead_m: torch.Tensor, bias_k: torch.Tensor) -> torch.Tensor:
        """mean_n sum_m relu(-pre_nm): a dead code's bias rises until it fires (see `JumpReLU.dead_gate_loss`)."""
        bias_m = bias_k[dead_m]
        return torch.relu(-(pre_nm + bias_m - bias_m.detach())).sum(1).mean()


class TopK(nn.Module):
    """Keep the `top_k` largest pre-activations of each token, ReLU them, zero the rest (Gao et al. 2025)."""

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        values, indices = pre_nk.topk(self.top_k, dim=-1)
        return torch.zeros_like(pre_nk).scatter(-1, indices, torch.relu(values))

    def select(self, pre_nk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cols_nm = pre_nk.topk(self.top_k, dim=1).indices
        return cols_nm.flatten(), cols_nm.new_full((len(pre_nk),), self.top_k)

    sparse_terms, dead_gate_loss = staticmethod(_no_penalty), staticmethod(_no_gate)


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

    def select(self, pre_nk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return _where(pre_nk > self.threshold)
        n, k = pre_nk.shape
        flat, m = torch.relu(pre_nk).flatten(), min(n * k, self.top_k * n)
        # The batch's m largest, without a top-m over all n k entries (as slow as the encoder): a threshold from
        # every s-th entry (s >= 16 coprime with k, so the sample spans every code) that about 1.25 m entries pass;
        # if at least m do, the m largest are among them.
        stride = next(s for s in itertools.count(16) if math.gcd(s, k) == 1)
        sample = flat[::stride]
        threshold = sample.topk(min(len(sample), math.ceil(1.25 * m / stride))).values[-1]
        passing = (flat >= threshold).nonzero().squeeze(1)
        flat_e = passing[flat[passing].topk(m).indices] if len(passing) >= m else flat.topk(m).indices
        flat_e = flat_e.sort().values
        return flat_e % k, torch.bincount(flat_e // k, minlength=n)

    sparse_terms, dead_gate_loss = staticmethod(_no_penalty), staticmethod(_no_gate)

    @torch.no_grad()
    def calibrate(self, pre_nk: torch.Tensor) -> None:
        """Set the inference threshold to the (n * top_k)-th largest positive pre-activation of `pre_nk`."""
        flat = torch.relu(pre_nk).flatten()
        self.threshold.fill_(flat.topk(min(len(flat), self.top_k * len(pre_nk))).values[-1].item())


def silverman_kernel(u: torch.Tensor) -> torch.Tensor:
    """Silverman's (1986) kernel K(u) = exp(-|u|/sqrt2) sin(|u|/sqrt2 + pi/4) / 2; integrates to 1."""
    a = u.abs().mul_(1 / math.sqrt(2))
    return a.neg().exp_().mul_(a.add_(math.pi / 4).sin_()).mul_(0.5)  # in place: it runs on (n, k) every step


def rectangle_kernel(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel K(u) = 1 for |u| < 1/2, else 0 (Rajamanoharan et al. 2024, eq. 11); integrates to 1."""
    return (u.abs() < 0.5).to(u.dtype)


KERNELS = {"silverman": silverman_kernel, "rectangle": rectangle_kernel}


class _JumpFn(torch.autograd.Function):
    """H(pre - theta) with the straight-through pseudo-derivative d/dtheta = -K((pre - theta)/eps)/eps
    (Rajamanoharan et al. 2024, eqs. 11-12) for a kernel K of `KERNELS`; no gradient flows to `pre` through
    the step."""

    @staticmethod
    def forward(ctx, pre_nk, theta_k, bandwidth, kernel):
        ctx.save_for_backward(pre_nk, theta_k)
        ctx.bandwidth, ctx.kernel = bandwidth, kernel
        return (pre_nk > theta_k).to(pre_nk.dtype)

    @staticmethod
    def backward(ctx, grad_nk):
        pre_nk, theta_k = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(grad_nk * KERNELS[ctx.kernel]((pre_nk - theta_k) / eps) / eps).sum(0)
        return None, grad_theta, None, None


class _SparseJump(torch.autograd.Function):
    """The thresholds' straight-through gradient on the sparse path, Silverman's kernel: forward returns x_hat
    unchanged and the mean L0 of the batch (`l0`, counted by `select`); backward gives theta the gradient that
    `_JumpFn` gives it through the dense codes Z = pre * H(pre - theta) and the penalty mean_n ||z_n||_0:
    d/dtheta_i = -sum_n g_ni K((pre_ni - theta_i)/eps) / eps with g_ni = <dL/dx_hat_n, D_i> pre_ni + dL/dL0 / n.
    The kernel has infinite support, so that needs <dL/dx_hat_n, D_i> for every code, not only the active ones:
    one dense (n, d) x (d, k) product, the only dense one in a JumpReLU step besides the encoder's forward."""

    @staticmethod
    def forward(ctx, x_hat_nd, theta_k, pre_nk, atoms_kd, bandwidth, l0):
        ctx.save_for_backward(theta_k, pre_nk, atoms_kd)
        ctx.bandwidth = bandwidth
        return x_hat_nd.clone(), x_hat_nd.new_tensor(l0)

    @staticmethod
    def backward(ctx, grad_nd, grad_l0):
        theta_k, pre_nk, atoms_kd = ctx.saved_tensors
        eps = ctx.bandwidth
        pre_nk = pre_nk.float()
        gate_grad_nk = (grad_nd.float() @ atoms_kd.float().T).mul_(pre_nk).add_(grad_l0.float() / len(pre_nk))
        grad_theta = -(gate_grad_nk.mul_(silverman_kernel((pre_nk - theta_k).div_(eps))).sum(0) / eps)
        return grad_nd, grad_theta.to(theta_k.dtype), None, None, None, None


class _WindowJump(torch.autograd.Function):
    """`_SparseJump` for the rectangle kernel, whose support is the window |pre_ni - theta_i| < eps / 2: with
    g_ni as there, d/dtheta_i = -(sum over the window's tokens n of g_ni) / eps
    = -(<D_i, S_i> + |window_i| dL/dL0 / n) / eps, S_i = sum over the window of pre_ni dL/dx_hat_n,
    a gather-and-sum over the window's entries (in float32) instead of a dense (n, d) x (d, k) product.
    rows_w, cols_w, pre_w: the window's entries, code-major (cols_w sorted)."""

    @staticmethod
    def forward(ctx, x_hat_nd, theta_k, rows_w, cols_w, pre_w, atoms_kd, bandwidth, n, l0):
        ctx.save_for_backward(theta_k, rows_w, cols_w, pre_w, atoms_kd)
        ctx.bandwidth, ctx.n = bandwidth, n
        return x_hat_nd.clone(), x_hat_nd.new_tensor(l0)

    @staticmethod
    def backward(ctx, grad_nd, grad_l0):
        theta_k, rows_w, cols_w, pre_w, atoms_kd = ctx.saved_tensors
        count_k = torch.bincount(cols_w, minlength=len(theta_k))
        s_kd = gather_sum(grad_nd.float(), rows_w, csr_pointers(count_k), pre_w.float())
        gate_grad_k = (s_kd * atoms_kd.float()).sum(1) + count_k * (grad_l0.float() / ctx.n)
        grad_theta = -gate_grad_k / ctx.bandwidth
        return grad_nd, grad_theta.to(theta_k.dtype), None, None, None, None, None, None, None


class JumpReLU(Penalised):
    """Z = pre * H(pre - theta), a learned threshold theta_i > 0 per code (Rajamanoharan et al. 2024),
    trained through a straight-through estimator with a kernel of bandwidth `bandwidth`: `kernel` "silverman"
    (Fel et al. 2025, App. F) or "rectangle" (Rajamanoharan et al. 2024, eq. 11); penalty
    coeff * mean_n ||z_n||_0 through the same estimator.

    The estimator is eq. 12's pseudo-derivative of the step H (`_JumpFn`), taken through Z = pre * H by the
    product rule, so theta's gradient weighs each token by its own pre_ni where Rajamanoharan et al.'s eq. 11
    puts theta_i. The two agree within the paper's narrow bandwidth (there pre_ni ~ theta_i); at the default 0.5
    a token just above (below) the threshold pulls it a little more (less) than eq. 11 would.

    The paper's bandwidth, 1e-2, is narrow against pre-activations of order 1 in the standardised space:
    few tokens inform a threshold, and one that drifts above all of its code's pre-activations never comes
    back (5 % dead codes on the default store, with Silverman's kernel); TrainConfig's default is 0.5. The
    class's own defaults are the paper's (1e-2, Silverman's kernel). The trainer also lets the
    log-thresholds move sqrt(d) times faster than the other parameters (see `train`): as fast, relatively,
    as the pre-activations they are compared with.

    Silverman's kernel has infinite support: every (token, code) pair informs the thresholds, which costs a
    training step one dense (n, d) x (d, k) product (`_SparseJump`). The rectangle's support is the window
    |pre - theta| < bandwidth / 2, under 1 % of the pairs on the default store at the default bandwidth (0.7 %),
    gathered instead (`_WindowJump`). TrainConfig's default is the rectangle: as good on planted data and the
    default store, better for archetypal JumpReLU there, 1.3-1.4x faster per step (benchmarks/README.md).
    ValueError for a kernel not in `KERNELS`."""

    signed = True

    def __init__(self, k: int, coeff: float, target_l0: float = 0.0, bandwidth: float = 1e-2,
                 threshold: float = 1e-2, kernel: str = "silverman"):
        super().__init__(coeff, target_l0)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.bandwidth, self.kernel = bandwidth, kernel
        self.log_threshold = nn.Parameter(torch.full((k,), math.log(threshold)))

    def _gate(self, pre_nk: torch.Tensor) -> torch.Tensor:
        return _JumpFn.apply(pre_nk, self.log_threshold.exp(), self.bandwidth, self.kernel)

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        # pre * gate: the gradient to pre is the gate; the gradient to theta comes from the estimator.
        return pre_nk * self._gate(pre_nk)

    def select(self, pre_nk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _where(pre_nk > self.log_threshold.exp())

    def sparse_terms(self, x_hat_nd, pre_nk, cols_e, vals_e, atoms_kd, x_rms):
        theta_k, l0 = self.log_threshold.exp(), len(cols_e) / len(pre_nk)
        if self.kernel == "silverman":
            x_hat_nd, l0_t = _SparseJump.apply(x_hat_nd, theta_k, pre_nk, atoms_kd.detach(), self.bandwidth, l0)
        else:
            with torch.no_grad():  # the window, code-major, tested as rectangle_kernel tests it
                cols_w, rows_w = (((pre_nk - theta_k) / self.bandwidth).abs_() < 0.5).t().nonzero().unbind(1)
            x_hat_nd, l0_t = _WindowJump.apply(x_hat_nd, theta_k, rows_w, cols_w, pre_nk[rows_w, cols_w],
                                               atoms_kd.detach(), self.bandwidth, len(pre_nk), l0)
        return x_hat_nd, self.penalty_coeff(l0) * l0_t

    def dead_gate_loss(self, pre_nm: torch.Tensor, dead_m: torch.Tensor, bias_k: torch.Tensor) -> torch.Tensor:
        """mean_n sum_m relu(theta_m - pre_nm) over the dead codes m (pre_nm (n, m) float, no gradient; dead_m (m,)
        int64 code indices; bias_k unused), a scalar with gradient to theta only: the pre-activation
        loss of Conerly et al. (Anthropic, Circuits Updates, January 2025), restricted to dead codes like AuxK.
        A threshold pushed above all of its code's pre-activations (by the L0 penalty, early in training) gets
        no gradient from the kernel once it is past its reach (half a bandwidth for the rectangle, a few for
        Silverman's), and AuxK trains the code's encoder and atom but not its threshold: archetypal JumpReLU
        (Silverman's kernel) kept 21 % of its codes dead on the default store, their thresholds a median 1.9
        above their largest pre-activation (benchmarks/README.md). Adam scales the step, so for a dead code,
        which no other term moves, the loss's size hardly matters."""
        return torch.relu(self.log_threshold[dead_m].exp() - pre_nm).sum(1).mean()
