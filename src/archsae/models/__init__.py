"""Vision backbones: timm by name, the offline EfficientNet-Lite loader, token selection."""

from .backbone import Backbone, load_backbone, view_transform

__all__ = ["Backbone", "load_backbone", "view_transform"]
