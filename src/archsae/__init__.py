"""archsae: stable, honest concept extraction from vision models with (archetypal) sparse autoencoders."""

from . import metrics
from .classical import CLASSICAL, build_baseline
from .config import (METHODS, DemoConfig, DistillConfig, EvaluateConfig, ExtractConfig, ReportConfig, RunConfig,
                     StabilityConfig, TrainConfig)
from .data import build_demo, list_images
from .distill import distill, kmeans
from .errors import ArchsaeError
from .evaluate import evaluate
from .extract import extract
from .models import load_backbone
from .pipeline import run
from .report import stability_plots, write_report
from .sae import SAE, ArchetypalDictionary, BatchTopK, FreeDictionary, JumpReLU, ReLU, TopK, build_sae, load_sae
from .stability import run_stability
from .store import ActivationStore, Subset, import_matrix
from .train import Job, train, train_many

__all__ = [
    "CLASSICAL", "METHODS", "ActivationStore", "ArchetypalDictionary", "ArchsaeError", "BatchTopK", "DemoConfig", "DistillConfig",
    "EvaluateConfig", "ExtractConfig", "FreeDictionary", "Job", "JumpReLU", "ReLU", "ReportConfig", "RunConfig", "SAE",
    "StabilityConfig", "Subset", "TopK", "TrainConfig", "build_baseline", "build_demo", "build_sae", "distill", "evaluate", "extract",
    "import_matrix", "kmeans", "list_images", "load_backbone", "load_sae", "metrics", "run", "run_stability",
    "stability_plots", "train", "train_many", "write_report",
]
