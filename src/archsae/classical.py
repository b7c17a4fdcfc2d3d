"""Classical dictionary learning, the baselines of Fel et al. 2025 (Sec. 3, Table 1), with one interface:
`fit(A) -> self`, `encode(A) -> Z`, `decode(Z) -> A_hat`, and `dictionary`, the atoms (k, d) as rows.

A (n, d), Z (n, k), A_hat (n, d) and the dictionary are float32 torch tensors (numpy arrays are accepted).
PCA, ICA, Sparse PCA and SVD are scikit-learn's; KMeans is faiss's k-means with one-hot codes (A_hat is
the assigned centroid). Semi-NMF (Ding et al. 2010: Z >= 0, D free) and Convex-NMF (D = W X with W >= 0
over a basis X, a subsample of A or the candidates C) are fitted by alternating minimisation of
||A - Z D||^2 / 2 + l1 ||Z||_1: Z by projected proximal gradient (FISTA) at fixed D, then D (Semi-NMF: in
closed form) or W (Convex-NMF: projected gradient); `l1` sets the sparsity, as in the paper. Atoms are kept
unit-norm (each Z_i rescaled to keep Z D; an atom no token uses stays 0), so `l1` is in units of the
standardised activations.
"""

from __future__ import annotations

import textwrap
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from .config import CLASSICAL, ClassicalConfig, from_dict
from .errors import ArchsaeError
from .files import read_json, read_safetensors, refuse_if_different, write_json, write_safetensors
from .normalisation import RawSpace


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()


class Baseline(RawSpace):
    """The common interface; `dictionary` (k, d) is set by `fit`. `fit` takes the tokens in the space to fit
    in (standardised, by `fit_baseline`); `encode` and `decode` take and return raw activations once
    `set_normalisation_` was called (saved with the model; identity before). `config` is its
    ClassicalConfig when it was fitted by `fit_baseline` or loaded."""

    k: int
    dictionary: torch.Tensor
    input_shift, input_scale = torch.tensor(0.0), torch.tensor(1.0)  # the identity until set_normalisation_
    config: ClassicalConfig | None = None

    def _check(self, acts_nd: torch.Tensor) -> torch.Tensor:
        acts_nd = _tensor(acts_nd)
        if acts_nd.ndim != 2:
            raise ArchsaeError(f"activations must be (n, d); got shape {tuple(acts_nd.shape)}")
        if hasattr(self, "dictionary") and acts_nd.shape[1] != self.dictionary.shape[1]:
            raise ArchsaeError(f"activations have d = {acts_nd.shape[1]}; this model was fitted on "
                               f"d = {self.dictionary.shape[1]}")
        return acts_nd

    def check_size(self, n: int, d: int) -> None:
        """Raise ArchsaeError if k atoms cannot be fitted on n tokens of d dimensions (`fit_baseline` asks
        before anything else, so an impossible k is said first)."""

    def fit(self, acts_nd) -> "Baseline":
        raise NotImplementedError

    def encode(self, acts_nd) -> torch.Tensor:
        """Codes Z (n, k) of raw activations (n, d); ArchsaeError for a wrong shape."""
        return self._encode(self.standardise(self._check(acts_nd)))

    def decode(self, codes_nk) -> torch.Tensor:
        """Raw activations (n, d) reconstructed from codes Z (n, k)."""
        return self.unstandardise(self._decode(_tensor(codes_nk)))

    def _encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes_nk: torch.Tensor) -> torch.Tensor:
        return codes_nk @ self.dictionary

    def state(self) -> dict[str, torch.Tensor]:
        """What `load_state` needs to encode and decode again (saved by `save_baseline`)."""
        return {"dictionary": self.dictionary, "input_shift": self.input_shift, "input_scale": self.input_scale}

    def load_state(self, state: dict[str, torch.Tensor]) -> "Baseline":
        for name, value in state.items():
            setattr(self, name, value)
        return self


class SklearnBaseline(Baseline):
    """PCA, ICA, Sparse PCA or SVD from scikit-learn. Decoding includes the estimator's mean (PCA, ICA and
    Sparse PCA centre the data; SVD does not); ICA's atoms are the columns of its mixing matrix.

    Each estimator's transform is linear, Z = (A - mean) E^T, so after `fit` the model is kept as the
    encoder E (k, d), the mean (d,) and the atoms, which is what is saved: PCA and SVD E = components_;
    ICA E = components_ (its unmixing matrix, whitening included); Sparse PCA's ridge transform
    E = (C C^T + ridge_alpha I)^{-1} C with C = components_."""

    def __init__(self, name: str, k: int, seed: int = 0, alpha: float = 1.0):
        self.name, self.k = name, k
        from sklearn.decomposition import PCA, FastICA, MiniBatchSparsePCA, TruncatedSVD  # heavy: when used

        self.estimator = {
            "pca": lambda: PCA(n_components=k, random_state=seed),
            "ica": lambda: FastICA(n_components=k, random_state=seed, whiten="unit-variance", max_iter=400),
            "sparse_pca": lambda: MiniBatchSparsePCA(n_components=k, alpha=alpha, random_state=seed, batch_size=256,
                                                     method="cd"),  # 6x faster than lars here, same result
            "svd": lambda: TruncatedSVD(n_components=k, random_state=seed),
        }[name]()

    def check_size(self, n: int, d: int) -> None:
        if self.k > min(n, d):
            raise ArchsaeError(f"{self.name} finds at most min(n, d) = {min(n, d)} components; got k = {self.k}")

    def fit(self, acts_nd) -> "SklearnBaseline":
        acts_nd = self._check(acts_nd)
        self.check_size(*acts_nd.shape)
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:  # sparse PCA's inner lasso warns once per batch
            warnings.simplefilter("always", ConvergenceWarning)
            est = self.estimator.fit(acts_nd.numpy())
        convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
        for w in caught:
            if w not in convergence:
                warnings.warn(w.message, w.category, stacklevel=2)
        if convergence:  # one line, not one per inner solve
            warnings.warn(f"{self.name}: scikit-learn reported {len(convergence)} convergence warnings, e.g. "
                          f"{textwrap.shorten(str(convergence[0].message), 160)}", ConvergenceWarning, stacklevel=2)
        self.dictionary = _tensor(est.mixing_.T if self.name == "ica" else est.components_)
        self.mean_d = _tensor(getattr(est, "mean_", np.zeros(acts_nd.shape[1])))
        components = _tensor(est.components_).double()
        if self.name == "sparse_pca":
            gram = components @ components.T + est.ridge_alpha * torch.eye(self.k, dtype=torch.float64)
            components = torch.linalg.solve(gram, components)
        self.encoder_kd = components.float()
        return self

    def _encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        return (x_nd - self.mean_d) @ self.encoder_kd.T

    def _decode(self, codes_nk: torch.Tensor) -> torch.Tensor:
        return codes_nk @ self.dictionary + self.mean_d

    def state(self) -> dict[str, torch.Tensor]:
        return {**super().state(), "encoder_kd": self.encoder_kd, "mean_d": self.mean_d}


class KMeansBaseline(Baseline):
    """k-means (faiss): the atoms are the k centroids, a token's code is one-hot on its nearest centroid
    (value 1), so A_hat is that centroid."""

    def __init__(self, k: int, seed: int = 0, n_iter: int = 20):
        self.k, self.seed, self.n_iter = k, seed, n_iter

    def fit(self, acts_nd) -> "KMeansBaseline":
        from .distill import kmeans

        self.dictionary = torch.from_numpy(kmeans(self._check(acts_nd).numpy(), self.k, self.seed, self.n_iter))
        return self

    def _encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x_nd, self.dictionary).argmin(1)
        return torch.nn.functional.one_hot(nearest, self.k).float()


def nonneg_lasso(acts_nd: torch.Tensor, atoms_kd: torch.Tensor, l1: float, iters: int = 100,
                 codes_nk: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_{Z >= 0} ||A - Z D||^2 / 2 + l1 sum(Z) by FISTA (Beck & Teboulle 2009) with step 1/||D D^T||_2,
    warm-started from `codes_nk`. A (n, d), D (k, d) -> Z (n, k)."""
    gram = atoms_kd @ atoms_kd.T
    step = 1.0 / torch.linalg.matrix_norm(gram, ord=2).clamp_min(1e-12)
    target = acts_nd @ atoms_kd.T  # A D^T, the constant part of the gradient
    z = torch.zeros(len(acts_nd), len(atoms_kd)) if codes_nk is None else codes_nk.clone()
    y, t = z.clone(), 1.0
    for _ in range(iters):
        z_next = torch.relu(y - step * (y @ gram - target + l1))
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = z_next + ((t - 1) / t_next) * (z_next - z)
        z, t = z_next, t_next
    return z


def _unit_atoms(factor_km: torch.Tensor, atoms_kd: torch.Tensor,
                codes_nk: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(factor_i / ||D_i||, Z_i ||D_i||): the same product Z D with unit-norm atoms D_i, where the factor is D
    itself (Semi-NMF) or the W of D = W X (Convex-NMF); an atom that no token uses (D_i = 0) stays 0. Without
    it, alternating an L1 code step and a least-squares atom step lets the atoms grow and the codes shrink
    (norms 80-180 on the default store), so the L1 penalty weakens as fitting goes on and `l1` has no fixed
    meaning (l1 = 1 left L0 at 207 of k = 256). With unit atoms, `l1` is in units of the standardised
    activations."""
    norms_k = atoms_kd.norm(dim=1).clamp_min(1e-12)
    return factor_km / norms_k[:, None], None if codes_nk is None else codes_nk * norms_k


class SemiNMF(Baseline):
    """Semi-NMF (Ding et al. 2010) with an L1 penalty: Z >= 0 sparse, D free. Alternates a FISTA Z-step
    and the closed-form least-squares D = (Z^T Z + eps I)^{-1} Z^T A; atoms start on k-means centroids,
    as Ding et al. initialise it."""

    def __init__(self, k: int, l1: float = 0.1, seed: int = 0, n_iter: int = 30):
        self.k, self.l1, self.seed, self.n_iter = k, l1, seed, n_iter

    def fit(self, acts_nd) -> "SemiNMF":
        from .distill import kmeans

        acts_nd = self._check(acts_nd)
        centroids = torch.from_numpy(kmeans(acts_nd.numpy(), self.k, self.seed))
        self.dictionary, _ = _unit_atoms(centroids, centroids, None)
        codes = None
        for _ in range(self.n_iter):
            codes = nonneg_lasso(acts_nd, self.dictionary, self.l1, 50, codes)
            gram = codes.T @ codes + 1e-6 * torch.eye(self.k)
            atoms = torch.linalg.solve(gram, codes.T @ acts_nd)
            self.dictionary, codes = _unit_atoms(atoms, atoms, codes)
        return self

    def _encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        return nonneg_lasso(x_nd, self.dictionary, self.l1, 200)


class ConvexNMF(Baseline):
    """Convex-NMF (Ding et al. 2010) with an L1 penalty: D = W X, W >= 0 (k, m) over a basis X (m, d) of data
    points (a subsample of A, or the candidates C), Z >= 0 sparse. Alternates a FISTA Z-step and a
    projected-gradient W-step; W starts as a seeded selection of basis points."""

    def __init__(self, k: int, l1: float = 0.1, seed: int = 0, n_iter: int = 30, basis_nd=None, n_basis: int = 1024):
        self.k, self.l1, self.seed, self.n_iter, self.n_basis = k, l1, seed, n_iter, n_basis
        self.basis_nd = None if basis_nd is None else _tensor(basis_nd)

    def fit(self, acts_nd) -> "ConvexNMF":
        acts_nd = self._check(acts_nd)
        g = torch.Generator().manual_seed(self.seed)
        basis = self.basis_nd if self.basis_nd is not None else \
            acts_nd[torch.randperm(len(acts_nd), generator=g)[:self.n_basis]]
        m = len(basis)
        weights = torch.zeros(self.k, m)
        weights[torch.arange(self.k), torch.randperm(m, generator=g)[torch.arange(self.k) % m]] = 1.0
        weights, _ = _unit_atoms(weights, weights @ basis, None)
        codes = None
        for _ in range(self.n_iter):
            self.dictionary = weights @ basis
            codes = nonneg_lasso(acts_nd, self.dictionary, self.l1, 50, codes)
            # W-step: gradient of ||A - Z W X||^2 / 2 in W is Z^T (Z W X - A) X^T; step 1 / (||Z^T Z|| ||X X^T||)
            zz, xx, zax = codes.T @ codes, basis @ basis.T, codes.T @ acts_nd @ basis.T
            step = 1.0 / (torch.linalg.matrix_norm(zz, ord=2) * torch.linalg.matrix_norm(xx, ord=2)).clamp_min(1e-12)
            for _ in range(60):  # 20 left W short of its optimum once atoms are rescaled each step (0.02 R²)
                weights = torch.relu(weights - step * (zz @ weights @ xx - zax))
            weights, codes = _unit_atoms(weights, weights @ basis, codes)
        self.dictionary = weights @ basis
        self.weights_km = weights
        return self

    def state(self) -> dict[str, torch.Tensor]:
        return {**super().state(), "weights_km": self.weights_km}

    def _encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        return nonneg_lasso(x_nd, self.dictionary, self.l1, 200)


def build_baseline(name: str, k: int, seed: int = 0, l1: float = 0.1, basis_nd=None, n_iter: int = 30) -> Baseline:
    """A classical method by name (CLASSICAL). `l1` sets the sparsity of Semi-NMF and Convex-NMF and the
    alpha of Sparse PCA; `basis_nd` is Convex-NMF's X (default: 1,024 tokens of the data it is fitted on);
    `n_iter` the alternations of Semi-NMF and Convex-NMF.
    Raises ArchsaeError for an unknown name."""
    if name in ("pca", "ica", "sparse_pca", "svd"):
        return SklearnBaseline(name, k, seed, alpha=l1)
    if name == "kmeans":
        return KMeansBaseline(k, seed)
    if name == "semi_nmf":
        return SemiNMF(k, l1, seed, n_iter)
    if name == "convex_nmf":
        return ConvexNMF(k, l1, seed, n_iter, basis_nd=basis_nd)
    raise ArchsaeError(f"classical method must be one of {', '.join(CLASSICAL)}; got {name!r}")


def save_baseline(model: Baseline, out_dir: str | Path, cfg: ClassicalConfig, **info) -> None:
    """Write `model.safetensors` (its `state`) and `config.json` ({"classical": cfg, "d": d, **info})
    atomically, as `sae.save_sae` does for an SAE."""
    out_dir = Path(out_dir)
    write_safetensors(out_dir / "model.safetensors", {k: v.contiguous() for k, v in model.state().items()})
    write_json(out_dir / "config.json", {"classical": asdict(cfg), "d": int(model.dictionary.shape[1]), **info})


def load_baseline(model_dir: str | Path) -> Baseline:
    """A baseline saved by `save_baseline`, ready to encode and decode raw activations, `config` its
    ClassicalConfig. Raises ArchsaeError if missing, damaged or from another version."""
    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").exists():
        raise ArchsaeError(f"no fitted model in {model_dir}: run `archsae classical`")
    cfg = from_dict(ClassicalConfig, read_json(model_dir / "config.json")["classical"])
    state = read_safetensors(model_dir / "model.safetensors")
    if "input_scale" not in state:
        raise ArchsaeError(f"{model_dir} was fitted by an older archsae (no input normalisation saved); fit it again")
    model = build_baseline(cfg.method, cfg.k, cfg.seed, cfg.l1, n_iter=cfg.n_iter).load_state(state)
    model.config = cfg
    return model


def fit_baseline(acts_nd: torch.Tensor, cfg: ClassicalConfig, out_dir: str | Path | None = None, basis_nd=None,
                 normalisation: tuple[torch.Tensor, torch.Tensor] | None = None, **info) -> Baseline:
    """Fit `cfg.method` on standardised tokens `acts_nd` (n, d) (Convex-NMF over `basis_nd` when given) and
    save it to `out_dir` when given; a folder already holding a model of the same configuration is loaded
    instead of refitted. `normalisation` (shift, scale), both (d,), is how raw activations were standardised
    (`ActivationStore.normalisation`), so the model encodes raw ones. Raises ArchsaeError when `out_dir`
    holds a model of another configuration, or for the errors of `build_baseline` and `fit` (unknown
    method, k > min(n, d), wrong shape)."""
    model = build_baseline(cfg.method, cfg.k, cfg.seed, cfg.l1, basis_nd, cfg.n_iter)
    model.check_size(*model._check(acts_nd).shape)
    if out_dir is not None and (Path(out_dir) / "model.safetensors").exists():
        model = load_baseline(out_dir)
        stored = read_json(Path(out_dir) / "config.json")
        refuse_if_different({"config": asdict(model.config), "store": stored.get("store")},
                            {"config": asdict(cfg), "store": info.get("store")}, out_dir,
                            f"a {model.config.method}", "choose another --name")
        return model
    model.fit(acts_nd)
    model.config = cfg
    if normalisation is not None:
        model.set_normalisation_(*normalisation)
    if out_dir is not None:
        save_baseline(model, out_dir, cfg, **info)
    return model
