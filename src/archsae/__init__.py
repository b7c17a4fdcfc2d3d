"""archsae: stable, honest concept extraction from vision models with (archetypal) sparse autoencoders."""

from . import metrics
from .benchmarks import distillation_benchmark, identifiability_benchmark, plausibility_benchmark
from .classical import CLASSICAL, build_baseline, fit_baseline, load_baseline
from .config import (METHODS, ClassicalConfig, DemoConfig, DistillationBenchConfig, DistillConfig, EvaluateConfig,
                     ExtractConfig, IdentifiabilityBenchConfig, PlausibilityBenchConfig, ReportConfig, RunConfig,
                     StabilityConfig, TrainConfig)
from .data import build_demo, list_images, planted_dictionary
from .distill import distill, kmeans
from .errors import ArchsaeError
from .evaluate import evaluate, load_model
from .extract import extract
from .models import load_backbone
from .pipeline import run
from .report import stability_plots, write_report
from .sae import SAE, ArchetypalDictionary, BatchTopK, FreeDictionary, JumpReLU, ReLU, TopK, build_sae, load_sae
from .stability import run_stability
from .store import ActivationStore, Subset, import_matrix
from .train import Job, train, train_many

__all__ = [
    "CLASSICAL", "METHODS", "ActivationStore", "ArchetypalDictionary", "ArchsaeError", "BatchTopK", "ClassicalConfig",
    "DemoConfig", "DistillConfig", "DistillationBenchConfig", "EvaluateConfig", "ExtractConfig", "FreeDictionary",
    "IdentifiabilityBenchConfig", "Job", "JumpReLU", "PlausibilityBenchConfig", "ReLU", "ReportConfig", "RunConfig",
    "SAE", "StabilityConfig", "Subset", "TopK", "TrainConfig", "build_baseline", "build_demo", "build_sae", "distill",
    "distillation_benchmark", "evaluate", "extract", "fit_baseline", "identifiability_benchmark", "import_matrix",
    "kmeans", "list_images", "load_backbone", "load_baseline", "load_model", "load_sae", "metrics",
    "planted_dictionary", "plausibility_benchmark", "run", "run_stability", "stability_plots", "train", "train_many", "write_report",
]
