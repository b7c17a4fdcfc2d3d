"""The figures of `archsae stability` and `archsae benchmark` (matplotlib, PNG), drawn from their results.json."""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from ..files import atomic_write


def subplots(*args, figsize: tuple[float, float], **kwargs):
    """(figure, axes) drawn without pyplot: no backend chosen, no global state, so a notebook's inline
    plots are untouched by archsae."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig: Figure, path: Path) -> None:
    """Save `fig` as PNG at `path` atomically."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _name(group: dict) -> str:
    return group["label"] + (" (uncentred)" if group["space"] == "uncentred" else "")


def stability_plots(results: dict, out_dir: str | Path) -> list[Path]:
    """Draw the stability figures into `out_dir` and return their paths:

    - trajectories.png: stability between runs (mean over pairs, min-max shaded) against tokens seen, one
      panel per initialisation mode; dotted: with the data mean projected out (uncentred runs); grey:
      the null levels (random and k-means dictionaries of the same k);
    - stability_r2.png: final stability against R² for every configuration (Fel et al. 2025, Fig. 3);
    - delta.png, when RA-SAEs with several deltas were trained: stability and R² against delta (Fig. 4).
    """
    out_dir, groups, paths = Path(out_dir), results["groups"], []
    modes = list(dict.fromkeys(g["mode"] for g in groups))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(_name(g) for g in groups))}

    fig, axes = subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for g in (g for g in groups if g["mode"] == mode):
            tokens = [r["tokens"] for r in g["trajectory"]]
            c = colours[_name(g)]
            ax.plot(tokens, [r["stability"] for r in g["trajectory"]], "o-", ms=3, color=c, label=_name(g))
            ax.fill_between(tokens, [r["min"] for r in g["trajectory"]], [r["max"] for r in g["trajectory"]],
                            color=c, alpha=0.15)
            if g["final_projected"] is not None:
                ax.plot(tokens, [r["stability_projected"] for r in g["trajectory"]], ":", color=c,
                        label=_name(g) + ", mean projected out")
        levels = {}  # label -> level; the random null does not depend on the space
        for key, null in results["nulls"].items():
            k, space = key.split("-")
            levels[f"random null, k = {k}"] = null["random"]
            levels[f"k-means null, k = {k}, {space}"] = null["kmeans"]
        for label, level in levels.items():
            ax.axhline(level, color="grey", ls=":" if label.startswith("random") else "--", lw=1)
            ax.annotate(label, (1, level), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                        ha="right", va="bottom" if "uncentred" in label else "top")
        ax.set_title(f"{mode} initialisation")
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("stability between runs (eq. 2)")
    axes[0][0].set_ylim(0, 1.02)
    save_figure(fig, out_dir / "trajectories.png")
    paths.append(out_dir / "trajectories.png")

    fig, ax = subplots(figsize=(10, 5))
    for i, g in enumerate(groups):
        params = ", ".join(f"{k}={v}" for k, v in g["params"].items())
        ax.scatter(g["r2"], g["final"], marker="os^D"[modes.index(g["mode"])], s=45, color=colormaps["tab20"](i % 20),
                   label=f"{_name(g)}, {params} [{g['mode']}]")
    ax.set_xlabel("R² (held-out)")
    ax.set_ylabel("stability at the end of training")
    ax.set_title("stability against reconstruction (Fel et al. 2025, Fig. 3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, out_dir / "stability_r2.png")
    paths.append(out_dir / "stability_r2.png")

    relaxed = [g for g in groups if g["method"].startswith("ra-")]
    relative = any(t.get("delta_relative") for t in results.get("train", []))
    if len({g["params"]["delta"] for g in relaxed}) > 1:
        fig, (ax_s, ax_r) = subplots(1, 2, figsize=(11, 4.5))
        lines: dict[tuple, list] = {}  # one line per (mode, space, every parameter but delta)
        for g in relaxed:
            others = tuple((k, v) for k, v in g["params"].items() if k != "delta")
            lines.setdefault((g["mode"], g["space"], others), []).append((g["params"]["delta"], g["final"], g["r2"]))
        for (mode, space, others), rows in lines.items():
            deltas, stab, r2 = zip(*sorted(rows))
            label = ", ".join([mode, *(["uncentred"] if space == "uncentred" else []),
                               *(f"{k}={v}" for k, v in others)])
            ax_s.plot(deltas, stab, "o-", label=label)
            ax_r.plot(deltas, r2, "o-", label=label)
        for ax, name in ((ax_s, "stability"), (ax_r, "R² (held-out)")):
            ax.set_xscale("log")
            ax.set_xlabel("δ (bound on ‖Λ_i‖" + (", × mean token norm)" if relative else ")"))
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("RA-SAE: stability and R² against δ (Fel et al. 2025, Fig. 4)")
        save_figure(fig, out_dir / "delta.png")
        paths.append(out_dir / "delta.png")
    return paths


def distillation_plot(results: dict, path: str | Path) -> Path:
    """Fel et al. 2025, Fig. 11: R², stability and OOD score of A-SAE per distillation method (bars)."""
    methods = results["methods"]
    fig, axes = subplots(1, 3, figsize=(12, 3.8))
    for ax, (key, title) in zip(axes, [("r2", "R² (held-out)"), ("stability", "stability between runs"),
                                       ("ood", "OOD score (lower = closer to the data)")]):
        ax.bar(list(methods), [m[key] for m in methods.values()], color=[f"C{i}" for i in range(len(methods))])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, Path(path))
    return Path(path)


def plausibility_plot(results: dict, path: str | Path) -> Path:
    """Fel et al. 2025, Table 2 as a figure: plausibility against dictionary size, one line per dictionary,
    the references dashed."""
    fig, ax = subplots(figsize=(6.5, 4.5))
    for label, row in results["rows"].items():
        ax.plot([int(k) for k in row], list(row.values()), "o-", label=label)
    ks = [int(k) for k in next(iter(results["rows"].values()))]
    for label, ref in results["references"].items():  # per k, or one level (drawn across, seen at a single k too)
        if isinstance(ref, dict):
            ax.plot(ks, list(ref.values()), "s--", ms=4, color="grey", label=label)
        else:
            ax.axhline(ref, ls="--", color="black", label=label)
    ax.set(xscale="log", xlabel="dictionary size k", ylabel="plausibility (mean best cosine to a class)")
    ax.legend(fontsize=8)
    save_figure(fig, Path(path))
    return Path(path)


def tradeoff_plot(evaluated: dict, path: str | Path) -> Path | None:
    """Fel et al. 2025, Fig. 3 from `archsae evaluate`'s metrics.json: stability between runs against R²,
    one point per group of runs (stability: mean over pairs; R², L0: mean over runs), the groups of one
    method joined in order of L0 so a method's sparsity levels form a curve. None when no group has two runs."""
    points: dict[str, list[tuple[float, float, float]]] = {}
    for g in evaluated["groups"].values():
        if "stability" not in g:
            continue
        runs = [evaluated["models"][n] for n in g["runs"]]
        mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
        points.setdefault(runs[0]["method"], []).append((mean("l0"), mean("r2"), g["stability"]["mean"]))
    if not points:
        return None
    fig, ax = subplots(figsize=(7, 5))
    for i, (method, pts) in enumerate(sorted(points.items())):
        pts.sort()
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "-", color=f"C{i % 10}", label=method,
                marker="os^Dv<>"[i // 10 % 7])
        ax.annotate(f"L0 {pts[0][0]:.0f}", (pts[0][1], pts[0][2]), fontsize=6, alpha=0.7)
        if len(pts) > 1:
            ax.annotate(f"L0 {pts[-1][0]:.0f}", (pts[-1][1], pts[-1][2]), fontsize=6, alpha=0.7)
    ax.set(xlabel="R² (held-out)", ylabel="stability between runs (eq. 2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, Path(path))
    return Path(path)
