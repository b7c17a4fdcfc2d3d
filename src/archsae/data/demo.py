"""The embedded demo set, built at run time from installed files (nothing is committed).

Tux Paint's photographic stamps (Debian `tuxpaint-stamps-default`, GPL-2: read from the installed
files) are composited on random backgrounds, labelled by their folder (e.g. `animals/birds`), plus
crops of scikit-image's colour photos, labelled `photos`. Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..config import DemoConfig, to_dict
from ..errors import ArchsaeError
from ..files import read_json, refuse_if_different, save_image, write_json
from ..progress import quiet
from .folders import ImageItem

STAMPS = Path("/usr/share/tuxpaint/stamps")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
PHOTO_SHARE = 0.1  # fraction of demo images cut from scikit-image's photos


def find_stamps(root: Path = STAMPS) -> list[tuple[Path, str]]:
    """Photographic stamps (not in `cartoon/` folders, not `symbols/`), labelled by their first two folders."""
    found = []
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root)
        if "cartoon" in rel.parts or rel.parts[0] == "symbols":
            continue
        found.append((p, "/".join(rel.parts[:-1][:2])))
    return found


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth two-colour gradient with low-frequency noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    noise = np.asarray(Image.fromarray(rng.uniform(0, 255, (8, 8)).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    img = img + (noise[..., None] - 128.0) * 0.25
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _stamp_image(rng: np.random.Generator, stamp: Image.Image, size: int) -> Image.Image:
    canvas = _background(rng, size)
    scale = rng.uniform(0.5, 0.9) * size / max(stamp.size)
    w, h = max(1, int(stamp.width * scale)), max(1, int(stamp.height * scale))
    sprite = stamp.resize((w, h), Image.LANCZOS)
    if rng.random() < 0.5:
        sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    canvas.paste(sprite, (x, y), sprite)
    return canvas


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> Image.Image:
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.6, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    img = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def demo_sources(out_dir: str | Path) -> dict[str, str]:
    """The source (stamp file or scikit-image photo) each image of the demo set at `out_dir` was made from, by
    resolved path; {} when `out_dir` holds no demo set or one built before sources were recorded."""
    manifest = Path(out_dir) / "demo.json"
    if not manifest.exists():
        return {}
    return {str((Path(out_dir) / e[0]).resolve()): e[2] for e in read_json(manifest)["images"] if len(e) > 2}


def build_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig()) -> list[ImageItem]:
    """Write `cfg.n_images` JPEGs into `out_dir/<label>/NNNNN.jpg` and return them in order. demo.json lists
    each with its label and source (`demo_sources`): several images are cut from one stamp or photo.

    Reuses a complete earlier build with the same configuration. Raises ArchsaeError if the
    Tux Paint stamps are not installed (`apt-get install --no-install-recommends tuxpaint-stamps-default`).
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "demo.json"
    if manifest.exists():
        done = read_json(manifest)
        refuse_if_different(done["config"], to_dict(cfg), out_dir, "a demo set", "use another run directory")
        return [ImageItem(str(out_dir / entry[0]), entry[1]) for entry in done["images"]]
    stamps = find_stamps()
    if not stamps:
        raise ArchsaeError(f"no Tux Paint stamps under {STAMPS}: run "
                           "`apt-get install -y --no-install-recommends tuxpaint-stamps-default`")
    from skimage import data as skdata

    photos = [getattr(skdata, name)() for name in SKIMAGE_PHOTOS]
    rng = np.random.default_rng(cfg.seed)
    cache: dict[int, Image.Image] = {}
    images = []
    for i in tqdm(range(cfg.n_images), desc="demo images", unit="img", **quiet(False)):
        if rng.random() < PHOTO_SHARE:
            p = int(rng.integers(len(photos)))
            img, label, source = _photo_crop(rng, photos[p], cfg.size), "photos", f"photo:{SKIMAGE_PHOTOS[p]}"
        else:
            j = int(rng.integers(len(stamps)))
            if j not in cache:
                cache[j] = Image.open(stamps[j][0]).convert("RGBA")
            img, label = _stamp_image(rng, cache[j], cfg.size), stamps[j][1]
            source = f"stamp:{stamps[j][0].relative_to(STAMPS)}"
        rel = f"{label}/{i:05d}.jpg"
        save_image(out_dir / rel, img, quality=92)
        images.append((rel, label, source))
    write_json(manifest, {"config": to_dict(cfg), "images": images})
    return [ImageItem(str(out_dir / p), label) for p, label, _ in images]
