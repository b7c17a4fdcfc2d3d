"""The paper's benchmarks, each a function writing `RUN/benchmarks/{name}/results.json` (and a figure):
the distillation comparison (App. C), plausibility (Sec. 5.2) and soft identifiability (Sec. 5.3)."""

from .distillation import distillation_benchmark
from .identifiability import identifiability_benchmark
from .plausibility import plausibility_benchmark

__all__ = ["distillation_benchmark", "identifiability_benchmark", "plausibility_benchmark"]
