"""The command-line tool: a thin layer over the library. Options come from the config dataclasses."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .config import (METHODS, ClassicalConfig, DemoConfig, DistillationBenchConfig, DistillConfig, EvaluateConfig,
                     ExtractConfig, IdentifiabilityBenchConfig, PlausibilityBenchConfig, ReportConfig, RunConfig,
                     StabilityConfig, TrainConfig, sweep_labels)
from .errors import ArchsaeError
from .files import check_writable

app = typer.Typer(help="Stable, honest concept extraction from vision models with (archetypal) SAEs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
store_app = typer.Typer(name="store", help="Activation store utilities.", no_args_is_help=True)
app.add_typer(store_app, name="store")
benchmark_app = typer.Typer(name="benchmark", no_args_is_help=True,
                            help="The paper's benchmarks on RUN/store's model -> RUN/benchmarks/NAME/.")
app.add_typer(benchmark_app, name="benchmark")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"archsae {version('archsae')}")
        raise typer.Exit()


@app.callback()
def _options_of_every_command(
        version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                     help="print archsae's version and exit")) -> None:
    pass


# Not --run: torchrun's own parser takes any prefix of its --run-path option, even after the script name.
RUN_OPTION = inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                               default=typer.Option(Path("archsae-run"), "--run-dir", help="run directory"))


def _options(cls: type, hidden=()) -> list[dataclasses.Field]:
    """The fields of a config that are command-line options: those with a help text, less `hidden`."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata and f.name not in hidden]


def _param_name(f: dataclasses.Field, prefix: str) -> str:
    """The command-line parameter of a config field: a field on by default is offered as its off switch,
    --no-centre, one name (a --centre/--no-centre pair would give every option of the help a column)."""
    return prefix + ("no_" if f.default is True else "") + f.name


def _flags(fields: list[dataclasses.Field], prefix: str) -> dict[str, str]:
    """Each field's option as typed on this command: {"max_points": "--distill-max-points", "centre": "--no-centre"}."""
    return {f.name: "--" + _param_name(f, prefix).replace("_", "-") for f in fields}


def _config_params(cls: type, prefix: str = "", repeatable: bool = False,
                   defaults: dict | None = None, hidden=()) -> list[inspect.Parameter]:
    params = []
    flags = _flags(_options(cls, hidden), prefix)
    for f in _options(cls, hidden):
        kind, default, help = type(f.default), f.default, f.metadata["help"]
        if kind is tuple:  # a field holding several values: a repeatable option
            kind, default = List[type(default[0])], list(default)
        elif repeatable and kind is not bool:
            kind, default, help = List[kind], (defaults or {}).get(f.name, [default]), help + " [repeat to sweep]"
        name = _param_name(f, prefix)
        # Sibling options named as typed here: --max-points -> --distill-max-points.
        help = re.sub(r"--([a-z0-9-]+)", lambda m: flags.get(m[1].replace("-", "_"), m[0]), help)
        if default is True:
            default, help = False, f"turn off (on by default): {help}"
        params.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
            default=typer.Option(default, "--" + name.replace("_", "-"), help=help, show_default=kind is not bool)))
    return params


def _as_flags(message: str, fields: list[dataclasses.Field], prefix: str) -> str:
    """A config's error with its field names written as this command's options: "top_k must be >= 1" ->
    "--top-k must be >= 1" (--train-top-k in a benchmark). A name without "_" (k, runs, method) is an option
    only where it leads a condition (followed by " must", " (" or " and "), not in the prose around it."""
    flags = _flags(fields, prefix)
    names = sorted(flags, key=len, reverse=True)
    pattern = "|".join(rf"{re.escape(n)}(?![\w-])" if "_" in n else rf"{re.escape(n)}(?= must| \(| and )"
                       for n in names)
    return re.sub(rf"(?<![\w'-])(?:{pattern})", lambda m: flags[m[0]], message)


def sweep(cls: type, values: dict[str, object]) -> list:
    """Every configuration of the cartesian product of the repeated options (lists) in `values`;
    a method 'all' stands for the 12 methods."""
    lists = {name: (v if isinstance(v, list) else [v]) for name, v in values.items()}
    if "all" in lists.get("method", []):
        lists["method"] = list(METHODS)
    configs = [cls(**dict(zip(lists, combo))) for combo in itertools.product(*lists.values())]
    # once each (--seed 5 --seed 5), and combinations that differ only in fields their method ignores once too
    return list(dict.fromkeys(c.canonical() if hasattr(c, "canonical") else c for c in configs))


def command(app_: typer.Typer, name: str, configs: dict[str, type], params: list[inspect.Parameter],
            swept: str = "", defaults: dict | None = None, writes: bool = True, hidden: dict | None = None):
    """Register `fn(**params, **{key: config})` as a command whose options mirror the configs' fields.

    `configs` maps the keyword `fn` receives to a config class; the key is the option prefix (--demo-seed)
    except for the command's own config (the first) and the `swept` one, whose options are plain (--k).
    The `swept` config's options may be repeated, and `fn` receives the list of configurations of their
    product (a sweep); `defaults` replaces some of its fields' defaults; `hidden` maps a key to the fields that
    are no options there (the command sets them; they keep their defaults). A command that `writes` into its
    --run-dir checks first that it can. ArchsaeError becomes a one-line message and exit status 2.
    """
    hidden = hidden or {}
    full_name = " ".join(filter(None, [app_.info.name, name]))  # "store import" in messages

    def deco(fn: Callable) -> Callable:
        prefixes = {key: "" if i == 0 or key == swept else key + "_" for i, key in enumerate(configs)}
        sig = list(params) + [p for key, cls in configs.items()
                              for p in _config_params(cls, prefixes[key], key == swept,
                                                      defaults if key == swept else None, hidden.get(key, ()))]
        assert len({p.name for p in sig}) == len(sig), f"{name}: two options share a name"

        @functools.wraps(fn)
        def wrapper(**kw):
            try:
                if writes and "run" in kw:  # before any work: a read-only run directory would fail only at the end
                    check_writable(kw["run"])
                built = {}
                for key, cls in configs.items():
                    values = {}
                    for f in _options(cls, hidden.get(key, ())):
                        value = kw.pop(_param_name(f, prefixes[key]))
                        values[f.name] = not value if f.default is True else value  # given --no-x: x is off
                    values = {k: tuple(v) if isinstance(getattr(cls, k, None), tuple) else v
                              for k, v in values.items()}
                    try:
                        built[key] = sweep(cls, values) if key == swept else cls(**values)
                    except ArchsaeError as e:
                        raise ArchsaeError(_as_flags(str(e), _options(cls, hidden.get(key, ())), prefixes[key])) \
                            from None
                result = fn(**kw, **built)
            except ArchsaeError as e:
                typer.echo(f"archsae {full_name}: error: {e}", err=True)
                raise typer.Exit(2)
            except KeyboardInterrupt:
                typer.echo(f"archsae {full_name}: interrupted; run the same command again to resume", err=True)
                raise typer.Exit(130)
            if result:
                typer.echo(result)

        wrapper.__signature__ = inspect.Signature(sig)
        app_.command(name)(wrapper)
        return fn
    return deco


def _param(name: str, annotation, default, help: str, *flags: str) -> inspect.Parameter:
    opt = typer.Option(default, *flags, help=help) if flags or default is not ... else typer.Argument(..., help=help)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=opt)


DEVICE = _param("device", str, "", "torch device (cpu, cuda, cuda:1); default: this rank's GPU if any, else cpu",
                "--device")


NAME = _param("name", str, "", "model folder under RUN/models when making one model; default "
              "{method}[-{swept option}{value}...]-s{seed}", "--name")


def _model_dirs(run: Path, name: str, configs: list) -> list[Path]:
    """The folder of each model under RUN/models: --name, or one from its method, swept options and seed.
    ArchsaeError for --name with several models or a name that is not one folder name."""
    if name and len(configs) > 1:
        raise ArchsaeError(f"--name names one model, but the options describe {len(configs)}; drop --name")
    if name and (Path(name).name != name or name in (".", "..")):
        raise ArchsaeError(f"--name must be one folder name under {run / 'models'}, got {name!r}")
    return [run / "models" / (name or f"{label}-s{cfg.seed}") for cfg, label in zip(configs, sweep_labels(configs))]


def _device(name: str):
    """--device as a torch.device, checked before any work: ArchsaeError for an unknown or absent device."""
    from .train import resolve_device

    return resolve_device(name or None)


IMAGES = _param("images", Optional[Path], None, "image folder (class subfolders or flat); default: the demo set",
                "--images")


@command(app, "extract", {"extract": ExtractConfig, "demo": DemoConfig}, [RUN_OPTION, IMAGES])
def extract_cmd(run: Path, images: Optional[Path], extract: ExtractConfig, demo: DemoConfig) -> str:
    """Images -> token activations -> RUN/store (resumes an interrupted extraction)."""
    from .data import build_demo, list_images
    from .extract import extract as do_extract

    items = list_images(images) if images else build_demo(run / "images", demo)
    store = do_extract(items, run / "store", extract)
    return f"{store.n} tokens of d = {store.d} in {store.root}"


def _field(cls: type, name: str) -> inspect.Parameter:
    """One config field as an option, with its default and help."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return _param(name, type(f.default), f.default, f.metadata["help"], "--" + name.replace("_", "-"))


@command(store_app, "import", {}, [_param("file", Path, ..., "an (n, d) matrix: .npy or .safetensors"), RUN_OPTION,
                                   *(_field(ExtractConfig, f) for f in ("shard_tokens", "dtype", "holdout_every")),
                                   _param("tokens_per_image", int, 1, "consecutive rows from one image (e.g. 50 for a "
                                          "ViT's CLS + 49 patches), held out together; n must be a multiple",
                                          "--tokens-per-image")])
def store_import_cmd(file: Path, run: Path, shard_tokens: int, dtype: str, holdout_every: int,
                     tokens_per_image: int) -> str:
    """Make RUN/store from an existing (n, d) activation matrix, each row a token. One image in every
    --holdout-every is held out: with --tokens-per-image 1 (the default) each row is its own image; give the
    rows per image when the matrix holds several tokens of each image, one image after another, so that no
    held-out token shares an image with a training token."""
    from .store import import_matrix

    ExtractConfig(shard_tokens=shard_tokens, dtype=dtype, holdout_every=holdout_every)  # the same checks
    store = import_matrix(file, run / "store", shard_tokens, dtype, holdout_every, tokens_per_image)
    return f"{store.n} tokens of d = {store.d} in {store.root}"


@command(store_app, "verify", {}, [RUN_OPTION], writes=False)
def store_verify_cmd(run: Path) -> str:
    """Check every shard of RUN/store against its sha256."""
    from .store import ActivationStore

    store = ActivationStore(run / "store")
    store.verify()
    return f"{store.n_shards} shard{'' if store.n_shards == 1 else 's'} OK"


@command(app, "distill", {"distill": DistillConfig}, [RUN_OPTION], swept="distill")
def distill_cmd(run: Path, distill: list[DistillConfig]) -> str:
    """n' candidates C of the standardised activations, k-means centroids by default ->
    RUN/centroids/seed{S}.safetensors (+ .json; another --method: {method}-seed{S}; --subset F:
    seed{S}-subset{F}-{subset seed}), which a- and ra- models of seed S (and of that token subset) use. Repeat
    --seed (or --method) for several: --seed 0 --seed 1."""
    from .distill import centroids_path_of, distill as do_distill
    from .store import ActivationStore

    outs = [centroids_path_of(run, cfg) for cfg in distill]
    if len(set(outs)) < len(outs):
        raise ArchsaeError("only --seed, --method, --subset and --subset-seed may be repeated: C is kept per seed, "
                           "method and token subset, so two values of another option would write one file")
    store = ActivationStore(run / "store")
    return "\n".join(f"C {tuple(do_distill(store, cfg, out).shape)} in {out}" for cfg, out in zip(distill, outs))


@command(app, "train", {"train": TrainConfig}, [RUN_OPTION, NAME, DEVICE], swept="train")
def train_cmd(run: Path, name: str, device: str, train: list[TrainConfig]) -> str:
    """Train SAEs on RUN/store -> RUN/models/NAME, resuming from checkpoints.

    Repeat an option to sweep it: --method topk --method ra-topk --seed 0 --seed 1 trains 4 models, all in one pass of the store.

    Data parallel: torchrun --nproc-per-node N -m archsae train ... splits each batch over N processes.
    """
    from .distill import centroids_path, load_centroids
    from .store import ActivationStore
    from .train import Job, train_many

    out_dirs, device = _model_dirs(run, name, train), _device(device)
    store = ActivationStore(run / "store")
    # An archetypal model uses the C of its k-means seed, distilled from the same token subset as it trains on.
    paths = {cfg: centroids_path(run, cfg.kmeans_seed, cfg.subset, cfg.subset_seed) for cfg in train if cfg.archetypal}
    missing = {path: cfg for cfg, path in paths.items() if not path.exists()}  # a model of each missing C
    commands: dict[str, list[str]] = {}  # the distill command that makes them, per token subset
    for cfg in sorted(missing.values(), key=lambda c: c.kmeans_seed):
        subset = f" --subset {cfg.subset} --subset-seed {cfg.subset_seed}" if cfg.subset < 1 else ""
        commands.setdefault(subset, []).append(f"--seed {cfg.kmeans_seed}")
    if commands:
        todo = " and ".join(f"`archsae distill {' '.join(seeds)}{subset}`" for subset, seeds in commands.items())
        raise ArchsaeError(f"no centroids C for some archetypal models under {run / 'centroids'}: run {todo} first")
    candidates = {path: load_centroids(path) for path in set(paths.values())}  # once per C, shared by a sweep
    jobs = [Job(cfg, out, candidates[paths[cfg]] if cfg.archetypal else None) for cfg, out in zip(train, out_dirs)]
    finished = {job.out_dir for job in jobs if (job.out_dir / "model.safetensors").exists()}
    train_many(store, jobs, device)
    return "\n".join(_trained_line(job.out_dir, job.out_dir in finished) for job in jobs)


def _trained_line(out_dir: Path, reused: bool) -> str:
    """One model's line in `archsae train`'s summary: where it is, how it ended (the last line of its log), and a
    warning when it reconstructs held-out tokens worse than their mean does."""
    log = out_dir / "log.jsonl"
    last = json.loads(log.read_text().splitlines()[-1]) if log.exists() and log.stat().st_size else {}
    r2 = last.get("heldout_r2", last.get("r2"))  # the training batch's, when the store holds out no token
    ended = ""
    if r2 is not None:
        shown = f"{r2:.3f}" if abs(r2) < 1000 else f"{r2:.3g}"  # a diverged run's R² can be -1e17
        ended = (f": step {last['step'] + 1}, {'held-out ' if 'heldout_r2' in last else 'training '}R² {shown}, "
                 f"L0 {last['l0']:.1f}, {last['dead_fraction']:.1%} of codes silent over its last logged steps")
    line = f"model in {out_dir}{ended}" + (" (already trained: reused)" if reused else "")
    if r2 is not None and not r2 >= 0:  # NaN too
        line += ("\n  warning: R² below 0: it reconstructs worse than the tokens' mean; training diverged or "
                 "stopped far too early (lower --lr, or train more --epochs)")
    return line


@command(app, "classical", {"classical": ClassicalConfig}, [RUN_OPTION, NAME], swept="classical")
def classical_cmd(run: Path, name: str, classical: list[ClassicalConfig]) -> str:
    """Fit classical dictionaries (PCA, ICA, Sparse PCA, SVD, KMeans, Semi-NMF, Convex-NMF) on a sample of
    RUN/store's standardised train tokens -> RUN/models/{method}-s{seed}/, beside the SAEs, so `archsae
    evaluate` scores them with the same metrics. Repeat an option to sweep it (--method pca --method ica
    --seed 0 --seed 1)."""
    from .classical import fit_baseline
    from .distill import centroids_path, load_centroids
    from .store import ActivationStore

    out_dirs = _model_dirs(run, name, classical)
    store = ActivationStore(run / "store")
    lines = []
    for cfg, out in zip(classical, out_dirs):
        acts = store.standardise(store.sample(cfg.max_tokens, cfg.seed, "train"))
        basis = load_centroids(centroids_path(run, cfg.seed)) if cfg.basis == "centroids" else None
        fit_baseline(acts, cfg, out, basis, store.normalisation(), store=store.fingerprint)
        lines.append(f"model in {out}")
    return "\n".join(lines)


@command(app, "evaluate", {"evaluate": EvaluateConfig}, [RUN_OPTION])
def evaluate_cmd(run: Path, evaluate: EvaluateConfig) -> str:
    """Metrics of every model in RUN/models on held-out tokens -> RUN/metrics.json."""
    from .evaluate import evaluate as do_evaluate
    from .store import ActivationStore

    results = do_evaluate(ActivationStore(run / "store"), run / "models", evaluate, run / "metrics.json")
    columns = {"r2": "R2", "dead_codes": "dead", "l0": "L0", "ood": "OOD", "stable_rank": "s.rank",
               "effective_rank": "e.rank", "coherence": "coher.", "connectivity": "conn.",
               "negative_interference": "neg.int", "plausibility": "plaus."}
    models = results["models"]
    width = max(map(len, [*models, *results["groups"]])) + 2
    lines = ["model".ljust(width) + "".join(f"{title:>10}" for title in columns.values())]
    for n, m in models.items():
        lines.append(n.ljust(width) + "".join(f"{m[key]:>10.4g}" if m[key] is not None else f"{'-':>10}"
                                              for key in columns))
    paired = {group: g for group, g in results["groups"].items() if "stability" in g}
    if paired:  # properties of pairs of runs: mean ± std over the pairs (no spread from one pair)
        lines.append("\n" + "runs of".ljust(width) + "".join(f"{t:>16}" for t in ("stability", "MMCS", "max cos"))
                     + "   pairs")
        for group, g in paired.items():
            cells = [f"{g[k]['mean']:>9.4f} ±{g[k]['std']:.3f}" if g[k]["pairs"] > 1 else f"{g[k]['mean']:>16.4f}"
                     for k in ("stability", "mmcs", "max_cosine")]
            lines.append(group.ljust(width) + "".join(cells) + f"{g['stability']['pairs']:>8}")
    return "\n".join(lines + [f"dead: a fraction of the codes; written to {run / 'metrics.json'}"])


@command(app, "stability", {"stability": StabilityConfig, "train": TrainConfig, "distill": DistillConfig},
         [RUN_OPTION, DEVICE], swept="train", defaults={"method": ["topk", "ra-topk"]},
         hidden={"train": {"centre", "centroids_seed", "snapshot_every"}})  # set per run (--uncentred, --snapshots)
def stability_cmd(run: Path, device: str, stability: StabilityConfig, train: list[TrainConfig],
                  distill: DistillConfig) -> str:
    """Train --runs runs of each configuration under each --mode on RUN/store, and measure their
    stability along training -> RUN/stability/ (results.json, plots; `archsae report` shows them).

    The training options give the configurations (repeat one to sweep it, e.g. --method topk --method
    ra-topk --top-k 16 --top-k 32); the mode sets each run's seeds (from --seed), k-means seed, W
    initialisation and token subset; --distill-* options set the k-means of C.
    """
    from .report.plots import stability_plots
    from .stability import run_stability
    from .store import ActivationStore

    results = run_stability(run, ActivationStore(run / "store"), train, stability, distill, _device(device))
    stability_plots(results, run / "stability")
    lines = [f"{'configuration':<28}{'mode':<13}{'t=0':>7}{'final':>7}{'-kmeans':>8}{'proj.':>7}{'codes':>7}{'R2':>7}"
             f"{'dup.t0':>7}{'cos C':>7}"]
    for g in results["groups"]:
        opt = lambda v: f"{v:7.3f}" if v is not None else f"{'-':>7}"  # noqa: E731
        name = g["label"] + (" (uncentred)" if g["space"] == "uncentred" else "")
        lines.append(f"{name:<28}{g['mode']:<13}{g['t0']:7.3f}{g['final']:7.3f}{g['final_minus_null']['kmeans']:8.3f}"
                     f"{opt(g['final_projected'])}{g['code_correlation']:7.3f}{g['r2']:7.3f}{g['duplicates_t0']:7.3f}"
                     f"{opt(g['candidate_cosine'])}")
    nulls = ", ".join(f"k-space {key}: random {v['random']:.3f}, k-means {v['kmeans']:.3f}"
                      for key, v in results["nulls"].items())
    legend = ("t=0, final: stability (Hungarian-matched mean |cos|, eq. 2) of the runs' dictionaries at the start "
              "and the end, mean over pairs of runs; -kmeans: final minus the k-means null; proj.: final with the "
              "data mean projected out of the atoms (uncentred runs only); codes: mean correlation of matched codes "
              "on held-out tokens; R2: held-out R², mean over runs; dup.t0: share of atoms with a near-duplicate "
              "(|cos| > 0.99) at t = 0; cos C: archetypal atoms' mean best cos with a candidate")
    return "\n".join(lines + [f"nulls (stability of two random, and of two k-means, dictionaries of k atoms, per k "
                               f"and space; k-means on {results['null_tokens']:,} train tokens): {nulls}", legend,
                               f"written to {run / 'stability'}"])


def _table(corner: str, rows: dict[str, dict[str, object]]) -> str:
    """A plain-text table: one line per row label, one column per key of the first row."""
    columns = list(next(iter(rows.values())))
    width = max(len(corner), *map(len, rows)) + 2
    cols = [max(8, len(c)) + 2 for c in columns]
    cell = lambda v, w: f"{v:>{w}.3f}" if isinstance(v, float) else f"{str(v):>{w}}"  # noqa: E731
    return "\n".join([corner.ljust(width) + "".join(f"{c:>{w}}" for c, w in zip(columns, cols))] +
                     [label.ljust(width) + "".join(cell(r[c], w) for c, w in zip(columns, cols))
                      for label, r in rows.items()])


@command(benchmark_app, "distillation", {"bench": DistillationBenchConfig, "train": TrainConfig},
         [RUN_OPTION, DEVICE],
         hidden={"train": {"method", "delta", "delta_relative", "centroids_seed"}})  # A-SAE (--sparsity) on each C
def distillation_cmd(run: Path, device: str, bench: DistillationBenchConfig, train: TrainConfig) -> str:
    """A-SAE (delta = 0) on the candidates of each distillation method (Fel et al. 2025, App. C, Fig. 11):
    R², stability and OOD score per method -> RUN/benchmarks/distillation/. --train-* options set the A-SAE
    (its method is a- with --sparsity)."""
    from .benchmarks import distillation_benchmark
    from .report.plots import distillation_plot
    from .store import ActivationStore

    results = distillation_benchmark(run, ActivationStore(run / "store"), bench, train, _device(device))
    distillation_plot(results, run / "benchmarks" / "distillation" / "fig11.png")
    rows = {m: {"R2": r["r2"], "stability": r["stability"], "OOD": r["ood"], "C stab.": r["candidates_stability"],
                "C OOD": r["candidates_ood"]} for m, r in results["methods"].items()}
    return _table("method", rows) + f"\nwritten to {run / 'benchmarks' / 'distillation'}"


@command(benchmark_app, "plausibility", {"bench": PlausibilityBenchConfig, "train": TrainConfig,
                                         "distill": DistillConfig}, [RUN_OPTION, DEVICE],
         hidden={"train": {"method", "k", "delta", "centroids_seed"}})
def plausibility_cmd(run: Path, device: str, bench: PlausibilityBenchConfig, train: TrainConfig,
                     distill: DistillConfig) -> str:
    """Plausibility of TopK, A-SAE and RA-SAE atoms against the classifier head's class directions at each
    dictionary size (Fel et al. 2025, Sec. 5.2, Table 2) -> RUN/benchmarks/plausibility/. --train-* options
    set every SAE's training but its method, k and delta (--sparsity, --k and --delta); --distill-* options set C."""
    from .benchmarks import plausibility_benchmark
    from .report.plots import plausibility_plot
    from .store import ActivationStore

    results = plausibility_benchmark(run, ActivationStore(run / "store"), bench, train, distill, _device(device))
    plausibility_plot(results, run / "benchmarks" / "plausibility" / "table2.png")
    rows = {label: {f"k={k}": v for k, v in r.items()} for label, r in results["rows"].items()}
    rows.update({label: {f"k={k}": v for k, v in r.items()} if isinstance(r, dict) else
                 {f"k={k}": r for k in bench.k} for label, r in results["references"].items()})
    return _table("dictionary", rows) + f"\n{results['directions']}\nwritten to {run / 'benchmarks' / 'plausibility'}"


@command(benchmark_app, "identifiability", {"bench": IdentifiabilityBenchConfig}, [
    RUN_OPTION, DEVICE, _param("model", str, "", "timm model; default: RUN/store's, else the embedded "
                               "EfficientNet-Lite0", "--model"),
    _param("quick", bool, False, "smoke test: 2 themes, 40 + 40 collages, 20 epochs", "--quick")])
def identifiability_cmd(run: Path, device: str, model: str, quick: bool, bench: IdentifiabilityBenchConfig) -> str:
    """Soft identifiability on collages of 4 known objects (Fel et al. 2025, Sec. 5.3, App. G): per theme and
    method, the test accuracy of each object's best atom and threshold (eq. 18), Tables 4 and 3
    -> RUN/benchmarks/identifiability/."""
    from .benchmarks import identifiability_benchmark

    if quick:  # small settings for the options left at their defaults
        small = dict(theme=bench.theme[:2], n_train=40, n_test=40, epochs=20.0, n_centroids=16)
        default = IdentifiabilityBenchConfig()
        bench = dataclasses.replace(bench, **{k: v for k, v in small.items()
                                              if getattr(bench, k) == getattr(default, k)})
    results = identifiability_benchmark(run, bench, model, _device(device))
    rows = {theme: {"chance": t["chance"], **t["accuracy"]} for theme, t in results["themes"].items()}
    rows["mean (Table 3)"] = {"chance": results["chance"], **results["mean"]}
    columns = list(rows["mean (Table 3)"])
    table = "\n".join(_table("theme", {t: {c: r[c] for c in columns[i:i + 8]} for t, r in rows.items()})
                      for i in range(0, len(columns), 8))
    below = [m for m, acc in results["mean"].items() if acc < results["chance"]]
    return (f"{table}\n{bench.n_train} train / {bench.n_test} test collages per theme (the paper: 2,000 / 2,000)"
            + (f"\nbelow chance on test ({', '.join(below)}): the atoms and thresholds chosen on train do not carry "
               "over to new collages" if below else "")
            + f"\nwritten to {run / 'benchmarks' / 'identifiability'}")


@command(app, "report", {"report": ReportConfig}, [RUN_OPTION])
def report_cmd(run: Path, report: ReportConfig) -> str:
    """One HTML page of RUN: configuration, metrics, concept galleries -> RUN/report/index.html."""
    from .report import write_report

    return f"report: {write_report(run, report)}"


@command(app, "serve", {}, [RUN_OPTION, _param("port", int, 8000, "port to listen on (0 = any free port)", "--port"),
                             _param("host", str, "127.0.0.1", "address to listen on", "--host")])
def serve_cmd(run: Path, port: int, host: str) -> str:
    """The concept explorer: a local web app over RUN (models, concepts, images, your own images, classes).
    Computes each model's per-concept statistics once (a pass over the store per model), cached in
    RUN/explorer/, then serves until Ctrl-C."""
    from .explorer import serve

    serve(run, host, port, echo=typer.echo)
    return ""


@command(app, "run", {}, [
    RUN_OPTION, IMAGES,
    _param("quick", bool, False, "a small configuration for smoke tests (~40 s on 2 cores)", "--quick"),
    _param("model", str, ExtractConfig.model, "timm model name (default: embedded EfficientNet-Lite0)", "--model"),
    _param("n_images", int, 0, "demo images (0 = the configuration's default)", "--n-images"),
    _param("method", List[str], list(RunConfig.methods), "methods to train, repeatable; 'all' = all 12", "--method"),
])
def run_cmd(run: Path, images: Optional[Path], quick: bool, model: str, n_images: int, method: list[str]) -> str:
    """The whole job on the defaults: demo images -> extract -> distill -> train -> evaluate -> report."""
    from .pipeline import run as do_run

    cfg = RunConfig.quick() if quick else RunConfig()
    methods = METHODS if "all" in method else tuple(method)
    cfg = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, model=model), methods=methods)
    if n_images:
        cfg = dataclasses.replace(cfg, demo=dataclasses.replace(cfg.demo, n_images=n_images))
    return f"report: {do_run(run, cfg, images).resolve()}"


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
