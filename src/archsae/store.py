"""The activation store: sharded safetensors files + `store.json` (DESIGN.md, Files on disk).

Layout of a store folder:
  store.json             model, layer, token kind, d, dtype, n, shard list (n, sha256), per-feature
                         mean and std, the image list, `complete`
  shard_00000.safetensors  acts (m, d), image (m,) int64, pos (m,) int64, and the shard's own
                         per-feature mean and M2 (float64) so the store's statistics merge exactly
                         whatever the order of interruptions.
Shards hold whole images, so an interrupted extraction resumes at the first image of the next shard
without losing or duplicating tokens. Held-out tokens are those of every `holdout_every`-th image.
Reads are memory-mapped (`safe_open`) and streamed: the whole store is never held in RAM.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .errors import ArchsaeError
from .files import read_json, refuse_if_different, write_json, write_safetensors

VERSION = 1
SPLITS = ("train", "heldout", "all")
_VERIFIED: set[tuple[str, str]] = set()  # (shard path, sha256) checked in this process: each is hashed once


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _meta_checksum(meta: dict) -> str:
    """sha256 of store.json's content without its own checksum (keys sorted)."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_meta(root: Path, meta: dict) -> None:
    """Write store.json atomically, with the checksum of its content."""
    write_json(root / "store.json", {**meta, "checksum": _meta_checksum(meta)})


def read_meta(root: Path) -> dict:
    """store.json, checked: its keys and its checksum. Raises ArchsaeError naming the file and the fix."""
    path = root / "store.json"
    meta = read_json(path)
    required = ("version", "complete", "header", "shards") + (("n", "mean", "std") if meta.get("complete") else ())
    missing = [k for k in required if k not in meta] if isinstance(meta, dict) else list(required)
    if missing:
        raise ArchsaeError(f"{path} lacks {', '.join(missing)}: it is damaged or not an archsae store; delete "
                           f"{root} and extract or import it again")
    if "checksum" not in meta:
        raise ArchsaeError(f"{path} has no checksum: the store was written by an older archsae; delete {root} and "
                           "extract or import it again")
    if meta["checksum"] != _meta_checksum(meta):
        raise ArchsaeError(f"{path} was edited or damaged (its checksum does not match its content); restore it, "
                           f"or delete {root} and extract or import it again")
    return meta


def merge_stats(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge per-part (count, mean, M2) into the whole's, exactly (Chan et al. 1979)."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta**2 * (n * nb / total)
        n = total
    return n, np.asarray(mean), np.asarray(m2)


def check_finite(acts: np.ndarray, where: str, first_row: int = 0) -> None:
    """Raise ArchsaeError if `acts` holds NaN or Inf, naming the first bad row (counted from `first_row`)."""
    bad = ~np.isfinite(acts).all(axis=1)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise ArchsaeError(f"{where}: activations contain NaN/Inf ({int(bad.sum())} rows, first row {row}); "
                           "fix the source (an imported matrix; or the model in fp32, no corrupt images) before "
                           "storing, or store float32 (--dtype float32) where float16 overflows")


class StoreWriter:
    """Writes a store shard by shard; resumes an interrupted one with the same header."""

    def __init__(self, root: str | Path, header: dict, images_per_shard: int):
        self.root = Path(root)
        self.images_per_shard = images_per_shard
        meta_path = self.root / "store.json"
        if meta_path.exists():
            meta = read_meta(self.root)
            refuse_if_different(meta["header"], header, self.root, "a store", "choose another output folder, or "
                                "delete it to rebuild (a changed image or matrix shows as a changed sha256)")
            self.meta = meta
        else:
            self.meta = {"version": VERSION, "complete": False, "header": header,
                         "images_per_shard": images_per_shard, "shards": []}
        for stray in self.root.glob(".*.tmp"):  # left by a kill during a write
            stray.unlink()
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buf_images = 0

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    @property
    def next_image(self) -> int:
        """Index of the first image not yet in a written shard."""
        return sum(s["n_images"] for s in self.meta["shards"])

    def add(self, acts_md: np.ndarray, image_m: np.ndarray, pos_m: np.ndarray, n_images: int) -> None:
        """Append the tokens of `n_images` whole images; writes a shard each `images_per_shard` images."""
        with np.errstate(over="ignore"):
            acts_md = acts_md.astype(np.dtype(self.meta["header"]["dtype"]))
        check_finite(acts_md, "extraction")  # after the cast: float16 turns values above 65,504 into Inf
        self._buf.append((acts_md, image_m.astype(np.int64), pos_m.astype(np.int64)))
        self._buf_images += n_images
        if self._buf_images >= self.images_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        acts = np.concatenate([b[0] for b in self._buf])
        image = np.concatenate([b[1] for b in self._buf])
        pos = np.concatenate([b[2] for b in self._buf])
        a64 = acts.astype(np.float64)
        mean = a64.mean(0)
        m2 = ((a64 - mean) ** 2).sum(0)
        idx = len(self.meta["shards"])
        name = f"shard_{idx:05d}.safetensors"
        self.root.mkdir(parents=True, exist_ok=True)  # at the first shard: input refused before it leaves no folder
        write_safetensors(self.root / name, {
            "acts": torch.from_numpy(acts), "image": torch.from_numpy(image), "pos": torch.from_numpy(pos),
            "stat_mean": torch.from_numpy(mean), "stat_m2": torch.from_numpy(m2)}, checksum=False)
        heldout = int((image % self.meta["header"]["holdout_every"] == 0).sum()) if len(image) else 0
        self.meta["shards"].append({"file": name, "n": int(len(acts)), "n_heldout": heldout,
                                    "n_images": self._buf_images, "first_image": int(image[0]) if len(image) else 0,
                                    "sha256": sha256(self.root / name)})
        write_meta(self.root, self.meta)
        self._buf, self._buf_images = [], 0

    def finish(self, **extra) -> "ActivationStore":
        """Flush, merge the shards' statistics into the store's mean/std, mark complete. Raises ArchsaeError,
        and removes the files it wrote, when every feature is constant."""
        self.flush()
        if not self.meta["shards"]:
            raise ArchsaeError("no tokens were extracted; nothing to store")
        parts = []
        for s in self.meta["shards"]:
            with safe_open(self.root / s["file"], framework="np") as f:
                parts.append((s["n"], f.get_tensor("stat_mean"), f.get_tensor("stat_m2")))
        n, mean, m2 = merge_stats(parts)
        std = np.sqrt(m2 / n)
        if not (std > 1e-6).any():  # no variance to explain: every R² would divide by 0
            for written in [s["file"] for s in self.meta["shards"]] + ["store.json"]:
                (self.root / written).unlink()
            if not any(self.root.iterdir()):
                self.root.rmdir()
            raise ArchsaeError(f"every feature of these {int(n)} activations is constant (std 0): there is nothing to "
                               "learn, so nothing was stored; check the input (a matrix of one repeated row, an "
                               "extracted layer that is all zeros)")
        self.meta.update(extra, n=int(n), mean=mean.tolist(), std=std.tolist(), complete=True)
        write_meta(self.root, self.meta)
        return ActivationStore(self.root)


@dataclass(frozen=True)
class Shard:
    acts_md: torch.Tensor  # float32
    image_m: torch.Tensor  # int64
    pos_m: torch.Tensor  # int64


@dataclass(frozen=True)
class Subset:
    """A seeded fraction of the tokens: each token of shard i is kept with probability `fraction`, by a
    draw that depends only on (seed, shard) — the data perturbation of the stability protocol."""

    fraction: float
    seed: int

    @classmethod
    def of(cls, fraction: float, seed: int) -> "Subset | None":
        """The subset, or None (every token) when fraction is 1."""
        return cls(fraction, seed) if fraction < 1 else None

    def mask(self, shard: int, n: int) -> np.ndarray:
        """Which of the n tokens of a split of `shard` belong to the subset: bool (n,)."""
        return np.random.default_rng([self.seed, shard]).random(n) < self.fraction


class ActivationStore:
    """A complete store, read lazily. Raises ArchsaeError if missing, incomplete or damaged."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "store.json").exists():
            hint = ""
            if (self.root.parent / "store.json").exists():  # a store's own folder passed as --run-dir
                hint = f"; {self.root.parent} is itself a store: pass the folder that holds it as --run-dir"
            raise ArchsaeError(f"no activation store at {self.root}: run `archsae extract` or `archsae store import`"
                               f"{hint}")
        self.meta = read_meta(self.root)
        imported = self.meta["header"].get("token_kind") == "imported"
        self.remake = "`archsae store import` of the same file" if imported else "`archsae extract`"
        if not self.meta["complete"]:
            raise ArchsaeError(f"the store at {self.root} is incomplete (interrupted while it was written); "
                               f"re-run the same {self.remake} to resume it")
        for s in self.meta["shards"]:
            if not (self.root / s["file"]).exists():
                raise ArchsaeError(f"shard {s['file']} of {self.root} is missing; delete the store and re-run the "
                                   f"same {self.remake}")
        self.header = self.meta["header"]
        self.mean_d = torch.tensor(self.meta["mean"], dtype=torch.float32)
        std = torch.tensor(self.meta["std"], dtype=torch.float32)
        if not (std > 1e-6).any():  # nothing to standardise by, no variance to explain: every R² would divide by 0
            raise ArchsaeError(f"every feature of the store at {self.root} is constant (std 0): there is nothing to "
                               "learn; delete it and store activations that vary")
        # Constant features (std 0, e.g. a channel ReLU6 never opens) standardise to 0, not NaN.
        self.std_d = torch.where(std > 1e-6, std, torch.ones_like(std))

    @property
    def fingerprint(self) -> str:
        """The store's identity by content (store.json's checksum, which covers every shard's sha256): what
        models, centroids and runs record, so a moved or renamed run folder is still the same run."""
        return self.meta["checksum"]

    # ---- description -------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return int(self.header["d"])

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @cached_property
    def images(self) -> list[dict]:
        """The images in stored order: {path, label, sha256}, paths as openable from here (store.json keeps
        demo images relative to the store, so a run folder can move); [] for an imported matrix."""
        return [{**im, "path": str(self.root / im["path"])} for im in self.header.get("images", [])]

    @property
    def n_shards(self) -> int:
        return len(self.meta["shards"])

    def n_split(self, split: str, stream: int = 0, n_streams: int = 1, subset: Subset | None = None) -> int:
        """Tokens of a split ("train", "heldout", "all") in the shards of one stream (see `batches`), within
        `subset` if given (counted without reading the shards)."""
        total = 0
        for i in range(stream, self.n_shards, n_streams):
            s = self.meta["shards"][i]
            m = {"train": s["n"] - s["n_heldout"], "heldout": s["n_heldout"], "all": s["n"]}[split]
            total += int(subset.mask(i, m).sum()) if subset else m
        return total

    def verify(self) -> None:
        """Check every shard's sha256 against store.json now; raise ArchsaeError naming a corrupt shard."""
        for i in range(self.n_shards):
            self._verify(i, again=True)

    def _verify(self, i: int, again: bool = False) -> None:
        """Shard i's sha256 against store.json, once per process unless `again` (about 0.8 s per GB on 2
        cores, see benchmarks/README.md): flipped bytes would otherwise train into NaN or a wrong model."""
        s = self.meta["shards"][i]
        key = (str((self.root / s["file"]).resolve()), s["sha256"])
        if key in _VERIFIED and not again:
            return
        if sha256(self.root / s["file"]) != s["sha256"]:
            raise ArchsaeError(f"shard {self.root / s['file']} is corrupt (its sha256 differs from store.json's); "
                               "delete the store and extract or import it again")
        _VERIFIED.add(key)

    # ---- reading -----------------------------------------------------------------------------
    def _open(self, i: int):
        self._verify(i)
        path = self.root / self.meta["shards"][i]["file"]
        try:
            return safe_open(path, framework="pt")
        except (SafetensorError, OSError) as e:
            raise ArchsaeError(f"shard {path} is unreadable ({e}); delete the store and re-run the same "
                               f"{self.remake}") from None

    def _keep(self, i: int, image_m: torch.Tensor, split: str, subset: Subset | None) -> torch.Tensor:
        """Which rows of shard i, whose tokens come from the images `image_m`, belong to a split and subset: bool (m,)."""
        keep = torch.ones(len(image_m), dtype=torch.bool)
        if split != "all":
            held = image_m % int(self.header["holdout_every"]) == 0
            keep = held if split == "heldout" else ~held
        if subset:  # drawn over the split's tokens of the shard
            chosen = torch.nonzero(keep).flatten()
            keep[chosen[~torch.from_numpy(subset.mask(i, len(chosen)))]] = False
        return keep

    def read_shard(self, i: int, split: str = "all", subset: Subset | None = None) -> Shard:
        """Shard i as float32 activations with provenance, restricted to a split (and a subset of it)."""
        with self._open(i) as f:
            acts, image, pos = f.get_tensor("acts").float(), f.get_tensor("image"), f.get_tensor("pos")
        keep = self._keep(i, image, split, subset)
        return Shard(acts[keep], image[keep], pos[keep])

    def split_rows(self, i: int, split: str = "all", subset: Subset | None = None) -> np.ndarray:
        """The rows (m,) int64 of shard i in a split (and subset), reading only the shard's provenance."""
        with self._open(i) as f:
            image = f.get_tensor("image")
        return torch.nonzero(self._keep(i, image, split, subset)).flatten().numpy()

    def gather(self, i: int, rows_m: np.ndarray) -> torch.Tensor:
        """Rows `rows_m` (ascending) of shard i's activations, (m, d) float32, read without the rest."""
        with self._open(i) as f:
            return f.get_slice("acts")[torch.from_numpy(rows_m)].float()

    @property
    def uncentred_mean_d(self) -> torch.Tensor:
        """mean / std (d,): the data mean in the uncentred space A / std (see `standardise`)."""
        return self.mean_d / self.std_d

    def normalisation(self, centre: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), both (d,): `standardise` is (A - shift) / scale; shift = mean, or 0 uncentred."""
        return (self.mean_d if centre else torch.zeros_like(self.mean_d)), self.std_d

    def standardise(self, acts_nd: torch.Tensor, centre: bool = True, inplace: bool = False) -> torch.Tensor:
        """(A - mean) / std element-wise with the store's statistics (Fel et al. 2025, Sec. 5); with
        centre=False, A / std: the uncentred space, whose mean is `uncentred_mean_d`. `inplace` overwrites
        `acts_nd` (float32) instead of allocating a copy."""
        shift_d, scale_d = self.normalisation(centre)
        return acts_nd.sub_(shift_d).div_(scale_d) if inplace else (acts_nd - shift_d) / scale_d

    def batches(self, batch_size: int, seed: int, epoch: int, split: str = "train", shuffle_shards: int = 4,
                stream: int = 0, n_streams: int = 1, subset: Subset | None = None) -> Iterator[torch.Tensor]:
        """Shuffled raw batches (batch_size, d) for one epoch, a deterministic function of (seed, epoch, stream).

        Stream s of n_streams reads only shards s, s + n_streams, ... (so DDP ranks read disjoint shards).
        The order is a uniform random permutation of all the stream's tokens (of a split, within `subset`),
        read in rounds of `shuffle_shards` shards' worth of tokens (bounded memory), each round gathering
        its rows from every shard. (Shuffling within groups of whole shards instead ends each epoch on a
        few shards' images, which a model at a constant learning rate leans towards: -0.007 held-out R² on
        the default store.) The last partial batch is dropped.
        """
        rng = np.random.default_rng([seed, epoch, stream])
        shards = np.arange(stream, self.n_shards, n_streams)
        rows = [self.split_rows(int(i), split, subset) for i in shards]
        shard_of, row_of = np.repeat(shards, [len(r) for r in rows]), np.concatenate(rows)
        order = rng.permutation(len(row_of))[:len(row_of) // batch_size * batch_size]
        per_round = max(1, shuffle_shards * max(s["n"] for s in self.meta["shards"]) // batch_size) * batch_size
        for start in range(0, len(order), per_round):
            take = order[start:start + per_round]
            buf = torch.empty(len(take), self.d)
            by_shard = np.argsort(shard_of[take], kind="stable")
            ids, firsts = np.unique(shard_of[take][by_shard], return_index=True)
            for i, where in zip(ids, np.split(by_shard, firsts[1:])):
                where = where[np.argsort(row_of[take[where]])]  # ascending rows: one forward read of the file
                buf[torch.from_numpy(where)] = self.gather(int(i), row_of[take[where]])
            yield from buf.split(batch_size)

    def sample(self, max_tokens: int, seed: int, split: str = "all", subset: Subset | None = None) -> torch.Tensor:
        """Up to `max_tokens` raw tokens (m, d) of a split (within `subset`), a seeded uniform sample
        without replacement."""
        total = self.n_split(split, subset=subset)
        if total == 0:
            raise ArchsaeError(f"the store at {self.root} has no {split} tokens")
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(total, size=min(max_tokens, total), replace=False))
        out = torch.empty(len(chosen), self.d)  # filled in place: a million tokens are 5 GB, held once
        offset = filled = 0
        for i in range(self.n_shards):
            shard = self.read_shard(i, split, subset)
            m = len(shard.acts_md)
            local = chosen[(chosen >= offset) & (chosen < offset + m)] - offset
            out[filled:filled + len(local)] = shard.acts_md[torch.from_numpy(local)]
            filled += len(local)
            offset += m
        return out

    def image_tokens(self, image: int) -> Shard:
        """The tokens of one image, with positions (for heatmaps), reading only its rows of its shard."""
        with self._open(image // int(self.meta["images_per_shard"])) as f:
            image_m = f.get_tensor("image")
            rows = torch.nonzero(image_m == image).flatten()
            if len(rows) == 0:
                return Shard(torch.zeros(0, self.d), image_m[:0], image_m[:0])
            lo, hi = int(rows[0]), int(rows[-1]) + 1  # one slice: a shard stores an image's tokens together
            keep = image_m[lo:hi] == image
            return Shard(f.get_slice("acts")[lo:hi].float()[keep], image_m[lo:hi][keep],
                         f.get_slice("pos")[lo:hi][keep])


def import_matrix(path: str | Path, root: str | Path, shard_tokens: int = 16384, dtype: str = "float32",
                  holdout_every: int = 10, tokens_per_image: int = 1) -> ActivationStore:
    """Make a store from an existing (n, d) matrix in a `.npy` or `.safetensors` file.

    Each `tokens_per_image` consecutive rows are one "image" (provenance = row // tokens_per_image, position
    row % tokens_per_image; default 1: each row its own), and every `holdout_every`-th image is held out, all
    its tokens together. Raises ArchsaeError for a missing file, a non-2-D or non-numeric matrix, NaN/Inf, or n
    not a multiple of tokens_per_image.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchsaeError(f"{path} does not exist")
    try:
        if path.suffix == ".npy":
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".safetensors":
            with safe_open(path, framework="np") as f:
                keys = list(f.keys())
                key = next((k for k in ("acts", "activations") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ArchsaeError(f"{path} holds tensors {keys}; name the matrix 'acts' or keep only one")
                matrix = f.get_tensor(key)
        else:
            raise ArchsaeError(f"{path}: expected a .npy or .safetensors file")
    except (ValueError, OSError, EOFError, SafetensorError) as e:
        reason = str(e)
        if isinstance(e, EOFError):
            reason = "an empty or truncated file"
        elif "pickle" in reason or "Python objects" in reason:  # numpy's advice, allow_pickle, runs the file's code
            reason = ("not a numeric array saved by np.save (archsae never loads pickled objects); save the matrix "
                      "with np.save(path, array)")
        raise ArchsaeError(f"cannot read {path} ({reason})") from None
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise ArchsaeError(f"{path} holds shape {matrix.shape}; expected a 2-D (n, d) activation matrix with at "
                           "least one row and one column")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ArchsaeError(f"{path} holds dtype {matrix.dtype}; expected real numbers (take .real or abs() "
                           "of complex activations yourself)")
    return matrix_store(matrix, root, str(path.resolve()), shard_tokens, dtype, holdout_every, tokens_per_image,
                        source_sha256=sha256(path))


def matrix_store(matrix_nd, root: str | Path, source: str, shard_tokens: int = 16384, dtype: str = "float32",
                 holdout_every: int = 10, tokens_per_image: int = 1, **header) -> ActivationStore:
    """Make a store from an (n, d) array (numpy, memory-mapped or not), each `tokens_per_image` consecutive rows
    one "image" (`import_matrix`); `source` and `header` are recorded in store.json. Raises ArchsaeError for
    NaN/Inf rows, or n not a multiple of tokens_per_image."""
    n, d = matrix_nd.shape
    per_image = tokens_per_image
    if per_image < 1:
        raise ArchsaeError(f"tokens_per_image must be >= 1, got {per_image}")
    if n % per_image:
        raise ArchsaeError(f"{source}: {n:,} rows are not whole images of {per_image:,} tokens each; pass the number "
                           "of consecutive rows that come from one image (--tokens-per-image), or 1")
    if n // per_image <= 1:  # image 0 is held out: nothing would be left to train on
        raise ArchsaeError(f"{source}: {n:,} rows make {n // per_image} image(s) of {per_image:,} tokens, and image 0 "
                           "is held out: nothing is left to train on; lower --tokens-per-image")
    header = {"source": source, "model": "", "layer": "", "token_kind": "imported", "d": int(d),
              "dtype": dtype, "grid": None, "tokens_per_image": per_image, "holdout_every": holdout_every,
              "images": [], **header}
    images_per_shard = max(1, shard_tokens // per_image)
    writer = StoreWriter(root, header, images_per_shard=images_per_shard)  # writes nothing before its first shard
    if writer.complete:
        return ActivationStore(root)
    step, first = images_per_shard * per_image, writer.next_image * per_image
    # Every row left is checked, in the store's dtype, before a shard is written: a bad row deep in the matrix
    # would otherwise leave an incomplete store, which only the same (still bad) matrix may resume.
    for start in range(first, n, step):
        with np.errstate(over="ignore"):  # an overflow is reported below, as the Inf it makes
            chunk = np.asarray(matrix_nd[start:start + step]).astype(dtype)
        check_finite(chunk, source, first_row=start)
    for start in range(first, n, step):
        rows = np.asarray(matrix_nd[start:start + step], dtype=np.float32)
        idx = np.arange(start, start + len(rows))
        writer.add(rows, idx // per_image, idx % per_image, n_images=len(rows) // per_image)
    return writer.finish()
