"""Sparse autoencoders: dictionaries (free, archetypal), sparsity activations, the SAE module."""

from .activations import BatchTopK, JumpReLU, Penalised, ReLU, TopK
from .dictionary import ArchetypalDictionary, FreeDictionary
from .model import SAE, StepOutput, build_sae, check_candidate_count, load_sae, sae_config, save_sae

__all__ = ["SAE", "ArchetypalDictionary", "BatchTopK", "FreeDictionary", "JumpReLU", "Penalised", "ReLU", "StepOutput",
           "TopK", "build_sae", "check_candidate_count", "load_sae", "sae_config", "save_sae"]
