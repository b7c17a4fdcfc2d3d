import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub download fails fast instead of hanging
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest

from archsae import metrics

from archsae.config import DemoConfig, ExtractConfig
from archsae.data import build_demo
from archsae.extract import extract


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory):
    """24 demo images (real stamps and photos)."""
    return build_demo(tmp_path_factory.mktemp("demo"), DemoConfig(n_images=24, seed=3))


@pytest.fixture(scope="session")
def demo_store(demo_images, tmp_path_factory):
    """A real EfficientNet-Lite0 store of the 24 demo images, 5 images per shard."""
    return extract(demo_images, tmp_path_factory.mktemp("store") / "store",
                   ExtractConfig(shard_tokens=5 * 49, batch_size=8))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """`archsae run --quick` through the real console script, once per session: the run directory."""
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path_factory.mktemp("quick") / "run"
    exe = Path(sys.executable).with_name("archsae")
    out = subprocess.run([str(exe), "run", "--quick", "--run-dir", str(run)], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def planted_data(n: int = 12_000, d: int = 64, n_base: int = 12, seed: int = 0):
    """Tokens made of 1 or 2 planted atoms with positive weights; the atoms come in +/- pairs so the
    data is centred and standardisation only rescales the atom directions. Returns (A (n, d), atoms (2*n_base, d))."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, d))
    atoms = np.concatenate([base, -base])
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, len(atoms)))
    for row in range(n):
        active = rng.choice(len(atoms), size=1 + int(rng.random() < 0.4), replace=False)
        codes[row, active] = rng.uniform(1.0, 2.0, size=len(active))
    acts = codes @ atoms + 0.01 * rng.normal(size=(n, d))
    return acts.astype(np.float32), atoms.astype(np.float32)


def write_store(root, acts: np.ndarray, shard_tokens: int = 2000):
    from archsae.store import import_matrix
    path = root.parent / f"{root.name}.npy"
    np.save(path, acts)
    return import_matrix(path, root, shard_tokens=shard_tokens)


def recovery(learned, planted) -> float:
    """Mean over planted atoms of the best |cos| with a learned atom (MMCS of the planted dictionary)."""
    return metrics.mmcs(planted, learned)
