"""Image folders: class subfolders (label = subfolder path) or a flat folder (no label)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import ArchsaeError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


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
                with Image.open(item.path) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise ArchsaeError(f"cannot read image {item.path} ({e}); remove or replace it") from None
    return items


def load_image(path: str) -> Image.Image:
    """Decode one image as RGB (alpha composited on white). Raises ArchsaeError if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, im).convert("RGB")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ArchsaeError(f"cannot read image {path} ({e}); remove or replace it") from None
