"""Concept galleries: a model's concepts sampled across densities, their top-activating images, token heatmaps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from ..data import load_image
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


@dataclass
class Concept:
    index: int  # atom index in the dictionary
    usage: float  # fraction of tokens where the code is active
    peak: float = 0.0  # its largest activation on the images shown (the top of the colour scale)
    images: list[dict] = field(default_factory=list)  # {image, label, max}
    strip: Image.Image | None = None  # the top images with heatmaps, side by side
    file: str = ""  # where the report saved the strip, relative to the report


@torch.no_grad()
def _codes(model: SAE, acts_nd: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode(a) for a in acts_nd.split(4096)])


@torch.no_grad()
def concept_gallery(model: SAE, store: ActivationStore, n_concepts: int = 16, n_images: int = 8) -> list[Concept]:
    """`n_concepts` live codes spread evenly over the ranks of their density (share of tokens where they fire),
    from the densest to the rarest; for each, the `n_images` images (each once) with the largest token
    activation, drawn with that code's activation per token as a heatmap over the image (`heat_overlay`).

    Streams the store twice (usage, then per-image maxima of the chosen codes); memory is
    O(k + images x n_concepts). Imported stores (no images) give concepts without strips.
    """
    k = model.k
    usage = torch.zeros(k)
    for i in range(store.n_shards):
        usage += (_codes(model, store.read_shard(i).acts_md) > 0).sum(0)
    ranked = usage.argsort(descending=True)[:int((usage > 0).sum())]
    top = ranked[np.unique(np.linspace(0, len(ranked) - 1, min(n_concepts, len(ranked))).round().astype(int))]
    n_img = max(len(store.images), 1)
    best = torch.full((n_img, len(top)), -1.0)
    if store.images:
        for i in range(store.n_shards):
            shard = store.read_shard(i)
            z = _codes(model, shard.acts_md)[:, top]
            best.scatter_reduce_(0, shard.image_m[:, None].expand_as(z), z, reduce="amax")
    concepts = [Concept(int(c), float(usage[c] / store.n)) for c in top]
    if not store.images:
        return concepts
    view = view_transform(store.header["data_config"])
    grid = store.header["grid"]
    for j, concept in enumerate(concepts):
        scores, order = best[:, j].topk(min(n_images, n_img))
        heats = []
        for score, img in zip(scores.tolist(), order.tolist()):
            tokens = store.image_tokens(img)
            spatial = tokens.pos_m >= 0
            heat = torch.zeros(grid[0] * grid[1])
            heat[tokens.pos_m[spatial]] = _codes(model, tokens.acts_md[spatial])[:, concept.index]
            heats.append(heat.reshape(grid).numpy())
            concept.images.append({"image": img, "label": store.images[img]["label"], "max": score})
        concept.peak = max(max(h.max() for h in heats), 1e-12)
        strip = Image.new("RGB", (THUMB * len(heats), THUMB), "white")
        for x, (meta, heat) in enumerate(zip(concept.images, heats)):
            photo = view(load_image(store.images[meta["image"]]["path"]))
            strip.paste(heat_overlay(photo, heat, concept.peak), (x * THUMB, 0))
        concept.strip = strip
    return concepts
