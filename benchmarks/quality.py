"""Learner quality: archsae beside a textbook TopK SAE, at equal steps, on data whose answer is known (issue 11).

    .venv/bin/python benchmarks/quality.py                                  # planted regimes, all 12 methods
    .venv/bin/python benchmarks/quality.py --store RUN/store --no-planted   # the default store instead
    .venv/bin/python benchmarks/quality.py --rev 4d3c4fd --rev HEAD --method topk   # the same code at two commits

(a) Planted dictionaries (`archsae.data.planted`): tokens A = Z D* + offset + noise with known unit atoms D*,
in several regimes (sizes, uneven frequencies, a mean far from the origin, noise). Every learner gets a
dictionary of k = the number of planted atoms and top_k = the number active per token. Recovery is the mean,
over planted atoms, of the best |cos| with a learned atom, in the standardised space the learners see
(D*_i / sigma); also the same mean over the rarest third of the planted atoms, the share found above 0.9, R²
on held-out tokens, dead codes and L0. For RA-SAE, how much of a free dictionary's freedom it took: the share
of atoms whose Lambda is at its bound delta, and the mean cos between an atom and its hull part W C.
(b) A real store (`--store`): held-out R², dead codes and L0 only.
Dead codes are counted on up to 20,000 held-out tokens (eq. 6); beside them, on every training token (`dead_train`:
codes that never fire on what they were trained on) and on all the tokens of as many random training images as the
held-out split holds (`dead_train_images`). A code that fires on a few images in a thousand (a rare feature) is dead
on a small held-out split: held-out dead codes near `dead_train_images` are rare codes, well above it codes that do
not generalise.

The reference is the 25-line textbook TopK SAE of the issue: decoder rows random unit vectors, encoder the
decoder's transpose, b_pre = 0, Adam at a constant 1e-3, batch 1,024, loss = squared error summed over d and
averaged over the batch, decoder rows renormalised after each step, no AuxK; in memory, on the same
standardised train tokens, for the same number of steps. archsae runs each method at its defaults (ReLU and
JumpReLU adapt their coefficient to mean L0 = top_k); archetypal methods get k-means candidates C with
n' = 4 k (planted; `--candidates-per-atom`) or `--n-centroids` (store).

`--rev` runs archsae as it was at a git commit (a temporary worktree, in a child process that uses only the
API every commit shares), so the ablation table of benchmarks/README.md is the same command over the commits
that added each part of the recipe. Results go to `--out` (JSON) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1024
REGIMES = {  # planted data: n tokens of d features, k atoms, `active` per token; steps of training
    "small": dict(n=50_000, d=64, k=128, active=4, zipf=0.0, offset=0.0, noise=0.0, steps=400),
    "uneven": dict(n=60_000, d=96, k=192, active=6, zipf=1.0, offset=0.0, noise=0.1, steps=520),
    "offset": dict(n=60_000, d=96, k=192, active=6, zipf=0.5, offset=20.0, noise=0.1, steps=520),
    "noisy": dict(n=60_000, d=96, k=192, active=6, zipf=0.5, offset=0.0, noise=0.5, steps=520),
    "large": dict(n=150_000, d=256, k=1024, active=16, zipf=0.5, offset=0.0, noise=0.1, steps=800),
}
METHODS = ["topk", "batchtopk", "jumprelu", "relu", "a-topk", "a-batchtopk", "a-jumprelu", "a-relu",
           "ra-topk", "ra-batchtopk", "ra-jumprelu", "ra-relu"]


def scores(store, encode_decode, atoms_kd, planted_kd=None, frequency_k=None) -> dict:
    """Held-out R², dead codes and L0 of a learner (encode_decode: x -> (x_hat, codes), standardised space),
    and recovery of the planted atoms (k, d) when given (raw space; mapped by 1 / sigma): over all of them,
    and over the rarest third by their frequency (k,) (`recovery_rare`)."""
    from archsae import metrics

    x = store.standardise(store.sample(20_000, 0, "heldout"))
    with torch.no_grad():
        x_hat, codes = encode_decode(x)
    out = {"r2": metrics.r2(x, x_hat), "dead": metrics.dead_codes(codes), "l0": metrics.l0(codes),
           **dead_on_train(store, encode_decode)}
    if planted_kd is not None:
        best = metrics.cosines(torch.as_tensor(planted_kd) / store.std_d, atoms_kd).abs().max(1).values
        out.update(recovery=best.mean().item(), found=(best > 0.9).float().mean().item())
        if frequency_k is not None:
            out["recovery_rare"] = best[np.argsort(frequency_k)[:len(best) // 3]].mean().item()
    return out


@torch.no_grad()
def hull_use(model) -> dict:
    """For an RA-SAE: the share of atoms whose Lambda_i is at its bound delta (`lambda_at_bound`), and the mean
    cos between each atom and its hull part W_i C (`cos_hull`): how much of the free dictionary's freedom it
    took. Empty for other models (and for commits without `relaxation`)."""
    dictionary = getattr(model, "dictionary", None)
    relax = dictionary.relaxation() if hasattr(dictionary, "relaxation") else None
    if relax is None:
        return {}
    hull_kd = dictionary.dense_weights() @ dictionary.candidates
    return {"lambda_at_bound": (relax.norm(dim=1) >= 0.99 * dictionary.delta).float().mean().item(),
            "cos_hull": torch.nn.functional.cosine_similarity(hull_kd, hull_kd + relax).mean().item()}


@torch.no_grad()
def dead_on_train(store, encode_decode, seed: int = 1) -> dict:
    """`dead_train`: the share of codes that fire on no training token; `dead_train_images`: on no token of as many
    random training images as the held-out split holds (all of it is scored when it has <= 20,000 tokens, as on
    every store here). Images, not tokens: a held-out split is whole images, whose tokens fire together."""
    fired_by_image, n_heldout = [], 0
    for i in range(store.n_shards):
        n_heldout += len(store.read_shard(i, "heldout").image_m.unique())
        shard = store.read_shard(i, "train")
        image_ids, image_m = shard.image_m.unique(return_inverse=True)
        fired_mk = (encode_decode(store.standardise(shard.acts_md))[1] != 0).float()
        fired_by_image.append(torch.zeros(len(image_ids), fired_mk.shape[1]).index_add_(0, image_m, fired_mk) > 0)
    fired_ik = torch.cat(fired_by_image)  # (training images, k); an image lies within one shard
    pick = torch.randperm(len(fired_ik), generator=torch.Generator().manual_seed(seed))[:n_heldout]
    return {"dead_train": 1 - fired_ik.any(0).float().mean().item(),
            "dead_train_images": 1 - fired_ik[pick].any(0).float().mean().item()}


def textbook_topk(x_nd: torch.Tensor, k: int, top_k: int, steps: int, seed: int = 0):
    """The issue's textbook TopK SAE trained on x (n, d) in memory; returns (encode_decode, atoms (k, d))."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(k, x_nd.shape[1], generator=g)
    dec = torch.nn.Parameter(dec / dec.norm(dim=1, keepdim=True))
    enc, b_enc, b_pre = (torch.nn.Parameter(t) for t in (dec.detach().T.clone(), torch.zeros(k), torch.zeros(x_nd.shape[1])))
    opt = torch.optim.Adam([dec, enc, b_enc, b_pre], lr=1e-3)

    def forward(x):
        values, idx = ((x - b_pre) @ enc + b_enc).topk(top_k, dim=1)
        z = torch.zeros(len(x), k).scatter(1, idx, torch.relu(values))
        return z @ dec + b_pre, z

    for _, x in textbook_batches(x_nd, steps, g):
        loss = (forward(x)[0] - x).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            dec /= dec.norm(dim=1, keepdim=True)
    return (lambda x: tuple(t.detach() for t in forward(x))), dec.detach()


def textbook_batches(x_nd: torch.Tensor, steps: int, g: torch.Generator):
    """(step, batch (BATCH, d)) for `steps` steps of a reference SAE: rows of x in a new order (from g) each epoch."""
    per_epoch = len(x_nd) // BATCH
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(x_nd), generator=g)
        yield step, x_nd[order[step % per_epoch * BATCH:(step % per_epoch + 1) * BATCH]]


def child(spec: dict) -> list[dict]:
    """Train `spec["methods"]` with whichever archsae is importable, in one pass; score each model.

    Uses only what every commit of archsae since 4d3c4fd offers: import_matrix, ActivationStore, kmeans,
    TrainConfig (fields it does not know are dropped), Job, train_many."""
    from archsae.config import TrainConfig
    from archsae.distill import kmeans
    from archsae.store import ActivationStore, import_matrix
    from archsae.train import Job, train_many

    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    store = (ActivationStore(spec["store"]) if spec.get("store")
             else import_matrix(spec["acts"], work / "store", shard_tokens=8192))
    planted = np.load(spec["atoms"]) if spec.get("atoms") else None
    frequency = np.load(spec["frequency"]) if spec.get("frequency") else None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    epochs = spec["steps"] / (store.n_split("train") // BATCH)
    candidates = None
    if any(m.startswith(("a-", "ra-")) for m in spec["methods"]):
        path = work.parent / f"C{spec['n_centroids']}-s{spec['seed']}.npy"  # shared by the commits compared
        if not path.exists():
            sample = store.standardise(store.sample(100_000, spec["seed"], "train")).numpy()
            np.save(path, kmeans(sample, spec["n_centroids"], spec["seed"]))
        candidates = torch.from_numpy(np.load(path))
    jobs = []
    for method in spec["methods"]:
        fields = dict(method=method, k=spec["k"], top_k=spec["top_k"], epochs=epochs, batch_size=BATCH,
                      seed=spec["seed"], data_seed=spec["seed"], checkpoint_every=10**9, **spec.get("extra", {}))
        cfg = TrainConfig(**{f: v for f, v in fields.items() if f in known})
        jobs.append(Job(cfg, work / f"{method}-s{spec['seed']}", candidates if method.startswith(("a-", "ra-")) else None))
    start = time.perf_counter()
    models = train_many(store, jobs, "cpu")
    seconds = time.perf_counter() - start
    return [{"method": job.cfg.method, **scores(store, in_standardised_space(model.eval(), store),
                                                model.atoms().detach(), planted, frequency),
             **hull_use(model), "pass_seconds": seconds} for job, model in zip(jobs, models)]


def in_standardised_space(model, store):
    """The model as x -> (x_hat, codes) on centred standardised x. Since issue 12 a model carries its input
    normalisation and takes raw activations; before, it took standardised ones."""
    if not hasattr(model, "input_scale"):
        return model

    def encode_decode(x):
        acts_hat, codes = model(store.std_d * x + store.mean_d)
        return store.standardise(acts_hat), codes
    return encode_decode


def run_child(spec: dict, rev: str | None, worktrees: dict[str, Path]) -> list[dict]:
    """`child(spec)` in a fresh process, with archsae from the working tree or from commit `rev`."""
    src = ROOT / "src"
    if rev:
        if rev not in worktrees:
            worktrees[rev] = Path(tempfile.mkdtemp(prefix="archsae-rev-"))
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(worktrees[rev]), rev],
                           check=True, capture_output=True)
        src = worktrees[rev] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{rev or 'working tree'} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", action="append", choices=list(REGIMES), help="planted regimes (default: all)")
    parser.add_argument("--no-planted", action="store_true", help="skip the planted regimes")
    parser.add_argument("--store", type=Path, help="also measure on this activation store (e.g. the default run's)")
    parser.add_argument("--k", type=int, default=2560, help="store: dictionary size")
    parser.add_argument("--top-k", type=int, default=32, help="store: active codes per token")
    parser.add_argument("--steps", type=int, default=344, help="store: training steps (344 = 4 epochs of the default)")
    parser.add_argument("--n-centroids", type=int, default=4096, help="store: candidates C of archetypal methods")
    parser.add_argument("--candidates-per-atom", type=int, default=4,
                        help="planted: candidates C of archetypal methods per planted atom (n' = this x k)")
    parser.add_argument("--method", action="append", choices=METHODS, help="archsae methods (default: all 12)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per setting (model init and data order)")
    parser.add_argument("--rev", action="append", help="git commits to measure (default: the working tree)")
    parser.add_argument("--extra", type=json.loads, default={}, help="JSON of TrainConfig fields set for every model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from archsae.data.planted import planted_dictionary
    from archsae.files import write_json
    from archsae.store import ActivationStore, import_matrix

    methods, revs = args.method or METHODS, args.rev or [None]
    settings = [] if args.no_planted else [(name, REGIMES[name]) for name in (args.regime or REGIMES)]
    if args.store:
        settings.append(("store", dict(k=args.k, active=args.top_k, steps=args.steps)))
    rows, worktrees = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, regime in settings:
                for seed in range(args.seeds):
                    work = Path(tmp) / f"{name}-s{seed}"
                    spec = dict(methods=methods, k=regime["k"], top_k=regime["active"], steps=regime["steps"],
                                seed=seed, extra=args.extra)
                    if name == "store":
                        store, planted, frequency = ActivationStore(args.store), None, None
                        spec.update(store=str(args.store.resolve()), n_centroids=args.n_centroids)
                    else:
                        data = planted_dictionary(**{k: v for k, v in regime.items() if k != "steps"}, seed=seed)
                        work.mkdir(parents=True)
                        np.save(work / "acts.npy", data.acts_nd)
                        np.save(work / "atoms.npy", data.atoms_kd)
                        np.save(work / "frequency.npy", data.frequency_k)
                        planted, frequency = data.atoms_kd, data.frequency_k
                        store = import_matrix(work / "acts.npy", work / "ref-store", shard_tokens=8192)
                        spec.update(acts=str(work / "acts.npy"), atoms=str(work / "atoms.npy"),
                                    frequency=str(work / "frequency.npy"),
                                    n_centroids=args.candidates_per_atom * regime["k"])
                    train = store.standardise(torch.cat([store.read_shard(i, "train").acts_md
                                                         for i in range(store.n_shards)]))
                    start = time.perf_counter()
                    encode_decode, atoms = textbook_topk(train, regime["k"], regime["active"], regime["steps"], seed)
                    ref = {"setting": name, "seed": seed, "rev": "reference", "method": "textbook topk",
                           **scores(store, encode_decode, atoms, planted, frequency),
                           "pass_seconds": time.perf_counter() - start}
                    rows.append(ref)
                    print(json.dumps(ref), flush=True)
                    del train
                    for rev in revs:
                        for i, row in enumerate(run_child({**spec, "work": str(work / (rev or "tree"))}, rev, worktrees)):
                            rows.append({"setting": name, "seed": seed, "rev": rev or "working tree", **row})
                            print(json.dumps(rows[-1]), flush=True)
    finally:
        for path in worktrees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    write_json(args.out, {"regimes": REGIMES, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items() if k != "child"}, "rows": rows})
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """Markdown: one line per (setting, rev, method), means over seeds."""
    keys = ["recovery", "recovery_rare", "found", "r2", "dead", "dead_train", "dead_train_images", "l0",
            "lambda_at_bound", "cos_hull"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["rev"], r["method"]), []).append(r)
    print("| setting | code | method | recovery | rarest third | > 0.9 | held-out R² | dead | dead (all train) "
          "| dead (as many train images) | L0 | Λ at bound | cos(D, W C) |")
    print("|---|---|---|" + "---:|" * len(keys))
    for (setting, rev, method), rs in groups.items():
        cells = [f"{np.mean([r[k] for r in rs]):.3f}" if k in rs[0] else "" for k in keys]
        print(f"| {setting} | {rev} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
