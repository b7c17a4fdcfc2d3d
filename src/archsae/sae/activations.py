"""Sparsity mechanisms: pre-activations (n, k) -> codes Z (n, k)."""

import torch
from torch import nn


class TopK(nn.Module):
    """Keep the `top_k` largest pre-activations of each token, ReLU them, zero the rest (Gao et al. 2025)."""

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k

    def forward(self, pre_nk: torch.Tensor) -> torch.Tensor:
        values, indices = pre_nk.topk(self.top_k, dim=-1)
        return torch.zeros_like(pre_nk).scatter(-1, indices, torch.relu(values))
