"""Data in: user image folders, the embedded demo set, and planted dictionaries (synthetic activations)."""

from .demo import build_demo, demo_sources
from .folders import ImageItem, list_images, load_image
from .planted import Planted, planted_dictionary

__all__ = ["ImageItem", "Planted", "build_demo", "demo_sources", "list_images", "load_image", "planted_dictionary"]
