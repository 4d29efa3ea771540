"""Fit the encoder: plain torch, DDP over any number of processes (torchrun or ``--devices``).

One step: cell ids -> :class:`training.data.Renderer` (twin audio + CQT on the
device) -> encoder (bf16 autocast on CUDA) -> the configured loss -> Adam.
Each epoch ends with validation (``val_p``: P-loss; ``val_loss``: the run's own
loss, undamped), the damping update, and the ``last`` / ``best`` checkpoints.

Resuming is exact: a checkpoint holds the weights, the optimizer, the damping
state, every rank's RNG states and the position (epoch, next batch), and the
data order is a pure function of (seed, epoch, batch) (see :mod:`training.data`).
A run killed at any point continues from its last checkpoint with
``--resume`` and produces the same steps it would have produced.

Run directory ``{log.dir}/{name}``: ``config.json``, ``last.pt``, ``best.pt``,
``metrics.csv``, ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import socket
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from matcher.device import resolve_device
from matcher.encoder import Encoder
from synth.files import atomic_write, atomic_write_text

from .augment import AugmentConfig
from .config import TrainConfig
from .finetune import FinetuneConfig, RealHits
from .damping import make_damping
from .data import MetricTable, Renderer, Split
from .losses import jtfs_loss, p_loss, pnp_loss, spectral_loss

__all__ = ["fit", "full_nu", "load_checkpoint", "Run", "CKPT_FORMAT"]

CKPT_FORMAT = "tympan-checkpoint"
CKPT_VERSION = 1
CSV_FIELDS = ("step", "epoch", "split", "loss", "val_loss", "val_p", "real_ft", "real_val", "lam",
              "lr", "seconds")


def full_nu(nu_hat: torch.Tensor, nu_true: torch.Tensor | None, pitch_known: bool) -> torch.Tensor:
    """Encoder output -> ``[B, 5]``: the pitch-known encoder gets f0 from the truth."""
    if not pitch_known:
        return nu_hat
    if nu_true is None:
        raise ValueError("a pitch-known encoder needs the true f0 (nu[:, 0])")
    return torch.cat([nu_true[:, :1].to(nu_hat), nu_hat], dim=1)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only``: tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        # TorchVersion (a str) is allowed: checkpoints of early runs stored one.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input error
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a Tympan training checkpoint")
    return ck


# -- entry point -------------------------------------------------------------------------

def fit(cfg: TrainConfig, devices: int = 1, resume: bool = False, accelerator: str = "auto") -> Path:
    """Train ``cfg``; returns the run directory.

    Parameters
    ----------
    devices : int
        Processes on this machine (GPUs, or CPU processes with gloo). Under
        ``torchrun`` the environment decides and this is ignored.
    resume : bool
        Continue from ``last.pt`` in the run directory.
    accelerator : {"auto", "cpu", "cuda"}
    """
    if accelerator not in ("auto", "cpu", "cuda"):
        raise ValueError(f"accelerator {accelerator!r}: allowed auto, cpu, cuda")
    use_cuda = resolve_device(accelerator).type == "cuda"
    _check_run_dir(cfg, resume)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:   # torchrun
        _run(cfg, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
             int(os.environ.get("LOCAL_RANK", 0)), resume, use_cuda)
    elif devices > 1:
        if use_cuda and devices > torch.cuda.device_count():
            raise ValueError(f"--devices {devices}: only {torch.cuda.device_count()} GPUs visible")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        torch.multiprocessing.spawn(_spawned, args=(devices, cfg, resume, use_cuda), nprocs=devices)
    else:
        _run(cfg, 0, 1, 0, resume, use_cuda)
    return cfg.run_dir


def _spawned(rank: int, world: int, cfg: TrainConfig, resume: bool, use_cuda: bool) -> None:
    _run(cfg, rank, world, rank, resume, use_cuda)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_run_dir(cfg: TrainConfig, resume: bool) -> None:
    last = cfg.run_dir / "last.pt"
    if resume and not last.exists():
        raise ValueError(f"--resume: no checkpoint {last} to resume from; run without --resume "
                         "to start this run")
    if not resume and last.exists():
        raise ValueError(f"run directory {cfg.run_dir} already holds a run: pass --resume to "
                         "continue it, or give the run another name (--name)")


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """Config fields that must not change across a resume (length and logging may)."""
    d = json.loads(json.dumps(d))
    d.pop("log", None)
    d.setdefault("augment", AugmentConfig().to_dict())   # checkpoints from before [augment]
    d.setdefault("finetune", asdict(FinetuneConfig()))    # ... and before [finetune]
    for k in ("epochs", "max_steps", "max_seconds"):
        d["optim"].pop(k, None)
    return d


# -- one process --------------------------------------------------------------------------

class Run:
    """State and steps of one rank's training.

    Public for timing steps without fitting (the campaign's probe,
    ``benchmarks/bench_train.py``): ``Run(cfg, 0, 1, device)``, then
    ``.train.epoch_batches(epoch)``, ``.train_step(ids)`` and ``.validate()``.
    :func:`fit` and its checkpoints stay the way to train.
    """

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.main = rank == 0
        if world > 1 and cfg.optim.max_seconds:
            # Each rank's clock would stop it at another step, and DDP's next
            # all-reduce would then wait forever.
            raise ValueError("[optim] max_seconds works on one process only; use max_steps "
                             "or epochs to bound a multi-process run")
        torch.manual_seed(cfg.seed * 1000 + rank)
        self.model = Encoder(pitch_known=cfg.pitch_known).to(device)
        self.net: torch.nn.Module = self.model
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr,
                                    weight_decay=cfg.optim.weight_decay)
        self.damping = make_damping(dict(cfg.damping))
        self.train = Split(cfg, "train", cfg.data.n_train)
        self.val = Split(cfg, "val", cfg.data.n_val)
        if self.train.n_batches(world) == 0:
            raise ValueError(f"{len(self.train)} training cells give no full batch of "
                             f"{cfg.data.batch_size} per rank on {world} rank(s): lower batch_size")
        self.renderer = Renderer(cfg).to(device)
        self.autocast = device.type == "cuda"
        self.metrics: dict[str, MetricTable] = {}
        if cfg.loss == "pnp":
            # Rank 0 computes missing entries (if allowed) and stores them; the others
            # wait for it, then read the file.
            if not self.main:
                dist.barrier()
            for name, sp in (("train", self.train), ("val", self.val)):
                self.metrics[name] = MetricTable(cfg, name, sp.ids, device,
                                                 cfg.log.progress and self.main)
            if self.main and world > 1:
                dist.barrier()
        self.phi = None
        if cfg.loss == "jtfs" or (cfg.finetune.active and cfg.finetune.distance == "jtfs"):
            from matcher.jtfs import JTFS
            self.phi = JTFS(cfg.jtfs_config()).to(device).phi
        self.real: RealHits | None = None
        if cfg.finetune.active:
            self.real = RealHits(cfg.finetune, cfg.data.sr, cfg.data.n_samples,
                                 self.renderer.features, self.renderer.render_nu,
                                 self.phi, cfg.seed)
        if cfg.finetune.init:
            # Also without recorded hits: a supervised run (say PNP with augmentation) may
            # start from the shipped model's weights.
            self._init_from(cfg.finetune.init)
        self.step, self.epoch, self.next_batch, self.best = 0, 0, 0, math.inf
        self.seconds, self._since = 0.0, time.perf_counter()   # wall time over resumes
        self.total_steps = self._total_steps()

    def _init_from(self, path: str) -> None:
        """Start from an exported model's weights (a resume then restores its own)."""
        from matcher.model import MatcherModel

        model = MatcherModel.load(path, backend="torch")
        if model.feature_config != self.cfg.features or model.pitch_known != self.cfg.pitch_known:
            raise ValueError(f"[finetune] init = {path}: its features or pitch_known differ from "
                             "this run's; fine-tune with the model's own [features]")
        self.model.load_state_dict(model.encoder.state_dict())

    def _total_steps(self) -> int:
        total = self.train.n_batches(self.world) * self.cfg.optim.epochs
        return min(total, self.cfg.optim.max_steps) if self.cfg.optim.max_steps else total

    def lr(self) -> float:
        """Learning rate of the next step. The cosine runs over all epochs, whatever
        ``max_steps`` says, so that stopping early and resuming changes nothing."""
        o = self.cfg.optim
        if o.schedule == "cosine":
            span = self.train.n_batches(self.world) * o.epochs
            return o.lr * 0.5 * (1 + math.cos(math.pi * min(self.step, span) / span))
        return o.lr

    # -- losses ----------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], nu_hat: torch.Tensor, split: str, undamped: bool = False
             ) -> torch.Tensor:
        kind = self.cfg.loss
        nu = batch["nu"]
        if kind == "p":
            return p_loss(nu_hat, nu)
        if kind == "pnp":
            M = self.metrics[split].lookup(batch["ids"]).to(self.device)
            if undamped:
                return pnp_loss(nu_hat, nu, M, 0.0)
            return pnp_loss(nu_hat, nu, M, self.damping.lam, self.damping.kind == "diagonal")
        render = self.renderer.render_nu
        if kind == "mss":
            return spectral_loss(nu_hat, batch["audio"], render)
        with torch.no_grad():
            target = self.phi(batch["audio"])
        return jtfs_loss(nu_hat, target, render, self.phi)

    def predict(self, batch: dict[str, Any], net: torch.nn.Module) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = net(batch["x"])
        return full_nu(out.float(), batch["nu"], self.cfg.pitch_known)

    def train_mode(self) -> None:
        """The network in training mode (batch norm frozen when fine-tuning says so)."""
        self.net.train()
        if self.real is not None and self.cfg.finetune.freeze_bn:
            # Batch norm keeps the initial model's statistics: batches of 8 recorded hits
            # beside augmented renders made the running statistics, and so every
            # eval-mode prediction, drift (val_p 0.09 -> 1.22 over 400 steps unfrozen).
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def train_step(self, ids: np.ndarray, clock: Callable[[str], Any] | None = None) -> float:
        """One optimisation step on the cells ``ids``; returns the loss.

        ``clock(phase)``, when given, is entered around each phase (``batch``: render,
        augment, CQT features and M; ``forward``; ``loss``; ``backward``;
        ``optimizer``): ``benchmarks/bench_train.py`` times them with it.
        """
        phase = clock or (lambda _: contextlib.nullcontext())
        self.train_mode()
        with phase("batch"):
            # Augmentation is seeded by the step and the rank: a resumed run sees the same
            # batches.
            batch = self.renderer(ids, augment=(self.step, self.rank))
        with phase("forward"):
            nu_hat = self.predict(batch, self.net)
        with phase("loss"):
            loss = self.loss(batch, nu_hat, "train")
            if self.real is not None:
                loss = loss + self.real.loss(
                    self.step, lambda x: self.predict({"x": x, "nu": None}, self.net))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {self.step}: loss is {loss.item()} (diverged); lower "
                                     "[optim] lr or enable grad_clip, then resume")
        for g in self.opt.param_groups:
            g["lr"] = self.lr()
        with phase("backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            if self.cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.opt.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        for _, ids in self.val.epoch_batches(0, self.rank, self.world, shuffle=False, drop_last=False):
            batch = self.renderer(ids)
            nu_hat = self.predict(batch, self.model)
            n = len(ids)
            sums += torch.tensor([float(p_loss(nu_hat, batch["nu"])) * n,
                                  float(self.loss(batch, nu_hat, "val", undamped=True)) * n, n],
                                 dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(sums)
        n = max(sums[2].item(), 1.0)
        scores = {"val_p": sums[0].item() / n, "val_loss": sums[1].item() / n}
        if self.real is not None:      # measured only: nothing is chosen by it
            scores.update(self.real.score(lambda x: self.predict({"x": x, "nu": None}, self.model)))
        return scores

    # -- checkpoints -----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        now = time.perf_counter()
        self.seconds, self._since = self.seconds + now - self._since, now
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        return {"format": CKPT_FORMAT, "version": CKPT_VERSION, "config": self.cfg.to_dict(),
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "damping": self.damping.state_dict(), "step": self.step, "epoch": self.epoch,
                "next_batch": self.next_batch, "best": self.best, "world": self.world,
                "rng": rngs, "seconds": self.seconds, "versions": {"torch": str(torch.__version__)}}

    def save(self, name: str) -> None:
        state = self.state()       # every rank joins the RNG gather
        if self.main:
            atomic_write(self.cfg.run_dir / name, lambda f: torch.save(state, f))

    def restore(self, ck: dict[str, Any]) -> None:
        if _comparable(ck["config"]) != _comparable(self.cfg.to_dict()):
            raise ValueError("the config differs from the checkpoint's in more than epochs, "
                             "max_steps, max_seconds or [log]: resume with the same config file")
        if ck["world"] != self.world:
            raise ValueError(f"the run was trained on {ck['world']} process(es); resume it on "
                             f"the same number (--devices {ck['world']}) so batches line up")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.damping.load_state_dict(ck["damping"])
        self.step, self.epoch = ck["step"], ck["epoch"]
        self.next_batch, self.best = ck["next_batch"], ck["best"]
        self.seconds, self._since = ck.get("seconds", math.nan), time.perf_counter()
        rng = ck["rng"][self.rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)


class _Log:
    """CSV (always) and TensorBoard (optional) on rank 0."""

    def __init__(self, cfg: TrainConfig, step: int):
        self.path = cfg.run_dir / "metrics.csv"
        rows = []
        if self.path.exists():   # drop rows past the resumed step: they will be redone
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, CSV_FIELDS)
        self.tb = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(cfg.run_dir / "tb"), purge_step=step or None)

    def row(self, **values: Any) -> None:
        self.writer.writerow({k: values.get(k, "") for k in CSV_FIELDS})
        self.file.flush()
        if self.tb is not None:
            for k in ("loss", "val_loss", "val_p", "real_ft", "real_val", "lam", "lr"):
                if values.get(k, "") != "":
                    self.tb.add_scalar(f"{values['split']}/{k}", values[k], values["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _run(cfg: TrainConfig, rank: int, world: int, local_rank: int, resume: bool, use_cuda: bool
         ) -> None:
    from tqdm import tqdm

    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if world > 1:
        if use_cuda:
            torch.cuda.set_device(device)
        else:   # share the cores between the processes
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    try:
        run = Run(cfg, rank, world, device)
        if rank == 0:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cfg.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        if resume:
            run.restore(load_checkpoint(cfg.run_dir / "last.pt"))
        log = _Log(cfg, run.step) if rank == 0 else None
        per_epoch = run.train.n_batches(world)
        bar = tqdm(total=run.total_steps, initial=run.step, unit="step", desc=cfg.name,
                   disable=not (cfg.log.progress and rank == 0), dynamic_ncols=True, file=sys.stderr)
        t0 = time.perf_counter()
        done = finished = run.step >= run.total_steps   # resuming a finished run: no-op
        while not done and run.epoch < cfg.optim.epochs:
            for i, ids in run.train.epoch_batches(run.epoch, rank, world, start=run.next_batch):
                loss = run.train_step(ids)
                run.next_batch = i + 1
                bar.update(1)
                bar.set_postfix(epoch=run.epoch, loss=f"{loss:.4g}")
                if log and run.step % cfg.log.every == 0:
                    log.row(step=run.step, epoch=run.epoch, split="train", loss=loss,
                            lam=run.damping.lam, lr=run.lr(), seconds=time.perf_counter() - t0)
                if run.step >= run.total_steps or (
                        cfg.optim.max_seconds and time.perf_counter() - t0 > cfg.optim.max_seconds):
                    done = True
                    break
                if run.step % cfg.log.ckpt_every == 0:
                    run.save("last.pt")
            if run.next_batch >= per_epoch:       # the epoch is complete: validate
                scores = run.validate()
                monitored = scores[cfg.log.monitor]
                run.damping.on_epoch_end(monitored)
                run.epoch, run.next_batch = run.epoch + 1, 0
                if log:
                    log.row(step=run.step, epoch=run.epoch - 1, split="val", lam=run.damping.lam,
                            seconds=time.perf_counter() - t0, **scores)
                    real = "".join(f"  {k} {scores[k]:.4g}" for k in ("real_ft", "real_val")
                                   if k in scores)
                    bar.write(f"epoch {run.epoch - 1}: val_p {scores['val_p']:.4g}  "
                              f"val_loss {scores['val_loss']:.4g}{real}  lambda {run.damping.lam:.3g}")
                if monitored < run.best:
                    run.best = monitored
                    run.save("best.pt")
            run.save("last.pt")
        if not math.isfinite(run.best) and not finished:
            # no validation yet (stopped by max_steps): its best is its last
            run.save("best.pt")
        bar.close()
        if log:
            log.close()
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def fit_main(argv: list[str]) -> int:
    """``tympan train fit --config FILE [--devices N] [--resume]``."""
    from synth.cli_parser import OneLineParser
    from .config import load_config

    parser = OneLineParser(prog="tympan train fit", description=(
        "Train the matcher's encoder from a run file (configs/*.toml). Checkpoints, CSV and "
        "TensorBoard logs go to {log.dir}/{name}; a killed run continues with --resume."))
    parser.add_argument("--config", required=True, metavar="FILE", help="run file (TOML)")
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="processes on this machine: GPUs, or CPU processes with gloo (1); "
                             "under torchrun the launcher decides")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--name", help="override the run name (and so its directory)")
    parser.add_argument("--max-steps", type=int, metavar="K", help="override [optim] max_steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.devices < 1:
        raise ValueError(f"--devices {args.devices}: allowed integers >= 1")
    cfg = load_config(args.config, **({"name": args.name} if args.name else {}))
    if args.max_steps is not None:
        if args.max_steps < 0:
            raise ValueError(f"--max-steps {args.max_steps}: allowed integers >= 0")
        cfg = replace(cfg, optim=replace(cfg.optim, max_steps=args.max_steps))
    if args.quiet:
        cfg = replace(cfg, log=replace(cfg.log, progress=False))
    try:
        run_dir = fit(cfg, args.devices, args.resume, args.accelerator)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: tympan train fit --config {args.config} --resume"
              + (f" --name {args.name}" if args.name else ""), file=sys.stderr)
        return 130
    except FloatingPointError as err:
        raise ValueError(str(err)) from None
    print(f"run {cfg.name} finished: checkpoints in {run_dir} (best.pt, last.pt); next: "
          f"tympan train evaluate {run_dir / 'best.pt'}")
    return 0
