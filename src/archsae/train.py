"""The training loop: streamed shuffled batches, Adam at a constant rate after warmup, AuxK, checkpoints, exact
resume, many models per pass of the store, and data parallelism over processes (torchrun / torch.distributed).

A model folder holds `config.json` (written first), `log.jsonl` (one JSON line per logged step; with
`heldout_every` the held-out R² too),
`checkpoint.safetensors` while training (model + Adam state + dead-code counters + step, one atomic
file), at the end `model.safetensors`, and with `snapshot_every` the dictionary along training in
`snapshots/step{step:06d}.safetensors` (atoms (k, d) float32, from step 0 to the last).

Data: a step's batch is `streams` micro-batches, one from each data stream (a fixed, disjoint set of
shards, see `ActivationStore.batches`). One process runs every stream's micro-batch and accumulates the
gradients; under torchrun each rank runs the streams r, r + world, ... and the gradients are summed
over ranks (all-reduce). Either way a step's gradient is the mean over the same global batch, so a
2-process run equals a 1-process run with `streams=2` up to float summation order. Data order is a
function of (data_seed, epoch, stream), so a run killed and resumed from its checkpoint ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import HELDOUT_TOKENS, LOG_EVERY, TrainConfig, stored_train_config
from .errors import ArchsaeError
from .files import (differences, first_three, read_json, read_safetensors_with_metadata, refuse_if_different,
                    write_json, write_safetensors, write_text)
from .metrics import r2
from .progress import quiet
from .sae import SAE, BatchTopK, Penalised, build_sae, load_sae, sae_config, save_sae
from .sae.model import state_mismatch
from .store import ActivationStore, Subset

CALIBRATION_TOKENS = 16_384  # JumpReLU initial and BatchTopK inference thresholds; relative delta
RESAMPLE_TOKENS, RESAMPLE_UNTIL = 4096, 0.75  # dead codes are resampled on a draw of calibration tokens, until 3/4 of training
# Configurations trained in one pass of the store must agree on these (they define the batches).
DATA_FIELDS = ("data_seed", "batch_size", "epochs", "shuffle_shards", "streams", "subset", "subset_seed", "centre")


def lr_at(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to `peak` over `warmup_steps`, then constant (Gao et al. 2025). At the step budgets of a
    few epochs an SAE is still improving at the end, and a cosine decay only takes learning rate away from
    it (-0.02 held-out R² on the default store: benchmarks/README.md)."""
    return peak * min(1.0, (step + 1) / warmup_steps)


@dataclass
class Job:
    """One SAE to train: its configuration, its folder, the candidates C (n', d) of archetypal methods
    (in the centred standardised space, as `distill` writes them), and provenance for its config.json.
    `own_cache`: the folder is a benchmark's own cache, not a user's model, so a model of other settings
    there is deleted and retrained instead of refused."""

    cfg: TrainConfig
    out_dir: Path
    candidates_nd: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    own_cache: bool = False


@dataclass(frozen=True)
class World:
    """This process's place among data-parallel processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "World":
        """Join torchrun's process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for in a single one)."""
        if self.size > 1:
            dist.barrier()

    def from_rank0(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's `flag` on every process, so that all take the same branch around a collective."""
        if self.size == 1:
            return flag
        box = torch.tensor(float(flag), device=device)
        dist.broadcast(box, 0)
        return bool(box.item())


def default_device() -> torch.device:
    """CUDA (this rank's local GPU under torchrun) when present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _logged_step(line: str) -> float:
    """The step of a line of log.jsonl; inf for a line a kill cut short (no step to keep it at)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def resolve_device(device: torch.device | str | None) -> torch.device:
    """`device` as a torch.device (None: `default_device`). Raises ArchsaeError for a name that is not cpu or
    cuda (the devices archsae is built and tested for) or a CUDA device this machine or torch build lacks."""
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ArchsaeError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N")
    device = parsed
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ArchsaeError(f"there is no CUDA device {device} here ({torch.cuda.device_count()} visible to torch "
                           f"{torch.__version__}); use --device cpu, or leave --device out to take the default")
    return device


class _Trainer:
    """One model's optimiser, counters, log and checkpoint within a pass."""

    def __init__(self, job: Job, store: ActivationStore, total: int, n_streams: int, device: torch.device,
                 world: World, calibration_nd: torch.Tensor, heldout_nd: torch.Tensor | None):
        cfg = self.cfg = job.cfg.canonical()  # a model is the same whichever command spelt its configuration
        self.out_dir, self.total, self.n_streams, self.world = job.out_dir, total, n_streams, world
        self.calibration_nd = calibration_nd  # standardised train tokens, the same for every rank
        self.heldout_nd = heldout_nd  # standardised held-out tokens (None: the store holds none)
        act_norm = calibration_nd.norm(dim=1).mean().item()
        delta = cfg.delta * act_norm if cfg.delta_relative and cfg.method.startswith("ra-") else None
        self.lr = cfg.peak_lr(store.d)
        info = {**job.info, "peak_lr": self.lr, **({"delta_abs": delta} if delta is not None else {}),
                "streams": n_streams, "processes": world.size}  # resolved: a resume must match them
        if job.candidates_nd is not None:  # C by content: a model is never reused or resumed on other candidates
            c_nd = job.candidates_nd.float().contiguous().cpu()
            info["candidates_sha256"] = hashlib.sha256(c_nd.numpy()).hexdigest()
        self.config = sae_config(cfg, store.d, store=store.fingerprint, **info)
        self.done = False
        resolved = dict.fromkeys(("streams", "processes"))  # how it ran: any will do for a finished model
        stored = _stored_config(self.out_dir, cfg)
        if stored is not None and "candidates_sha256" in self.config:  # a model saved before C was recorded: as is
            stored.setdefault("candidates_sha256", self.config["candidates_sha256"])
        changed = differences({**stored, **resolved}, {**self.config, **resolved}) if stored is not None else []
        if job.own_cache and world.from_rank0(bool(changed), device):  # a benchmark's cache of other settings
            world.barrier()  # every rank has read the old config.json before rank 0 deletes it
            if world.rank == 0:
                tqdm.write(f"train: {self.out_dir} was trained with other settings ({first_three(changed)}); "
                           "retraining it", file=sys.stderr)
                for weights in ("model.safetensors", "checkpoint.safetensors"):  # first: never resumed if killed
                    (self.out_dir / weights).unlink(missing_ok=True)
                shutil.rmtree(self.out_dir)
            world.barrier()
            stored = None
        started_before = stored is not None
        if stored is not None:
            finished = (self.out_dir / "model.safetensors").exists()
            refuse_if_different({**stored, **resolved}, {**self.config, **resolved}, self.out_dir, "a model",
                                _OTHER_MODEL)
            if not finished and any(stored.get(key) != self.config[key] for key in resolved):
                raise ArchsaeError(
                    f"{self.out_dir} holds a checkpoint of a run on {stored.get('processes')} process(es) with "
                    f"{stored.get('streams')} data stream(s), not {world.size} and {n_streams}: resume it with "
                    f"torchrun --nproc-per-node {stored.get('processes')} (and --streams {stored.get('streams')}), "
                    "which gives exactly the uninterrupted result, or delete the folder to restart")
            if finished:
                self.model, self.done = load_sae(self.out_dir, device), True
                return
        candidates = job.candidates_nd
        if candidates is not None and not cfg.centre:  # k-means commutes with the shift to the uncentred space
            candidates = candidates + store.uncentred_mean_d
        self.model = build_sae(cfg, store.d, candidates, delta)
        # delta (as the dictionary holds it) against the candidates' mean norm: near 1, atoms need not stay near C
        self.delta_share = (float(self.model.dictionary.delta) / float(candidates.norm(dim=1).mean())
                            if cfg.archetypal else 0.0)
        self.model.set_normalisation_(*store.normalisation(cfg.centre)).to(device).train()
        # beta2 = 0.99: at a few hundred steps, 0.999's second moment still remembers the large gradients of
        # the first steps and shrinks every later step (benchmarks/README.md). Fused: 10x faster on CPU too.
        self.opt = torch.optim.Adam(self._param_groups(store.d), lr=self.lr, betas=(0.9, 0.99), fused=True)
        self.since_fired = torch.zeros(cfg.k, dtype=torch.int64, device=device)  # tokens since each code fired
        self.ckpt, self.log_path = self.out_dir / "checkpoint.safetensors", self.out_dir / "log.jsonl"
        self.start = self._load_checkpoint() if self.ckpt.exists() else 0
        self.restarted = started_before and self.start == 0  # a folder of this model, but no checkpoint
        if self.start == 0:  # data-dependent initialisation, from the calibration tokens
            with torch.no_grad():
                if not cfg.archetypal:  # b at the data mean (~0 when centred); archetypal atoms already span it
                    self.model.b_pre.copy_(calibration_nd.mean(0))
                self.model.init_from_data_(calibration_nd, cfg.top_k)
        self._reset_window()

    def begin(self) -> None:
        """Write config.json, step 0's snapshot and the log cut back to the checkpoint. Called once every job of
        the pass is accepted, so a job refused later (another configuration in its folder) leaves no other
        job's folder half-made."""
        if self.world.rank == 0:
            write_json(self.out_dir / "config.json", self.config)
            if self.start == 0:
                self._snapshot(0)
            # Keep the log equal to an uninterrupted run's: drop lines written after the checkpoint, and a last
            # line cut short by the kill (the log is appended to, not written atomically).
            lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
            write_text(self.log_path, "".join(l + "\n" for l in lines if _logged_step(l) < self.start))

    def _param_groups(self, d: int) -> list[dict]:
        """Adam's parameter groups: JumpReLU's log-thresholds at sqrt(d) times the rate of the rest. Adam moves
        a unit encoder row by about lr sqrt(d) per step, so its pre-activations change by that fraction; at lr
        a threshold in log space could not follow them (L0 stuck at half its target on the default store)."""
        thresholds = [p for name, p in self.model.named_parameters() if name == "activation.log_threshold"]
        rest = [p for name, p in self.model.named_parameters() if name != "activation.log_threshold"]
        return [{"params": rest, "lr_scale": 1.0}] + ([{"params": thresholds, "lr_scale": math.sqrt(d)}]
                                                      if thresholds else [])

    def _reset_window(self) -> None:
        # loss, sse, sst, l0, tokens; kept on the device so a step never waits for a .item()
        self.window = torch.zeros(5, dtype=torch.float64, device=self.since_fired.device)
        self.fired = torch.zeros(self.cfg.k, dtype=torch.bool, device=self.since_fired.device)
        self.resampled = 0  # codes resampled since the last log line
        self.t0 = time.perf_counter()

    def step(self, step: int, micro_batches: list[torch.Tensor]) -> None:
        """One optimiser step on this rank's micro-batches (standardised, on the model's device)."""
        cfg, model = self.cfg, self.model
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, self.lr, cfg.warmup_steps) * group["lr_scale"]
        self._resample(step)
        self.opt.zero_grad(set_to_none=True)
        dead = self.since_fired >= cfg.dead_tokens
        fired, active = torch.zeros_like(self.fired), torch.zeros((), device=self.fired.device)
        for x in micro_batches:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and x.is_cuda):
                out = model.losses(x, dead, cfg.aux_k, cfg.aux_coeff)
            (out.loss / self.n_streams).backward()
            fired |= out.fired_k
            active += out.l0
            self.window += torch.stack([out.loss.detach() / self.n_streams, out.sse, out.sst, out.l0,
                                        torch.tensor(len(x), device=x.device)]).double()
        if self.world.size > 1:
            fired, active = self._all_reduce_grads_and(fired, active)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.opt.step()
        model.project_()
        if isinstance(model.activation, Penalised):
            model.activation.adapt_(active / cfg.batch_size)
        self.since_fired += cfg.batch_size
        self.since_fired[fired] = 0
        self.fired |= fired
        self._after_step(step + 1)

    def _resample(self, step: int) -> None:
        """Before step `step`, every `resample_every` steps until 3/4 of training (a resampled code needs the rest
        to learn), resample the codes silent since the previous resampling (and for at least dead_tokens)
        (`SAE.resample_dead_`) on RESAMPLE_TOKENS calibration tokens, with a generator seeded by (seed, step),
        the same on every rank; zero their rows of Adam's moments. It is a function of the state a checkpoint
        holds, and it runs after the log and checkpoint of the step before, so a resumed run equals an
        uninterrupted one and the log shows the model as it was trained, not just resampled."""
        every, cfg = self.cfg.resample_every, self.cfg
        if not every or step == 0 or step % every or step > RESAMPLE_UNTIL * self.total:
            return
        dead_k = self.since_fired >= max(cfg.dead_tokens, every * cfg.batch_size)
        if not dead_k.any():
            return
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        pick = torch.randperm(len(self.calibration_nd), generator=gen)[:RESAMPLE_TOKENS].to(dead_k.device)
        rows_m = self.model.resample_dead_(dead_k, self.calibration_nd[pick], cfg.top_k, gen,
                                           chunk=cfg.batch_size // self.n_streams)
        if self.world.size > 1:  # ranks draw the same unless their floats differ (other GPUs): re-synced to rank 0
            rows_m = self._broadcast_resampled(rows_m)
        for param in self.model.code_parameters():
            state = self.opt.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    state[key][rows_m] = 0.0
        self.since_fired[rows_m] = 0
        self.resampled += len(rows_m)

    def _broadcast_resampled(self, rows_m: torch.Tensor) -> torch.Tensor:
        """Rank 0's resampled codes and every code-indexed tensor (encoder, atoms' parameters, W's support,
        thresholds) on every rank; returns the codes, (m,) int64."""
        mask_k = torch.zeros(self.cfg.k, dtype=torch.uint8, device=rows_m.device)
        mask_k[rows_m] = 1
        for tensor in [mask_k, *self.model.code_parameters(), *self.model.dictionary.code_buffers()]:
            dist.broadcast(tensor.data, 0)
        return mask_k.nonzero().squeeze(1)

    def _all_reduce_grads_and(self, fired_k: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum the gradients over ranks (each rank's loss is already divided by the global stream count)
        in one flat buffer, with the active-code counts, and OR the fired masks; returns the global fired mask
        and the global count of active codes."""
        params = list(self.model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                         + [fired_k.to(params[0].dtype), active.reshape(1).to(params[0].dtype)])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return flat[offset:-1] > 0, flat[-1]

    def _after_step(self, done: int) -> None:
        if done % LOG_EVERY == 0 or done == self.total:
            if self.world.size > 1:
                dist.all_reduce(self.window)
            loss, sse, sst, l0, tokens = self.window.tolist()
            if not (math.isfinite(loss) and math.isfinite(sse)):
                self._diverged(done, "its loss is NaN or Inf")
            now = time.perf_counter()
            if self.world.rank == 0:
                steps = tokens / self.cfg.batch_size
                row = {"step": done - 1, "tokens": done * self.cfg.batch_size, "loss": loss / steps,
                       "r2": 1 - sse / sst, "l0": l0 / tokens, "dead_fraction": 1 - self.fired.float().mean().item(),
                       "dead_codes_aux": int((self.since_fired >= self.cfg.dead_tokens).sum()),
                       "resampled": self.resampled,
                       "lr": lr_at(done - 1, self.lr, self.cfg.warmup_steps), "tokens_per_s": tokens / (now - self.t0)}
                if isinstance(self.model.activation, Penalised):
                    row["coeff"] = self.model.activation.coeff.item()
                if self.heldout_nd is not None and self.cfg.heldout_every and (
                        done % self.cfg.heldout_every == 0 or done == self.total):
                    row["heldout_r2"] = self._heldout_r2()  # outside the window's clock: tokens/s is training's
                with self.log_path.open("a") as log:
                    log.write(json.dumps(row) + "\n")
                self.last = row
            self._reset_window()
        if self.cfg.snapshot_every and (done % self.cfg.snapshot_every == 0 or done == self.total):
            self._check_finite(done)  # on every rank (their parameters are equal): all stop, none waits forever
            if self.world.rank == 0:
                self._snapshot(done)
        if done % self.cfg.checkpoint_every == 0 and done < self.total:
            self._check_finite(done)
            if self.world.rank == 0:
                self._save_checkpoint(done)

    @torch.no_grad()
    def _heldout_r2(self) -> float:
        """R² (eq. 5) of the model as it is now on the held-out tokens, in the standardised space, as `evaluate`
        measures it (BatchTopK: the batch's own top n k, its inference threshold being set only at the end)."""
        x_nd, model = self.heldout_nd, self.model
        x_hat_nd = torch.cat([model.standardise(model(model.unstandardise(x))[0])
                              for x in x_nd.split(self.cfg.batch_size)])
        return r2(x_nd, x_hat_nd)

    def _check_finite(self, done: int) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged(done, "its parameters hold NaN or Inf")

    def _diverged(self, done: int, what: str) -> None:
        """Stop: nothing non-finite is logged, checkpointed or saved; the last good checkpoint stays."""
        kept = f"its last good checkpoint ({self.ckpt.name}) is kept" if self.ckpt.exists() else "no checkpoint was made yet"
        raise ArchsaeError(f"training {self.out_dir.name} diverged by step {done} ({what}); {kept}. Lower --lr, or "
                           "check the store with `archsae store verify`")

    def _snapshot(self, step: int) -> None:
        if self.cfg.snapshot_every:
            write_safetensors(self.out_dir / "snapshots" / f"step{step:06d}.safetensors",
                              {"atoms": self.model.atoms().detach().float().cpu()},
                              metadata={"step": str(step), "tokens": str(step * self.cfg.batch_size)})

    def _save_checkpoint(self, step: int) -> None:
        state = self.opt.state_dict()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors["train.since_fired"] = self.since_fired
        for i, s in state["state"].items():
            for key, value in s.items():
                tensors[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        write_safetensors(self.ckpt, {k: v.cpu() for k, v in tensors.items()},
                          metadata={"step": str(step), "param_groups": json.dumps(state["param_groups"])})

    def _load_checkpoint(self) -> int:
        device = self.since_fired.device
        tensors, meta = read_safetensors_with_metadata(self.ckpt, "delete it to restart this model from step 0", device)
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as e:  # shapes of another configuration (e.g. a checkpoint older than config.json)
            raise ArchsaeError(f"{self.ckpt} does not fit this model ({state_mismatch(e)}); delete it to restart "
                               "this model from step 0") from None
        self.since_fired.copy_(tensors["train.since_fired"])
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = value.cpu() if name == "step" else value
        self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        return int(meta["step"])

    def finish(self) -> SAE:
        """Calibrate BatchTopK's inference threshold, save the model (rank 0), drop the checkpoint."""
        self._check_finite(self.total)
        model = self.model.eval()
        if isinstance(model.activation, BatchTopK):
            with torch.no_grad():
                model.activation.calibrate(model.encoder(self.calibration_nd - model.b_pre))
        if self.world.rank == 0:
            save_sae(model, self.out_dir, self.config)
            self.ckpt.unlink(missing_ok=True)
        return model.requires_grad_(False)


def train(store: ActivationStore, cfg: TrainConfig, out_dir: str | Path, candidates_nd: torch.Tensor | None = None,
          info: dict | None = None, device: torch.device | str | None = None) -> SAE:
    """Train one SAE on the store's train split (standardised element-wise) into `out_dir`.

    `candidates_nd` (n', d) is C for archetypal methods. A finished model of the same configuration is
    loaded, not retrained; an interrupted one resumes from its checkpoint. Raises ArchsaeError if
    `out_dir` holds a model of another configuration, or the store is too small for one batch.
    """
    return train_many(store, [Job(cfg, Path(out_dir), candidates_nd, info or {})], device)[0]


_OTHER_MODEL = "delete that folder to train it again, or use another --run-dir (or --name, in archsae train)"


def _stored_config(out_dir: Path, cfg: TrainConfig) -> dict | None:
    """The config.json in `out_dir` (None if absent), its "train" canonical and at `cfg`'s checkpoint cadence:
    when checkpoints are written changes no result (a resume is exact), so it is not a difference."""
    if not (out_dir / "config.json").exists():
        return None
    stored = read_json(out_dir / "config.json")
    stored["train"] = asdict(replace(stored_train_config(stored["train"]).canonical(),
                                     checkpoint_every=cfg.checkpoint_every))
    return stored


def train_many(store: ActivationStore, jobs: list[Job], device: torch.device | str | None = None) -> list[SAE]:
    """Train every job; jobs that agree on the data fields (DATA_FIELDS) share one pass of the store, so a
    sweep over seeds, deltas, sparsities or dictionaries reads the data once. Returns the models in order.
    Under torchrun the processes split each batch (see the module docstring). Raises ArchsaeError when two jobs
    share a folder, a folder holds a model of other settings (a benchmark's `own_cache` is retrained instead),
    the streams do not fit the processes, batch or shards, the models would not fit in memory, or training
    diverges."""
    if len({job.out_dir.resolve() for job in jobs}) != len(jobs):
        raise ArchsaeError("two configurations would be written to the same model folder; give each its own name")
    for job in (job for job in jobs if not job.own_cache):  # before any pass: passes run one after another
        stored = _stored_config(job.out_dir, job.cfg)
        if stored is not None:  # the training options only; the pass checks the rest (C, resolved delta, ...)
            refuse_if_different({"train": stored["train"]}, {"train": asdict(job.cfg.canonical())}, job.out_dir,
                                "a model", _OTHER_MODEL)
    device = resolve_device(device)
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(tuple(getattr(job.cfg, f) for f in DATA_FIELDS), []).append(i)
    models: list[SAE] = [None] * len(jobs)  # type: ignore[list-item]
    for indices in groups.values():
        for i, model in zip(indices, _train_pass(store, [jobs[i] for i in indices], device)):
            models[i] = model
    return models


def _keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of unmapping them (mallopt M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD). A CPU step allocates and frees several (k, d) and (n, k) tensors of a few MiB; by default
    each comes back from the kernel as fresh pages, and zeroing or copying into them page-faults: about a third of
    a TopK step at the default sizes (benchmarks/README.md, "Every sparsity on a sparse path"). The process keeps
    its peak memory instead. A no-op off glibc."""
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt is not None:
        mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's maximum on 64-bit
        mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the top of the heap


def _available_bytes(device: torch.device) -> int:
    """Memory a new allocation can get: free GPU memory, or the kernel's MemAvailable (free memory plus the
    page cache it can drop, which the memory-mapped store fills)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_memory(jobs: list[Job], d: int, micro: int, device: torch.device) -> None:
    """Refuse a pass whose models cannot fit before allocating them: each float32 parameter is held four
    times (value, gradient, two Adam moments), and dense sparsities keep a few (batch, k) matrices."""
    need = 0
    for job in jobs:
        if (job.out_dir / "model.safetensors").exists() and not job.own_cache:
            continue  # finished: only loaded (a benchmark's cache may be retrained)
        cfg, n_prime = job.cfg, 0 if job.candidates_nd is None else len(job.candidates_nd)
        atoms = cfg.k * d if not cfg.archetypal or cfg.effective_delta > 0 else 0  # free atoms, or RA-SAE's U
        w = cfg.k * (min(cfg.w_support, n_prime) if cfg.w_support else n_prime)  # archetypal W (0 for free)
        params = cfg.k * d + atoms + w  # + the encoder
        need += 4 * (4 * params + n_prime * d + 4 * micro * cfg.k)
    try:
        available = _available_bytes(device)
    except (ValueError, OSError, RuntimeError, AttributeError):
        return  # the platform does not say: let the allocator decide
    if need > available:
        ks = ", ".join(sorted({f"{job.cfg.k:,}" for job in jobs}))
        raise ArchsaeError(f"training these {len(jobs)} model(s) (k = {ks}, d = {d}) needs about {need / 2**30:.1f} GiB, "
                           f"more than the {available / 2**30:.1f} GiB available on {device}: lower --k, train fewer "
                           "models at once, or use --w-support for archetypal ones")


def epoch_steps(store: ActivationStore, cfg: TrainConfig, n_streams: int = 0) -> int:
    """Optimiser steps in one epoch of `cfg`'s train tokens (its subset), each batch split over `n_streams`
    data streams (default: cfg.streams, else 1, a single process's): the shortest stream's number of
    micro-batches (a stream is a fixed set of shards)."""
    n_streams = n_streams or cfg.streams or 1
    micro, subset = cfg.batch_size // n_streams, Subset.of(cfg.subset, cfg.subset_seed)
    return min(store.n_split("train", s, n_streams, subset) // micro for s in range(n_streams))


def total_steps(store: ActivationStore, cfg: TrainConfig, n_streams: int = 0) -> int:
    """The steps `train` takes for `cfg` (cfg.epochs epochs of `epoch_steps`)."""
    return math.ceil(cfg.epochs * epoch_steps(store, cfg, n_streams))


def _train_pass(store: ActivationStore, jobs: list[Job], device: torch.device) -> list[SAE]:
    cfg = jobs[0].cfg
    world = World.from_env(device)
    n_streams = cfg.streams or world.size
    if n_streams % world.size or cfg.batch_size % n_streams:
        raise ArchsaeError(f"streams ({n_streams}) must be a multiple of the number of processes ({world.size}) "
                           f"and divide batch_size ({cfg.batch_size})")
    if n_streams > store.n_shards:
        raise ArchsaeError(f"the store has {store.n_shards} shards, fewer than the {n_streams} data streams; "
                           "lower --streams or re-extract with a smaller --shard-tokens")
    micro = cfg.batch_size // n_streams
    subset = Subset.of(cfg.subset, cfg.subset_seed)
    steps_per_epoch = epoch_steps(store, cfg, n_streams)
    if steps_per_epoch == 0:
        raise ArchsaeError(f"a data stream of the store has fewer train tokens than one micro-batch ({micro}); "
                           "lower --batch-size, or add tokens (extract more images, or import a larger matrix)")
    total = math.ceil(cfg.epochs * steps_per_epoch)
    _check_memory(jobs, store.d, micro, device)
    if device.type == "cpu":
        _keep_freed_memory()
    mean_d, std_d = (t.to(device) for t in store.normalisation(cfg.centre))
    calibration = store.standardise(store.sample(CALIBRATION_TOKENS, cfg.data_seed, "train", subset),
                                    cfg.centre).to(device)
    heldout = (store.standardise(store.sample(HELDOUT_TOKENS, 0, "heldout"), cfg.centre).to(device)
               if world.rank == 0 and store.n_split("heldout") >= 2 and any(j.cfg.heldout_every for j in jobs)
               else None)  # R² needs two tokens at least (the identifiability benchmark holds out one)
    trainers = [_Trainer(job, store, total, n_streams, device, world, calibration, heldout) for job in jobs]
    active = [t for t in trainers if not t.done]
    for t in active:
        t.begin()
    start = min((t.start for t in active), default=total)
    names = active[0].out_dir.name if len(active) == 1 else f"{len(active)} models"
    if world.rank == 0:
        for t in (t for t in active if t.start > 0):
            tqdm.write(f"train: resuming {t.out_dir.name} from step {t.start} of {total}", file=sys.stderr)
        for t in (t for t in active if t.restarted):
            tqdm.write(f"train: {t.out_dir.name} has no checkpoint (stopped before its first, or deleted); "
                       "training it from step 0", file=sys.stderr)
        dense = sorted({t.cfg.top_k for t in active if t.cfg.top_k > store.d / 4})
        if dense:
            tqdm.write(f"train: warning: top_k = {dense[-1]} active codes in d = {store.d} dimensions is hardly sparse; "
                       "the defaults (k = 2,560, top_k = 32) are set for d = 1,280: choose --k and --top-k for your d",
                       file=sys.stderr)
        far = [t for t in active if t.delta_share > 0.5]
        if far:
            tqdm.write(f"train: warning: delta is {max(t.delta_share for t in far):.0%} of the mean norm of the "
                       f"candidates C ({', '.join(t.out_dir.name for t in far)}): atoms may end far from the hull of "
                       "C (on the default store delta = 16, about half, left atoms at cos 0.74 with their nearest "
                       "candidate); lower --delta", file=sys.stderr)
        short = sorted({t.cfg.warmup_steps for t in active if t.cfg.warmup_steps > total})
        if short:
            tqdm.write(f"train: warning: {total} steps, fewer than the {short[-1]} warmup steps: the learning rate "
                       "never reaches its value; train more epochs or lower the warmup steps (--epochs, --warmup-steps; "
                       "in the benchmarks --train-epochs, --train-warmup-steps)", file=sys.stderr)
    bar = tqdm(total=total, initial=start, desc=f"train {names}", unit="step", **quiet(world.rank > 0 or not active))
    my_streams = range(world.rank, n_streams, world.size)
    for epoch in range(math.ceil(total / steps_per_epoch)):
        if not active or (epoch + 1) * steps_per_epoch <= start:
            continue  # whole epoch already done: skip without reading it
        streams = [store.batches(micro, cfg.data_seed, epoch, "train", cfg.shuffle_shards, s, n_streams, subset)
                   for s in my_streams]
        for i, raws in enumerate(zip(*streams)):
            step = epoch * steps_per_epoch + i
            if i >= steps_per_epoch or step >= total:
                break
            if step < start:
                continue
            xs = [((r.pin_memory() if device.type == "cuda" else r).to(device, non_blocking=True) - mean_d) / std_d
                  for r in raws]
            for t in active:
                if step >= t.start:
                    t.step(step, xs)
            if world.rank == 0 and hasattr(active[0], "last"):
                bar.set_postfix(loss=f"{active[0].last['loss']:.3f}", r2=f"{active[0].last['r2']:.3f}",
                                refresh=False)  # drawn at the bar's own interval, not at every log line
            bar.update(1)
    bar.close()
    models = [t.model if t.done else t.finish() for t in trainers]
    world.barrier()  # every rank returns only once rank 0 has written the models
    return models
