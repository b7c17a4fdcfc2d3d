"""How close the hull of k-means candidates C comes to each planted atom: the ceiling of an A-SAE (issue 11).

    .venv/bin/python benchmarks/hull_reach.py --regime large                  # n' = 4 k candidates, as quality.py
    .venv/bin/python benchmarks/hull_reach.py --regime large --candidates-per-atom 16

An A-SAE atom is a convex combination of candidates times a positive scale, so its direction lies in the cone of
the candidates its row of W may use. For every planted atom u (standardised space, as the learners see it), this
reports the largest cos(u, W_i C) over:
- one candidate (the nearest in angle);
- the cone of that candidate and its m - 1 nearest (Euclidean), the support archsae gives a row of W started
  there (`dictionary.nearest_candidates`);
- the cone of the m candidates nearest u in angle (the best support of m, which no learner knows in advance).
The cone's best point is non-negative least squares (scipy.optimize.nnls) of u on the support. Every `--every`-th
planted atom is scored (nnls is per atom). Results: a Markdown table on stdout and `--out` (JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import nnls  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import REGIMES  # noqa: E402


def cone_cosine(u_d: np.ndarray, support_md: np.ndarray) -> float:
    """The largest cos(u, v) over v in the cone of the rows of support (m, d): v = the nnls fit of u."""
    weights, _ = nnls(support_md.T.astype(np.float64), u_d.astype(np.float64), maxiter=50 * len(support_md))
    v = support_md.T @ weights
    return float(v @ u_d / max(np.linalg.norm(v), 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", action="append", choices=list(REGIMES), help="planted regimes (default: large)")
    parser.add_argument("--candidates-per-atom", type=int, default=4, help="n' = this x k k-means candidates")
    parser.add_argument("--support", type=int, action="append", help="candidates per cone (default: 64 and 256)")
    parser.add_argument("--every", type=int, default=8, help="score every N-th planted atom")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hull_reach.json")
    args = parser.parse_args()

    from archsae.data.planted import planted_dictionary
    from archsae.distill import kmeans
    from archsae.files import write_json
    from archsae.sae.dictionary import nearest_candidates
    from archsae.store import import_matrix

    rows = []
    for name in args.regime or ["large"]:
        regime = REGIMES[name]
        data = planted_dictionary(**{k: v for k, v in regime.items() if k != "steps"}, seed=0)
        with tempfile.TemporaryDirectory() as tmp:  # the same standardisation as the learners' store
            np.save(Path(tmp) / "acts.npy", data.acts_nd)
            store = import_matrix(Path(tmp) / "acts.npy", Path(tmp) / "store", shard_tokens=8192)
            sample = store.standardise(store.sample(100_000, 0, "train")).numpy()
            std_d = store.std_d.numpy()
        n_prime = args.candidates_per_atom * regime["k"]
        cand_nd = kmeans(sample, n_prime, 0)
        atoms_kd = data.atoms_kd / std_d
        atoms_kd /= np.linalg.norm(atoms_kd, axis=1, keepdims=True)
        cos_kn = atoms_kd @ (cand_nd / np.linalg.norm(cand_nd, axis=1, keepdims=True)).T
        picked = np.arange(0, regime["k"], args.every)
        row = {"regime": name, "n_prime": n_prime, "atoms_scored": len(picked),
               "one_candidate": float(cos_kn[picked].max(1).mean())}
        for m in args.support or [64, 256]:
            near = nearest_candidates(torch.from_numpy(cand_nd), torch.from_numpy(cos_kn[picked].argmax(1)), m)
            row[f"nearest_{m}"] = float(np.mean([cone_cosine(atoms_kd[i], cand_nd[near[j].numpy()])
                                                 for j, i in enumerate(picked)]))
            row[f"best_{m}"] = float(np.mean([cone_cosine(atoms_kd[i], cand_nd[np.argsort(-cos_kn[i])[:m]])
                                              for i in picked]))
        rows.append(row)
        print(row, flush=True)
    write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    keys = [k for k in rows[0] if k not in ("regime", "n_prime", "atoms_scored")]
    print("| regime | n' | " + " | ".join(keys) + " |\n|---|---:|" + "---:|" * len(keys))
    for r in rows:
        print(f"| {r['regime']} | {r['n_prime']:,} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
