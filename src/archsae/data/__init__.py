"""Images in: user folders and the embedded demo set."""

from .demo import build_demo
from .folders import ImageItem, list_images, load_image

__all__ = ["ImageItem", "build_demo", "list_images", "load_image"]
