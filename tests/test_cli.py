"""The command line: --help everywhere; bad input gives one line, exit 2, and no result."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from archsae.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("cmd", [[], ["extract"], ["store", "import"], ["store", "verify"], ["distill"],
                                 ["train"], ["evaluate"], ["stability"], ["report"], ["serve"], ["run"], ["classical"],
                                 ["benchmark", "distillation"], ["benchmark", "plausibility"],
                                 ["benchmark", "identifiability"]])
def test_every_command_has_help(cmd):
    result = invoke(*cmd, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"archsae {version('archsae')}\n"


def test_a_prefixed_option_s_help_names_its_siblings_with_the_prefix():
    from archsae.cli import _config_params
    from archsae.config import DistillConfig

    helps = {p.name: p.default.help for p in _config_params(DistillConfig, "distill_")}
    assert "(seeded by --distill-subset-seed)" in helps["distill_subset"]
    assert "O(n^2) in --distill-max-points)" in helps["distill_method"]
    assert "(seeded by --subset-seed)" in {p.name: p.default.help for p in _config_params(DistillConfig)}["subset"]


def test_a_bad_setting_is_named_by_the_option_the_user_typed():
    from archsae.cli import _as_flags, _options
    from archsae.config import TrainConfig

    fields = _options(TrainConfig)
    assert _as_flags("k (8) must be >= top_k (16): at most k codes are active", fields, "train_") == \
        "--train-k (8) must be >= --train-top-k (16): at most k codes are active"  # prose keeps its words
    assert _as_flags("l1 and l0 must be >= 0; got 'topk'", fields, "") == "--l1 and --l0 must be >= 0; got 'topk'"


def test_store_import_lists_only_its_own_options():
    options = {w for w in invoke("store", "import", "--help").output.split() if w.startswith("--")}
    assert options == {"--run-dir", "--shard-tokens", "--dtype", "--holdout-every", "--tokens-per-image", "--help"}


def test_commands_offer_no_train_option_they_override():
    options = lambda *cmd: {w for w in invoke(*cmd, "--help").output.split() if w.startswith("--")}
    plausibility = options("benchmark", "plausibility")
    assert {"--k", "--delta", "--sparsity", "--train-top-k"} <= plausibility
    assert not {"--train-method", "--train-k", "--train-delta", "--train-centroids-seed"} & plausibility
    assert not {"--train-delta", "--train-centroids-seed"} & options("benchmark", "distillation")
    stability = options("stability")
    assert {"--uncentred", "--snapshots", "--k"} <= stability
    assert not {"--centre", "--no-centre", "--centroids-seed", "--snapshot-every"} & stability


def _error(result, pattern):
    assert result.exit_code == 2, result.output
    assert pattern in result.output and "Traceback" not in result.output


def test_bad_image_folders(tmp_path, monkeypatch):
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "missing"), "does not exist")
    (tmp_path / "empty").mkdir()
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "empty"), "holds no images")
    _error(invoke("run", "--quick", "--run-dir", tmp_path / "q", "--images", tmp_path / "empty"), "holds no images")
    assert not (tmp_path / "q" / "run.json").exists()  # so the corrected command is not refused as another run
    folder = tmp_path / "imgs" / "cats"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "imgs"), "cannot read image")
    assert not (tmp_path / "r" / "store").exists()
    (folder / "broken.jpg").unlink()
    Image.new("RGB", (400, 300)).save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 400 x 300 is below twice that: Pillow only warns
    _error(invoke("extract", "--run-dir", tmp_path / "r", "--images", tmp_path / "imgs"), "larger than Pillow's limit")
    assert not (tmp_path / "r" / "store").exists()


def test_a_run_directory_from_before_an_option_existed_is_reused_unless_its_methods_use_it(tmp_path):
    """run.json written before JumpReLU's `kernel` existed: a run of TopK and RA-TopK (which ignore it) is the same
    run, one that trained JumpReLU is not (its models were trained with Silverman's kernel, now not the default)."""
    from archsae.config import RunConfig, to_dict
    from archsae.files import write_json

    (tmp_path / "empty").mkdir()
    for methods, refused in ((["topk", "ra-topk"], False), (["topk", "jumprelu"], True)):
        config = to_dict(RunConfig.quick())
        del config["train"]["kernel"]
        config["methods"] = methods
        run_dir = tmp_path / "-".join(methods)
        write_json(run_dir / "run.json", {"config": config, "images": str((tmp_path / "empty").resolve())})
        args = [a for m in methods for a in ("--method", m)]
        result = invoke("run", "--quick", "--run-dir", run_dir, "--images", tmp_path / "empty", *args)
        # accepted, it goes on to read the images (none); refused, it names the difference
        _error(result, "config.train.kernel: 'silverman' there, 'rectangle' now" if refused else "holds no images")


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from archsae.data import load_image

    Image.fromarray(np.full((8, 8), 120 * 257, np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    assert np.asarray(load_image(str(tmp_path / "grey16.png"))).mean() == 120  # Pillow's convert("RGB"): 255


def test_bad_matrices_and_settings(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((20, 4), np.nan, np.float32))
    _error(invoke("store", "import", tmp_path / "nan.npy", "--run-dir", tmp_path / "a"), "NaN/Inf")
    np.save(tmp_path / "flat.npy", np.ones(20, np.float32))
    _error(invoke("store", "import", tmp_path / "flat.npy", "--run-dir", tmp_path / "b"), "expected a 2-D")
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    assert invoke("store", "import", tmp_path / "ok.npy", "--run-dir", tmp_path / "c").exit_code == 0
    _error(invoke("distill", "--run-dir", tmp_path / "c", "--n-centroids", 0), "n' (--n-centroids) must be >= 1")
    _error(invoke("distill", "--run-dir", tmp_path / "c", "--n-centroids", 8, "--n-centroids", 16), "may be repeated")
    assert invoke("distill", "--run-dir", tmp_path / "c", "--n-centroids", 8, "--seed", 5, "--seed", 6,
                  "--seed", 5).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "c" / "centroids").glob("*.safetensors")) == [
        "seed5.safetensors", "seed6.safetensors"]
    _error(invoke("distill", "--run-dir", tmp_path / "c", "--n-centroids", 5000, "--max-points", 10_000),
           "at least n' = 5000")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--k", 8, "--top-k", 16), "--k (8) must be >= --top-k (16)")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--delta", -1), "delta must be >= 0")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--epochs", "inf"), "epochs must be finite")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--k", 1, "--top-k", 1), "k must be >= 2")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--k", 10**9, "--top-k", 2, "--batch-size", 64), "GiB available")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--k", 8, "--top-k", 2, "--device", "gpu"), "unknown device")
    _error(invoke("train", "--run-dir", tmp_path / "c", "--k", 8, "--top-k", 2, "--device", "cuda:99"),
           "there is no CUDA device cuda:99")
    assert not (tmp_path / "c" / "models").exists()
    _error(invoke("report", "--run-dir", tmp_path / "c", "--n-images", -1), "--n-concepts and --n-images must be >= 1")
    (tmp_path / "text.npy").write_text("1 2 3\n")
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    for bad in ("text.npy", "objects.npy"):
        _error(invoke("store", "import", tmp_path / bad, "--run-dir", tmp_path / "f"),
               "not a numeric array saved by np.save")
    (tmp_path / "empty.npy").write_bytes(b"")
    _error(invoke("store", "import", tmp_path / "empty.npy", "--run-dir", tmp_path / "f"), "empty or truncated")
    np.save(tmp_path / "const.npy", np.ones((300, 4), np.float32))
    _error(invoke("store", "import", tmp_path / "const.npy", "--run-dir", tmp_path / "g"), "nothing was stored")
    assert not (tmp_path / "g" / "store").exists()
    np.save(tmp_path / "complex.npy", np.ones((20, 4), np.complex64))
    _error(invoke("store", "import", tmp_path / "complex.npy", "--run-dir", tmp_path / "e"), "expected real numbers")
    imported = invoke("store", "import", tmp_path / "complex.npy", "--run-dir", tmp_path / "e")
    assert "archsae store import: error" in imported.output
    _error(invoke("train", "--run-dir", tmp_path / "c", "--method", "ra-topk", "--seed", 0, "--seed", 1, "--seed", 5),
           "archsae distill --seed 0 --seed 1`")  # every missing C at once (seed 5's was distilled above)
    _error(invoke("evaluate", "--run-dir", tmp_path / "c"), "no trained models")
    _error(invoke("serve", "--run-dir", tmp_path / "c", "--port", 0), "no trained models")
    _error(invoke("serve", "--run-dir", tmp_path / "nothing", "--port", 0), "no activation store")
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
    _error(invoke("train", "--run-dir", run / "store"), "is itself a store: pass the folder that holds it")
    # n' < k is refused before any k-means, naming the command's own option
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for args, option in [(("stability", "--method", "ra-topk", "--k", 64, "--distill-n-centroids", 16),
                          "--distill-n-centroids"),
                         (("benchmark", "plausibility", "--k", 64, "--distill-n-centroids", 16), "--distill-n-centroids"),
                         (("benchmark", "distillation", "--train-k", 64, "--n-centroids", 16, "--max-points", 100),
                          "--n-centroids")]:
        result = invoke(*args, "--run-dir", run)
        _error(result, "with k = 64 atoms needs at least as many candidates, got n' = 16")
        assert f"pass {option} k or more" in result.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing made, nothing distilled
    assert not list((tmp_path / "c").glob("models/*/model.safetensors"))


def test_quick_run_writes_a_report_and_finite_metrics(quick_run, tmp_path):
    """The real console script, end to end on the quick configuration."""
    import json

    evaluated = json.loads((quick_run / "metrics.json").read_text())
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
    runs = json.loads((quick_run / "run_stability.json").read_text())  # the report's first screen
    assert {g["label"] for g in runs["groups"]} == {"topk", "ra-topk"}
    for g in runs["groups"]:
        assert g["trajectory"][0]["step"] == 0 and len(g["trajectory"]) >= 3 and 0 < g["t0"] < 1
    html = (quick_run / "report" / "index.html").read_text()
    assert "topk-s0" in html and "ra-topk-s0" in html
    assert html.count("<td class=\"text\">archsae run</td>") == 2 and "k-means null" in html
    strips = list((quick_run / "report" / "concepts").glob("*.png"))
    assert len(strips) == 2 * 16
    assert Image.open(strips[0]).size == (8 * 160, 160)
    _saved_models_work_anywhere(quick_run, tmp_path, evaluated)


def test_a_report_leaves_out_the_images_a_copied_store_lacks(quick_run, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(quick_run, moved, ignore=shutil.ignore_patterns("report", "explorer"))
    photos = sorted(p for p in (moved / "images").rglob("*") if p.suffix in (".jpg", ".png"))
    for photo in photos[::2]:
        photo.unlink()
    result = invoke("report", "--run-dir", moved)
    assert result.exit_code == 0, result.output
    assert f"{len(photos[::2])} of the store's {len(photos)} images are not found" in result.output
    assert len(list((moved / "report" / "concepts").glob("*.png"))) == 2 * 16  # strips of the images found
    shutil.rmtree(moved / "images")
    shutil.rmtree(moved / "report")
    result = invoke("report", "--run-dir", moved)  # none found: concepts without strips
    assert result.exit_code == 0 and (moved / "report" / "index.html").exists(), result.output
    assert not (moved / "report" / "concepts").exists()


def _saved_models_work_anywhere(run, tmp_path, evaluated):
    """A model folder moved away from its run, loaded in a fresh process with the README's three lines,
    encodes raw held-out activations and reconstructs them with the R² that metrics.json reports."""
    import json
    import shutil

    from archsae.store import ActivationStore

    cfg = json.loads((run / "evaluate.json").read_text())["config"]
    raw = ActivationStore(run / "store").sample(cfg["max_tokens"], cfg["seed"], "heldout")
    np.save(tmp_path / "heldout.npy", raw.numpy())
    for name in ("topk-s0", "ra-topk-s0"):
        shutil.copytree(run / "models" / name, tmp_path / "elsewhere" / name)
    hidden = run.rename(run.with_name("hidden"))  # no run directory around the models while they load
    try:
        done = _load_in_fresh_process(tmp_path)
    finally:
        hidden.rename(run)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, (r2_raw, r2) in json.loads(done.stdout).items():
        assert r2_raw == pytest.approx(evaluated["models"][name]["r2_raw"], abs=1e-5), name
        assert r2 == pytest.approx(evaluated["models"][name]["r2"], abs=1e-5), name
        assert abs(r2_raw - r2) > 1e-3  # two different numbers: the test tells them apart
    wrong = subprocess.run([sys.executable, "-c", "import archsae, torch; archsae.load_sae('topk-s0').encode(torch.zeros(2, 7))"],
                           cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "ArchsaeError" in wrong.stderr and "expects (n, 1280)" in wrong.stderr


def _load_in_fresh_process(tmp_path):
    """The README's three lines in a fresh Python process, in a folder holding only the two model folders."""
    script = """
import sys, json, numpy as np, archsae
acts = np.load(sys.argv[1])
out = {}
for name in sys.argv[2:]:
    sae = archsae.load_sae(name)
    acts_hat = sae.decode(sae.encode(acts))
    out[name] = [archsae.metrics.r2(acts, acts_hat), archsae.metrics.r2(sae.standardise(acts), sae.standardise(acts_hat))]
print(json.dumps(out))
"""
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "heldout.npy"), "topk-s0", "ra-topk-s0"],
                          cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=120)


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
    _error(invoke("train", "--run-dir", tmp_path / "r", "--name", "bad/name"), "--name must be one folder name")
    refused = invoke("train", "--run-dir", tmp_path / "r", "--k", "16", "--top-k", "3", "--epochs", "0.6",
                     "--batch-size", "128", "--lr", "0.01")  # every difference named: each is an option to change
    assert refused.exit_code == 2 and all(f"train.{field}:" in refused.output for field in
                                          ("top_k", "epochs", "batch_size", "lr")), refused.output
    # another PCA beside pca-s0: refused under its default name, kept apart under its own
    assert invoke("classical", "--run-dir", tmp_path / "r", "--method", "pca", "--k", "4").exit_code == 0
    _error(invoke("classical", "--run-dir", tmp_path / "r", "--method", "pca", "--k", "3"), "choose another --name")
    assert invoke("classical", "--run-dir", tmp_path / "r", "--method", "pca", "--k", "3", "--name", "pca3").exit_code == 0
    assert (tmp_path / "r" / "models" / "pca3" / "model.safetensors").exists()


def test_c_of_a_token_subset_is_kept_apart_and_used_by_models_of_that_subset(tmp_path):
    """`distill --subset` writes its own file (as `stability`'s perturbed runs name it), and an archetypal model
    uses the C distilled from the token subset it trains on, never the C of all tokens or of another subset."""
    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=3000)[0])
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    result = invoke("distill", "--run-dir", tmp_path / "r", "--n-centroids", "32", "--subset", "0.5")
    assert result.exit_code == 0, result.output
    written = [p.name for p in (tmp_path / "r" / "centroids").glob("*.safetensors")]
    assert written == ["seed0-subset0.5-0.safetensors"]
    options = ["--run-dir", tmp_path / "r", "--method", "a-topk", "--k", "16", "--top-k", "2", "--epochs", "0.5",
               "--batch-size", "256"]
    _error(invoke("train", *options), "archsae distill --seed 0`")
    _error(invoke("train", *options, "--subset", "0.5", "--subset-seed", "1"),
           "archsae distill --seed 0 --subset 0.5 --subset-seed 1`")
    result = invoke("train", *options, "--subset", "0.5")
    assert result.exit_code == 0, result.output


def test_a_boolean_option_has_its_off_form(tmp_path):
    import json

    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=2000)[0])
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    result = invoke("train", "--run-dir", tmp_path / "r", "--no-centre", "--k", "16", "--top-k", "2",
                    "--epochs", "0.5", "--batch-size", "256", "--name", "uncentred")
    assert result.exit_code == 0, result.output
    assert "fewer than the 50 warmup steps" in result.output  # 4 steps of 256 tokens: a user is told
    clash = invoke("train", "--run-dir", tmp_path / "r", "--no-centre", "--k", "8", "--top-k", "2", "--epochs", "0.5",
                   "--batch-size", "128", "--name", "uncentred")  # the refusal names every difference, not the first
    _error(clash, "train.batch_size: 256 there, 128 now; train.k: 16 there, 8 now")
    assert json.loads((tmp_path / "r" / "models" / "uncentred" / "config.json").read_text())["train"]["centre"] is False
    # a free SAE's b_pre starts at the data mean: trained uncentred, it learns the centred one's atoms (as documented)
    from archsae import load_sae
    from archsae.files import read_safetensors

    for name, off in (("centred", []), ("uncentred-long", ["--no-centre"])):
        assert invoke("train", "--run-dir", tmp_path / "r", *off, "--k", "16", "--top-k", "2", "--epochs", "5",
                      "--warmup-steps", "1", "--batch-size", "256", "--snapshot-every", "1000",
                      "--name", name).exit_code == 0
    atoms = [load_sae(tmp_path / "r" / "models" / name).atoms().detach() for name in ("centred", "uncentred-long")]
    start = read_safetensors(tmp_path / "r" / "models" / "centred" / "snapshots" / "step000000.safetensors")
    cos = torch.nn.functional.cosine_similarity
    assert cos(atoms[0], start["atoms"]).mean() < 0.95  # 35 steps moved the atoms ...
    assert cos(*atoms).min() > 0.999  # ... the same way in both spaces
    assert "--no-amp" in invoke("stability", "--help").output


def test_a_moved_run_folder_is_the_same_run(tmp_path):
    """Models and centroids record the store by content, not by path: after `mv runs/A runs/B`, the same
    commands reuse every result instead of refusing it as "another configuration"."""
    import shutil

    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=3000, d=16)[0])
    args = ["--k", 16, "--top-k", 2, "--epochs", 0.5, "--batch-size", 256]
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "A").exit_code == 0
    assert invoke("distill", "--run-dir", tmp_path / "A", "--n-centroids", 32).exit_code == 0
    result = invoke("train", "--run-dir", tmp_path / "A", "--method", "ra-topk", *args)
    assert result.exit_code == 0, result.output
    model = tmp_path / "B" / "models" / "ra-topk-s0" / "model.safetensors"
    shutil.move(tmp_path / "A", tmp_path / "B")
    before = model.stat().st_mtime_ns
    for cmd in (["distill", "--run-dir", tmp_path / "B", "--n-centroids", 32],
                ["train", "--run-dir", tmp_path / "B", "--method", "ra-topk", *args]):
        result = invoke(*cmd)
        assert result.exit_code == 0, result.output
    assert model.stat().st_mtime_ns == before  # reused, not retrained


def test_runs_differing_only_in_seeds_or_cadences_share_a_group():
    """Stability is over a group's pairs: a run saved at another cadence or with snapshots is the same
    configuration (found by a new user: --checkpoint-every 20 put a third seed in a group of its own)."""
    from dataclasses import replace

    from archsae.config import TrainConfig
    from archsae.evaluate import group_label

    labels, base = {}, TrainConfig(k=256)
    runs = [base, replace(base, seed=1, data_seed=3),
            replace(base, seed=2, checkpoint_every=20, heldout_every=50, snapshot_every=7, streams=2)]
    assert {group_label(c, f"topk-s{c.seed}", labels) for c in runs} == {"topk"}
    assert group_label(replace(base, k=512, seed=3), "topk-s3", labels) == "topk (k=512)"


def test_evaluate_reports_a_model_it_cannot_score_and_scores_the_others(tmp_path):
    import json

    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=3000, d=16)[0])
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    result = invoke("train", "--run-dir", tmp_path / "r", "--seed", 0, "--seed", 1, "--k", 16, "--top-k", 2,
                    "--epochs", 0.5, "--batch-size", 256)
    assert result.exit_code == 0, result.output
    damaged = tmp_path / "r" / "models" / "topk-s1" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    np.save(tmp_path / "b.npy", planted_data(n=3000, d=16, seed=1)[0])  # a model of another store, copied in
    assert invoke("store", "import", tmp_path / "b.npy", "--run-dir", tmp_path / "other").exit_code == 0
    assert invoke("train", "--run-dir", tmp_path / "other", "--k", 16, "--top-k", 2, "--epochs", 0.5,
                  "--batch-size", 256, "--name", "stranger").exit_code == 0
    import shutil
    shutil.copytree(tmp_path / "other" / "models" / "stranger", tmp_path / "r" / "models" / "stranger")
    result = invoke("evaluate", "--run-dir", tmp_path / "r")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert list(evaluated["models"]) == ["topk-s0"] and "damaged" in evaluated["skipped"]["topk-s1"]
    assert "another store" in evaluated["skipped"]["stranger"]


def test_train_says_how_each_model_ended_and_warns_when_it_diverged(tmp_path):
    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=3000, d=16)[0])
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    common = ["--run-dir", tmp_path / "r", "--k", 16, "--top-k", 2, "--epochs", 2, "--batch-size", 256]
    result = invoke("train", *common)
    assert result.exit_code == 0 and ", held-out R² 0." in result.output and "below 0" not in result.output
    assert "(already trained: reused)" in invoke("train", *common).output
    result = invoke("train", *common, "--lr", 1000, "--name", "wild")  # finite, but far worse than the mean
    assert result.exit_code == 0 and "warning: R² below 0" in result.output, result.output
    assert "top_k = 8 active codes in d = 16 dimensions is hardly sparse" in invoke(
        "train", *common[:-6], "--top-k", 8, "--epochs", 0.5, "--batch-size", 256, "--name", "dense").output
    assert invoke("distill", "--run-dir", tmp_path / "r", "--n-centroids", 64).exit_code == 0
    assert "of the mean norm of the candidates C (ra-topk-s0)" in invoke("train", *common, "--method", "ra-topk",
                                                                         "--delta", 8).output


def test_a_report_on_an_imported_matrix_names_each_concepts_top_rows(tmp_path):
    """No images to draw: each concept lists the rows of the matrix (its own row numbers) where its code is
    largest, the same rows a direct encoding of the whole matrix ranks first."""
    import torch
    from conftest import planted_data

    from archsae import load_sae
    from archsae.report.gallery import concept_gallery
    from archsae.store import ActivationStore

    acts = planted_data(n=3000, d=16)[0]
    np.save(tmp_path / "a.npy", acts)
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r", "--tokens-per-image", 3,
                  "--shard-tokens", 500).exit_code == 0
    assert invoke("train", "--run-dir", tmp_path / "r", "--k", 16, "--top-k", 2, "--epochs", 1,
                  "--batch-size", 256).exit_code == 0
    model = load_sae(tmp_path / "r" / "models" / "topk-s0")
    concepts = concept_gallery(model, ActivationStore(tmp_path / "r" / "store"), n_concepts=4, n_images=5)
    codes = model.encode(torch.from_numpy(acts))
    for c in concepts:
        assert [r["row"] for r in c.rows] == codes[:, c.index].argsort(descending=True)[:5].tolist()
        assert [r["max"] for r in c.rows] == pytest.approx(codes[:, c.index].sort(descending=True).values[:5].tolist())
    assert invoke("evaluate", "--run-dir", tmp_path / "r").exit_code == 0
    assert invoke("report", "--run-dir", tmp_path / "r").exit_code == 0
    html = (tmp_path / "r" / "report" / "index.html").read_text()
    assert "tokens imported from" in html and "rows of the imported matrix where it is largest" in html


def test_evaluate_groups_runs_by_configuration_and_names_an_unfinished_model(tmp_path):
    import json

    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=3000, d=16)[0])
    assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    common = ["--run-dir", tmp_path / "r", "--top-k", 2, "--epochs", 0.5, "--batch-size", 256]
    assert invoke("train", *common, "--k", 16, "--seed", 0, "--seed", 1).exit_code == 0
    assert invoke("train", *common, "--k", 8, "--seed", 2).exit_code == 0  # topk-s2: same name, another k
    assert invoke("train", *common, "--k", 12, "--name", "topk (k=8)-s0").exit_code == 0  # named like that label
    unfinished = tmp_path / "r" / "models" / "topk-s3"
    unfinished.mkdir()
    (unfinished / "checkpoint.safetensors").write_bytes(b"")
    import shutil  # one training under two names: a repeat of seed 0, not a second independent run
    shutil.copytree(tmp_path / "r" / "models" / "topk-s0", tmp_path / "r" / "models" / "topk-s0-again")
    assert invoke("train", *common, "--k", 16, "--data-seed", 5, "--name", "topk-s0-order5").exit_code == 0  # no repeat
    _error(invoke("report", "--run-dir", tmp_path / "r"), "run `archsae evaluate --run-dir")
    result = invoke("evaluate", "--run-dir", tmp_path / "r")
    assert result.exit_code == 0 and "topk-s0-again is the same training as topk-s0" in result.output, result.output
    evaluated = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {g: v["runs"] for g, v in evaluated["groups"].items()} == {
        "topk (k=8)": ["topk (k=8)-s0"], "topk": ["topk-s0", "topk-s0-again", "topk-s0-order5", "topk-s1"],
        "topk (k=8) #2": ["topk-s2"]}  # folder order
    topk = evaluated["groups"]["topk"]  # seed 0 in another data order is another training: 3 pairs, none at 1.0
    assert topk["repeats"] == ["topk-s0-again"] and topk["stability"]["pairs"] == 3 and topk["stability"]["max"] < 1
    assert "did not finish" in evaluated["skipped"]["topk-s3"]
    assert invoke("train", *common, "--k", 16, "--seed", 4).exit_code == 0  # after evaluate: the report says so
    result = invoke("report", "--run-dir", tmp_path / "r")
    assert result.exit_code == 0 and "1 model(s) trained after the last `archsae evaluate` are left out (topk-s4)" \
        in result.output, result.output


def test_results_get_the_users_umask_and_a_read_only_run_dir_fails_before_any_work(tmp_path, monkeypatch):
    import os
    import tempfile

    from conftest import planted_data

    np.save(tmp_path / "a.npy", planted_data(n=600, d=8)[0])
    old = os.umask(0o022)
    try:
        assert invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "r").exit_code == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "r" / "store").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path  # readable by a colleague or a web server

    def read_only(*args, **kwargs):  # what a read-only mount answers (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    _error(invoke("store", "import", tmp_path / "a.npy", "--run-dir", tmp_path / "ro"), "cannot write in")
    assert not (tmp_path / "ro").exists()
