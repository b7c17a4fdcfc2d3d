"""Atomic writes: a result is either whole on disk or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ArchsaeError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once: setting it to read it is not thread-safe


def check_writable(folder: Path) -> None:
    """Raise ArchsaeError unless files can be created in `folder` (or its nearest existing parent)."""
    existing = next(p for p in [Path(folder), *Path(folder).absolute().parents] if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ArchsaeError(f"cannot write in {existing} ({e.strerror or e}); choose a writable --run-dir") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, then rename it onto `path`; nothing is left on failure.
    The file gets the permissions the user's umask gives any new file (mkstemp's would be 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (temp file, then rename)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n"))


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def tensors_sha256(tensors: dict) -> str:
    """The hex sha256 of a dict of torch tensors (any device; hashed on the CPU): for each name in sorted order,
    the UTF-8 bytes of f"{name}|{dtype}|{shape};" (torch's dtype name, e.g. "torch.float32", and the shape as a
    Python tuple, e.g. "(3, 4)" or "()"), then the tensor's raw bytes in C order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def read_safetensors(path: Path, fix: str = "delete its folder and train the model again") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file we wrote, on the CPU, by name; see `read_safetensors_with_metadata`."""
    return read_safetensors_with_metadata(path, fix)[0]


def read_safetensors_with_metadata(path: Path, fix: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor],
                                                                                      dict[str, str]]:
    """(tensors on `device` by name, metadata) of a safetensors file we wrote; ArchsaeError naming it, and `fix`, if
    it is damaged: a truncated or corrupt header, or bytes that no longer match the checksum `write_safetensors`
    stored (files written before it had one are read unchecked). The checksum is not in the returned metadata."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt headers
        raise ArchsaeError(f"{path} is damaged ({e}); {fix}") from None
    expected = metadata.pop("sha256", None)
    if expected is not None and tensors_sha256(tensors) != expected:
        raise ArchsaeError(f"{path} is damaged (its tensors no longer match the checksum written with them); {fix}")
    return tensors, metadata


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None, checksum: bool = True) -> None:
    """Save a dict of torch tensors as safetensors atomically (tensors made contiguous), with their
    `tensors_sha256` in the metadata under "sha256" (a reserved key), which `read_safetensors` checks. A store's
    shards pass checksum=False: store.json holds each shard file's sha256 already."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), **({"sha256": tensors_sha256(tensors)} if checksum else {})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_image(path: Path, image, **kwargs) -> None:
    """Save a PIL image atomically; the format comes from the suffix of `path`."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[Path(path).suffix.lower()]
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **kwargs))


def read_json(path: Path) -> Any:
    """Read JSON from `path`; raise ArchsaeError naming the file if it is missing or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArchsaeError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArchsaeError(f"{path} is corrupt ({e}); delete it and re-run the step that wrote it") from None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(stored: Any, asked: Any, key: str = "") -> list[str]:
    """The fields where two JSON-like records differ, in words (["k: 512 there, 1024 now", ...]), in key order."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        found = []
        for k in sorted(set(stored) | set(asked), key=str):
            found += differences(stored.get(k, "(absent)"), asked.get(k, "(absent)"), f"{key}.{k}" if key else k)
        return found
    if isinstance(stored, list) and isinstance(asked, list):
        if len(stored) != len(asked):
            return [f"{key}: {len(stored)} items there, {len(asked)} now"]
        found = []
        for i, (a, b) in enumerate(zip(stored, asked)):
            where = f"{key}[{i}]" + (f" ({b['path']})" if isinstance(b, dict) and "path" in b else "")
            found += differences(a, b, where)
        return found
    return [] if stored == asked else [f"{key}: {_short(stored)} there, {_short(asked)} now"]


def refuse_if_different(stored: dict, asked: dict, where: Path, what: str, fix: str) -> None:
    """The one rule for results kept in a run directory: a result is reused only when the record it was
    made with (configuration, store fingerprint, inputs' checksums) equals the one asked for now; else
    ArchsaeError names every difference (each may be an option to change) and `fix`, and nothing is
    overwritten."""
    found = differences(stored, asked)
    if found:
        raise ArchsaeError(f"{where} holds {what} made with another configuration ({'; '.join(found)}); {fix}")


def first_three(found: list[str]) -> str:
    """The first three of `differences`, and how many more ("k: 512 there, 1024 now; ...; and 2 more")."""
    return "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
