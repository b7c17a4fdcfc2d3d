"""Typed, frozen configuration of each step; saved as JSON beside every result.

Every field carries a one-line help (default, unit, meaning) in its metadata; the CLI builds its
options from these, so the help text lives in one place.
"""

from __future__ import annotations

import dataclasses
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
    holdout_every: int = opt(10, "every N-th image is held out for evaluation")

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.shard_tokens >= 1, f"shard_tokens must be >= 1, got {self.shard_tokens}")
        _check(self.dtype in ("float32", "float16"), f"dtype must be float32 or float16, got {self.dtype!r}")
        _check(self.holdout_every >= 2, f"holdout_every must be >= 2, got {self.holdout_every}")


@dataclass(frozen=True)
class DistillConfig:
    """A -> C: k-means centroids of the standardised activations (Fel et al. 2025, Sec. 4)."""

    n_centroids: int = opt(1024, "n', the number of centroids C")
    seed: int = opt(0, "k-means seed")
    max_points: int = opt(100_000, "train tokens sampled for k-means (bounded memory)")
    n_iter: int = opt(20, "k-means iterations")

    def __post_init__(self) -> None:
        _check(self.n_centroids >= 1, f"n' (n_centroids) must be >= 1, got {self.n_centroids}")
        _check(self.max_points >= self.n_centroids,
               f"max_points ({self.max_points}) must be >= n_centroids ({self.n_centroids})")
        _check(self.n_iter >= 1, f"n_iter must be >= 1, got {self.n_iter}")


@dataclass(frozen=True)
class TrainConfig:
    """One SAE: a TopK encoder with a free or an archetypal dictionary."""

    method: str = opt("topk", "topk (free unit-norm dictionary) or ra-sae (D = W C + Lambda)")
    k: int = opt(2560, "dictionary size (number of atoms)")
    top_k: int = opt(32, "active codes per token (TopK)")
    delta: float = opt(0.01, "RA-SAE: bound on ||Lambda_i||, standardised units; 0 = A-SAE")
    w_init: str = opt("permuted", "RA-SAE: W init: permuted (seeded), identity (the paper's) or random")
    centroids_seed: int = opt(-1, "RA-SAE: seed of the k-means C to use; -1 = the run's seed")
    seed: int = opt(0, "seed of the encoder, W and the data order")
    epochs: float = opt(4.0, "passes over the training tokens")
    batch_size: int = opt(1024, "tokens per step")
    lr: float = opt(1e-3, "peak Adam learning rate")
    warmup_steps: int = opt(50, "linear warmup steps, then cosine decay to 10% of lr")
    checkpoint_every: int = opt(100, "steps between checkpoints")
    shuffle_shards: int = opt(4, "shards mixed in the shuffle buffer (memory = this x shard size)")

    def __post_init__(self) -> None:
        _check(self.method in ("topk", "ra-sae"), f"method must be 'topk' or 'ra-sae', got {self.method!r}")
        _check(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        _check(self.k >= self.top_k, f"k ({self.k}) must be >= top_k ({self.top_k}): TopK keeps top_k of k codes")
        _check(self.delta >= 0, f"delta must be >= 0 (0 = A-SAE), got {self.delta}")
        _check(self.w_init in ("permuted", "identity", "random"),
               f"w_init must be permuted, identity or random, got {self.w_init!r}")
        _check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _check(self.shuffle_shards >= 1, f"shuffle_shards must be >= 1, got {self.shuffle_shards}")

    @property
    def kmeans_seed(self) -> int:
        return self.seed if self.centroids_seed < 0 else self.centroids_seed


@dataclass(frozen=True)
class EvaluateConfig:
    """Metrics on held-out tokens."""

    max_tokens: int = opt(20_000, "held-out tokens evaluated (a seeded sample if there are more)")
    seed: int = opt(0, "seed of the held-out sample")

    def __post_init__(self) -> None:
        _check(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class ReportConfig:
    """The HTML report."""

    n_concepts: int = opt(16, "most used concepts shown per model")
    n_images: int = opt(8, "top-activating images per concept")


@dataclass(frozen=True)
class RunConfig:
    """`archsae run`: every step on one configuration, into one run directory."""

    demo: DemoConfig = DemoConfig()
    extract: ExtractConfig = ExtractConfig()
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    n_runs: int = opt(2, "independently initialised runs per method (stability needs 2)")

    @classmethod
    def quick(cls) -> "RunConfig":
        """A small configuration for smoke tests (a few minutes on 2 cores)."""
        return cls(
            demo=DemoConfig(n_images=160),
            distill=DistillConfig(n_centroids=256, max_points=20_000, n_iter=10),
            train=TrainConfig(k=512, top_k=16, epochs=3.0, batch_size=512, warmup_steps=5),
            evaluate=EvaluateConfig(max_tokens=5_000),
        )


def to_dict(cfg: Any) -> dict:
    """A configuration as a JSON-ready dict."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a (possibly nested) configuration from `to_dict` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ArchsaeError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        default = names[key].default
        kwargs[key] = from_dict(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)
