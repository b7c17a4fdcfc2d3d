"""Typed, frozen configuration of each step; saved as JSON beside every result.

Every field carries a one-line help (default, unit, meaning) in its metadata; the CLI builds its
options from these, so the help text lives in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ArchsaeError

T = TypeVar("T")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help string."""
    return field(default=default, metadata={"help": help})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ArchsaeError(msg)


@dataclass(frozen=True)
class DemoConfig:
    """The embedded demo image set (Tux Paint photo stamps on backgrounds + scikit-image photos)."""

    n_images: int = opt(2000, "number of demo images to build")
    size: int = opt(256, "side of each demo image, pixels")
    seed: int = opt(0, "seed of the demo set (stamp choice, background, placement)")

    def __post_init__(self) -> None:
        _check(self.n_images >= 1, f"n_images must be >= 1, got {self.n_images}")
        _check(self.size >= 32, f"size must be >= 32 pixels, got {self.size}")


@dataclass(frozen=True)
class ExtractConfig:
    """Model -> token activations -> activation store."""

    model: str = opt("efficientnet_lite0", "timm model name; 'efficientnet_lite0' is the embedded offline default")
    pretrained: bool = opt(True, "load pretrained weights (downloads for timm models other than the embedded one)")
    layer: str = opt("", "module whose output is read (e.g. 'blocks.5'); empty = forward_features")
    prefix_tokens: bool = opt(False, "ViT only: also keep CLS/register tokens, not only patch tokens")
    batch_size: int = opt(32, "images per forward pass")
    shard_tokens: int = opt(16384, "tokens per shard (rounded to whole images)")
    dtype: str = opt("float32", "storage dtype of activations: float32 or float16")
    holdout_every: int = opt(10, "every N-th image (in stored order) is held out for evaluation")
    order_seed: int = opt(0, "images are stored in a random order drawn with this seed: folders sorted by class "
                             "would otherwise give shards, and so training batches, of a few classes each")

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.shard_tokens >= 1, f"shard_tokens must be >= 1, got {self.shard_tokens}")
        _check(self.dtype in ("float32", "float16"), f"dtype must be float32 or float16, got {self.dtype!r}")
        _check(self.holdout_every >= 2, f"holdout_every must be >= 2, got {self.holdout_every}")


DISTILL_METHODS = {
    "kmeans": "k-means centroids (the paper's)",
    "lof": "the n' most outlying tokens by Local Outlier Factor",
    "isolation_forest": "the n' most outlying tokens by Isolation Forest",
    "ocsvm": "the n' most outlying tokens by a One-Class SVM (O(n^2) in --max-points)",
    "hull": "vertices of the convex hull of the PCA projection, peeled layer by layer until n'",
}


@dataclass(frozen=True)
class DistillConfig:
    """A -> C: n' candidates chosen from the standardised activations (Fel et al. 2025, Sec. 4 and App. C)."""

    n_centroids: int = opt(4096, "n', the number of candidates C; above k, so that no two atoms start on one "
                                 "candidate (the paper: 32,000 for k = 5 d, about 8 per atom; more per atom put "
                                 "candidates near rarer concepts, at k-means time: benchmarks/README.md)")
    seed: int = opt(0, "seed of the token sample and of the method (k-means, Isolation Forest)")
    method: str = opt("kmeans", "how C is chosen: " + "; ".join(f"{m} = {h}" for m, h in DISTILL_METHODS.items()))
    max_points: int = opt(100_000, "train tokens sampled (bounded memory)")
    n_iter: int = opt(10, "k-means iterations")
    hull_dims: int = opt(6, "hull: PCA dimensions of the projection (qhull's cost explodes beyond ~8)")
    subset: float = opt(1.0, "fraction of the train tokens k-means samples from (seeded by --subset-seed)")
    subset_seed: int = opt(0, "seed of the token subset, when subset < 1")

    def __post_init__(self) -> None:
        _check(0 < self.subset <= 1, f"subset must be in (0, 1], got {self.subset}")
        _check(self.method in DISTILL_METHODS,
               f"distillation method must be one of {', '.join(DISTILL_METHODS)}; got {self.method!r}")
        _check(2 <= self.hull_dims <= 12, f"hull_dims must be in 2..12, got {self.hull_dims}")
        _check(self.n_centroids >= 1, f"n' (n_centroids) must be >= 1, got {self.n_centroids}")
        _check(self.max_points >= self.n_centroids,
               f"max_points ({self.max_points}) must be >= n_centroids ({self.n_centroids})")
        _check(self.n_iter >= 1, f"n_iter must be >= 1, got {self.n_iter}")


def _unused_at_defaults(cfg: T) -> T:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{name: fields[name].default for name in cfg.unused_fields()})


LOG_EVERY = 10  # steps between the lines of a model's log.jsonl
HELDOUT_TOKENS = 4096  # held-out tokens (seed 0) of the R² logged along training
SPARSITIES = ("topk", "batchtopk", "jumprelu", "relu")
CLASSICAL = ("pca", "ica", "sparse_pca", "svd", "kmeans", "semi_nmf", "convex_nmf")  # classical.py
DICTIONARY_PREFIXES = {"": "free", "a-": "archetypal, delta = 0", "ra-": "relaxed archetypal"}
METHODS = tuple(prefix + s for prefix in DICTIONARY_PREFIXES for s in SPARSITIES)


def is_archetypal(method: str) -> bool:
    """Whether a method (METHODS) has an archetypal dictionary, D = W C (+ Λ)."""
    return method.startswith(("a-", "ra-"))


@dataclass(frozen=True)
class TrainConfig:
    """One SAE: a sparsity mechanism with a free, archetypal (A-SAE) or relaxed archetypal (RA-SAE) dictionary."""

    method: str = opt("topk", "sparsity topk|batchtopk|jumprelu|relu, prefixed a- (A-SAE: D = W C) or ra- "
                              "(RA-SAE: D = W C + Lambda); no prefix = free unit-norm atoms. 'all' = all 12")
    k: int = opt(2560, "dictionary size (number of atoms)")
    top_k: int = opt(32, "active codes per token: topk exactly, batchtopk on average over the batch; jumprelu "
                         "and relu: the mean L0 their coefficient is adapted to (when l0 / l1 = 0), else the L0 their "
                         "gates start at (a fixed coefficient then sets it)")
    l1: float = opt(0.0, "relu: L1 coefficient (fixed); 0 = adapted during training so that the mean L0 is --top-k")
    l0: float = opt(0.0, "jumprelu: L0 coefficient (fixed); 0 = adapted during training so that the mean L0 is "
                         "--top-k")
    bandwidth: float = opt(0.5, "jumprelu: bandwidth of the kernel of the threshold's gradient, in standardised "
                                "units (pre-activations are O(1); 1e-2 left 5 % of codes dead with Silverman's kernel)")
    kernel: str = opt("rectangle", "jumprelu: kernel of the threshold's straight-through gradient: rectangle "
                                   "(Rajamanoharan et al.: only pre-activations within bandwidth / 2 of the threshold "
                                   "count) or silverman (the paper's, App. F: every one counts, a dense n x d x k "
                                   "product per step, 1.3-1.4x slower; the same R², more dead archetypal codes)")
    delta: float = opt(4.0, "ra-: bound on ||Lambda_i|| in the units of C, standardised activations, as the paper's "
                            "(or x mean ||A|| with delta_relative). 4: held-out R² equal to TopK's (0.632) on the "
                            "default store, atoms at cos 0.98 with C; about 13 % of a centroid's norm there (~31 at "
                            "d = 1,280)")
    delta_relative: bool = opt(False, "ra-: delta is a fraction of the mean norm of the standardised activations")
    w_init: str = opt("spread", "a-/ra-: W init: spread (the most distinct candidates: farthest-point in angle "
                                "from a seeded first), permuted (seeded random ones), identity (the paper's) or random")
    w_support: int = opt(64, "a-/ra-: candidates per row of W (its start and nearest neighbours); 0 = dense W")
    centroids_seed: int = opt(-1, "a-/ra-: seed of the k-means C to use; -1 = the run's seed")
    aux_k: int = opt(256, "dead codes in the AuxK loss, which pulls them back to the residual (Gao et al. 2025); "
                          "0 = no AuxK")
    aux_coeff: float = opt(1 / 32, "weight of the AuxK loss, and of the loss that lowers the gates (JumpReLU "
                                  "thresholds, ReLU biases) of dead codes")
    dead_tokens: int = opt(10_000, "a code silent for this many training tokens counts as dead (AuxK, logs; "
                                   "resampling: at least this many)")
    resample_every: int = opt(25, "steps between resamplings of the codes silent since the last one, on badly "
                                  "reconstructed tokens (Bricken et al. 2023), until 3/4 of training; 0 = never")
    seed: int = opt(0, "seed of the encoder and W")
    data_seed: int = opt(0, "seed of the data order (models trained in one pass share it)")
    subset: float = opt(1.0, "fraction of the train tokens this model sees (seeded by --subset-seed); 1 = all")
    subset_seed: int = opt(0, "seed of the token subset, when subset < 1")
    centre: bool = opt(True, "train on (A - mean) / std (off: on A / std, the uncentred space, where archetypal "
                             "atoms, mixtures of the shifted C, carry the data mean, so each token's codes must sum to "
                             "about a constant; a free SAE's b_pre starts at that mean, so it learns the same model "
                             "either way)")
    snapshot_every: int = opt(0, "steps between copies of the dictionary kept in snapshots/ (and at step 0 "
                                 "and the end), for stability along training; 0 = none")
    heldout_every: int = opt(100, "steps between held-out R² measurements in log.jsonl (on 4,096 fixed held-out "
                                  "tokens, and at the end); a multiple of 10, the log's interval; 0 = none")
    epochs: float = opt(4.0, "passes over the training tokens")
    batch_size: int = opt(1024, "tokens per step (over all streams and ranks)")
    lr: float = opt(0.0, "peak Adam learning rate; 0 = 0.06 / sqrt(d), the rate at which Adam turns a unit atom "
                         "by about 0.06 rad per step whatever d")
    warmup_steps: int = opt(50, "linear warmup steps, then a constant lr")
    checkpoint_every: int = opt(100, "steps between checkpoints (may differ on a rerun: resumes are exact)")
    shuffle_shards: int = opt(4, "tokens read per round of a stream's global shuffle, in shards (memory = this x shard size)")
    streams: int = opt(0, "data streams (disjoint shard sets, one micro-batch each per step); 0 = DDP world size")
    amp: bool = opt(True, "CUDA only: bf16 autocast (ignored on CPU)")

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        _check(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        _check(self.k >= 2, f"k must be >= 2, got {self.k}: coherence, stability and ranks compare atoms")
        _check(self.k >= self.top_k,
               f"k ({self.k}) must be >= top_k ({self.top_k}): at most k codes are active")
        _check(self.l1 >= 0 and self.l0 >= 0, f"l1 and l0 must be >= 0, got {self.l1}, {self.l0}")
        _check(self.bandwidth > 0, f"bandwidth must be > 0, got {self.bandwidth}")
        _check(self.kernel in ("silverman", "rectangle"), f"kernel must be silverman or rectangle, got {self.kernel!r}")
        _check(self.delta >= 0, f"delta must be >= 0, got {self.delta}")
        _check(not self.method.startswith("ra-") or self.delta > 0,
               f"{self.method} needs delta > 0; for delta = 0 use a-{self.sparsity} (A-SAE)")
        _check(self.w_init in ("permuted", "identity", "spread", "random"),
               f"w_init must be permuted, identity, spread or random, got {self.w_init!r}")
        _check(self.w_support >= 0, f"w_support must be >= 0 (0 = dense W), got {self.w_support}")
        _check(self.aux_k >= 0 and self.aux_coeff >= 0, "aux_k and aux_coeff must be >= 0")
        _check(self.dead_tokens >= 1, f"dead_tokens must be >= 1, got {self.dead_tokens}")
        _check(self.resample_every >= 0, f"resample_every must be >= 0 (0 = never), got {self.resample_every}")
        _check(math.isfinite(self.epochs) and self.epochs > 0, f"epochs must be finite and > 0, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr >= 0, f"lr must be >= 0 (0 = 0.06 / sqrt(d)), got {self.lr}")
        _check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _check(self.shuffle_shards >= 1, f"shuffle_shards must be >= 1, got {self.shuffle_shards}")
        _check(self.streams >= 0, f"streams must be >= 0 (0 = world size), got {self.streams}")
        _check(0 < self.subset <= 1, f"subset must be in (0, 1], got {self.subset}")
        _check(self.snapshot_every >= 0, f"snapshot_every must be >= 0, got {self.snapshot_every}")
        _check(self.heldout_every >= 0 and self.heldout_every % LOG_EVERY == 0,
               f"heldout_every must be 0 or a multiple of {LOG_EVERY} (the log's interval), got {self.heldout_every}")

    @property
    def sparsity(self) -> str:
        return self.method.split("-")[-1]

    @property
    def archetypal(self) -> bool:
        return is_archetypal(self.method)

    @property
    def effective_delta(self) -> float:
        """delta as set for ra- methods; 0 for a- (A-SAE) and free dictionaries."""
        return self.delta if self.method.startswith("ra-") else 0.0

    def peak_lr(self, d: int) -> float:
        """The peak learning rate for d-dimensional activations: `lr`, or 0.06 / sqrt(d) when lr is 0. Adam moves
        every coordinate by about lr per step, so a unit atom turns by about lr sqrt(d): this keeps that angle
        fixed (planted data at d = 96 and 256 and the default store at d = 1,280 peak near it,
        benchmarks/README.md)."""
        return self.lr or 0.06 / math.sqrt(d)

    @property
    def kmeans_seed(self) -> int:
        return self.seed if self.centroids_seed < 0 else self.centroids_seed

    def unused_fields(self) -> set[str]:
        """The fields this method ignores (e.g. l1 for topk, delta for a- and free dictionaries)."""
        unused = set()
        if self.sparsity != "relu":
            unused.add("l1")
        if self.sparsity != "jumprelu":
            unused |= {"l0", "bandwidth", "kernel"}
        if not self.archetypal:
            unused |= {"w_init", "w_support", "centroids_seed"}
        if not self.method.startswith("ra-"):
            unused |= {"delta", "delta_relative"}
        if self.subset == 1:
            unused.add("subset_seed")
        return unused

    def canonical(self) -> "TrainConfig":
        """This configuration with the fields its method ignores at their defaults (so a sweep over l1
        trains one topk model, not one per l1 value), and centroids_seed -1 where it names the model's own seed
        (the same C: `archsae run` names it, `archsae train` leaves it at -1)."""
        cfg = _unused_at_defaults(self)
        return dataclasses.replace(cfg, centroids_seed=-1) if cfg.centroids_seed == cfg.seed else cfg


@dataclass(frozen=True)
class ClassicalConfig:
    """One classical dictionary (classical.py), fitted in memory on a sample of the standardised train tokens."""

    method: str = opt("pca", "one of " + ", ".join(CLASSICAL))
    k: int = opt(1024, "dictionary size (PCA, ICA, Sparse PCA, SVD: at most d)")
    l1: float = opt(1.0, "semi_nmf, convex_nmf: L1 coefficient, in standardised units (unit atoms; at k = 256 on the "
                         "default store 0.3 / 1 / 3 give Semi-NMF L0 84 / 31 / 8); sparse_pca: alpha")
    n_iter: int = opt(30, "semi_nmf, convex_nmf: alternations of the codes and the dictionary")
    seed: int = opt(0, "seed of the token sample and of the method")
    max_tokens: int = opt(10_000, "train tokens fitted on (held in memory)")
    basis: str = opt("sample", "convex_nmf: the points X of D = W X: 'sample' (1,024 of the fitted tokens) "
                               "or 'centroids' (the run's k-means C of --seed, as A-SAE's)")

    def __post_init__(self) -> None:
        _check(self.method in CLASSICAL,
               f"classical method must be one of {', '.join(CLASSICAL)}; got {self.method!r}")
        _check(self.basis in ("sample", "centroids"), f"basis must be sample or centroids, got {self.basis!r}")
        _check(self.k >= 2 and self.n_iter >= 1 and self.l1 >= 0,
               "k must be >= 2 (coherence, stability and ranks compare atoms), n_iter >= 1 and l1 >= 0")
        _check(self.max_tokens >= self.k, f"max_tokens ({self.max_tokens}) must be >= k ({self.k})")

    def unused_fields(self) -> set[str]:
        """The fields this method ignores."""
        return ({"l1"} if self.method not in ("semi_nmf", "convex_nmf", "sparse_pca") else set()) | \
            ({"n_iter"} if self.method not in ("semi_nmf", "convex_nmf") else set()) | \
            ({"basis"} if self.method != "convex_nmf" else set())

    def canonical(self) -> "ClassicalConfig":
        """This configuration with the fields its method ignores at their defaults."""
        return _unused_at_defaults(self)


def sweep_labels(configs: list) -> list[str]:
    """A name per configuration of a sweep (TrainConfig or ClassicalConfig): its method, then each field that
    takes several values among the configurations that use it (e.g. 'ra-topk-delta0.1'); seeds are left
    to the caller."""
    swept = [f.name for f in dataclasses.fields(configs[0]) if f.name not in ("method", "seed")
             and len({getattr(c, f.name) for c in configs if f.name not in c.unused_fields()}) > 1]
    return ["-".join([c.method] + [f"{f.replace('_', '')}{getattr(c, f)}" for f in swept if f not in c.unused_fields()])
            for c in configs]


@dataclass(frozen=True)
class EvaluateConfig:
    """Metrics on held-out tokens."""

    max_tokens: int = opt(20_000, "held-out tokens evaluated (a seeded sample if there are more)")
    seed: int = opt(0, "seed of the held-out sample")

    def __post_init__(self) -> None:
        _check(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")


STABILITY_MODES = {
    "independent": "each run its own k-means seed, W initialisation, dictionary seed and data order",
    "shared": "the paper's: one C and W = identity, so every run starts from the same dictionary (and, tied, the "
              "same encoder); runs differ only in their data order. A free dictionary: every run the same seed",
    "perturbed": "independent seeds, and each run (k-means included) on its own subset of the train tokens",
    "same-c": "archetypal only: one C (run 0's k-means), each run its own W initialisation (--w-init, seeded), "
              "encoder seed and data order: whether runs started apart on one C meet",
}


@dataclass(frozen=True)
class StabilityConfig:
    """`archsae stability`: R runs of each configuration under each initialisation mode, compared along training."""

    mode: tuple = opt(("independent", "shared"), "initialisation modes: " + "; ".join(
        f"{m} = {h}" for m, h in STABILITY_MODES.items()) + " [repeat for several]")
    runs: int = opt(4, "runs per configuration and mode (the paper: 4)")
    snapshots: int = opt(8, "dictionaries kept along training, besides the initial one: every steps // N steps, "
                            "and the last")
    perturb_subset: float = opt(0.9, "perturbed mode: fraction of the train tokens each run sees")
    uncentred: bool = opt(False, "also train every run on uncentred data (A / std) to measure how cosine "
                                 "stability depends on the data mean (Brzozowski & Chung 2026)")
    max_tokens: int = opt(10_000, "held-out tokens for R² and the code-correlation matching")
    null_points: int = opt(0, "train tokens of the k-means null (two k-means dictionaries of k atoms); 0: as many "
                              "as C's k-means (--distill-max-points), whose agreement grows with its sample")

    def __post_init__(self) -> None:
        for mode in self.mode:
            _check(mode in STABILITY_MODES, f"mode must be one of {', '.join(STABILITY_MODES)}; got {mode!r}")
        _check(len(self.mode) >= 1, "give at least one --mode")
        _check(self.runs >= 2, f"stability compares runs: runs must be >= 2, got {self.runs}")
        _check(self.snapshots >= 1, f"snapshots must be >= 1, got {self.snapshots}")
        _check(0 < self.perturb_subset < 1, f"perturb_subset must be in (0, 1), got {self.perturb_subset}")
        _check(self.max_tokens >= 2 and self.null_points >= 0, "max_tokens must be >= 2 and null_points >= 0")


@dataclass(frozen=True)
class DistillationBenchConfig:
    """`archsae benchmark distillation` (Fel et al. 2025, App. C, Fig. 11): A-SAE on each distillation method's C."""

    method: tuple = opt(tuple(DISTILL_METHODS), "distillation methods compared [repeat for several]")
    sparsity: str = opt("topk", "sparsity of the A-SAE trained on each C (topk, batchtopk, jumprelu, relu)")
    runs: int = opt(2, "runs per method (token sample, method and A-SAE seeds all differ), for stability")
    n_centroids: int = opt(4096, "n', candidates per method (at least the A-SAE's --train-k)")
    max_points: int = opt(20_000, "train tokens each method chooses from (One-Class SVM is O(n^2) in it)")
    max_tokens: int = opt(10_000, "held-out tokens for R² and the OOD score")

    def __post_init__(self) -> None:
        for m in self.method:
            _check(m in DISTILL_METHODS, f"method must be one of {', '.join(DISTILL_METHODS)}; got {m!r}")
        _check(self.sparsity in SPARSITIES, f"sparsity must be one of {', '.join(SPARSITIES)}; got {self.sparsity!r}")
        _check(self.runs >= 2, f"stability compares runs: runs must be >= 2, got {self.runs}")
        _check(self.max_points >= self.n_centroids,
               f"max_points ({self.max_points}) must be >= n_centroids ({self.n_centroids})")
        _check(self.max_tokens >= 2, f"max_tokens must be >= 2, got {self.max_tokens}")


@dataclass(frozen=True)
class PlausibilityBenchConfig:
    """`archsae benchmark plausibility` (Fel et al. 2025, Sec. 5.2, Table 2): atoms against the classifier
    head's class directions."""

    k: tuple = opt((512, 1024, 2048), "dictionary sizes, each below n' (--distill-n-centroids) [repeat for several]")
    delta: tuple = opt((0.0, 1.0, 4.0, 16.0), "archetypal deltas: 0 = A-SAE, > 0 = RA-SAE [repeat for several]")
    sparsity: str = opt("topk", "sparsity of every SAE compared (topk, batchtopk, jumprelu, relu)")

    def __post_init__(self) -> None:
        _check(all(k >= 1 for k in self.k) and len(self.k) >= 1, f"k must be >= 1, got {self.k}")
        _check(all(d >= 0 for d in self.delta), f"delta must be >= 0, got {self.delta}")
        _check(self.sparsity in SPARSITIES, f"sparsity must be one of {', '.join(SPARSITIES)}; got {self.sparsity!r}")


@dataclass(frozen=True)
class IdentifiabilityBenchConfig:
    """`archsae benchmark identifiability` (Fel et al. 2025, Sec. 5.3, App. G, Tables 3 and 4): collages of 4
    known objects; can one atom per object find it?"""

    theme: tuple = opt(("gems", "animals", "birds", "books", "candy", "cards", "cocktails", "flowers", "planets",
                        "potions", "fruit", "vehicles"), "collage datasets, one theme of 9-20 objects each "
                       "(data.collages.THEMES) [repeat for several]")
    method: tuple = opt(METHODS + CLASSICAL, "SAE and classical methods compared [repeat for several]")
    n_train: int = opt(250, "collages per theme whose codes choose each object's atom and threshold "
                            "(the paper: 2,000; ~10 images/s on 2 cores)")
    n_test: int = opt(250, "collages per theme the accuracy is reported on (the paper: 2,000)")
    top_k: int = opt(4, "topk/batchtopk: active codes (4 objects per collage); jumprelu: initial L0")
    epochs: float = opt(60.0, "SAE passes over the train collages")
    n_centroids: int = opt(64, "a-/ra-: candidates C per theme (k-means of the train collages)")
    w_init: str = opt("spread", "a-/ra-: how W starts: spread (each atom on one of the most distinct candidates, "
                                "as `archsae train`) or random (each row a flat Dirichlet over all candidates; "
                                "atoms start as mixtures, as the authors' clamp-and-divide step for W leaves them)")
    l1: float = opt(0.1, "Semi-NMF, Convex-NMF: L1 coefficient; Sparse PCA: alpha")
    seed: int = opt(0, "seed of the collages, the SAEs and the classical methods")
    sprites: str = opt("", "folder of the Fluent 3D emoji sprites; default $ARCHSAE_SPRITES or the one "
                           "scripts/install.sh fills")

    def __post_init__(self) -> None:
        from .data.collages import OBJECTS_PER_IMAGE, THEMES

        for t in self.theme:
            _check(t in THEMES, f"theme must be one of {', '.join(THEMES)}; got {t!r}")
        for m in self.method:
            _check(m in METHODS + CLASSICAL, f"method must be one of {', '.join(METHODS + CLASSICAL)}; got {m!r}")
        _check(self.n_train >= max(self.n_centroids, 2 * OBJECTS_PER_IMAGE) and self.n_test >= 1,
               f"n_train must be >= n_centroids ({self.n_centroids}) and n_test >= 1; "
               f"got {self.n_train}, {self.n_test}")
        _check(1 <= self.top_k <= 9, f"top_k must be in 1..9 (the smallest theme has 9 objects), got {self.top_k}")
        _check(self.w_init in ("spread", "random"), f"w_init must be spread or random, got {self.w_init!r}")
        _check(math.isfinite(self.epochs) and self.epochs > 0 and self.l1 >= 0, "epochs must be finite and > 0, "
               "and l1 >= 0")


@dataclass(frozen=True)
class ReportConfig:
    """The HTML report."""

    n_concepts: int = opt(16, "most used concepts shown per model")
    n_images: int = opt(8, "top-activating images per concept")

    def __post_init__(self) -> None:
        _check(self.n_concepts >= 1 and self.n_images >= 1,
               f"n_concepts and n_images must be >= 1, got {self.n_concepts} and {self.n_images}")


@dataclass(frozen=True)
class RunConfig:
    """`archsae run`: every step on one configuration, into one run directory."""

    demo: DemoConfig = DemoConfig()
    extract: ExtractConfig = ExtractConfig()
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    methods: tuple = opt(("topk", "ra-topk"), "methods trained (see TrainConfig.method)")
    n_runs: int = opt(2, "independently initialised runs per method (stability needs 2)")

    def __post_init__(self) -> None:
        for method in self.methods:
            _check(method in METHODS, f"method must be one of {', '.join(METHODS)}; got {method!r}")

    @classmethod
    def quick(cls) -> "RunConfig":
        """A small configuration for smoke tests (~40 s on 2 cores)."""
        return cls(
            demo=DemoConfig(n_images=160),
            distill=DistillConfig(n_centroids=1024, max_points=20_000),
            train=TrainConfig(k=512, top_k=16, epochs=3.0, batch_size=512, warmup_steps=5),
            evaluate=EvaluateConfig(max_tokens=5_000),
        )


def to_dict(cfg: Any) -> dict:
    """A configuration as a JSON-ready dict (tuples become lists, as JSON reads them back)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a (possibly nested) configuration from `to_dict` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ArchsaeError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        default = names[key].default
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value)
        kwargs[key] = tuple(value) if isinstance(default, tuple) else value
    return cls(**kwargs)


# TrainConfig fields added after models were first saved, with the value that reproduces how a model saved
# without them was trained (a missing field otherwise takes today's default).
_ABSENT_FROM_OLD_MODELS = {"resample_every": 0, "kernel": "silverman"}


def stored_train_config(data: dict) -> TrainConfig:
    """The TrainConfig of a model folder's config.json ("train"), as it was trained. ArchsaeError for unknown
    fields."""
    data = {**_ABSENT_FROM_OLD_MODELS, **data}
    if data.get("top_k", 0) > data.get("k", math.inf):  # a fixed-coefficient ReLU / JumpReLU saved when top_k was
        data["top_k"] = data["k"]  # ignored there (so stored at its default 32): its gates started at min(top_k, k)
    return from_dict(TrainConfig, data)
