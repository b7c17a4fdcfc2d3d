"""The figures of `archsae stability` (matplotlib, PNG), drawn from its results.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


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

    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), sharey=True, squeeze=False)
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
    _save(fig, out_dir / "trajectories.png")
    paths.append(out_dir / "trajectories.png")

    fig, ax = plt.subplots(figsize=(10, 5))
    points: dict[tuple, dict] = {}  # one point per set of runs (a free dictionary's modes share theirs)
    for g in groups:
        points.setdefault(tuple(g["runs"]), {**g, "modes": []})["modes"].append(g["mode"])
    for i, g in enumerate(points.values()):
        params = ", ".join(f"{k}={v}" for k, v in g["params"].items())
        ax.scatter(g["r2"], g["final"], marker="os^"[modes.index(g["modes"][0])], s=45, color=plt.cm.tab20(i % 20),
                   label=f"{_name(g)}, {params} [{' = '.join(g['modes'])}]")
    ax.set_xlabel("R² (held-out)")
    ax.set_ylabel("stability at the end of training")
    ax.set_title("stability against reconstruction (Fel et al. 2025, Fig. 3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, out_dir / "stability_r2.png")
    paths.append(out_dir / "stability_r2.png")

    relaxed = [g for g in groups if g["method"].startswith("ra-")]
    relative = any(t.get("delta_relative") for t in results.get("train", []))
    if len({g["params"]["delta"] for g in relaxed}) > 1:
        fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(11, 4.5))
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
        _save(fig, out_dir / "delta.png")
        paths.append(out_dir / "delta.png")
    return paths
