"""Collages of known objects for the soft-identifiability benchmark (Fel et al. 2025, Sec. 5.3, App. G).

Each theme is a set of 9 to 20 objects, each a Fluent 3D emoji render (npm `@lobehub/fluent-emoji-3d`,
MIT: 256 px RGBA WebP named by code point, installed by scripts/install.sh, never committed). A collage
puts 4 distinct objects of one theme in the 4 cells of a 2 x 2 grid, each at a random scale, offset and
mirroring, on a random smooth background; its label is the set of objects (a multi-hot row).
Deterministic for a seed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ArchsaeError
from .demo import _background

SPRITES_ENV = "ARCHSAE_SPRITES"
DEFAULT_SPRITES = Path.home() / ".cache/archsae/sprites/node_modules/@lobehub/fluent-emoji-3d/assets"
OBJECTS_PER_IMAGE = 4

THEMES = {  # theme -> its objects, as emoji
    "gems": "💎 💍 👑 🔮 🪙 📿 🏆 🥇 💰",
    "animals": "🐕 🐈 🐘 🦒 🦓 🐄 🐖 🐎 🐇 🦊 🐻 🐅 🦁 🐒 🐑 🐪",
    "birds": "🐦 🦅 🦆 🦉 🦜 🦩 🦚 🐧 🐓 🦃 🕊️ 🦢 🐤",
    "books": "📕 📗 📘 📙 📚 📓 📒 📔 📖 📜 📰 🗞️",
    "candy": "🍬 🍭 🍫 🍩 🍪 🧁 🍰 🎂 🍮 🍦 🍡 🥧",
    "cards": "🃏 🎴 🀄 🎲 🎯 🧩 ♟️ 🎮 🎰 🪀 🪁",
    "cocktails": "🍸 🍹 🍷 🍺 🥂 🥃 🍾 🧉 🧋 ☕ 🍵 🥤 🍶",
    "flowers": "🌸 🌹 🌺 🌻 🌼 🌷 💐 🪷 🥀 🪻 🍀 🌵",
    "planets": "🌍 🪐 🌙 ☀️ ⭐ ☄️ 🌑 🌕 🚀 🛸 🛰️",
    "potions": "🧪 ⚗️ 🧫 🧬 🔬 🔭 💊 💉 🩸 🧴 🏺",
    "fruit": "🍎 🍐 🍊 🍋 🍌 🍉 🍇 🍓 🫐 🍒 🍑 🥭 🍍 🥥 🥝 🍈",
    "vehicles": "🚗 🚕 🚌 🚑 🚒 🚓 🚚 🚜 🏎️ 🏍️ 🚲 🛵 🚂 ✈️ 🚁 ⛵ 🚤 🚠 🛻 🚐",
}


def sprites_root(root: str | Path | None = None) -> Path:
    """The Fluent 3D emoji folder: `root`, else $ARCHSAE_SPRITES, else the one scripts/install.sh fills.
    Raises ArchsaeError, saying how to install it, when it holds no sprites."""
    path = Path(root or os.environ.get(SPRITES_ENV) or DEFAULT_SPRITES)
    if not path.is_dir() or not any(path.glob("*.webp")):
        raise ArchsaeError(f"no Fluent 3D emoji sprites in {path}: run `npm install --prefix ~/.cache/archsae/"
                           "sprites @lobehub/fluent-emoji-3d@1.1.0` (or scripts/install.sh), or give --sprites DIR")
    return path


def sprite_path(root: Path, emoji: str) -> Path:
    """The file of one emoji: its code points in hex joined by '-', with or without the VS16 selector."""
    points = [f"{ord(ch):x}" for ch in emoji]
    for name in ("-".join(points), "-".join(p for p in points if p != "fe0f")):
        if (root / f"{name}.webp").exists():
            return root / f"{name}.webp"
    raise ArchsaeError(f"sprite of {emoji} ({'-'.join(points)}.webp) missing from {root}")


@lru_cache(maxsize=64)
def _sprite(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGBA")
    except OSError as e:
        raise ArchsaeError(f"cannot read sprite {path} ({e})") from None


def theme_sprites(root: Path, theme: str) -> list[Image.Image]:
    """The RGBA sprites of a theme's objects, in THEMES order. Raises ArchsaeError for an unknown theme."""
    if theme not in THEMES:
        raise ArchsaeError(f"theme must be one of {', '.join(THEMES)}; got {theme!r}")
    return [_sprite(sprite_path(root, e)) for e in THEMES[theme].split()]


def collage(sprites: list[Image.Image], objects: np.ndarray, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """An RGB collage (size, size) of the sprites `objects` (4 indices), one per cell of a 2 x 2 grid."""
    canvas = _background(rng, size)
    cell = size // 2
    for slot, obj in enumerate(objects):
        sprite = sprites[obj]
        side = int(cell * rng.uniform(0.6, 0.95))
        sprite = sprite.resize((side, side), Image.LANCZOS)
        if rng.random() < 0.5:
            sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
        x = (slot % 2) * cell + int(rng.integers(0, cell - side + 1))
        y = (slot // 2) * cell + int(rng.integers(0, cell - side + 1))
        canvas.paste(sprite, (x, y), sprite)
    return canvas


def collage_labels(n_objects: int, n_images: int, seed: int) -> np.ndarray:
    """Which objects each collage shows: (n_images, 4) int, distinct objects in random cells."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_objects, OBJECTS_PER_IMAGE, replace=False) for _ in range(n_images)])


def render(sprites: list[Image.Image], objects_n4: np.ndarray, seed: int, size: int = 224):
    """Yield the collages of `objects_n4` (from `collage_labels`), image i drawn with seed (seed, i)."""
    for i, objects in enumerate(objects_n4):
        yield collage(sprites, objects, np.random.default_rng([seed, i]), size)
