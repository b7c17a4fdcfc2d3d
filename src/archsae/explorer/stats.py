"""Per-concept statistics of one model over its whole store, computed once and cached in the run directory.

A concept is one code of the model (one atom of its dictionary). Its statistics, over every token of the store:
how often it fires, its peak activation, a histogram of its token activations, the images where it peaks
(each image once, by the image's largest token activation) and images at lower quantiles of that per-image
peak, its images' label purity, its OOD score (Fel et al. 2025, eq. 9, per atom), its nearest other atom, the
classifier class whose head direction it aligns with best, and the Hungarian match of its atom in each other
run of its group (the per-concept term of stability, eq. 2). Archetypal models add, per candidate of C, the
images of the tokens nearest to it (what anchors an atom).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from tqdm import tqdm

from .. import metrics
from ..errors import ArchsaeError
from ..evaluate import atoms_of, model_space
from ..files import read_json, read_safetensors, write_json, write_safetensors
from ..progress import quiet
from ..report.gallery import distinct_sources
from ..sae import SAE
from ..sae.dictionary import ArchetypalDictionary
from ..store import ActivationStore, sha256

VERSION = 4  # bump when the statistics change, so old caches are recomputed
TOP = 12  # top images per concept
QUANTILES = (0.2, 0.5, 0.8)  # per-image-peak quantiles with examples on a concept page
PER_QUANTILE = 4
BINS = 24  # histogram bins over (0, peak]
HIST_ENTRIES = 30_000_000  # token activations kept for histograms (~240 MB); beyond, they count a prefix of the store
NEAREST = 6  # nearest tokens kept per archetypal candidate
OOD_TOKENS = 20_000
ENCODE_ENTRIES = 2**24  # codes encoded at a time (tokens x k)


@dataclass
class ConceptStats:
    """The cached statistics of one model with k concepts (numpy arrays, first axis k unless said)."""

    freq: np.ndarray  # (k,) share of the store's tokens where the code is > 0
    peak: np.ndarray  # (k,) largest token activation
    hist: np.ndarray  # (k, BINS) token counts with activation in ((b / BINS) peak, ((b + 1) / BINS) peak]
    top_images: np.ndarray  # (k, TOP) int32 images by their largest token activation, -1 = none
    top_values: np.ndarray  # (k, TOP) float32 those activations
    quantile_images: np.ndarray  # (k, len(QUANTILES), PER_QUANTILE) int32, -1 = none
    quantile_values: np.ndarray  # (k, len(QUANTILES), PER_QUANTILE) float32 those images' peaks
    purity: np.ndarray  # (k,) share of the top images that carry the most common label among them
    label: list[str]  # (k,) that label ("" when the store has no labels)
    ood: np.ndarray  # (k,) 1 - max_j cos(D_i, A_j) on held-out tokens
    nearest: np.ndarray  # (k,) largest |cos| with another atom of the same dictionary
    head_class: np.ndarray  # (k,) int32 best-aligned classifier class, -1 = no head
    head_cos: np.ndarray  # (k,) that cosine
    matches: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # run -> (index, cos), -1
    candidate_images: np.ndarray | None = None  # (n', NEAREST) int32: images of the tokens nearest each candidate
    hist_tokens: int = 0  # tokens the histograms count

    @cached_property
    def stability(self) -> np.ndarray:
        """(k,) the mean |cos| with its matched atom over the other runs (NaN without other runs)."""
        if not self.matches:
            return np.full(len(self.freq), np.nan, dtype=np.float32)
        return np.mean([np.abs(cos) for _, cos in self.matches.values()], axis=0)


def _per_image_max(z_mk: torch.Tensor, image_m: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, codes, values) of the positive per-image maxima of codes z (m, k), images contiguous or not."""
    images, inverse = torch.unique(image_m, return_inverse=True)
    best = z_mk.new_zeros(len(images), z_mk.shape[1])
    best.scatter_reduce_(0, inverse[:, None].expand_as(z_mk), z_mk, reduce="amax")
    rows, cols = best.nonzero(as_tuple=True)
    return images[rows].numpy(), cols.numpy(), best[rows, cols].numpy()


@torch.no_grad()
def compute_stats(model, store: ActivationStore, peers: dict[str, torch.Tensor] | None = None,
                  heads_ck: torch.Tensor | None = None, source_m: np.ndarray | None = None,
                  desc: str = "concept statistics") -> ConceptStats:
    """The statistics of `model` (an SAE or classical model taking raw activations) over every token of `store`;
    `peers` are the dictionaries (k', d) of the other runs of its group, matched atom to atom (Hungarian, as
    stability, Fel et al. 2025 eq. 2); `heads_ck` the classifier's class directions in the standardised space
    (`evaluate.class_directions`); `source_m` (images,) ids of the photo or stamp each image was cut from
    (`report.gallery.source_ids`; default: each image its own), at most one image per source in each list.
    One pass over the store, encoding ENCODE_ENTRIES / k tokens at a time; memory O(k x (images per shard +
    BINS) + HIST_ENTRIES)."""
    atoms_kd = atoms_of(model)
    k = len(atoms_kd)
    count, peak = torch.zeros(k, dtype=torch.float64), torch.zeros(k)
    img_parts, hist_parts, kept, hist_tokens = [], [], 0, 0
    for i in tqdm(range(store.n_shards), desc=desc, unit="shard", **quiet(False)):
        shard = store.read_shard(i)
        rows = max(1, ENCODE_ENTRIES // k)
        for acts, image_m in zip(shard.acts_md.split(rows), shard.image_m.split(rows)):
            z = model.encode(acts).float()
            count += (z > 0).sum(0)
            peak = torch.maximum(peak, z.max(0).values)
            if store.images:  # an imported matrix has no images to show
                img_parts.append(_per_image_max(z.clamp(min=0), image_m))
            if kept < HIST_ENTRIES:  # token activations for histograms: a prefix of the (shuffled) store
                sparse = scipy.sparse.csr_matrix(z.clamp(min=0).numpy())
                hist_parts.append(sparse)
                kept += sparse.nnz
                hist_tokens += len(z)
    per_image = _max_matrix(img_parts, (len(store.images), k))
    top_images, top_values, quantile_images, quantile_values = _image_choices(
        per_image, np.arange(len(store.images)) if source_m is None else source_m)
    labels = [im["label"] for im in store.images]
    label, purity = _labels(top_images, labels)
    peak_np = peak.numpy()
    hist = _histograms(scipy.sparse.vstack(hist_parts, format="coo"), peak_np)

    raw = store.sample(OOD_TOKENS, 0, "heldout")
    acts = store.standardise(raw) + model_space(store, model.config)
    head_class, head_cos = np.full(k, -1, np.int32), np.zeros(k, np.float32)
    if heads_ck is not None:
        cos = metrics.cosines(atoms_kd, heads_ck)
        best = cos.max(1)
        head_class, head_cos = best.indices.numpy().astype(np.int32), best.values.numpy()
    matches = {}
    for name, other in (peers or {}).items():
        index = np.full(k, -1, np.int64)
        cos = np.zeros(k, np.float32)
        r, c, s = metrics.match_atoms(atoms_kd, other)
        index[r], cos[r] = c, s
        matches[name] = (index, cos)
    return ConceptStats(
        freq=(count / store.n).float().numpy(), peak=peak_np, hist=hist, top_images=top_images,
        top_values=top_values, quantile_images=quantile_images, quantile_values=quantile_values, purity=purity,
        label=label,
        ood=metrics.atom_ood(atoms_kd, acts).numpy(), nearest=metrics.nearest_atom(atoms_kd).numpy(),
        head_class=head_class, head_cos=head_cos, matches=matches,
        candidate_images=_candidate_images(model, store), hist_tokens=hist_tokens)


def _max_matrix(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shape: tuple[int, int]):
    """The CSC matrix of the largest value per (row, column) of (rows, cols, values) parts: an image whose
    tokens were encoded in two chunks has two entries per concept, of which it keeps the larger (scipy would
    add them)."""
    if not parts:
        return scipy.sparse.csc_matrix(shape, dtype=np.float32)
    rows, cols, vals = (np.concatenate(p) for p in zip(*parts))
    key = rows.astype(np.int64) * shape[1] + cols
    order = np.lexsort((-vals, key))  # by (row, column), the largest value first
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    return scipy.sparse.csc_matrix((vals[first], (rows[first], cols[first])), shape=shape)


def _image_choices(per_image, source_m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per concept (column of the (images, k) CSC matrix of per-image peaks): the TOP images with the largest
    peak, and PER_QUANTILE images from each of QUANTILES of the peaks of the images where it fires upwards, each
    list at most one image per source (`source_m`, (images,) ids)."""
    k = per_image.shape[1]
    top_images = np.full((k, TOP), -1, np.int32)
    top_values = np.zeros((k, TOP), np.float32)
    quantile_images = np.full((k, len(QUANTILES), PER_QUANTILE), -1, np.int32)
    quantile_values = np.zeros((k, len(QUANTILES), PER_QUANTILE), np.float32)
    for j in range(k):
        lo, hi = per_image.indptr[j], per_image.indptr[j + 1]
        if lo == hi:
            continue
        values, images = per_image.data[lo:hi], per_image.indices[lo:hi]
        order = np.argsort(-values, kind="stable")
        top = distinct_sources(images[order].tolist(), source_m, TOP)
        top_images[j, :len(top)], top_values[j, :len(top)] = top, values[order][np.isin(images[order], top)]
        ascending = order[::-1]
        for q, level in enumerate(QUANTILES):
            start = int(np.clip(round(level * len(ascending)) - PER_QUANTILE // 2, 0,
                                max(0, len(ascending) - PER_QUANTILE)))
            chosen = distinct_sources(images[ascending[start:]].tolist(), source_m, PER_QUANTILE)
            quantile_images[j, q, :len(chosen)] = chosen
            quantile_values[j, q, :len(chosen)] = per_image[chosen, j].toarray().ravel()
    return top_images, top_values, quantile_images, quantile_values


def _labels(top_images: np.ndarray, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Each concept's most common label among its top images, and the share of those images carrying it."""
    out, purity = [], np.zeros(len(top_images), np.float32)
    for j, row in enumerate(top_images):
        names = [labels[i] for i in row if i >= 0 and i < len(labels)]
        if not names:
            out.append("")
            continue
        values, counts = np.unique(names, return_counts=True)
        out.append(str(values[counts.argmax()]))
        purity[j] = counts.max() / len(names)
    return out, purity


def _histograms(codes, peak_k: np.ndarray) -> np.ndarray:
    """(k, BINS) counts of the positive token activations (COO matrix (n, k)) in BINS equal bins of (0, peak]."""
    k = len(peak_k)
    cols, vals = codes.col, codes.data
    keep = vals > 0
    cols, vals = cols[keep], vals[keep]
    bins = np.minimum((vals / np.maximum(peak_k[cols], 1e-30) * BINS).astype(np.int64), BINS - 1)
    return np.bincount(cols.astype(np.int64) * BINS + bins, minlength=k * BINS).reshape(k, BINS).astype(np.int32)


@torch.no_grad()
def _candidate_images(model, store: ActivationStore) -> np.ndarray | None:
    """For an archetypal SAE, the images of the NEAREST store tokens nearest (L2, in the space C lives in)
    to each candidate of C; None otherwise."""
    if not isinstance(model, SAE) or not isinstance(model.dictionary, ArchetypalDictionary):
        return None
    cand = model.dictionary.candidates
    shift = model_space(store, model.config)
    best_d = torch.full((len(cand), NEAREST), float("inf"))
    best_i = torch.full((len(cand), NEAREST), -1, dtype=torch.int64)
    c2 = (cand * cand).sum(1, keepdim=True)
    for i in range(store.n_shards):
        shard = store.read_shard(i)
        for acts, image_m in zip(shard.acts_md.split(4096), shard.image_m.split(4096)):
            x = store.standardise(acts) + shift
            dist = c2 - 2 * cand @ x.T + (x * x).sum(1)[None]
            d, j = torch.cat([best_d, dist], 1).topk(NEAREST, dim=1, largest=False)
            best_d, best_i = d, torch.cat([best_i, image_m[None].expand(len(cand), -1)], 1).gather(1, j)
    return best_i.numpy().astype(np.int32)


# ---- the cache --------------------------------------------------------------------------------------

_ARRAYS = ("freq", "peak", "hist", "top_images", "top_values", "quantile_images", "quantile_values", "purity", "ood", "nearest",
           "head_class", "head_cos")


def stats_key(model_dir: Path, store: ActivationStore, peers: dict[str, Path], source_m: np.ndarray) -> dict:
    """What a cache is valid for: this version, the model's and its peers' files, the store, the images' sources."""
    return {"version": VERSION, "store": store.fingerprint, "model": sha256(model_dir / "model.safetensors"),
            "peers": {name: sha256(p / "model.safetensors") for name, p in sorted(peers.items())},
            "sources": hashlib.sha256(np.ascontiguousarray(source_m, np.int64).tobytes()).hexdigest()}


def save_stats(stats: ConceptStats, path: Path, key: dict) -> None:
    """Write `path`.safetensors (arrays) and `path`.json (key, labels, match names) atomically, arrays first,
    so a JSON that exists always describes complete arrays."""
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(stats, name))) for name in _ARRAYS}
    for i, (index, cos) in enumerate(stats.matches.values()):
        tensors[f"match{i}.index"], tensors[f"match{i}.cos"] = torch.from_numpy(index), torch.from_numpy(cos)
    if stats.candidate_images is not None:
        tensors["candidate_images"] = torch.from_numpy(stats.candidate_images)
    write_safetensors(path.with_suffix(".safetensors"), tensors)
    write_json(path.with_suffix(".json"), {"key": key, "label": stats.label, "matches": list(stats.matches),
                                           "hist_tokens": stats.hist_tokens})


def load_stats(path: Path, key: dict) -> ConceptStats | None:
    """The cached statistics at `path` when they were computed for `key`, else None (also when the cache is
    damaged: it is computed again)."""
    if not path.with_suffix(".json").exists() or not path.with_suffix(".safetensors").exists():
        return None
    info = read_json(path.with_suffix(".json"))
    if info.get("key") != json.loads(json.dumps(key)):
        return None
    try:
        t = {name: v.numpy() for name, v in read_safetensors(path.with_suffix(".safetensors")).items()}
    except ArchsaeError:
        return None
    return ConceptStats(**{name: t[name] for name in _ARRAYS}, label=info["label"],
                        matches={name: (t[f"match{i}.index"], t[f"match{i}.cos"])
                                 for i, name in enumerate(info["matches"])},
                        candidate_images=t.get("candidate_images"), hist_tokens=info["hist_tokens"])
