"""Render the run directory's results as one HTML page (Jinja2) with PNG figures beside it."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..config import ReportConfig
from ..files import read_json, save_image, write_text
from ..evaluate import load_model
from ..store import ActivationStore
from .gallery import concept_gallery
from .plots import save_figure, subplots, tradeoff_plot

# (metrics.json key, column title): the paper's Table 1, in its order, with MMCS beside max cosine.
METRICS = [("r2", "R² ↑"), ("dead_codes", "dead ↓"), ("l0", "L0"), ("stability", "stability ↑"),
           ("mmcs", "MMCS ↑"), ("max_cosine", "max cos ↑"), ("ood", "OOD ↓"), ("stable_rank", "stable rank"),
           ("effective_rank", "eff. rank"), ("coherence", "coherence ↓"), ("connectivity", "connectivity"),
           ("negative_interference", "neg. interf. ↓"), ("plausibility", "plausibility ↑")]


PAIRS = ("stability", "mmcs", "max_cosine")  # metrics of pairs of runs: on a group's row only


def _training_curves(models_dir: Path, out: Path) -> None:
    fig, ax = subplots(figsize=(9, 5))
    for log in sorted(models_dir.glob("*/log.jsonl")):
        rows = [json.loads(l) for l in log.read_text().splitlines()]
        ax.plot([r["tokens"] for r in rows], [r["r2"] for r in rows], label=log.parent.name)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("train R² (batch)")
    ax.set_ylim(bottom=max(-0.1, ax.get_ylim()[0]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 8 else 1)
    save_figure(fig, out)


def write_report(run_dir: str | Path, cfg: ReportConfig = ReportConfig()) -> Path:
    """Write `run_dir/report/index.html`: configuration, metrics table (metrics.json) and stability against
    R² (Fig. 3), training curves, the stability experiment (stability/, when `archsae stability` ran), the
    benchmarks that ran (benchmarks/*/results.json), and for the first run of each
    group (see `evaluate`) its most used concepts with top images and heatmaps.
    Raises ArchsaeError if the store, models or metrics.json are missing."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    evaluated = read_json(run_dir / "metrics.json")
    metrics = evaluated["models"]
    store = ActivationStore(run_dir / "store")
    config = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    groups = {group: g["runs"] for group, g in evaluated["groups"].items()}
    # A group's row: the mean of its runs' metrics, and the metrics of pairs of runs (mean and std over pairs).
    summary = {group: {key: evaluated["groups"][group].get(key) if key in PAIRS else
                       _mean([metrics[n].get(key) for n in names]) for key, _ in METRICS}
               for group, names in groups.items()}
    galleries = []
    for group, names in groups.items():
        name = sorted(names, key=lambda n: metrics[n]["seed"])[0]
        concepts = concept_gallery(load_model(run_dir / "models" / name), store, cfg.n_concepts, cfg.n_images)
        for c in concepts:
            if c.strip is not None:
                c.file = f"concepts/{name}_{c.index}.png"
                save_image(out / c.file, c.strip)
        galleries.append({"name": name, "group": group, "concepts": concepts})
    _training_curves(run_dir / "models", out / "training.png")
    tradeoff = tradeoff_plot(evaluated, out / "tradeoff.png")
    bench = {name: read_json(path) for name in ("distillation", "plausibility", "identifiability")
             if (path := run_dir / "benchmarks" / name / "results.json").exists()}
    stability = run_dir / "stability" / "results.json"
    env = Environment(loader=PackageLoader("archsae", "report/templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        run_dir=str(run_dir.resolve()), config=json.dumps(config, indent=2), metrics=metrics, columns=METRICS,
        summary=summary, galleries=galleries, store=store.meta["header"], n_tokens=store.n,
        evaluation=read_json(run_dir / "evaluate.json") if (run_dir / "evaluate.json").exists() else {},
        stability=read_json(stability) if stability.exists() else None, tradeoff=tradeoff, bench=bench,
        stability_plots=[p.name for p in sorted(stability.parent.glob("*.png"))])
    write_text(out / "index.html", html)
    return out / "index.html"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
