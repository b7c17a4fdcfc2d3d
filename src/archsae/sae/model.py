"""The SAE: encoder -> sparsity -> dictionary, Z = s(W_enc (x - b) + b_enc), x_hat = Z D + b."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import TrainConfig, from_dict
from ..errors import ArchsaeError
from ..files import read_json, write_json, write_safetensors
from .activations import TopK
from .dictionary import ArchetypalDictionary, FreeDictionary


class SAE(nn.Module):
    """A sparse autoencoder over d-dimensional activations with a k-atom dictionary.

    `encode(x_nd) -> codes_nk`, `decode(codes_nk) -> x_hat_nd`, `forward(x_nd) -> (x_hat_nd, codes_nk)`;
    all float32. Call `project_()` after each optimiser step to restore the dictionary's constraint.
    """

    def __init__(self, d: int, dictionary: nn.Module, activation: nn.Module, generator: torch.Generator):
        super().__init__()
        k = dictionary.k
        self.dictionary = dictionary
        self.activation = activation
        self.encoder = nn.Linear(d, k)
        bound = 1.0 / d**0.5
        with torch.no_grad():
            self.encoder.weight.uniform_(-bound, bound, generator=generator)
            self.encoder.bias.zero_()
        self.b_pre = nn.Parameter(torch.zeros(d))

    def atoms(self) -> torch.Tensor:
        """The dictionary D (k, d) as used by the decoder."""
        return self.dictionary()

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        return self.activation(self.encoder(x_nd - self.b_pre))

    def decode(self, codes_nk: torch.Tensor, atoms_kd: torch.Tensor | None = None) -> torch.Tensor:
        atoms_kd = self.atoms() if atoms_kd is None else atoms_kd
        return codes_nk @ atoms_kd + self.b_pre

    def forward(self, x_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        atoms_kd = self.atoms()  # built once per step
        codes_nk = self.encode(x_nd)
        return self.decode(codes_nk, atoms_kd), codes_nk

    def project_(self) -> None:
        self.dictionary.project_()


def build_sae(cfg: TrainConfig, d: int, candidates_nd: torch.Tensor | None = None) -> SAE:
    """An SAE as `cfg` describes; RA-SAE needs the candidates C (n', d). Seeds come from `cfg.seed`."""
    enc_gen = torch.Generator().manual_seed(cfg.seed)
    dict_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    if cfg.method == "topk":
        dictionary = FreeDictionary(cfg.k, d, dict_gen)
    else:
        if candidates_nd is None:
            raise ArchsaeError("ra-sae needs k-means candidates C: run `archsae distill` first")
        if candidates_nd.ndim != 2 or candidates_nd.shape[1] != d:
            raise ArchsaeError(f"candidates C have shape {tuple(candidates_nd.shape)}; expected (n', {d})")
        dictionary = ArchetypalDictionary(candidates_nd, cfg.k, cfg.delta, cfg.w_init, dict_gen)
    return SAE(d, dictionary, TopK(cfg.top_k), enc_gen)


def sae_config(cfg: TrainConfig, d: int, **info) -> dict:
    """The content of a model folder's `config.json`: the TrainConfig, d, and provenance `info`."""
    return {"train": asdict(cfg), "d": d, **info}


def save_sae(model: SAE, out_dir: str | Path, config: dict) -> None:
    """Write `model.safetensors` and `config.json` (`config` from `sae_config`) atomically."""
    out_dir = Path(out_dir)
    write_safetensors(out_dir / "model.safetensors", model.state_dict())
    write_json(out_dir / "config.json", config)


def load_sae(model_dir: str | Path) -> tuple[SAE, TrainConfig, dict]:
    """Load a trained SAE saved by `save_sae`; returns (model in eval mode, its TrainConfig, config.json)."""
    model_dir = Path(model_dir)
    path = model_dir / "model.safetensors"
    if not path.exists():
        raise ArchsaeError(f"no trained model in {model_dir} (model.safetensors missing): run `archsae train`")
    info = read_json(model_dir / "config.json")
    cfg = from_dict(TrainConfig, info["train"])
    state = load_file(str(path))
    model = build_sae(cfg, info["d"], state.get("dictionary.candidates"))
    model.load_state_dict(state)
    return model.eval(), cfg, info
