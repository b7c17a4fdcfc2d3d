"""Concept galleries: a model's concepts sampled across densities, their top-activating images, token heatmaps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from ..data import demo_sources, load_image
from ..models import view_transform
from ..sae import SAE
from ..store import ActivationStore

THUMB = 160  # pixels
CMAP = colormaps["inferno"]
DENSE = 0.1  # a concept firing on more than this share of tokens is marked dense (backgrounds, sky, ...)


def heat_overlay(photo: Image.Image, heat_hw: np.ndarray, vmax: float, size: int = THUMB) -> Image.Image:
    """`photo` resized to `size` px with `heat_hw` (a token grid, >= 0) drawn over it in the inferno colour map,
    opaque in proportion to heat / vmax: where the concept is 0 the photo shows as it is."""
    heat = np.clip(np.asarray(heat_hw, np.float32) / max(vmax, 1e-12), 0, 1)
    up = np.asarray(Image.fromarray(heat, mode="F").resize((size, size), Image.BILINEAR))
    alpha = 0.85 * np.clip(up, 0, 1)[..., None]
    base = np.asarray(photo.convert("RGB").resize((size, size)), np.float32)
    return Image.fromarray((base * (1 - alpha) + CMAP(np.clip(up, 0, 1))[..., :3] * 255 * alpha).astype(np.uint8))


def colour_scale(stops: int = 9) -> str:
    """The CSS linear-gradient of the heatmaps' colour map, for a colour scale beside them."""
    return "linear-gradient(to right, " + ", ".join(
        f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})" for r, g, b, _ in (CMAP(i / (stops - 1))
                                                                              for i in range(stops))) + ")"


def source_ids(store: ActivationStore, run_dir: Path | None) -> np.ndarray:
    """(images,) int64: equal for images of the store cut from one source photo or stamp (the demo set of
    `run_dir`/images records them, `data.demo_sources`); every other image is its own source."""
    sources = demo_sources(run_dir / "images") if run_dir is not None else {}
    keys = [sources.get(str(Path(im["path"]).resolve()), i) for i, im in enumerate(store.images)]
    return np.unique(np.array([str(k) for k in keys]), return_inverse=True)[1].astype(np.int64)


def distinct_sources(ranked: list[int], source_m: np.ndarray, n: int) -> list[int]:
    """The first `n` images of `ranked` (best first) whose source was not taken by an earlier one."""
    seen, out = set(), []
    for image in ranked:
        if source_m[image] not in seen:
            seen.add(source_m[image])
            out.append(image)
            if len(out) == n:
                break
    return out


@dataclass
class Concept:
    index: int  # atom index in the dictionary
    usage: float  # fraction of tokens where the code is active
    peak: float = 0.0  # its largest activation on the images shown (the top of the colour scale)
    images: list[dict] = field(default_factory=list)  # {image, label, max}
    rows: list[dict] = field(default_factory=list)  # an imported matrix (no images): its top rows {row, max}
    strip: Image.Image | None = None  # the top images with heatmaps, side by side
    file: str = ""  # where the report saved the strip, relative to the report


@torch.no_grad()
def _codes(model: SAE, acts_nd: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode(a) for a in acts_nd.split(4096)])


def missing_images(store: ActivationStore) -> list[int]:
    """The store's images whose file is not where store.json says (a store copied without its images)."""
    return [i for i, im in enumerate(store.images) if not Path(im["path"]).exists()]


@torch.no_grad()
def concept_gallery(model: SAE, store: ActivationStore, n_concepts: int = 16, n_images: int = 8,
                    source_m: np.ndarray | None = None) -> list[Concept]:
    """`n_concepts` live codes spread evenly over the ranks of their density (share of tokens where they fire),
    from the densest to the rarest; for each, the `n_images` images with the largest token activation, at most
    one per source (`source_ids`; by default each image is its own), drawn with that code's activation per token as a heatmap over the image (`heat_overlay`).

    Streams the store twice (usage, then per-image maxima of the chosen codes); memory is
    O(k + images x n_concepts). Concepts of a store imported from a matrix (no images) have no strip but `rows`,
    the `n_images` rows of largest activation (`_top_rows`); images whose file is missing are left out of the
    strips (`missing_images`).
    """
    k = model.k
    usage = torch.zeros(k)
    for i in range(store.n_shards):
        usage += (_codes(model, store.read_shard(i).acts_md) > 0).sum(0)
    ranked = usage.argsort(descending=True)[:int((usage > 0).sum())]
    top = ranked[np.unique(np.linspace(0, len(ranked) - 1, min(n_concepts, len(ranked))).round().astype(int))]
    missing = missing_images(store)
    strips = len(missing) < len(store.images)
    n_img = max(len(store.images), 1)
    best = torch.full((n_img, len(top)), -1.0)
    if strips:
        for i in range(store.n_shards):
            shard = store.read_shard(i)
            z = _codes(model, shard.acts_md)[:, top]
            best.scatter_reduce_(0, shard.image_m[:, None].expand_as(z), z, reduce="amax")
        best[missing] = -1.0  # never chosen
    concepts = [Concept(int(c), float(usage[c] / store.n)) for c in top]
    if not strips:
        return _top_rows(model, store, top, concepts, n_images) if not store.images else concepts
    view = view_transform(store.header["data_config"])
    grid = store.header["grid"]
    for j, concept in enumerate(concepts):
        ranked = [i for i in best[:, j].argsort(descending=True).tolist() if best[i, j] > 0]
        chosen = distinct_sources(ranked, np.arange(n_img) if source_m is None else source_m, n_images)
        heats = []
        for score, img in zip(best[chosen, j].tolist(), chosen):
            tokens = store.image_tokens(img)
            spatial = tokens.pos_m >= 0
            heat = torch.zeros(grid[0] * grid[1])
            heat[tokens.pos_m[spatial]] = _codes(model, tokens.acts_md[spatial])[:, concept.index]
            heats.append(heat.reshape(grid).numpy())
            concept.images.append({"image": img, "label": store.images[img]["label"], "max": score})
        concept.peak = max(max((h.max() for h in heats), default=0.0), 1e-12)  # none: all its images missing
        strip = Image.new("RGB", (THUMB * n_images, THUMB), "white")  # a rare concept leaves slots blank
        for x, (meta, heat) in enumerate(zip(concept.images, heats)):
            photo = view(load_image(store.images[meta["image"]]["path"]))
            strip.paste(heat_overlay(photo, heat, concept.peak), (x * THUMB, 0))
        concept.strip = strip
    return concepts


def _top_rows(model: SAE, store: ActivationStore, top: torch.Tensor, concepts: list[Concept], n: int) -> list[Concept]:
    """For a store imported from a matrix: each concept's `n` rows of largest activation, by their row number in
    that matrix (image x tokens_per_image + position), as `rows` {row, max}."""
    per_image = store.header.get("tokens_per_image", 1)
    values, rows = torch.empty(0, len(top)), torch.empty(0, len(top), dtype=torch.int64)
    for i in range(store.n_shards):
        shard = store.read_shard(i)
        z = _codes(model, shard.acts_md)[:, top]
        values, rows = torch.cat([values, z]), torch.cat([rows, (shard.image_m * per_image + shard.pos_m)[:, None]
                                                          .expand_as(z)])
        values, best = values.topk(min(n, len(values)), dim=0)
        rows = rows.gather(0, best)
    for j, concept in enumerate(concepts):
        concept.rows = [{"row": int(r), "max": float(v)} for v, r in zip(values[:, j], rows[:, j]) if v > 0]
    return concepts
