"""archsae: stable, honest concept extraction from vision models with (archetypal) sparse autoencoders.

`import archsae` loads nothing heavy: names are imported from their modules on first use (PEP 562),
so scikit-learn, faiss, timm and matplotlib load only when a function that needs them is called, and
nothing global (such as matplotlib's backend) changes.
"""

from __future__ import annotations

import importlib

_WHERE = {  # public name -> the module that defines it
    "metrics": None,
    "distillation_benchmark": "benchmarks", "identifiability_benchmark": "benchmarks",
    "plausibility_benchmark": "benchmarks",
    "CLASSICAL": "classical", "build_baseline": "classical", "fit_baseline": "classical", "load_baseline": "classical",
    "METHODS": "config", "ClassicalConfig": "config", "DemoConfig": "config", "DistillConfig": "config",
    "DistillationBenchConfig": "config", "EvaluateConfig": "config", "ExtractConfig": "config",
    "IdentifiabilityBenchConfig": "config", "PlausibilityBenchConfig": "config", "ReportConfig": "config",
    "RunConfig": "config", "StabilityConfig": "config", "TrainConfig": "config",
    "build_demo": "data", "list_images": "data", "planted_dictionary": "data",
    "distill": "distill", "kmeans": "distill",
    "ArchsaeError": "errors",
    "evaluate": "evaluate", "load_model": "evaluate",
    "RunView": "explorer", "create_app": "explorer", "serve": "explorer",
    "extract": "extract",
    "load_backbone": "models",
    "run": "pipeline",
    "stability_plots": "report", "write_report": "report",
    "SAE": "sae", "ArchetypalDictionary": "sae", "BatchTopK": "sae", "FreeDictionary": "sae", "JumpReLU": "sae",
    "ReLU": "sae", "TopK": "sae", "build_sae": "sae", "load_sae": "sae",
    "run_pairs": "stability", "run_stability": "stability", "verdict": "stability",
    "ActivationStore": "store", "Subset": "store", "import_matrix": "store",
    "Job": "train", "train": "train", "train_many": "train",
}
__all__ = sorted(_WHERE)

# Functions named as their module: importing the module (archsae.train) would set the package attribute to
# it, so these are bound now, after their (light) modules, not on first use.
from .distill import distill  # noqa: E402, F401
from .evaluate import evaluate  # noqa: E402, F401
from .extract import extract  # noqa: E402, F401
from .train import train  # noqa: E402, F401


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'archsae' has no attribute {name!r}")
    module = importlib.import_module(f".{_WHERE[name] or name}", __name__)
    value = module if _WHERE[name] is None else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))

