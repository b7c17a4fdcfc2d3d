"""Image folders: class subfolders (label = subfolder path) or a flat folder (no label)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ArchsaeError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
# What Pillow raises for a bad file, and for one above its size limit (a warning up to twice the limit,
# turned into an error by `_open`).
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
              Image.DecompressionBombWarning)
WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit (or 32-bit integer) greyscale


def _open(path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _unreadable(path: str, e: Exception) -> ArchsaeError:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ArchsaeError(f"image {path} is larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
                            f"({e}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    return ArchsaeError(f"cannot read image {path} ({e}); remove or replace it")


@dataclass(frozen=True)
class ImageItem:
    path: str
    label: str


def list_images(root: str | Path, check: bool = True) -> list[ImageItem]:
    """All images under `root`, sorted; label = the folder relative to `root` ('' at top level).

    With `check`, every file is opened and verified first so a bad file fails before any work.
    Raises ArchsaeError for a missing or empty folder, or an unreadable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ArchsaeError(f"image folder {root} does not exist or is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not paths:
        raise ArchsaeError(f"image folder {root} holds no images ({', '.join(sorted(EXTENSIONS))}); "
                           "pass a folder of images or of class subfolders")
    items = [ImageItem(str(p.resolve()), "" if p.parent == root else p.parent.relative_to(root).as_posix())
             for p in paths]
    if check:
        for item in items:
            try:
                with _open(item.path) as im:
                    im.verify()
            except UNREADABLE as e:
                raise _unreadable(item.path, e) from None
    return items


def load_image(path, name: str = "") -> Image.Image:
    """Decode one image (a path, or a binary file object such as an upload, called `name` in errors) as 8-bit
    RGB (alpha composited on white; 16-bit greyscale scaled by 255 / 65535, where Pillow's own conversion
    clips it). Raises ArchsaeError if unreadable or above Pillow's size limit."""
    try:
        with _open(path) as im:
            im.load()
            if im.mode in WIDE_GREY:
                grey = np.asarray(im, dtype=np.float64) * (255 / 65535)
                return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, im).convert("RGB")
            return im.convert("RGB")
    except UNREADABLE as e:
        raise _unreadable(name or path, e) from None
