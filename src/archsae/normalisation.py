"""The input normalisation a trained model carries, so that it takes activations as the backbone produced them.

SAEs and classical models are fitted on element-wise standardised activations (Fel et al. 2025, Sec. 5,
"Setup"): x = (A - shift) / scale, with scale the store's per-feature std and shift its mean (or 0 for an
uncentred model). Both are saved in the model file, so a model loaded without its store still encodes raw
activations and decodes back to them.
"""

from __future__ import annotations

import torch


class RawSpace:
    """Mixin for a model of the standardised space x = (A - input_shift) / input_scale; `input_shift` and
    `input_scale` are float32 tensors of shape (d,) (or scalars 0 and 1: the identity)."""

    input_shift: torch.Tensor
    input_scale: torch.Tensor

    def set_normalisation_(self, shift_d: torch.Tensor, scale_d: torch.Tensor):
        """Take raw activations from now on: x = (A - shift_d) / scale_d, both (d,). Returns self."""
        self.input_shift = torch.as_tensor(shift_d, dtype=torch.float32).clone()
        self.input_scale = torch.as_tensor(scale_d, dtype=torch.float32).clone()
        return self

    def standardise(self, acts_nd: torch.Tensor) -> torch.Tensor:
        """Raw activations A (n, d) (numpy or torch) -> the space the model was fitted in, x (n, d) float32."""
        acts_nd = torch.as_tensor(acts_nd, dtype=torch.float32, device=self.input_shift.device)
        return (acts_nd - self.input_shift) / self.input_scale

    def unstandardise(self, x_nd: torch.Tensor) -> torch.Tensor:
        """x (n, d) in the model's space -> raw activations (n, d)."""
        return x_nd * self.input_scale + self.input_shift
