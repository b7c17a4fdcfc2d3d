"""The command line: --help everywhere; bad input gives one line, exit 2, and no result."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from archsae.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("cmd", [[], ["extract"], ["store", "import"], ["store", "verify"], ["distill"],
                                 ["train"], ["evaluate"], ["stability"], ["report"], ["run"], ["classical"],
                                 ["benchmark", "distillation"], ["benchmark", "plausibility"],
                                 ["benchmark", "identifiability"]])
def test_every_command_has_help(cmd):
    result = invoke(*cmd, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def _error(result, pattern):
    assert result.exit_code == 2, result.output
    assert pattern in result.output and "Traceback" not in result.output


def test_bad_image_folders(tmp_path):
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "missing"), "does not exist")
    (tmp_path / "empty").mkdir()
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "empty"), "holds no images")
    folder = tmp_path / "imgs" / "cats"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "imgs"), "cannot read image")
    assert not (tmp_path / "r" / "store").exists()


def test_bad_matrices_and_settings(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((20, 4), np.nan, np.float32))
    _error(invoke("store", "import", tmp_path / "nan.npy", "--run-dir", tmp_path / "a"), "NaN/Inf")
    np.save(tmp_path / "flat.npy", np.ones(20, np.float32))
    _error(invoke("store", "import", tmp_path / "flat.npy", "--run-dir", tmp_path / "b"), "expected a 2-D")
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    assert invoke("store", "import", tmp_path / "ok.npy", "--run-dir", tmp_path / "c").exit_code == 0
    _error(invoke("distill", "--run-dir", tmp_path / "c", "--n-centroids", 0), "n' (n_centroids) must be >= 1")
    _error(invoke("distill", "--run-dir", tmp_path / "c", "--n-centroids", 5000, "--max-points", 10_000),
           "at least n' = 5000")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--k", 8, "--top-k", 16), "must be >= top_k")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--delta", -1), "delta must be >= 0")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--method", "ra-topk"), "run `archsae distill`")
    _error(invoke("evaluate", "--run-dir", tmp_path / "c"), "no trained models")
    _error(invoke("stability", "--run-dir", tmp_path / "c", "--mode", "together"), "mode must be one of")
    _error(invoke("stability", "--run-dir", tmp_path / "c", "--runs", 1), "runs must be >= 2")
    assert not (tmp_path / "c" / "stability").exists()


def test_stability_command_sweeps_methods_and_modes(tmp_path):
    from conftest import planted_data

    np.save(tmp_path / "acts.npy", planted_data(n=3000, d=16, n_base=4)[0])
    run = tmp_path / "run"
    assert invoke("store", "import", tmp_path / "acts.npy", "--run-dir", run, "--shard-tokens", 1000).exit_code == 0
    result = invoke("stability", "--run-dir", run, "--runs", 2, "--mode", "shared", "--mode", "independent",
                    "--snapshots", 2, "--k", 8, "--top-k", 2, "--w-support", 4, "--epochs", 1, "--batch-size", 256,
                    "--warmup-steps", 2, "--distill-n-centroids", 16, "--distill-max-points", 2000,
                    "--max-tokens", 200, "--null-points", 1000)
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith(("topk", "ra-topk"))]
    assert len(lines) == 4  # topk and ra-topk (the default methods) in 2 modes
    shared_ra = next(l for l in lines if l.startswith("ra-topk") and "shared" in l)
    assert shared_ra.split()[2] == "1.000"  # t = 0 column
    assert {p.name for p in (run / "stability").glob("*.png")} == {"trajectories.png", "stability_r2.png"}
    _error(invoke("train", "--run-dir", tmp_path / "missing"), "no activation store")
    assert not list((tmp_path / "c").glob("models/*/model.safetensors"))


def test_quick_run_writes_a_report_and_finite_metrics(tmp_path):
    """The real console script, end to end on the quick configuration."""
    exe = Path(sys.executable).with_name("archsae")
    out = subprocess.run([str(exe), "run", "--quick", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    evaluated = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics = evaluated["models"]
    assert {m["method"] for m in metrics.values()} == {"topk", "ra-topk"}
    for name, m in metrics.items():
        for key in ("r2", "dead_codes", "l0", "ood", "stable_rank", "effective_rank", "coherence", "connectivity",
                    "negative_interference", "plausibility"):
            assert np.isfinite(m[key]), (name, key)
        assert 0 < m["r2"] < 1 and 0 <= m["dead_codes"] <= 1
        assert 1 <= m["effective_rank"] <= 512 and -1 <= m["plausibility"] <= 1
    for group in ("topk", "ra-topk"):  # two runs each: one pair
        g = evaluated["groups"][group]
        assert g["stability"]["pairs"] == 1 and g["stability"]["std"] == 0
        assert 0 < g["stability"]["mean"] <= g["mmcs"]["mean"] <= g["max_cosine"]["mean"] <= 1
    html = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "topk-s0" in html and "ra-topk-s0" in html
    strips = list((tmp_path / "run" / "report" / "concepts").glob("*.png"))
    assert len(strips) == 2 * 16
    assert Image.open(strips[0]).size == (8 * 160, 160)


def test_train_sweep_trains_each_distinct_model_once_with_a_readable_name(tmp_path):
    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=3000)[0])
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    result = invoke("train", "--run-dir", tmp_path / "r", "--method", "topk", "--method", "relu", "--l1", "0.01",
                    "--l1", "0.03", "--seed", "0", "--seed", "1", "--k", "16", "--top-k", "2", "--epochs", "0.5",
                    "--batch-size", "256")
    assert result.exit_code == 0, result.output
    # l1 only applies to relu: two topk models, not four
    assert sorted(p.name for p in (tmp_path / "r" / "models").iterdir()) == [
        "relu-l10.01-s0", "relu-l10.01-s1", "relu-l10.03-s0", "relu-l10.03-s1", "topk-s0", "topk-s1"]
    _error(invoke("train", "--run-dir", tmp_path / "r", "--seed", "0", "--seed", "1", "--name", "x"), "drop --name")
