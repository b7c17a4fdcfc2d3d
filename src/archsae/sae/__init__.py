"""Sparse autoencoders: dictionaries (free, archetypal), sparsity activations, the SAE module."""

from .activations import TopK
from .dictionary import ArchetypalDictionary, FreeDictionary
from .model import SAE, build_sae, load_sae, sae_config, save_sae

__all__ = ["SAE", "ArchetypalDictionary", "FreeDictionary", "TopK", "build_sae", "load_sae", "sae_config", "save_sae"]
