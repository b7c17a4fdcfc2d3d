"""archsae: stable, honest concept extraction from vision models with (archetypal) sparse autoencoders."""

from .config import (METHODS, DemoConfig, DistillConfig, EvaluateConfig, ExtractConfig, ReportConfig, RunConfig,
                     TrainConfig)
from .data import build_demo, list_images
from .distill import distill, kmeans
from .errors import ArchsaeError
from .evaluate import evaluate
from .extract import extract
from .models import load_backbone
from .pipeline import run
from .report import write_report
from .sae import SAE, ArchetypalDictionary, BatchTopK, FreeDictionary, JumpReLU, ReLU, TopK, build_sae, load_sae
from .store import ActivationStore, import_matrix
from .train import Job, train, train_many

__all__ = [
    "METHODS", "ActivationStore", "ArchetypalDictionary", "ArchsaeError", "BatchTopK", "DemoConfig", "DistillConfig",
    "EvaluateConfig", "ExtractConfig", "FreeDictionary", "Job", "JumpReLU", "ReLU", "ReportConfig", "RunConfig", "SAE",
    "TopK", "TrainConfig", "build_demo", "build_sae", "distill", "evaluate", "extract", "import_matrix", "kmeans",
    "list_images", "load_backbone", "load_sae", "run", "train", "train_many", "write_report",
]
