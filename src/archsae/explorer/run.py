"""A run directory as the explorer sees it: its models, their groups of runs, cached concept statistics, the
store's images drawn with heatmaps, and the decomposition of an image into concepts."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import metrics
from ..errors import ArchsaeError
from ..evaluate import atoms_of, class_directions, find_models, load_model
from ..files import read_json
from ..report.gallery import THUMB, heat_overlay, source_ids
from ..store import ActivationStore
from .stats import ConceptStats, compute_stats, load_stats, save_stats, stats_key

NEAR_DUPLICATE = 0.99  # |cos| with another atom above which an atom is flagged as a near-duplicate


@dataclass
class Decomposition:
    """An image's tokens encoded by one model: codes (T, k) over the token grid, and each concept's share
    of the reconstruction Z D: share_i = sum_t z_ti <D_i, (Z D)_t> / sum_t ||(Z D)_t||^2 (shares sum to 1)."""

    codes_tk: np.ndarray
    pos_t: np.ndarray  # spatial position of each token (row * grid_w + col), -1 - j for prefix tokens
    share_k: np.ndarray


class RunView:
    """Everything `archsae serve` shows of a run directory. Models: `models/*` (SAEs and classical models,
    grouped as metrics.json groups them) and `stability/models/*` (grouped as stability/results.json does),
    named by their path relative to the run directory. Raises ArchsaeError when the directory has no store
    or no trained model."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.store = ActivationStore(self.root / "store")
        self.paths: dict[str, Path] = {}
        for folder in ("models", "stability/models"):
            if (self.root / folder).is_dir():
                try:
                    self.paths.update({f"{folder}/{n}": p for n, p in find_models(self.root / folder).items()})
                except ArchsaeError:
                    pass
        if not self.paths:
            raise ArchsaeError(f"no trained models under {self.root}/models or {self.root}/stability/models: "
                               "run `archsae run` or `archsae train` first")
        self.metrics = read_json(self.root / "metrics.json") if (self.root / "metrics.json").exists() else None
        stab = self.root / "stability" / "results.json"
        self.stability = read_json(stab) if stab.exists() else None
        self.groups = self._groups()
        self.sources = source_ids(self.store, self.root)  # the photo or stamp each image was cut from
        self._lock = threading.Lock()
        self._models: dict[str, object] = {}
        self._stats: dict[str, ConceptStats] = {}

    def _groups(self) -> dict[str, list[str]]:
        """Model name -> the other runs of its configuration (same group in metrics.json / stability)."""
        peers: dict[str, set[str]] = {name: set() for name in self.paths}
        lists = []
        if self.metrics:
            lists += [[f"models/{n}" for n in g["runs"]] for g in self.metrics["groups"].values()]
        if self.stability:
            lists += [[f"stability/{r}" for r in g["runs"]] for g in self.stability["groups"]]
        for runs in lists:
            runs = [r for r in runs if r in self.paths]
            for r in runs:
                peers[r] |= set(runs) - {r}
        return {name: sorted(p) for name, p in peers.items()}

    def prepare(self) -> None:
        """What every page needs, before the first is served: each model's statistics (computed or from the
        cache) and the classifier's class directions (the backbone's load, ~2 s, which uploads then reuse)."""
        for name in self.paths:
            self.stats(name)
        self.heads

    # ---- models and their statistics ----------------------------------------------------------------
    def model(self, name: str):
        """The loaded model `name` (KeyError for an unknown name)."""
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(self.paths[name])
            return self._models[name]

    @lru_cache(maxsize=64)
    def atoms(self, name: str) -> torch.Tensor:
        """Model `name`'s dictionary (k, d), built once (an archetypal D = W C + Λ costs a product)."""
        return atoms_of(self.model(name))

    @cached_property
    def heads(self) -> tuple[torch.Tensor | None, str]:
        """The classifier's class directions in the standardised space, and where they came from; read from
        the backbone that uploads use, so the explorer loads it once."""
        try:
            backbone = self.backbone
        except ArchsaeError:  # (an imported store, or weights out of reach: class_directions says why)
            backbone = None
        return class_directions(self.store, backbone)

    @cached_property
    def class_names(self) -> list[str]:
        heads = self.heads[0]
        if heads is None:
            return []
        if len(heads) == 1000:  # an ImageNet-1k head: timm ships the class names
            from ..models._compat import import_timm

            info = import_timm().data.ImageNetInfo()
            return [info.index_to_description(i).split(",")[0] for i in range(1000)]
        return [f"class {i}" for i in range(len(heads))]

    @lru_cache(maxsize=4)
    def class_cosines(self, name: str) -> torch.Tensor:
        """(k, classes) cosines between model `name`'s atoms and the classifier's class directions."""
        return metrics.cosines(self.atoms(name), self.heads[0])

    def stats(self, name: str) -> ConceptStats:
        """The concept statistics of model `name`, from the cache under explorer/ when it is current, else
        computed (a pass over the store) and cached."""
        if name in self._stats:
            return self._stats[name]
        peers = {p: self.paths[p] for p in self.groups[name]}
        key = stats_key(self.paths[name], self.store, peers, self.sources)
        path = self.root / "explorer" / "stats" / name.replace("/", "__")
        stats = load_stats(path, key)
        if stats is None:
            stats = compute_stats(self.model(name), self.store, {p: self.atoms(p) for p in peers}, self.heads[0],
                                  self.sources, desc=f"statistics of {name}")
            save_stats(stats, path, key)
        self._stats[name] = stats
        return stats

    # ---- images -------------------------------------------------------------------------------------
    @cached_property
    def view(self):
        from ..models import view_transform

        return view_transform(self.store.header["data_config"])

    @lru_cache(maxsize=512)
    def crop(self, image: int) -> Image.Image:
        """Store image `image` as the model saw it (resized and cropped). IndexError for an unknown image."""
        from ..data import load_image

        return self.view(load_image(self.store.images[image]["path"]))

    @lru_cache(maxsize=64)  # dense codes: 49 tokens x k floats each (6 MB at k = 32,768)
    def decompose_stored(self, name: str, image: int) -> Decomposition:
        """`decompose` of store image `image`'s tokens under model `name` (cached)."""
        tokens = self.store.image_tokens(image)
        return self.decompose(name, tokens.acts_md, tokens.pos_m.numpy())

    @torch.no_grad()
    def decompose(self, name: str, acts_td: torch.Tensor, pos_t: np.ndarray) -> Decomposition:
        """The codes of raw token activations (T, d) under model `name`, and each concept's share."""
        model = self.model(name)
        z = model.encode(acts_td).float()
        recon = z @ self.atoms(name)
        share = (z * (recon @ self.atoms(name).T)).sum(0) / (recon * recon).sum().clamp_min(1e-30)
        return Decomposition(z.numpy(), np.asarray(pos_t), share.numpy())

    def heat(self, name: str, concept: int, image: int, vmax: float) -> Image.Image:
        """Store image `image` (THUMB px) with concept `concept`'s token activations over it, scaled to vmax."""
        dec = self.decompose_stored(name, image)
        return overlay(self.crop(image), dec.codes_tk[:, concept], dec.pos_t, self.store.header["grid"], vmax)

    # ---- uploads ------------------------------------------------------------------------------------
    @cached_property
    def backbone(self):
        """The store's backbone (loaded once, for uploaded images)."""
        from ..models import load_backbone

        cfg = self.store.header.get("config")
        if not cfg or not cfg.get("model"):
            raise ArchsaeError("this store was imported from a matrix: there is no backbone to encode new images")
        return load_backbone(cfg["model"], cfg.get("pretrained", True), cfg.get("layer", ""),
                             cfg.get("prefix_tokens", False))

    def tokens_of(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """The raw token activations (T, d) and positions of a new RGB image (`data.load_image`), as the store's
        extraction made them. ArchsaeError for a store without backbone or a backbone that disagrees with it."""
        acts, pos, grid = self.backbone.tokens(self.backbone.transform(image)[None])
        if list(grid) != list(self.store.header["grid"]) or acts.shape[-1] != self.store.d:
            raise ArchsaeError(f"the backbone gives a {grid} grid of d = {acts.shape[-1]}; the store has "
                               f"{self.store.header['grid']} and d = {self.store.d}")
        return acts[0].float(), pos.numpy()


def jpeg(image: Image.Image) -> bytes:
    """JPEG bytes (quality 90) of an RGB image: a tenth of PNG's encoding time for photos."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def overlay(photo: Image.Image, values_t: np.ndarray, pos_t: np.ndarray, grid: list[int], vmax: float,
            size: int = THUMB) -> Image.Image:
    """`heat_overlay` for token values (T,) at positions pos_t (prefix tokens, < 0, ignored)."""
    heat = np.zeros(grid[0] * grid[1], np.float32)
    spatial = pos_t >= 0
    heat[pos_t[spatial]] = values_t[spatial]
    return heat_overlay(photo, heat.reshape(grid), vmax, size)
