"""The SAE: encoder -> sparsity -> dictionary, Z = s(W_enc (x - b) + b_enc), x_hat = Z D + b."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig, stored_train_config
from ..errors import ArchsaeError
from ..files import read_json, read_safetensors, write_json, write_safetensors
from ..normalisation import RawSpace
from .activations import BatchTopK, JumpReLU, ReLU, TopK, csr_pointers, gather_sum
from .dictionary import ArchetypalDictionary, FreeDictionary


class _ChosenPre(torch.autograd.Function):
    """pre_e = <x_n - b_pre, W_enc[i]> + b_enc[i] for chosen entries e = (token rows_e, code cols_e) only, given
    their values (gathered from a no-grad dense pass) and xc = x - b_pre; an entry may repeat (the codes and
    AuxK's share one call). With G the sparse (n, k) matrix of the entries' gradients, the backward costs e d
    for e entries instead of the dense encoder's n k d: dL/dW_enc = G^T xc, a gather-and-sum (embedding_bag;
    torch's CPU sparse matmul densifies G), and dL/db_pre = -sum_n G_n W_enc = -(dL/db_enc) W_enc; in float32."""

    @staticmethod
    def forward(ctx, xc_nd, b_pre_d, weight_kd, bias_k, cols_e, rows_e, pre_e):
        ctx.save_for_backward(xc_nd, weight_kd, cols_e, rows_e)
        return pre_e.clone()

    @staticmethod
    def backward(ctx, grad_e):
        xc_nd, weight_kd, cols_e, rows_e = ctx.saved_tensors
        k = weight_kd.shape[0]
        grad_e = grad_e.float()
        by_code = cols_e.argsort(stable=True)
        code_crow = csr_pointers(torch.bincount(cols_e, minlength=k))
        grad_w = gather_sum(xc_nd.float(), rows_e[by_code], code_crow, grad_e[by_code])
        grad_b = torch.zeros(k, dtype=grad_e.dtype, device=grad_e.device).index_add_(0, cols_e, grad_e)
        grad_b_pre = -(grad_b @ weight_kd.float())
        return None, grad_b_pre.to(xc_nd.dtype), grad_w.to(weight_kd.dtype), grad_b.to(weight_kd.dtype), None, None, None


@dataclass
class StepOutput:
    """One training forward pass: `loss` (scalar, with grad) and detached statistics."""

    loss: torch.Tensor  # FVU + sparsity penalty + aux_coeff * AuxK FVU (see SAE.losses)
    sse: torch.Tensor  # sum of squared errors over the batch
    sst: torch.Tensor  # sum of squares of the batch around its own mean (R^2 = 1 - sse / sst)
    l0: torch.Tensor  # number of nonzero codes in the batch
    fired_k: torch.Tensor  # bool (k,): codes nonzero on at least one token of the batch


class SAE(RawSpace, nn.Module):
    """A sparse autoencoder over d-dimensional activations with a k-atom dictionary.

    Z = s(W_enc (x - b) + b_enc), x_hat = Z D + b, with s a sparsity mechanism (activations.py), D a
    dictionary (dictionary.py) and x = (A - input_shift) / input_scale the standardised activations the SAE
    trained on (normalisation.py; identity until `set_normalisation_`). The public passes take and return
    raw activations A, float32: `encode(acts_nd) -> codes_nk`, `decode(codes_nk) -> acts_hat_nd`,
    `forward(acts_nd) -> (acts_hat_nd, codes_nk)`; they raise ArchsaeError for a wrong d. The atoms (k, d)
    live in the standardised space. `losses` is the training forward pass on standardised x. Call
    `project_()` after each optimiser step to restore the dictionary's constraint. `config` is the
    TrainConfig it was built from.

    The training pass is sparse for every sparsity (`losses`): pre-activations are computed without autograd,
    only the codes the activation keeps are recomputed with it, and decoding gathers their atoms (n L0 d instead
    of n k d for the encoder's backward and for the decoder).
    """

    def __init__(self, d: int, dictionary: nn.Module, activation: nn.Module):
        super().__init__()
        k = dictionary.k
        self.dictionary = dictionary
        self.activation = activation
        self.encoder = nn.Linear(d, k)
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_shift", torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(d))
        self.config: TrainConfig | None = None
        self.tie_encoder_()

    @torch.no_grad()
    def tie_encoder_(self) -> None:
        """Encoder rows = the unit-normalised atoms, biases 0 (Gao et al. 2025, Sec. 2.5): every code starts
        as the projection on its own atom, so it fires where its atom helps and none starts dead. (A random
        encoder left 23 % of TopK's codes dead on planted data: benchmarks/README.md.)"""
        atoms_kd = self.atoms().detach()
        self.encoder.weight.copy_(atoms_kd / atoms_kd.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.encoder.bias.zero_()

    @property
    def k(self) -> int:
        return self.dictionary.k

    @torch.no_grad()
    def init_from_data_(self, x_nd: torch.Tensor, l0: int) -> None:
        """Data-dependent start of the mechanisms whose sparsity is learned (JumpReLU, ReLU; a no-op for TopK and
        BatchTopK), from the calibration tokens `x_nd` (n, d, standardised), after `tie_encoder_`:

        1. about `l0` codes per token fire and none is dead: JumpReLU's thresholds, and ReLU's encoder biases
           (from 0, a tied ReLU starts with half its codes active, and its L1 coefficient would overshoot
           pulling them down), at quantiles of the pre-activations;
        2. the codes' scale: encoder (and thresholds) multiplied by the alpha > 0 minimising
           ||x - b - alpha Z D||^2 over the tokens. Free atoms are nearly orthogonal, so tied projections
           reconstruct at about the right scale (alpha ~ 1); archetypal atoms are mixtures of centroids that all
           point into the data, so l0 tied projections add up to many times the token (R^2 of -160 at the
           first step on the default store). Left to the first steps, that excess is removed through the
           sparsity itself: thresholds and biases pushed past every pre-activation of most codes (archetypal
           JumpReLU 59 % and ReLU 18 % dead codes; benchmarks/README.md). Both mechanisms are positively
           homogeneous in (encoder, threshold), so step 2 keeps step 1's L0.
        TopK and BatchTopK choose codes by rank, so an excess cannot kill a code. Fitting their scale too raises
        RA-SAE's planted recovery (up to +0.04) but costs the default store 0.008-0.016 of held-out R², so they keep
        the plain tied start (benchmarks/README.md, "How archetypal W starts, and its scale")."""
        if not isinstance(self.activation, (JumpReLU, ReLU)):
            return
        xc_nd, l0 = x_nd - self.b_pre, min(l0, self.k)
        pre_nk = self.encoder(xc_nd)
        self._gates_at_quantile_(pre_nk, torch.arange(self.k, device=pre_nk.device), 1 - l0 / self.k)
        recon_nd = self.activation(self.encoder(xc_nd)) @ self.atoms()
        alpha = (xc_nd * recon_nd).sum() / recon_nd.pow(2).sum().clamp_min(1e-12)
        if alpha > 0:  # (codes orthogonal to the data give no scale to fit: leave them)
            self.encoder.weight.mul_(alpha)
            self.encoder.bias.mul_(alpha)
            if isinstance(self.activation, JumpReLU):
                self.activation.log_threshold.add_(alpha.log())

    @torch.no_grad()
    def _gates_at_quantile_(self, pre_nm: torch.Tensor, rows_m: torch.Tensor, q: float) -> None:
        """JumpReLU thresholds (ReLU encoder biases) of the codes rows_m (m,) int64 at the q quantile of their
        pre-activations pre_nm (n, m), so each fires on a share 1 - q of those tokens (TopK, BatchTopK: no-op).
        (A fixed small threshold, as in Rajamanoharan et al. 2024, needs far more steps than a few epochs.)"""
        if isinstance(self.activation, (JumpReLU, ReLU)):
            level_m = torch.quantile(pre_nm.float(), q, dim=0)
            if isinstance(self.activation, JumpReLU):
                self.activation.log_threshold[rows_m] = level_m.clamp_min(1e-3).log()
            else:
                self.encoder.bias[rows_m] -= level_m

    @torch.no_grad()
    def resample_dead_(self, dead_k: torch.Tensor, x_nd: torch.Tensor, l0: int, generator: torch.Generator,
                       chunk: int = 1024) -> torch.Tensor:
        """Resample dead codes on badly reconstructed tokens: Bricken et al. (2023, "Towards Monosemanticity",
        "Neuron Resampling"), in archsae's terms.

        dead_k: bool (k,), the codes to resample; x_nd: (n, d) float32 standardised tokens, the pool; l0: the
        target codes per token; generator: a CPU torch.Generator (the draw); chunk: tokens per encoder pass
        (BatchTopK selects within it, as in training). At most n / 4 codes are resampled per call (a seeded
        choice among the dead; the rest wait for the next call), so the draw stays weighted by the error.
        Each gets a token drawn without replacement with probability proportional to its squared error²;
        its atom moves toward that token's residual (`dictionary.resample_`: a free atom onto it, an archetypal
        one onto the unused candidate of C closest in angle, so it stays in the hull), its encoder row is tied
        to the new unit atom at 0.2 times the live rows' mean norm (Bricken et al.'s; at 1, archetypal TopK's new
        codes took tokens from good ones: planted R² -0.03 to -0.05, benchmarks/README.md), its encoder bias is
        0, and a JumpReLU threshold or ReLU bias lets it fire on a share l0 / k of the pool (as
        `init_from_data_`). Returns the resampled codes, (m,) int64 on dead_k's device, sorted; the caller
        resets their optimiser state. Nothing is changed when the reconstruction is not finite.

        Why: AuxK pulls a dead archetypal atom toward the residual only within the hull of its support of
        candidates; in a crowded neighbourhood it stays a near-duplicate that never wins a token (archetypal
        TopK kept 3-5 % of its codes dead on the default store; benchmarks/README.md)."""
        rows_m, cap = dead_k.nonzero().squeeze(1), max(1, len(x_nd) // 4)
        if len(rows_m) > cap:
            keep = torch.randperm(len(rows_m), generator=generator)[:cap]
            rows_m = rows_m[keep.to(rows_m.device)].sort().values
        live_k = ~dead_k if not dead_k.all() else torch.ones_like(dead_k)  # (every code dead: their statistics)
        atoms_kd = self.atoms()
        residual_nd = torch.cat([x - (self.activation(self.encoder(x - self.b_pre)) @ atoms_kd + self.b_pre)
                                 for x in x_nd.split(chunk)])
        weights_n = residual_nd.double().pow(2).sum(1).pow(2)
        if len(rows_m) == 0 or not torch.isfinite(weights_n).all() or weights_n.sum() == 0:
            return rows_m[:0]
        tokens_m = torch.multinomial(weights_n.cpu(), len(rows_m), generator=generator).to(x_nd.device)
        self.dictionary.resample_(rows_m, residual_nd[tokens_m], live_k)
        self.encoder.weight[rows_m] = F.normalize(self.atoms()[rows_m], dim=1) * (
            RESAMPLED_ENCODER_SCALE * self.encoder.weight[live_k].norm(dim=1).mean())
        self.encoder.bias[rows_m] = 0.0
        self._gates_at_quantile_((x_nd - self.b_pre) @ self.encoder.weight[rows_m].T, rows_m, 1 - min(l0, self.k) / self.k)
        return rows_m

    def code_parameters(self) -> list[nn.Parameter]:
        """The parameters whose first axis indexes codes (encoder, atoms, JumpReLU thresholds)."""
        thresholds = [self.activation.log_threshold] if isinstance(self.activation, JumpReLU) else []
        return [self.encoder.weight, self.encoder.bias, *self.dictionary.code_parameters(), *thresholds]

    def atoms(self) -> torch.Tensor:
        """The dictionary D (k, d) float32 as used by the decoder, in the model's standardised input space (x below,
        before input_scale and input_shift are undone; README "Files"): x_hat = Z D + b_pre."""
        return self.dictionary()

    @property
    def d(self) -> int:
        return self.b_pre.shape[0]

    def encode(self, acts_nd: torch.Tensor) -> torch.Tensor:
        """Codes Z (n, k) of raw activations A (n, d) (numpy or torch, moved to the model's device). ArchsaeError
        for a wrong shape or rows holding NaN or Inf."""
        acts_nd = torch.as_tensor(acts_nd, dtype=torch.float32, device=self.b_pre.device)
        if acts_nd.ndim != 2 or acts_nd.shape[1] != self.d:
            raise ArchsaeError(f"activations have shape {tuple(acts_nd.shape)}; this SAE expects (n, {self.d})")
        bad = (~torch.isfinite(acts_nd).all(1)).nonzero().flatten()
        if len(bad):  # their codes would be NaN, and every metric over them too
            raise ArchsaeError(f"{len(bad)} of the {len(acts_nd)} activation rows hold NaN or Inf (first: row "
                               f"{bad[0].item()}); drop or fix them before encoding")
        return self.activation(self.encoder(self.standardise(acts_nd) - self.b_pre))

    def decode(self, codes_nk: torch.Tensor, atoms_kd: torch.Tensor | None = None) -> torch.Tensor:
        """Raw-space reconstruction (n, d) of codes Z (n, k) (numpy or torch); `atoms_kd` saves rebuilding D
        per call. ArchsaeError for a wrong shape."""
        codes_nk = torch.as_tensor(codes_nk, dtype=torch.float32, device=self.b_pre.device)
        if codes_nk.ndim != 2 or codes_nk.shape[1] != self.k:
            raise ArchsaeError(f"codes have shape {tuple(codes_nk.shape)}; this SAE expects (n, {self.k})")
        atoms_kd = self.atoms() if atoms_kd is None else atoms_kd
        return self.unstandardise(codes_nk @ atoms_kd + self.b_pre)

    def forward(self, acts_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw-space reconstruction (n, d), codes Z (n, k)) of raw activations A (n, d), with D built once."""
        atoms_kd = self.atoms()
        codes_nk = self.encode(acts_nd)
        return self.decode(codes_nk, atoms_kd), codes_nk

    def project_(self) -> None:
        self.dictionary.project_()

    def losses(self, x_nd: torch.Tensor, dead_k: torch.Tensor | None = None, aux_k: int = 0,
               aux_coeff: float = 1 / 32) -> StepOutput:
        """The training objective on a batch x (n, d), in fractions of the batch's variance, as in Gao et al.
        2025 (Sec. 2.1, App. A.2, and their code):

            loss = FVU(x_hat, x) + penalty + aux_coeff * (FVU(e_hat, e) + gate / x_rms)

        FVU(y, x) = ||x - y||^2 / ||x - mean(x)||^2 over the batch (1 - R^2); `penalty` is the activation's
        sparsity penalty in the same units. AuxK reconstructs the residual e = x - x_hat (detached) from the
        `aux_k` largest pre-activations among the dead codes `dead_k` (bool (k,)); normalising it by the
        residual's own variance keeps its pull on dead codes as strong late in training, when the residual
        is small, as early on (a raw squared error fades with the residual: benchmarks/README.md). AuxK trains
        a dead code's encoder row and atom, not the level that gates it: `gate` (the activation's
        `dead_gate_loss`, in units of x_rms, the batch's RMS distance to its mean) lowers JumpReLU's thresholds
        and raises ReLU's biases of the dead codes toward their pre-activations.

        Every sparsity takes the sparse path: the pre-activations are computed without autograd, the activation
        selects the codes it keeps (`select`), only those (and AuxK's) are recomputed with autograd (the encoder's
        backward costs e d for e chosen entries, not n k d), and decoding gathers their atoms. The gradients are
        those of the dense definition (codes = activation(encoder(x - b)), x_hat = codes D + b).
        """
        atoms_kd = self.atoms()  # D built once per step
        n = len(x_nd)
        sst = (x_nd - x_nd.mean(0)).pow(2).sum().clamp_min(1e-12)  # holds no parameter: a constant
        x_rms = (sst / n).sqrt()
        n_dead = int(dead_k.sum()) if aux_k > 0 and dead_k is not None else 0
        with torch.no_grad():
            xc_nd = x_nd - self.b_pre
            pre_nk = F.linear(xc_nd, self.encoder.weight, self.encoder.bias)
            cols_e, counts_n = self.activation.select(pre_nk)
            crow = csr_pointers(counts_n)
            if n_dead:  # AuxK's entries: rows n..2n-1 of the same CSR matrix
                dead_m = dead_k.nonzero().squeeze(1)
                pre_dead_nm = pre_nk[:, dead_m]
                aux_nm = dead_m[pre_dead_nm.topk(min(aux_k, n_dead), dim=1).indices]
                crow = torch.cat([crow, crow[-1] + csr_pointers(counts_n.new_full((n,), aux_nm.shape[1]))[1:]])
                cols_e = torch.cat([cols_e, aux_nm.flatten()])
            rows_e = torch.arange(len(crow) - 1, device=x_nd.device).repeat_interleave(crow.diff()) % n
        vals_e = torch.relu(_ChosenPre.apply(xc_nd, self.b_pre, self.encoder.weight, self.encoder.bias, cols_e, rows_e,
                                             pre_nk[rows_e, cols_e]))
        main = int(crow[n])
        x_hat = gather_sum(atoms_kd, cols_e[:main], crow[:n + 1], vals_e[:main]) + self.b_pre
        x_hat, penalty = self.activation.sparse_terms(x_hat, pre_nk, cols_e[:main], vals_e[:main], atoms_kd, x_rms)
        sse = (x_hat - x_nd).pow(2).sum()
        loss = sse / sst + penalty
        if n_dead:
            e_hat = gather_sum(atoms_kd, cols_e[main:], crow[n:] - main, vals_e[main:])
            residual = (x_nd - x_hat).detach()
            aux_sst = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            gate = self.activation.dead_gate_loss(pre_dead_nm, dead_m, self.encoder.bias)
            loss = loss + aux_coeff * ((e_hat - residual).pow(2).sum() / aux_sst + gate / x_rms)
        with torch.no_grad():
            active_e = vals_e[:main] > 0
            fired_k = torch.zeros(self.k, dtype=torch.bool, device=x_nd.device).index_fill_(0, cols_e[:main][active_e],
                                                                                           True)
            return StepOutput(loss=loss, sse=sse.detach(), sst=sst, l0=active_e.sum(), fired_k=fired_k)


RESAMPLED_ENCODER_SCALE = 0.2  # a resampled code's encoder row, relative to the live rows' mean norm
RELU_L1_START, JUMPRELU_L0_START = 0.1, 1e-3  # adapted coefficients start here (L0 reaches top_k in ~100 steps)


def build_activation(cfg: TrainConfig, k: int) -> nn.Module:
    """The sparsity mechanism `cfg.sparsity` with its hyper-parameters."""
    if cfg.sparsity == "topk":
        return TopK(cfg.top_k)
    if cfg.sparsity == "batchtopk":
        return BatchTopK(cfg.top_k)
    if cfg.sparsity == "jumprelu":
        return JumpReLU(k, cfg.l0 or JUMPRELU_L0_START, 0 if cfg.l0 else cfg.top_k, cfg.bandwidth,
                        kernel=cfg.kernel)
    return ReLU(cfg.l1 or RELU_L1_START, 0 if cfg.l1 else cfg.top_k)


def check_candidate_count(cfg: TrainConfig, n_prime: int, fix: str = "distill with --n-centroids k or more") -> None:
    """Raise ArchsaeError unless n' (an int: the number of candidates C) can start the archetypal dictionary of
    `cfg`: unless W starts random, k atoms on fewer than k candidates would start as copies of one another (Fel
    et al. 2025 distil n' = 32,000 for k = 5 d). `build_sae` checks it; the commands that distil C before training
    call it first, so that no k-means runs in vain, with the fix in their own options (`fix`, a phrase). Free
    dictionaries pass."""
    if cfg.archetypal and cfg.w_init != "random" and n_prime < cfg.k:
        raise ArchsaeError(f"{cfg.method} with k = {cfg.k} atoms needs at least as many candidates, got "
                           f"n' = {n_prime}: atoms would start as copies of one another (the paper uses "
                           f"n' = 32,000 for k = 5 d); {fix}, or lower k")


def build_sae(cfg: TrainConfig, d: int, candidates_nd: torch.Tensor | None = None,
              delta: float | None = None, empty: bool = False) -> SAE:
    """An SAE as `cfg` describes: any sparsity with a free or an (relaxed) archetypal dictionary.

    Archetypal methods need the candidates C (n', d), n' >= k unless W starts random (so that no two atoms
    start on the same candidate). `delta` is the absolute bound on ||Lambda_i|| when it was resolved from
    `cfg.delta_relative` (default: cfg.effective_delta). Seeds come from `cfg.seed`. `empty`: W is left at zero
    for `load_state_dict` to fill (its initialisation is the slow part: 2 s at k = 2,560 and n' = 4,096, 80 s at
    k = 6,400 and n' = 32,768). Raises ArchsaeError for
    missing, mis-shaped or too few candidates.
    """
    dict_gen = torch.Generator().manual_seed(cfg.seed)
    if not cfg.archetypal:
        dictionary = FreeDictionary(cfg.k, d, dict_gen)
    else:
        if candidates_nd is None:
            raise ArchsaeError(f"{cfg.method} needs k-means candidates C: run `archsae distill` first (from Python: "
                               "pass candidates_nd = torch.from_numpy(archsae.kmeans(A, n', seed)), A standardised "
                               "train tokens, n' >= k)")
        if candidates_nd.ndim != 2 or candidates_nd.shape[1] != d:
            raise ArchsaeError(f"candidates C have shape {tuple(candidates_nd.shape)}; expected (n', {d})")
        if not torch.isfinite(candidates_nd).all():
            raise ArchsaeError("candidates C hold NaN or Inf: distil them again from finite activations")
        check_candidate_count(cfg, len(candidates_nd))
        delta = cfg.effective_delta if delta is None else delta
        dictionary = ArchetypalDictionary(candidates_nd, cfg.k, delta, "empty" if empty else cfg.w_init, dict_gen,
                                          cfg.w_support)
    model = SAE(d, dictionary, build_activation(cfg, cfg.k))
    model.config = cfg
    return model


def sae_config(cfg: TrainConfig, d: int, **info) -> dict:
    """The content of a model folder's `config.json`: the TrainConfig, d, and provenance `info`."""
    return {"train": asdict(cfg), "d": d, **info}


def save_sae(model: SAE, out_dir: str | Path, config: dict) -> None:
    """Write `config.json` (`config` from `sae_config`) and `model.safetensors`, each atomically. The weights
    of an earlier model in `out_dir` go first and come back last, so that a write killed half-way leaves no
    finished model rather than old weights beside a new configuration."""
    out_dir = Path(out_dir)
    (out_dir / "model.safetensors").unlink(missing_ok=True)
    write_json(out_dir / "config.json", config)
    write_safetensors(out_dir / "model.safetensors", model.state_dict())


def state_mismatch(error: RuntimeError) -> str:
    """What `load_state_dict`'s error says is wrong (its first detail line: "size mismatch for ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else "unknown error"


def load_sae(model_dir: str | Path, device: torch.device | str = "cpu") -> SAE:
    """A trained SAE saved by `archsae train`, ready for inference on `device`: eval mode, no gradients,
    `config` its TrainConfig, and its input normalisation loaded, so `encode` takes raw activations (n, d).
    Needs only the model folder (model.safetensors + config.json; README "Files"), not the store. Raises
    ArchsaeError when the folder holds no finished SAE, or its files are damaged or from another version."""
    model_dir = Path(model_dir)
    path = model_dir / "model.safetensors"
    if not path.exists():
        inside = sorted(p.parent for p in model_dir.glob("models/*/model.safetensors"))  # a run directory
        others = sorted(p.parent.name for p in model_dir.parent.glob("*/model.safetensors"))
        hint = (f"; it is a run directory, its models are {', '.join(map(str, inside))}" if inside else
                f"; models beside it: {', '.join(others)}" if others else ": run `archsae train`")
        raise ArchsaeError(f"no trained model in {model_dir} (model.safetensors missing){hint}")
    info = read_json(model_dir / "config.json")
    if "train" not in info or "d" not in info:
        raise ArchsaeError(f"{model_dir / 'config.json'} is not an SAE's configuration (no 'train' or 'd'); "
                           "classical models load with archsae.load_model")
    cfg = stored_train_config(info["train"])
    state = read_safetensors(path)
    model = build_sae(cfg, info["d"], state.get("dictionary.candidates"), empty=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArchsaeError(f"{path} does not match its config.json ({state_mismatch(e)}): it was written by "
                           "another version of archsae or is damaged; train it again") from None
    return model.eval().requires_grad_(False).to(device)
