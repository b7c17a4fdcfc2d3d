"""The library as a notebook user meets it: a light import, and saved models that work on raw activations
without their store."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import archsae
from archsae import ArchsaeError, ClassicalConfig, TrainConfig
from conftest import planted_data, write_store


def test_import_loads_nothing_heavy_and_leaves_matplotlib_alone():
    script = """
import sys, matplotlib
import archsae
heavy = [m for m in ("sklearn", "faiss", "timm", "matplotlib.pyplot") if m in sys.modules]
archsae.write_report, archsae.stability_plots  # the report's modules, loaded on use
print(heavy, matplotlib.rcParams["backend"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"MPLBACKEND": "svg", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "svg"]  # a notebook's backend (here svg) is not switched to Agg


@pytest.fixture(scope="module")
def shifted_store(tmp_path_factory):
    """Planted tokens far from the origin and with uneven feature scales, as a backbone's are."""
    acts, _ = planted_data(n=6000, d=16, n_base=6)
    scale = np.linspace(0.5, 4.0, 16, dtype=np.float32)
    return write_store(tmp_path_factory.mktemp("api") / "store", acts * scale + 10.0)


def test_sae_and_classical_models_encode_raw_activations_through_one_interface(shifted_store, tmp_path):
    store = shifted_store
    archsae.train(store, TrainConfig(method="topk", k=12, top_k=2, epochs=2, batch_size=256), tmp_path / "sae")
    raw = store.sample(1000, 0, "heldout")
    acts = store.standardise(raw)
    pca = archsae.fit_baseline(acts, ClassicalConfig(method="pca", k=6), tmp_path / "pca", None, store.normalisation())
    for name in ("sae", "pca"):
        model = archsae.load_model(tmp_path / name)
        codes = model.encode(raw.numpy())  # numpy accepted, raw space in
        acts_hat = model.decode(codes)  # raw space out
        assert abs(acts_hat.mean().item() - raw.mean().item()) < 0.5  # not standardised (that mean is ~0)
        assert archsae.metrics.r2(raw, acts_hat) > 0.6, name  # a random decoder would give R² < 0
        assert torch.allclose(model.standardise(raw), acts, atol=1e-5)
        with pytest.raises(ArchsaeError, match="16"):
            model.encode(torch.zeros(3, 15))
    assert torch.allclose(pca.encode(raw), pca._encode(acts), atol=1e-4)  # = the model fitted on standardised A
    sae = archsae.load_sae(tmp_path / "sae")
    assert sae.config.k == 12 and not any(p.requires_grad for p in sae.parameters())
    broken = raw.clone()
    broken[7, 3] = float("nan")
    with pytest.raises(ArchsaeError, match=f"1 of the {len(raw)} activation rows hold NaN or Inf .first: row 7"):
        sae.encode(broken)
    with pytest.raises(ArchsaeError, match="load_model"):
        archsae.load_sae(tmp_path / "pca")


def test_a_damaged_model_file_is_a_clear_error(shifted_store, tmp_path):
    archsae.train(shifted_store, TrainConfig(method="topk", k=12, top_k=2, epochs=1, batch_size=256), tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchsaeError, match="damaged"):
        archsae.load_sae(tmp_path / "m")
    path.write_bytes(whole[:-100] + b"\xff" * 8 + whole[-92:])  # header intact, a weight now NaN: caught by its checksum
    with pytest.raises(ArchsaeError, match="no longer match the checksum"):
        archsae.load_sae(tmp_path / "m")
    path.write_bytes(whole)
    model = archsae.load_sae(tmp_path / "m")
    save_file(model.state_dict(), str(path))  # as written before files had a checksum: read unchecked
    assert torch.equal(archsae.load_sae(tmp_path / "m").atoms(), model.atoms())
