"""The training loop: streamed shuffled batches, Adam, warmup + cosine, checkpoints, exact resume.

A model folder holds `config.json` (written first), `log.jsonl` (one JSON line per logged step),
`checkpoint.safetensors` while training (model + Adam state + step, one atomic file), and at the end
`model.safetensors`. Data order is a function of (seed, epoch) and the learning rate of the step, so a
run killed and resumed from its checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from .config import TrainConfig
from .errors import ArchsaeError
from .files import read_json, write_json, write_safetensors, write_text
from .sae import SAE, build_sae, load_sae, sae_config, save_sae
from .store import ActivationStore

LOG_EVERY = 10  # steps


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(path: Path, model: SAE, opt: torch.optim.Optimizer, step: int) -> None:
    state = opt.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, s in state["state"].items():
        for key, value in s.items():
            tensors[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    write_safetensors(path, tensors, metadata={"step": str(step), "param_groups": json.dumps(state["param_groups"])})


def _load_checkpoint(path: Path, model: SAE, opt: torch.optim.Optimizer) -> int:
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def train(store: ActivationStore, cfg: TrainConfig, out_dir: str | Path,
          candidates_nd: torch.Tensor | None = None, info: dict | None = None) -> SAE:
    """Train one SAE on the store's train split (standardised element-wise) into `out_dir`.

    `candidates_nd` (n', d) is C for RA-SAE. A finished model of the same configuration is loaded, not
    retrained; an interrupted one resumes from its checkpoint. Raises ArchsaeError if `out_dir` holds
    a model of another configuration, or the store has fewer train tokens than one batch.
    """
    out_dir = Path(out_dir)
    config = sae_config(cfg, store.d, store=str(store.root), **(info or {}))
    if (out_dir / "config.json").exists():
        if read_json(out_dir / "config.json") != config:
            raise ArchsaeError(f"{out_dir} holds a model of another configuration; use another name or delete it")
        if (out_dir / "model.safetensors").exists():
            return load_sae(out_dir)[0]
    steps_per_epoch = store.n_split("train") // cfg.batch_size
    if steps_per_epoch == 0:
        raise ArchsaeError(f"the store has {store.n_split('train')} train tokens, fewer than one batch "
                           f"({cfg.batch_size}); lower --batch-size or extract more images")
    total = math.ceil(cfg.epochs * steps_per_epoch)
    model = build_sae(cfg, store.d, candidates_nd)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    write_json(out_dir / "config.json", config)
    ckpt, log_path = out_dir / "checkpoint.safetensors", out_dir / "log.jsonl"
    start = _load_checkpoint(ckpt, model, opt) if ckpt.exists() else 0
    # Keep the log equal to an uninterrupted run's: drop lines written after the checkpoint.
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    write_text(log_path, "".join(l + "\n" for l in lines if json.loads(l)["step"] < start))

    fired = torch.zeros(cfg.k, dtype=torch.bool)
    window = {"loss": 0.0, "sse": 0.0, "sst": 0.0, "l0": 0.0, "n": 0, "t": time.perf_counter()}
    bar = tqdm(total=total, initial=start, desc=f"train {out_dir.name}", unit="step")
    with log_path.open("a") as log:
        for epoch in range(math.ceil(total / steps_per_epoch)):
            if (epoch + 1) * steps_per_epoch <= start:
                continue  # whole epoch already done: skip without reading it
            for i, raw in enumerate(store.batches(cfg.batch_size, cfg.seed, epoch, "train", cfg.shuffle_shards)):
                step = epoch * steps_per_epoch + i
                if step < start:
                    continue
                if step >= total:
                    break
                x = store.standardise(raw)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, cfg)
                x_hat, codes = model(x)
                loss = (x_hat - x).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                model.project_()
                with torch.no_grad():
                    fired |= (codes > 0).any(0)
                    window["loss"] += loss.item()
                    window["sse"] += (x_hat - x).pow(2).sum().item()
                    window["sst"] += (x - x.mean(0)).pow(2).sum().item()
                    window["l0"] += (codes > 0).sum().item()
                    window["n"] += len(x)
                done = step + 1
                if done % LOG_EVERY == 0 or done == total:
                    now = time.perf_counter()
                    steps = window["n"] / cfg.batch_size
                    log.write(json.dumps({
                        "step": step, "tokens": done * cfg.batch_size, "loss": window["loss"] / steps,
                        "r2": 1 - window["sse"] / window["sst"], "l0": window["l0"] / window["n"],
                        "dead_fraction": 1 - fired.float().mean().item(), "lr": lr_at(step, total, cfg),
                        "tokens_per_s": window["n"] / (now - window["t"])}) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{window['loss'] / steps:.3f}", r2=f"{1 - window['sse'] / window['sst']:.3f}")
                    fired.zero_()
                    window.update(loss=0.0, sse=0.0, sst=0.0, l0=0.0, n=0, t=now)
                if done % cfg.checkpoint_every == 0 and done < total:
                    _save_checkpoint(ckpt, model, opt, done)
                bar.update(1)
    bar.close()
    save_sae(model, out_dir, config)
    ckpt.unlink(missing_ok=True)
    return model.eval()
