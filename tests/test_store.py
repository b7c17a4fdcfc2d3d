import importlib
import json

import numpy as np
import pytest
import torch

from archsae.config import ExtractConfig
from archsae.errors import ArchsaeError
from archsae.extract import extract
from archsae.store import ActivationStore, StoreWriter, import_matrix, read_meta, write_meta

# The module, not the `archsae.extract` function the package re-exports under the same name.
extract_module = importlib.import_module("archsae.extract")


def _read_all(store):
    shards = [store.read_shard(i) for i in range(store.n_shards)]
    return (torch.cat([s.acts_md for s in shards]), torch.cat([s.image_m for s in shards]),
            torch.cat([s.pos_m for s in shards]))


def test_round_trip_keeps_values_provenance_and_exact_statistics(tmp_path):
    rng = np.random.default_rng(0)
    header = {"model": "m", "layer": "l", "token_kind": "spatial", "d": 6, "dtype": "float32", "grid": [2, 2],
              "tokens_per_image": 4, "holdout_every": 3, "images": [{"path": f"{i}.png", "label": "x"} for i in range(7)]}
    writer = StoreWriter(tmp_path / "s", header, images_per_shard=2)
    acts = rng.normal(3.0, 2.0, size=(7 * 4, 6)).astype(np.float32)
    image, pos = np.repeat(np.arange(7), 4), np.tile(np.arange(4), 7)
    for i in range(7):  # one image at a time: 2 images per shard, 4 shards, the last with one image
        writer.add(acts[4 * i:4 * i + 4], image[4 * i:4 * i + 4], pos[4 * i:4 * i + 4], n_images=1)
    store = writer.finish()
    got_acts, got_image, got_pos = _read_all(store)
    assert store.n_shards == 4 and store.n == 28
    assert torch.equal(got_acts, torch.from_numpy(acts))
    assert got_image.tolist() == image.tolist() and got_pos.tolist() == pos.tolist()
    np.testing.assert_allclose(store.mean_d.numpy(), acts.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(store.std_d.numpy(), acts.astype(np.float64).std(0), rtol=1e-6)
    # held out: images 0, 3, 6 (every 3rd)
    assert store.n_split("heldout") == 12 and store.n_split("train") == 16
    assert set(store.read_shard(1, "heldout").image_m.tolist()) == {3}
    assert torch.equal(store.image_tokens(5).acts_md, torch.from_numpy(acts[20:24]))
    store.verify()


def test_batches_cover_the_train_split_once_per_epoch_and_depend_only_on_seed(tmp_path):
    acts = np.arange(60 * 2, dtype=np.float32).reshape(60, 2)
    store = import_matrix(_save(tmp_path, acts), tmp_path / "s", shard_tokens=7, holdout_every=5)
    epoch = torch.cat(list(store.batches(4, seed=1, epoch=0, shuffle_shards=2)))
    train_rows = acts[np.arange(60) % 5 != 0]
    assert len(epoch) == len(train_rows) // 4 * 4
    assert len(set(epoch[:, 0].tolist())) == len(epoch)  # no duplicates
    assert set(epoch[:, 0].tolist()) <= set(train_rows[:, 0].tolist())
    again = torch.cat(list(store.batches(4, seed=1, epoch=0, shuffle_shards=2)))
    other = torch.cat(list(store.batches(4, seed=1, epoch=1, shuffle_shards=2)))
    assert torch.equal(epoch, again) and not torch.equal(epoch, other)


def test_batches_mix_the_whole_store_even_at_the_end_of_an_epoch(tmp_path):
    """The order is one permutation of all tokens, even with a buffer of one shard: the last batches
    come from many shards, not from the last shard read (which a constant learning rate leans towards)."""
    acts = np.repeat(np.arange(400, dtype=np.float32)[:, None], 2, axis=1)
    store = import_matrix(_save(tmp_path, acts), tmp_path / "s", shard_tokens=20, holdout_every=1000)
    epoch = torch.cat(list(store.batches(10, seed=0, epoch=0, shuffle_shards=1)))
    assert len(epoch) == 390 and len(set(epoch[:, 0].tolist())) == 390  # 399 train tokens, whole batches
    last_round_shards = set((epoch[-20:, 0] // 20).long().tolist())  # a round is one shard's worth: 20 tokens
    assert len(last_round_shards) >= 8, last_round_shards


def _save(tmp_path, array, name="acts.npy"):
    np.save(tmp_path / name, array)
    return tmp_path / name


def test_import_rejects_nan_and_wrong_shape_and_writes_nothing_complete(tmp_path):
    bad = np.ones((10, 3), dtype=np.float32)
    bad[7, 1] = np.nan
    with pytest.raises(ArchsaeError, match="NaN/Inf"):
        import_matrix(_save(tmp_path, bad), tmp_path / "s")
    bad[7, 1], bad[8, 0] = 0.0, np.inf  # past the first shard: still refused before any shard is written,
    with pytest.raises(ArchsaeError, match="first row 8"):  # naming the matrix's own row number
        import_matrix(_save(tmp_path, bad), tmp_path / "s", shard_tokens=4)
    with pytest.raises(ArchsaeError, match="no activation store"):  # nothing was written
        ActivationStore(tmp_path / "s")
    assert not (tmp_path / "s").exists()  # not even an empty folder
    with pytest.raises(ArchsaeError, match="2-D"):
        import_matrix(_save(tmp_path, np.ones(5), "flat.npy"), tmp_path / "t")


def test_import_holds_out_whole_images_of_consecutive_rows(tmp_path):
    """With tokens_per_image = 3, rows 3i..3i+2 are image i: images 0 and 10 (of 20) are held out, all of their
    tokens and no other, across shard boundaries; a row count that is not whole images is refused."""
    acts = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    store = import_matrix(_save(tmp_path, acts), tmp_path / "s", shard_tokens=8, tokens_per_image=3)
    heldout = store.sample(100, seed=0, split="heldout").numpy()
    assert sorted(map(tuple, heldout)) == sorted(map(tuple, acts[[0, 1, 2, 30, 31, 32]]))
    assert store.n_split("train") == 54
    with pytest.raises(ArchsaeError, match="60 rows are not whole images of 7 tokens"):
        import_matrix(_save(tmp_path, acts), tmp_path / "t", tokens_per_image=7)
    with pytest.raises(ArchsaeError, match="nothing is left to train on"):  # one image, held out
        import_matrix(_save(tmp_path, acts), tmp_path / "t", tokens_per_image=60)
    assert not (tmp_path / "t").exists()


def test_an_interrupted_import_says_how_to_resume_and_float16_overflow_is_refused(tmp_path):
    acts = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    import_matrix(_save(tmp_path, acts), tmp_path / "s", shard_tokens=10)
    meta = read_meta(tmp_path / "s")
    meta["complete"], meta["shards"] = False, meta["shards"][:1]  # as if killed after its first shard
    write_meta(tmp_path / "s", meta)
    with pytest.raises(ArchsaeError, match="re-run the same `archsae store import` of the same file"):
        ActivationStore(tmp_path / "s")
    acts[15, 2] = 1e5  # finite in float32, Inf in the float16 it would be stored as
    with pytest.raises(ArchsaeError, match="first row 15"):
        import_matrix(_save(tmp_path, acts, "big.npy"), tmp_path / "h", dtype="float16")


def test_corrupt_shard_is_reported(tmp_path):
    varied = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    store = import_matrix(_save(tmp_path, varied), tmp_path / "s", shard_tokens=10)
    path = store.root / store.meta["shards"][1]["file"]
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(ArchsaeError, match="corrupt"):
        store.verify()


def test_interrupted_extraction_resumes_to_the_uninterrupted_store(demo_images, demo_store, tmp_path, monkeypatch):
    cfg = ExtractConfig(shard_tokens=5 * 49, batch_size=8)
    real_load = extract_module.load_image
    calls = {"n": 0}

    def dying_load(path):
        calls["n"] += 1
        if calls["n"] == 15:  # the probe image, then images 0..12: dies mid-way through the third shard
            raise KeyboardInterrupt
        return real_load(path)

    monkeypatch.setattr(extract_module, "load_image", dying_load)
    with pytest.raises(KeyboardInterrupt):
        extract(demo_images, tmp_path / "store", cfg)
    partial = json.loads((tmp_path / "store" / "store.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    monkeypatch.setattr(extract_module, "load_image", real_load)
    resumed = extract(demo_images, tmp_path / "store", cfg)
    assert resumed.n == demo_store.n == 24 * 49
    for a, b in zip(_read_all(resumed), _read_all(demo_store)):
        assert torch.equal(a, b)
    assert resumed.meta["mean"] == demo_store.meta["mean"] and resumed.meta["std"] == demo_store.meta["std"]


def test_extract_into_a_store_of_another_configuration_is_refused(demo_images, demo_store):
    with pytest.raises(ArchsaeError, match="another configuration"):
        extract(demo_images, demo_store.root, ExtractConfig(shard_tokens=5 * 49, batch_size=8, holdout_every=3))


def test_a_class_sorted_folder_is_stored_in_a_seeded_random_order_so_every_shard_mixes_classes(demo_images, tmp_path):
    """Two classes of 10 images, listed class by class; 5 images per shard: in folder order every shard
    would hold one class."""
    from archsae.data import ImageItem

    items = [ImageItem(it.path, label) for label in ("a", "b") for it in demo_images[:10]]
    cfg = ExtractConfig(shard_tokens=5 * 49, batch_size=8)
    store = extract(items, tmp_path / "store", cfg)
    labels = [im["label"] for im in store.images]
    assert sorted(labels) == sorted(it.label for it in items) and labels != [it.label for it in items]
    for i in range(store.n_shards):
        shard_images = set(store.read_shard(i).image_m.tolist())
        assert {labels[j] for j in shard_images} == {"a", "b"}, i
    again = extract(items, tmp_path / "again", cfg)  # the order depends on the seed only
    assert again.images == store.images
    other = extract(items, tmp_path / "other", ExtractConfig(shard_tokens=5 * 49, batch_size=8, order_seed=1))
    assert other.images != store.images


def test_flipped_bytes_in_a_shard_stop_training_naming_the_file(tmp_path):
    from archsae import TrainConfig, train

    rng = np.random.default_rng(0)
    store = import_matrix(_save(tmp_path, rng.normal(size=(600, 4)).astype(np.float32)), tmp_path / "s",
                          shard_tokens=200)
    path = store.root / store.meta["shards"][1]["file"]
    data = bytearray(path.read_bytes())
    data[-100:-90] = b"\xff" * 10  # inside the activations: still a valid safetensors file, now with NaN
    path.write_bytes(bytes(data))
    with pytest.raises(ArchsaeError, match=f"{path.name} is corrupt"):
        train(ActivationStore(tmp_path / "s"), TrainConfig(k=8, top_k=2, batch_size=64, epochs=1), tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_an_edited_or_incomplete_store_json_is_a_clear_error(tmp_path):
    import_matrix(_save(tmp_path, np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)), tmp_path / "s",
                  shard_tokens=10)
    meta_path = tmp_path / "s" / "store.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "mean": [0.0, 0.0, 0.0]}))
    with pytest.raises(ArchsaeError, match="edited or damaged"):
        ActivationStore(tmp_path / "s")
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "shards"}))
    with pytest.raises(ArchsaeError, match="lacks shards"):
        ActivationStore(tmp_path / "s")


def test_a_changed_input_is_refused_not_mixed_in(demo_images, tmp_path):
    rng = np.random.default_rng(0)
    source = _save(tmp_path, rng.normal(size=(50, 3)).astype(np.float32))
    import_matrix(source, tmp_path / "s", shard_tokens=10)
    assert import_matrix(source, tmp_path / "s", shard_tokens=10).n == 50  # the same file: reused
    np.save(source, rng.normal(size=(50, 3)).astype(np.float32))  # regenerated at the same path
    with pytest.raises(ArchsaeError, match="another configuration .source_sha256: "):
        import_matrix(source, tmp_path / "s", shard_tokens=10)
    from archsae.data import ImageItem

    folder = tmp_path / "imgs"
    folder.mkdir()
    items = []
    for i, it in enumerate(demo_images[:3]):
        (folder / f"{i}.jpg").write_bytes(open(it.path, "rb").read())
        items.append(ImageItem(str(folder / f"{i}.jpg"), ""))
    cfg = ExtractConfig(shard_tokens=49, batch_size=8)
    extract(items, tmp_path / "store", cfg)
    (folder / "1.jpg").write_bytes(open(demo_images[5].path, "rb").read())  # edited in place
    with pytest.raises(ArchsaeError, match=r"images\[\d\] \(.*1.jpg\).sha256: "):
        extract(items, tmp_path / "store", cfg)
