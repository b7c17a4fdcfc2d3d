"""Render the run directory's results as one HTML page (Jinja2) with PNG figures beside it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from tqdm import tqdm

from ..config import ReportConfig, is_archetypal
from ..errors import ArchsaeError
from ..files import atomic_write, read_json, save_image, write_text
from ..progress import quiet
from ..evaluate import load_model
from ..stability import verdict
from ..store import ActivationStore
from .gallery import DENSE, colour_scale, concept_gallery, missing_images, source_ids
from .plots import save_figure, subplots, tradeoff_plot

# (metrics.json key, column title, unit or "", one-line meaning): the paper's Table 1, in its order, with MMCS
# beside max cosine. The report and the explorer both print them from here.
METRICS = [
    ("r2", "R² ↑", "", "share of the held-out activations' variance the reconstruction explains (eq. 5)"),
    ("dead_codes", "dead ↓", "%", "share of codes that never fire on the held-out tokens (eq. 6; on a small "
     "held-out split this counts rare codes too)"),
    ("l0", "L0", "codes/token", "mean number of codes active per token"),
    ("stability", "stability ↑", "", "Hungarian-matched mean |cos| between the atoms of two runs (eqs. 2, 7)"),
    ("mmcs", "MMCS ↑", "", "mean over atoms of the best |cos| with an atom of the other run"),
    ("max_cosine", "max cos ↑", "", "largest |cos| over all pairs of atoms of two runs (eq. 8, as printed)"),
    ("ood", "OOD ↓", "", "1 − mean over atoms of the best cosine with a data point (eq. 9)"),
    ("stable_rank", "stable rank", "", "‖D‖²_F / ‖D‖²₂ (eq. 10)"),
    ("effective_rank", "eff. rank", "", "exp of the entropy of the normalised singular values (eq. 11)"),
    ("coherence", "coherence ↓", "", "largest |cos| between two atoms of one dictionary (eq. 12)"),
    ("connectivity", "connectivity", "", "1 − share of code pairs that ever fire together (eq. 13)"),
    ("negative_interference", "neg. interf. ↓", "per token",
     "2-norm of relu(−ZᵀZ/n ⊙ DDᵀ), codes in unit-atom units (eq. 14)"),
    ("plausibility", "plausibility ↑", "", "mean over classes of the best cosine between an atom and the "
     "classifier's class direction (Sec. 5.2)"),
]


def format_metric(key: str, value) -> str:
    """A metric's value as printed: percentages for shares, 3 decimals otherwise (1 for L0 and the ranks), "–" if
    missing; a metric of pairs of runs as mean ± std over the pairs, or "(1 pair)" when there is no spread to show."""
    if value is None:
        return "–"
    if isinstance(value, dict):  # a metric of pairs of runs: mean ± std over the pairs
        if value.get("pairs", 2) < 2:
            return f"{format_metric(key, value['mean'])} (1 pair)"
        return f"{format_metric(key, value['mean'])} ± {format_metric(key, value['std'])}"
    if key == "dead_codes":
        return f"{100 * value:.1f}"
    return f"{value:.1f}" if key in ("l0", "stable_rank", "effective_rank") or abs(value) >= 100 else f"{value:.3f}"


PAIRS = ("stability", "mmcs", "max_cosine")  # metrics of pairs of runs: on a group's row only


def verdict_rows(run_dir: Path) -> list[dict]:
    """The answer to "is the stability real?", one row per configuration with runs measured along training
    (run_stability.json of `archsae run`, stability/results.json of `archsae stability`): stability at t = 0,
    at the end, its null (k-means for an archetypal dictionary, random for a free one), end − max(t = 0, null),
    the share of near-duplicate atoms at the end, and `stability.verdict`'s sentence."""
    rows = []
    for source, path in (("archsae run", run_dir / "run_stability.json"),
                         ("archsae stability", run_dir / "stability" / "results.json")):
        if not path.exists():
            continue
        results = read_json(path)
        for g in results["groups"]:
            null_name = "k-means" if is_archetypal(g["method"]) else "random"
            null = results["nulls"][f"{g['k']}-{g['space']}"][null_name.replace("-", "")]
            rows.append({"source": source, "label": g["label"], "mode": g["mode"], "space": g["space"],
                         "runs": len(g["runs"]), "t0": g["t0"], "final": g["final"], "null": null,
                         "null_name": null_name, "gain": g["final"] - max(g["t0"], null),
                         "duplicates": g.get("duplicates_final"), "verdict": verdict(g["t0"], g["final"], null, null_name)})
    return rows


def _training_curves(models_dir: Path, evaluated: dict, out: Path) -> None:
    """Train-batch R² (thin), held-out R² along training (dots, from the log; metrics.json's at the end when the
    log has none) and the share of dead codes against tokens seen: one colour per configuration, one line style
    per run."""
    fig, (left, right) = subplots(1, 2, figsize=(11, 4.2))
    for i, (group, g) in enumerate(evaluated["groups"].items()):
        for j, name in enumerate(g["runs"]):
            log = models_dir / name / "log.jsonl"
            if not log.exists():
                continue
            rows = [json.loads(l) for l in log.read_text().splitlines()]
            style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[j % 4], linewidth=1.2)
            tokens = [r["tokens"] for r in rows]
            left.plot(tokens, [r["r2"] for r in rows], label=name, **{**style, "linewidth": 0.8, "alpha": 0.6})
            held = [(r["tokens"], r["heldout_r2"]) for r in rows if "heldout_r2" in r] or [
                (tokens[-1], evaluated["models"][name]["r2"])]
            left.plot(*zip(*held), marker="o", markersize=4, **style)
            if "dead_fraction" in rows[0]:
                right.plot(tokens, [100 * r["dead_fraction"] for r in rows], label=name, **style)
    left.set(xlabel="tokens seen", ylabel="R²", title="R² (thin: training batches; dots: held-out)")
    left.set_ylim(-0.1, 1.0)  # early archetypal steps can start far below 0
    right.set(xlabel="tokens seen", ylabel="dead codes (%)", title="codes that have not fired recently (%)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2 if len(left.lines) > 16 else 1)
    save_figure(fig, out)


def _copy_figures(run_dir: Path, out: Path, patterns: list[str]) -> list[str]:
    """Copy the PNGs of other steps (stability/, benchmarks/) into the report's figures/, so the report folder
    stands alone; their paths relative to the report."""
    copied = []
    for pattern in patterns:
        for png in sorted(run_dir.glob(pattern)):
            rel = "figures/" + png.relative_to(run_dir).as_posix().replace("/", "_")
            atomic_write(out / rel, lambda tmp, src=png: shutil.copyfile(src, tmp))
            copied.append(rel)
    return copied


def write_report(run_dir: str | Path, cfg: ReportConfig = ReportConfig()) -> Path:
    """Write `run_dir/report/index.html`: configuration, metrics table (metrics.json) and stability against
    R² (Fig. 3), training curves, the stability experiment (stability/, when `archsae stability` ran), the
    benchmarks that ran (benchmarks/*/results.json), and for the first run of each
    group (see `evaluate`) its most used concepts with top images and heatmaps.
    A run directory without models (`archsae stability` or a benchmark alone) gets a report of those.
    Raises ArchsaeError if the store is missing, if models were trained but not evaluated (no metrics.json),
    or if there is nothing to report."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    stability = run_dir / "stability" / "results.json"
    bench = {name: read_json(path) for name in ("distillation", "plausibility", "identifiability")
             if (path := run_dir / "benchmarks" / name / "results.json").exists()}
    if (run_dir / "metrics.json").exists():
        evaluated = read_json(run_dir / "metrics.json")
    elif any((run_dir / "models").glob("*/model.safetensors")) or not (stability.exists() or bench):
        raise ArchsaeError(f"{run_dir / 'metrics.json'} does not exist: run `archsae evaluate --run-dir {run_dir}` "
                           "first (the report shows what it measured)")
    else:  # only a stability experiment or benchmarks: their sections alone
        evaluated = {"models": {}, "groups": {}}
    metrics = evaluated["models"]
    unmeasured = sorted(p.parent.name for p in (run_dir / "models").glob("*/model.safetensors")
                        if p.parent.name not in metrics and p.parent.name not in evaluated.get("skipped", {}))
    if unmeasured:
        tqdm.write(f"report: {len(unmeasured)} model(s) trained after the last `archsae evaluate` are left out "
                   f"({', '.join(unmeasured)}); run it again to add them", file=sys.stderr)
    store = ActivationStore(run_dir / "store")
    config = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    if config.get("images"):  # the folder's name: the report names no absolute path of the machine it was made on
        config["images"] = Path(config["images"]).name
    groups = {group: g["runs"] for group, g in evaluated["groups"].items()}
    # A group's row: the mean of its runs' metrics, and the metrics of pairs of runs (mean and std over pairs).
    summary = {group: {key: evaluated["groups"][group].get(key) if key in PAIRS else
                       _mean([metrics[n].get(key) for n in names]) for key, *_ in METRICS}
               for group, names in groups.items()}
    galleries, sources = [], source_ids(store, run_dir)
    missing = missing_images(store)
    if missing:  # e.g. a store copied without the images it was extracted from
        tqdm.write(f"report: {len(missing)} of the store's {len(store.images)} images are not found (first: "
                   f"{store.images[missing[0]]['path']}); the concept strips leave them out", file=sys.stderr)
    for group, names in tqdm(groups.items(), desc="concept galleries", unit="model", **quiet(not groups)):  # a pass each
        name = sorted(names, key=lambda n: metrics[n]["seed"])[0]
        concepts = concept_gallery(load_model(run_dir / "models" / name), store, cfg.n_concepts, cfg.n_images, sources)
        for c in concepts:
            if c.strip is not None:
                c.file = f"concepts/{name}_{c.index}.png"
                save_image(out / c.file, c.strip)
        galleries.append({"name": name, "group": group, "runs": len(names), "concepts": concepts})
    if groups:
        _training_curves(run_dir / "models", evaluated, out / "training.png")
    tradeoff = tradeoff_plot(evaluated, out / "tradeoff.png")
    figures = _copy_figures(run_dir, out, ["stability/*.png", "benchmarks/*/*.png", "benchmarks/identifiability/*/*.png"])
    env = Environment(loader=PackageLoader("archsae", "report/templates"), autoescape=select_autoescape())
    env.filters["metric"] = lambda value, key: format_metric(key, value)
    html = env.get_template("report.html.j2").render(
        run_name=run_dir.resolve().name, config=json.dumps(config, indent=2), metrics=metrics, columns=METRICS,
        summary=summary, galleries=galleries, store=store.meta["header"], n_tokens=store.n,
        evaluation=read_json(run_dir / "evaluate.json") if (run_dir / "evaluate.json").exists() else {},
        stability=read_json(stability) if stability.exists() else None, tradeoff=tradeoff, bench=bench,
        figures=figures, verdicts=verdict_rows(run_dir), dense=DENSE, colour_scale=colour_scale())
    write_text(out / "index.html", html)
    return out / "index.html"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
