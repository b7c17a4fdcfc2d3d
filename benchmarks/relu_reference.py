"""archsae's ReLU SAE beside a textbook ReLU SAE on planted data, at equal steps (issue 11: "JumpReLU and ReLU
within 0.03 of TopK at equal L0"): is ReLU's gap to TopK archsae's recipe, or the L1 penalty itself?

    .venv/bin/python benchmarks/relu_reference.py --regime uneven --l1 1 --l1 3 --l1 7 --l1 8.5 --l1 10

The textbook ReLU SAE (Bricken et al. 2023, with Anthropic's April 2024 update): z = relu(W_enc x + b_enc),
x_hat = z D + b_dec; decoder rows random at norm 0.1, encoder their transpose, biases 0; loss = squared error
summed over d, mean over the batch, + lambda sum_i z_i ||D_i|| (atoms not renormalised), lambda warmed up
linearly over the first 5 % of steps; Adam, gradient norm clipped at 1, the rate decayed linearly to 0 over the
last 20 %; batch 1,024; in memory on the same standardised train tokens as `quality.py`, for the regime's
steps. One difference from the update: Adam at 1e-3, not ~5e-5 (a few hundred steps, not millions); like the
update, it does not resample dead codes (archsae's ReLU does; on this data none of its codes dies).

One row per lambda (its L0 follows from it), scored like quality.py's rows (recovery of the planted atoms,
held-out R², dead codes, L0). Beside them, archsae's `relu` and `topk` at their defaults (L0 = the regime's
active atoms) on the same tokens and steps. For every row, also the held-out R² with each token's codes
refitted by non-negative least squares on the token's own support (the codes it keeps), which removes the
error of the codes' magnitudes (an L1 penalty shrinks them) and keeps that of the atoms chosen; and the ratio
of the refitted codes' sum to the codes' own.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from quality import BATCH, REGIMES, in_standardised_space, scores, textbook_batches  # noqa: E402


def textbook_relu(x_nd: torch.Tensor, k: int, steps: int, l1: float, lr: float = 1e-3, seed: int = 0):
    """The textbook ReLU SAE trained on x (n, d) in memory; returns (encode_decode, atoms (k, d), b_pre (d,))."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(k, x_nd.shape[1], generator=g)
    dec = torch.nn.Parameter(0.1 * dec / dec.norm(dim=1, keepdim=True))
    enc, b_enc, b_pre = (torch.nn.Parameter(t) for t in (dec.detach().T.clone(), torch.zeros(k), torch.zeros(x_nd.shape[1])))
    params = [dec, enc, b_enc, b_pre]
    opt = torch.optim.Adam(params, lr=lr)

    def forward(x):
        z = torch.relu(x @ enc + b_enc)  # (the update dropped Bricken's subtraction of b_dec before encoding)
        return z @ dec + b_pre, z

    for step, x in textbook_batches(x_nd, steps, g):
        x_hat, z = forward(x)
        penalty = l1 * min(1.0, step / (0.05 * steps)) * (z * dec.norm(dim=1)).sum(1).mean()
        loss = (x_hat - x).pow(2).sum(1).mean() + penalty
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps - step) / (0.2 * steps))
        opt.step()
    return (lambda x: tuple(t.detach() for t in forward(x))), dec.detach(), b_pre.detach()


def refit_on_support(x_nd: torch.Tensor, codes_nk: torch.Tensor, atoms_kd: torch.Tensor, b_d: torch.Tensor):
    """(x_hat (n, d), refitted codes' sum / codes' sum): x - b reconstructed by non-negative least squares
    (scipy's nnls; codes cannot be negative) on the atoms of each token's nonzero codes."""
    from scipy.optimize import nnls

    target_nd, atoms_kd = (x_nd - b_d).double().numpy(), atoms_kd.double().numpy()
    x_hat_nd, refit_sum = np.zeros_like(target_nd), 0.0
    for i, codes_k in enumerate(codes_nk.numpy()):
        support = np.flatnonzero(codes_k > 0)
        if len(support):
            coef, _ = nnls(atoms_kd[support].T, target_nd[i])
            x_hat_nd[i], refit_sum = coef @ atoms_kd[support], refit_sum + coef.sum()
    return torch.from_numpy(x_hat_nd).float() + b_d, refit_sum / codes_nk.sum().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=list(REGIMES), default="uneven")
    parser.add_argument("--l1", type=float, action="append", help="L1 coefficients (default: 1, 3, 7, 8.5, 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from archsae.data.planted import planted_dictionary
    from archsae.metrics import r2
    from archsae.store import import_matrix

    regime = dict(REGIMES[args.regime])
    steps = regime.pop("steps")
    data = planted_dictionary(**regime, seed=args.seed)
    print("| SAE | recovery | > 0.9 | held-out R² | R² refitted on its support (refitted / own code sum) | dead | L0 |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "acts.npy", data.acts_nd)
        store = import_matrix(Path(tmp) / "acts.npy", Path(tmp) / "store", shard_tokens=8192)
        train = store.standardise(torch.cat([store.read_shard(i, "train").acts_md for i in range(store.n_shards)]))
        heldout = store.standardise(store.sample(20_000, 0, "heldout"))
        learners = {f"textbook ReLU, λ = {l1:g}": (lambda l1=l1: textbook_relu(train, regime["k"], steps, l1,
                                                                               seed=args.seed))
                    for l1 in args.l1 or [1.0, 3.0, 7.0, 8.5, 10.0]}
        for method in ("relu", "topk"):
            learners[f"archsae {method}"] = lambda method=method: archsae_sae(store, method, regime, steps, args.seed,
                                                                             Path(tmp) / method)
        for name, learn in learners.items():
            encode_decode, atoms, b_d = learn()
            s = scores(store, encode_decode, atoms, data.atoms_kd)
            with torch.no_grad():
                refit, ratio = refit_on_support(heldout, encode_decode(heldout)[1], atoms, b_d)
            print(f"| {name} | {s['recovery']:.3f} | {s['found']:.3f} | {s['r2']:.3f} | {r2(heldout, refit):.3f} "
                  f"({ratio:.2f}) | {100 * s['dead']:.1f} % | {s['l0']:.1f} |", flush=True)


def archsae_sae(store, method: str, regime: dict, steps: int, seed: int, out: Path):
    """archsae's `method` at its defaults on the store: (encode_decode on standardised x, atoms, b_pre)."""
    from archsae.config import TrainConfig
    from archsae.train import train

    cfg = TrainConfig(method=method, k=regime["k"], top_k=regime["active"], batch_size=BATCH, seed=seed,
                      data_seed=seed, epochs=steps / (store.n_split("train") // BATCH), checkpoint_every=10**9)
    model = train(store, cfg, out).eval()
    return in_standardised_space(model, store), model.atoms().detach(), model.b_pre.detach()


if __name__ == "__main__":
    main()
