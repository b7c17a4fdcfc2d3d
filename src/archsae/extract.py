"""images -> model -> token activations -> activation store (the `extract` step)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import ExtractConfig, to_dict
from .data import ImageItem, load_image
from .errors import ArchsaeError
from .models import load_backbone
from .progress import quiet
from .store import ActivationStore, StoreWriter, sha256


def _stored_path(path: str, store_dir: Path) -> str:
    """An image's path as store.json records it: relative to the store when the image lies in the run folder
    around it (the demo set), so the run folder can be moved; else absolute."""
    run_dir = store_dir.resolve().parent
    return os.path.relpath(path, store_dir.resolve()) if Path(path).resolve().is_relative_to(run_dir) else path


def extract(images: list[ImageItem], out: str | Path, cfg: ExtractConfig = ExtractConfig()) -> ActivationStore:
    """Write the token activations of `images` under `cfg` into a store at `out`.

    A CNN layer gives one token per spatial position of its (C, H, W) map; a ViT layer its patch tokens
    (and CLS/register tokens with `prefix_tokens`). Images are stored in a random order (`cfg.order_seed`),
    listed in that order in store.json with their sha256, so every shard mixes the classes of a
    class-sorted folder, and an image edited in place is never mixed with its old activations. An
    interrupted extraction into the same `out` resumes at its last whole shard. Raises ArchsaeError for no
    images, an unreadable image, a store at `out` made with another configuration or from changed images,
    or NaN/Inf activations.
    """
    if not images:
        raise ArchsaeError("no images to extract")
    images = [images[i] for i in np.random.default_rng(cfg.order_seed).permutation(len(images))]
    backbone = load_backbone(cfg.model, cfg.pretrained, cfg.layer, cfg.prefix_tokens)
    probe, probe_pos, grid = backbone.tokens(backbone.transform(load_image(images[0].path))[None])
    tokens_per_image, d = probe.shape[1], probe.shape[2]
    kind = ("spatial" if probe.ndim == 3 and backbone.num_prefix == 0 else
            "patch+prefix" if cfg.prefix_tokens else "patch")
    header = {"model": cfg.model, "layer": cfg.layer or "forward_features", "token_kind": kind, "d": int(d),
              "dtype": cfg.dtype, "grid": list(grid), "tokens_per_image": int(tokens_per_image),
              "holdout_every": cfg.holdout_every, "config": to_dict(cfg),
              "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
              "images": [{"path": _stored_path(it.path, Path(out)), "label": it.label, "sha256": sha256(Path(it.path))}
                         for it in tqdm(images, desc="fingerprint images", unit="img", **quiet(len(images) < 1000))]}
    per_shard = max(1, cfg.shard_tokens // tokens_per_image)
    writer = StoreWriter(out, header, images_per_shard=per_shard)
    if writer.complete:
        return ActivationStore(out)
    start = writer.next_image
    with tqdm(total=len(images), initial=start, desc="extract", unit="img", **quiet(False)) as bar:
        while start < len(images):
            # Never let a batch straddle a shard boundary: shards hold whole, contiguous images.
            stop = min(start + cfg.batch_size, (start // per_shard + 1) * per_shard, len(images))
            x = torch.stack([backbone.transform(load_image(it.path)) for it in images[start:stop]])
            acts, pos, _ = backbone.tokens(x)
            b = stop - start
            writer.add(acts.reshape(b * tokens_per_image, d).float().numpy(),
                       np.repeat(np.arange(start, stop), tokens_per_image),
                       np.tile(pos.numpy(), b), n_images=b)
            bar.update(b)
            start = stop
    return writer.finish()
