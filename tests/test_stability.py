"""The stability protocol: initialisation modes, trajectories from t = 0, nulls, plots."""

from dataclasses import replace

import pytest

from archsae.config import DistillConfig, StabilityConfig, TrainConfig
from archsae.errors import ArchsaeError
from archsae.report.plots import stability_plots
from archsae.stability import _nulls, run_stability, verdict
from archsae.store import Subset
from conftest import planted_data, write_store

BASE = TrainConfig(k=24, top_k=2, delta=0.05, w_support=8, epochs=2, batch_size=256, lr=3e-3, warmup_steps=5,
                   aux_k=4, dead_tokens=2000)
DISTILL = DistillConfig(n_centroids=48, max_points=4000, n_iter=5)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    run = tmp_path_factory.mktemp("stability")
    acts, _ = planted_data(n=6000, d=32, n_base=8)
    store = write_store(run / "store", acts + 0.6)  # a mean of about 2 std per feature
    cfg = StabilityConfig(mode=("independent", "shared", "perturbed", "same-c"), runs=2, snapshots=3, uncentred=True,
                          max_tokens=600, null_points=3000)
    bases = [BASE, TrainConfig(**{**BASE.__dict__, "method": "ra-topk"})]
    return run, store, run_stability(run, store, bases, cfg, DISTILL, "cpu")


def group(results, method, mode, space="centred"):
    return next(g for g in results["groups"] if (g["method"], g["mode"], g["space"]) == (method, mode, space))


def test_shared_runs_agree_exactly_at_t0_and_independent_ones_do_not(experiment):
    _, _, results = experiment
    for method, space in [("ra-topk", "centred"), ("ra-topk", "uncentred"), ("topk", "centred")]:
        shared = group(results, method, "shared", space)
        assert shared["trajectory"][0]["step"] == 0
        assert shared["t0"] == pytest.approx(1.0, abs=1e-6)
        assert shared["trajectory"][0]["min"] == pytest.approx(1.0, abs=1e-6)
    centred = group(results, "ra-topk", "independent")["t0"]
    assert centred < 0.95 and group(results, "topk", "independent")["t0"] < 0.5
    # uncentred, independent k-means candidates all lean towards the data mean: cosine calls them more
    # alike (the galaxy-far-away effect) until the mean direction is projected out
    uncentred = group(results, "ra-topk", "independent", "uncentred")["trajectory"][0]
    assert uncentred["stability"] > centred + 0.1 and uncentred["stability_projected"] < uncentred["stability"] - 0.1
    # with a tied encoder, shared runs differ only in their data order: they stay where they started, far
    # above independent runs (the objection of Brzozowski & Chung 2026, in one line)
    shared_final = group(results, "ra-topk", "shared")["final"]
    assert shared_final > 0.98 and shared_final > group(results, "ra-topk", "independent")["final"] + 0.1


def test_same_c_runs_share_their_candidates_and_nothing_else(experiment):
    """same-c: one C for every run, each run its own seed (W's start, encoder) and data order; run 0 is the
    independent run 0; a free dictionary has no C, so no same-c group."""
    import json

    run, _, results = experiment
    assert not [g for g in results["groups"] if g["method"] == "topk" and g["mode"] == "same-c"]
    with pytest.raises(ArchsaeError, match="same-c applies to archetypal methods only"):  # before writing anything
        run_stability(run, None, [BASE], StabilityConfig(mode=("same-c",)), DISTILL, "cpu")
    same_c = group(results, "ra-topk", "same-c")
    assert same_c["runs"][0] == group(results, "ra-topk", "independent")["runs"][0]
    configs = [json.loads((run / "stability" / r / "config.json").read_text()) for r in same_c["runs"]]
    assert configs[0]["candidates_sha256"] == configs[1]["candidates_sha256"]
    assert configs[0]["train"]["seed"] != configs[1]["train"]["seed"]
    assert configs[0]["train"]["data_seed"] != configs[1]["train"]["data_seed"]
    independent = [json.loads((run / "stability" / r / "config.json").read_text())["candidates_sha256"]
                   for r in group(results, "ra-topk", "independent")["runs"]]
    assert independent[0] != independent[1]


def test_a_run_that_is_also_independent_is_found_by_a_later_call(experiment, tmp_path):
    """same-c's run 0 is the independent run 0: trained by a same-c call first, it is named as an independent run,
    so a later --mode independent call reuses it instead of training it again."""
    _, store, _ = experiment
    ra = replace(BASE, method="ra-topk", epochs=1)
    first = run_stability(tmp_path, store, [ra], StabilityConfig(mode=("same-c",), runs=2, snapshots=2,
                                                                 max_tokens=600, null_points=3000), DISTILL, "cpu")
    run0 = tmp_path / "stability" / first["groups"][0]["runs"][0] / "model.safetensors"
    assert "-independent-r0" in str(run0)
    before = run0.stat().st_mtime_ns
    later = run_stability(tmp_path, store, [ra], StabilityConfig(mode=("independent",), runs=2, snapshots=2,
                                                                 max_tokens=600, null_points=3000), DISTILL, "cpu")
    assert later["groups"][0]["runs"][0] == first["groups"][0]["runs"][0] and run0.stat().st_mtime_ns == before


def test_the_verdict_reads_a_shared_start_as_inherited(experiment):
    _, _, results = experiment
    shared = group(results, "ra-topk", "shared")
    null = results["nulls"]["24-centred"]["kmeans"]
    assert verdict(shared["t0"], shared["final"], null).startswith("inherited from the start")
    assert verdict(0.2, 0.5, 0.3).startswith("stabilised by training")
    assert verdict(0.45, 0.5, 0.495).startswith("no better than the k-means null")
    assert verdict(1.0, 0.62, 0.1).endswith("end at 0.620 (training lost 0.380 of it)")


def test_trajectories_run_from_the_start_to_the_end_of_training(experiment):
    run, store, results = experiment
    g = group(results, "topk", "independent")
    steps = [r["step"] for r in g["trajectory"]]
    total = 2 * (store.n_split("train") // 256)
    assert steps[0] == 0 and steps[-1] == total and len(steps) >= 4 and steps == sorted(steps)
    assert [r["tokens"] for r in g["trajectory"]] == [s * 256 for s in steps]
    assert all(r["min"] <= r["stability"] <= r["max"] for r in g["trajectory"])
    # a free dictionary's shared runs share its seed: run 0 is the independent run 0, trained once
    shared = group(results, "topk", "shared")["runs"]
    assert shared[0] == g["runs"][0] and shared[1] != g["runs"][1]
    # per space: topk 2 independent + 1 more shared + 2 perturbed; ra-topk 2 runs in each of 3 modes + 1 more same-c
    assert len(list((run / "stability" / "models").iterdir())) == 2 * (2 + 1 + 2 + 3 * 2 + 1)


def test_perturbed_runs_see_different_token_subsets(experiment):
    run, store, results = experiment
    a, b = Subset(0.9, 0), Subset(0.9, 1)
    n = store.n_split("train")
    assert 0.85 * n < store.n_split("train", subset=a) < 0.95 * n
    assert (a.mask(0, 1000) != b.mask(0, 1000)).any()
    perturbed = group(results, "ra-topk", "perturbed")
    assert perturbed["t0"] < 0.95 and perturbed["trajectory"][-1]["step"] < group(results, "ra-topk", "independent")["trajectory"][-1]["step"]


def test_uncentred_runs_report_the_mean_projected_stability_and_nulls(experiment):
    run, _, results = experiment
    uncentred = group(results, "topk", "independent", "uncentred")
    assert uncentred["final_projected"] is not None and "stability_projected" in uncentred["trajectory"][0]
    assert group(results, "topk", "independent")["final_projected"] is None
    for key, null in results["nulls"].items():
        assert 0 < null["random"] < 1 and 0 < null["kmeans"] <= 1
    # the k-means null in the uncentred space is inflated by the mean, and projecting it out deflates it
    assert results["nulls"]["24-uncentred"]["kmeans"] > results["nulls"]["24-centred"]["kmeans"]
    assert results["nulls"]["24-uncentred"]["kmeans_projected"] < results["nulls"]["24-uncentred"]["kmeans"]
    for g in results["groups"]:
        assert -1 <= g["code_correlation"] <= 1 and (g["r2"] > 0.1 or g["space"] == "uncentred")
        assert g["final_minus_null"]["kmeans"] == pytest.approx(g["final"] - results["nulls"][f"24-{g['space']}"]["kmeans"])
    paths = stability_plots(results, run / "stability")
    assert [p.name for p in paths] == ["trajectories.png", "stability_r2.png"] and all(p.stat().st_size > 0 for p in paths)


def test_the_kmeans_null_sees_as_many_tokens_as_c_unless_told(experiment):
    """Two k-means agree more the more tokens they see: a null on fewer tokens than C would flatter RA-SAE."""
    _, store, results = experiment
    assert results["null_tokens"] == 3000  # --null-points
    nulls, tokens = _nulls(store, [24], [True], StabilityConfig(null_points=0), DISTILL)
    assert tokens == DISTILL.max_points and set(nulls) == {"24-centred"}


def test_a_run_directory_with_only_a_stability_experiment_gets_a_report(experiment):
    """No models, no metrics.json: the report shows the experiment, and every image it names exists."""
    import re

    from archsae.report import write_report

    run, _, results = experiment
    stability_plots(results, run / "stability")
    html = write_report(run).read_text()
    assert "<h2>Stability across runs" in html and "<h2>Metrics" not in html and "3,000" in html  # null tokens
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all((run / "report" / src).is_file() for src in images)


def test_the_delta_figure_is_drawn_when_several_deltas_were_trained(experiment, tmp_path):
    _, _, results = experiment
    groups = [dict(g, params={**g["params"], "delta": delta}) for g in results["groups"]
              if g["method"] == "ra-topk" for delta in (0.01, 0.1)]
    paths = stability_plots({**results, "groups": groups}, tmp_path)
    assert [p.name for p in paths] == ["trajectories.png", "stability_r2.png", "delta.png"]


def test_a_later_call_adding_a_configuration_reuses_the_earlier_runs(experiment):
    """Run folders are named by the configuration, not by what else a call sweeps (README: "to add one, repeat
    the earlier options with it"): a call with another k beside the earlier one trains only the new runs."""
    run, store, _ = experiment
    models = run / "stability" / "models"
    folders = lambda: {p.parent.name: p.stat().st_mtime_ns for p in models.glob("*/model.safetensors")}  # noqa: E731
    before = folders()
    cfg = StabilityConfig(mode=("independent",), runs=2, snapshots=3, max_tokens=600, null_points=3000)
    results = run_stability(run, store, [BASE, replace(BASE, k=32)], cfg, DISTILL, "cpu")
    after = folders()
    new = sorted(set(after) - set(before))
    assert len(new) == 2 and all("-k32-" in name for name in new)  # only k = 32 was trained
    assert all(after[name] == mtime for name, mtime in before.items())
    assert [g["label"] for g in results["groups"]] == ["topk-k24", "topk-k32"]
