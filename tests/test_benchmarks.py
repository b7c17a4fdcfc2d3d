"""The paper's benchmarks and the classical baselines end to end on the real EfficientNet-Lite0 demo store."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from archsae.cli import app
from archsae.report.plots import tradeoff_plot
from archsae.sae import load_sae

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _run_dir(demo_store, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "store").symlink_to(demo_store.root)
    return tmp_path / "run"


def test_classical_models_are_evaluated_beside_saes_and_drawn_in_fig3(demo_store, tmp_path):
    run = _run_dir(demo_store, tmp_path)
    invoke("classical", "--run-dir", run, "--method", "pca", "--method", "kmeans", "--k", 16, "--seed", 0, "--seed", 1,
           "--max-tokens", 800)
    invoke("evaluate", "--run-dir", run, "--max-tokens", 500)
    evaluated = json.loads((run / "metrics.json").read_text())
    metrics = evaluated["models"]
    assert set(metrics) == {"pca-s0", "pca-s1", "kmeans-s0", "kmeans-s1"}
    assert metrics["pca-s0"]["group"] == "pca" and metrics["kmeans-s1"]["group"] == "kmeans"
    assert metrics["kmeans-s0"]["l0"] == 1 and metrics["pca-s0"]["l0"] == 16
    assert metrics["pca-s0"]["r2"] > max(0, metrics["kmeans-s0"]["r2"])  # 16 components beat 16 one-hot centroids
    kmeans = evaluated["groups"]["kmeans"]
    assert 0 < kmeans["stability"]["mean"] <= kmeans["mmcs"]["mean"] <= kmeans["max_cosine"]["mean"] <= 1
    assert tradeoff_plot(evaluated, tmp_path / "fig3.png").exists()


def test_plausibility_benchmark_scores_every_dictionary_against_the_real_head(demo_store, tmp_path):
    run = _run_dir(demo_store, tmp_path)
    invoke("benchmark", "plausibility", "--run-dir", run, "--k", 16, "--k", 32, "--delta", 0, "--delta", 0.5,
           "--train-epochs", 1, "--train-batch-size", 256, "--distill-n-centroids", 64, "--distill-max-points", 1000)
    results = json.loads((run / "benchmarks" / "plausibility" / "results.json").read_text())
    assert list(results["rows"]) == ["topk", "a-topk", "ra-topk (delta 0.5)"]
    for row in results["rows"].values():
        assert set(row) == {"16", "32"} and all(-1 <= v <= 1 for v in row.values())
    refs = results["references"]
    # real tokens point more the classes' way than random directions do: the head is mapped into the right space
    assert refs["candidates C (n' = 64)"] > max(refs["random atoms"].values())
    assert (run / "benchmarks" / "plausibility" / "table2.png").exists()
    # a rerun with other training settings retrains its models (its own cache) instead of refusing them
    invoke("benchmark", "plausibility", "--run-dir", run, "--k", 16, "--delta", 0, "--train-epochs", 2,
           "--train-batch-size", 256, "--distill-n-centroids", 64, "--distill-max-points", 1000)
    config = json.loads((run / "benchmarks" / "plausibility" / "models" / "a-topk-k16" / "config.json").read_text())
    assert config["train"]["epochs"] == 2


def test_distillation_benchmark_trains_an_a_sae_per_method(demo_store, tmp_path):
    run = _run_dir(demo_store, tmp_path)
    out = invoke("benchmark", "distillation", "--run-dir", run, "--method", "kmeans", "--method", "hull",
                 "--n-centroids", 32, "--max-points", 800, "--max-tokens", 500, "--train-k", 32, "--train-top-k", 4,
                 "--train-epochs", 1, "--train-batch-size", 256)
    results = json.loads((run / "benchmarks" / "distillation" / "results.json").read_text())
    assert list(results["methods"]) == ["kmeans", "hull"] and "hull" in out
    for r in results["methods"].values():
        assert 0 < r["stability"] <= 1 and 0 <= r["ood"] <= 1 and np.isfinite(r["r2"]) and len(r["r2_runs"]) == 2
    assert results["train"]["method"] == "a-topk"
    assert sorted(p.name for p in (run / "benchmarks" / "distillation" / "models").iterdir()) == \
        ["hull-r0", "hull-r1", "kmeans-r0", "kmeans-r1"]
    # other candidates and training: its own C and A-SAEs are made again, not refused
    invoke("benchmark", "distillation", "--run-dir", run, "--method", "kmeans", "--n-centroids", 48, "--max-points",
           800, "--max-tokens", 500, "--train-k", 32, "--train-top-k", 4, "--train-epochs", 2, "--train-batch-size", 256)
    model = load_sae(run / "benchmarks" / "distillation" / "models" / "kmeans-r1")
    assert model.config.epochs == 2 and model.dictionary.candidates.shape[0] == 48


def test_identifiability_quick_run_on_real_collages(tmp_path):
    run = tmp_path / "run"
    args = ["benchmark", "identifiability", "--run-dir", run, "--quick", "--theme", "gems", "--method", "topk",
            "--method", "a-topk", "--method", "pca", "--method", "kmeans"]
    invoke(*args)
    out = run / "benchmarks" / "identifiability"
    results = json.loads((out / "results.json").read_text())
    gems = results["themes"]["gems"]
    assert gems["n_objects"] == 9 and abs(gems["chance"] - (1 - 4 / 9)) < 1e-6  # 4 distinct objects per collage
    for method in ("topk", "a-topk", "pca", "kmeans"):
        assert 0 <= gems["accuracy"][method] <= 1 and len(gems["per_object"][method]) == 9
    assert results["mean"] == gems["accuracy"]
    assert Image.open(out / "gems" / "example.png").size == (4 * 224 + 12, 224)
    features = (out / "gems" / "features.safetensors").stat().st_mtime_ns
    model = (out / "gems" / "models" / "a-topk" / "model.safetensors").stat().st_mtime_ns
    invoke(*args)  # a rerun reuses the features and the trained SAEs
    assert (out / "gems" / "features.safetensors").stat().st_mtime_ns == features
    assert (out / "gems" / "models" / "a-topk" / "model.safetensors").stat().st_mtime_ns == model
    # archetypal W started as mixtures: its own models beside the spread ones, which stay
    invoke(*args, "--w-init", "random")
    trained = json.loads((out / "gems" / "models" / "a-topk-w-random" / "config.json").read_text())["train"]
    assert trained["w_init"] == "random" and (out / "gems" / "models" / "a-topk" / "model.safetensors").exists()
    assert json.loads((out / "results.json").read_text())["config"]["w_init"] == "random"
    # other training settings on the same features: the SAEs are retrained, not refused
    epochs = json.loads((out / "results.json").read_text())["config"]["epochs"] + 1
    invoke(*args, "--epochs", epochs)
    assert json.loads((out / "gems" / "models" / "a-topk" / "config.json").read_text())["train"]["epochs"] == epochs
    assert (out / "gems" / "features.safetensors").stat().st_mtime_ns == features
    # other candidates on the same features: the archetypal SAEs are retrained on them
    invoke(*args, "--n-centroids", 12)
    assert load_sae(out / "gems" / "models" / "a-topk").dictionary.candidates.shape[0] == 12
    # other features: the SAEs trained on the old ones are retrained, not reused
    invoke(*args, "--n-train", 48, "--n-centroids", 16)
    assert json.loads((out / "results.json").read_text())["config"]["n_train"] == 48
    assert json.loads((out / "gems" / "models" / "topk" / "config.json").read_text())["store"] == \
        json.loads((out / "gems" / "store" / "store.json").read_text())["checksum"]


def test_convex_nmf_can_mix_the_runs_kmeans_candidates(demo_store, tmp_path):
    from archsae.classical import load_baseline
    from archsae.distill import load_centroids

    run = _run_dir(demo_store, tmp_path)
    invoke("distill", "--run-dir", run, "--n-centroids", 32, "--max-points", 800)
    invoke("classical", "--run-dir", run, "--method", "convex_nmf", "--basis", "centroids", "--k", 8, "--n-iter", 3,
           "--max-tokens", 800)
    model = load_baseline(run / "models" / "convex_nmf-s0")
    cfg = model.config
    candidates = load_centroids(run / "centroids" / "seed0.safetensors")
    assert cfg.basis == "centroids" and model.weights_km.shape == (8, 32) and (model.weights_km >= 0).all()
    assert np.allclose(model.weights_km @ candidates, model.dictionary, atol=1e-4)
