"""images -> model -> token activations -> activation store (the `extract` step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import ExtractConfig, to_dict
from .data import ImageItem, load_image
from .errors import ArchsaeError
from .models import load_backbone
from .store import ActivationStore, StoreWriter


def extract(images: list[ImageItem], out: str | Path, cfg: ExtractConfig = ExtractConfig()) -> ActivationStore:
    """Write the token activations of `images` under `cfg` into a store at `out`.

    A CNN layer gives one token per spatial position of its (C, H, W) map; a ViT layer its patch tokens
    (and CLS/register tokens with `prefix_tokens`). An interrupted extraction into the same `out`
    resumes at its last whole shard. Raises ArchsaeError for no images, an unreadable image, a store at
    `out` made with another configuration, or NaN/Inf activations.
    """
    if not images:
        raise ArchsaeError("no images to extract")
    backbone = load_backbone(cfg.model, cfg.pretrained, cfg.layer, cfg.prefix_tokens)
    probe, probe_pos, grid = backbone.tokens(backbone.transform(load_image(images[0].path))[None])
    tokens_per_image, d = probe.shape[1], probe.shape[2]
    kind = ("spatial" if probe.ndim == 3 and backbone.num_prefix == 0 else
            "patch+prefix" if cfg.prefix_tokens else "patch")
    header = {"model": cfg.model, "layer": cfg.layer or "forward_features", "token_kind": kind, "d": int(d),
              "dtype": cfg.dtype, "grid": list(grid), "tokens_per_image": int(tokens_per_image),
              "holdout_every": cfg.holdout_every, "config": to_dict(cfg),
              "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
              "images": [{"path": it.path, "label": it.label} for it in images]}
    per_shard = max(1, cfg.shard_tokens // tokens_per_image)
    writer = StoreWriter(out, header, images_per_shard=per_shard)
    if writer.complete:
        return ActivationStore(out)
    start = writer.next_image
    with tqdm(total=len(images), initial=start, desc="extract", unit="img") as bar:
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
