"""Concept galleries: a model's most used concepts, their top-activating images, token heatmaps."""

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


@dataclass
class Concept:
    index: int  # atom index in the dictionary
    usage: float  # fraction of tokens where the code is active
    images: list[dict] = field(default_factory=list)  # {image, label, max}
    strip: Image.Image | None = None  # the top images with heatmaps, side by side
    file: str = ""  # where the report saved the strip, relative to the report


@torch.no_grad()
def _codes(model: SAE, acts_nd: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode(a) for a in acts_nd.split(4096)])


@torch.no_grad()
def concept_gallery(model: SAE, store: ActivationStore, n_concepts: int = 16, n_images: int = 8) -> list[Concept]:
    """The `n_concepts` codes active on most tokens; for each, the `n_images` images with the largest
    token activation, drawn with that code's activation per token as a heatmap over the image.

    Streams the store twice (usage, then per-image maxima of the chosen codes); memory is
    O(k + images x n_concepts). Imported stores (no images) give concepts without strips.
    """
    k = model.k
    usage = torch.zeros(k)
    for i in range(store.n_shards):
        usage += (_codes(model, store.read_shard(i).acts_md) > 0).sum(0)
    top = usage.topk(min(n_concepts, k)).indices
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
    cmap = colormaps["inferno"]
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
        vmax = max(max(h.max() for h in heats), 1e-12)
        strip = Image.new("RGB", (THUMB * len(heats), THUMB), "white")
        for x, (meta, heat) in enumerate(zip(concept.images, heats)):
            photo = view(load_image(store.images[meta["image"]]["path"])).resize((THUMB, THUMB))
            up = Image.fromarray((heat / vmax).astype(np.float32), mode="F").resize((THUMB, THUMB), Image.BILINEAR)
            colour = Image.fromarray((cmap(np.clip(np.asarray(up), 0, 1))[..., :3] * 255).astype(np.uint8))
            strip.paste(Image.blend(photo, colour, 0.5), (x * THUMB, 0))
        concept.strip = strip
    return concepts
