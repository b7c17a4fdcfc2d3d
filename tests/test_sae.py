import json

import numpy as np
import pytest
import torch

from archsae import metrics
from archsae.config import TrainConfig
from archsae.distill import kmeans
from archsae.errors import ArchsaeError
from archsae.sae import ArchetypalDictionary, build_sae, load_sae
from archsae.train import train
from conftest import planted_data, write_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    acts, atoms = planted_data()
    store = write_store(tmp_path_factory.mktemp("planted") / "store", acts)
    # In the standardised space the SAEs see, atom D_i becomes D_i / sigma (the data is centred).
    atoms_std = atoms / store.std_d.numpy()
    return store, atoms_std


def recovery(learned, planted) -> float:
    """Mean over planted atoms of the best |cos| with a learned atom."""
    return float(np.abs(metrics.match_atoms(planted, learned)[2]).mean())


def _random_level(planted, k, seed=0):
    return recovery(np.random.default_rng(seed).normal(size=(k, planted.shape[1])), planted)


CFG = dict(k=48, top_k=2, epochs=20, batch_size=256, lr=3e-3, warmup_steps=20)


def test_topk_sae_recovers_planted_atoms(planted, tmp_path):
    store, atoms = planted
    model = train(store, TrainConfig(method="topk", **CFG), tmp_path / "topk")
    score = recovery(model.atoms().detach(), atoms)
    assert score > 0.95 and score > _random_level(atoms, CFG["k"]) + 0.3


def test_ra_sae_recovers_planted_atoms_and_keeps_its_constraints(planted, tmp_path):
    store, atoms = planted
    sample = store.standardise(store.sample(8000, seed=0, split="train")).numpy()
    candidates = torch.from_numpy(kmeans(sample, 96, seed=0))
    cfg = TrainConfig(method="ra-topk", delta=0.05, **CFG)
    model = train(store, cfg, tmp_path / "ra", candidates)
    score = recovery(model.atoms().detach(), atoms)
    assert score > 0.95 and score > _random_level(atoms, CFG["k"]) + 0.3
    w = model.dictionary.weights.detach()
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    assert (model.dictionary.relax.detach().norm(dim=1) <= cfg.delta + 1e-6).all()
    assert model.dictionary.relax.detach().norm(dim=1).max() > 0  # the relaxation was used, not idle


def test_delta_zero_is_exact_a_sae():
    candidates = torch.randn(10, 4)
    d = ArchetypalDictionary(candidates, k=6, delta=0.0, w_init="random", generator=torch.Generator().manual_seed(0))
    assert d.relax is None
    with torch.no_grad():
        d.weights.sub_(0.3)  # push some entries negative, some rows possibly all-negative
    d.project_()
    atoms = d()
    assert torch.isfinite(atoms).all()
    assert (d.weights >= 0).all() and torch.allclose(d.weights.sum(1), torch.ones(6))


@pytest.mark.parametrize("k", [4, 10, 25])
def test_w_init_modes_make_no_zero_atoms_for_k_below_and_above_n_prime(k):
    candidates = torch.randn(10, 5)
    for mode in ("identity", "permuted", "random"):
        d = ArchetypalDictionary(candidates, k, 0.0, mode, torch.Generator().manual_seed(1))
        assert torch.allclose(d.weights.sum(1), torch.ones(k)) and (d().norm(dim=1) > 0).all()
    ident = ArchetypalDictionary(candidates, k, 0.0, "identity", torch.Generator().manual_seed(1))
    assert torch.allclose(ident.weights @ candidates, candidates[torch.arange(k) % 10])


def test_killed_and_resumed_training_equals_uninterrupted(planted, tmp_path, monkeypatch):
    store, _ = planted
    cfg = TrainConfig(method="topk", k=24, top_k=2, epochs=2, batch_size=512, checkpoint_every=15)
    full = train(store, cfg, tmp_path / "full")
    real_batches = type(store).batches
    seen = {"n": 0}

    def dying_batches(self, *args, **kwargs):
        for batch in real_batches(self, *args, **kwargs):
            seen["n"] += 1
            if seen["n"] == 25:  # after the checkpoint at step 15
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(type(store), "batches", dying_batches)
    with pytest.raises(KeyboardInterrupt):
        train(store, cfg, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    monkeypatch.setattr(type(store), "batches", real_batches)
    resumed = train(store, cfg, tmp_path / "resumed")
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    log = lambda p: [json.loads(l)["step"] for l in (p / "log.jsonl").read_text().splitlines()]
    assert log(tmp_path / "full") == log(tmp_path / "resumed")
    reloaded, _, _ = load_sae(tmp_path / "resumed")
    assert torch.equal(reloaded.atoms(), full.atoms())


def test_bad_settings_are_user_errors():
    with pytest.raises(ArchsaeError, match="top_k"):
        TrainConfig(k=8, top_k=16)
    with pytest.raises(ArchsaeError, match="delta"):
        TrainConfig(delta=-0.1)
    with pytest.raises(ArchsaeError, match="candidates"):
        build_sae(TrainConfig(method="ra-topk", k=8, top_k=2), d=5)
    with pytest.raises(ArchsaeError, match=r"\(n', 5\)"):
        build_sae(TrainConfig(method="ra-topk", k=8, top_k=2), d=5, candidates_nd=torch.randn(10, 4))
