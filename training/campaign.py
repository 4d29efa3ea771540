"""A time-boxed training campaign on a lent GPU: metric, reference runs, evaluation, export.

``tympan train campaign --plan configs/gpu/campaign.toml --state DIR --deadline-s S``
runs the plan's stages in order until about S seconds have passed, skipping
the stages DIR already records as done. A device call lasts at most 10
minutes, so a campaign spans several calls and DIR travels between them
(``--pack OUT`` on the device, ``--unpack FILES`` here). Stages:

1. ``preflight`` (every call): the tiny configs through every code path on
   the device (metric, fit per loss, evaluate, half-precision export and
   load), so a broken environment costs seconds, not a call.
2. ``metric:{split}``: M(theta) of the split in resumable shards (stopped
   between shards at the deadline, continued by the next call), merged, then
   compacted to what training reads (cell ids + float32 M, 108 B per sound);
   the sha256 of the full merged file and of the compact one are recorded.
3. ``run:{name}``: a reference run file, time-boxed to its ``budget_s``. A
   probe of a few steps measures the step and validation times; the epochs
   (or, when not even one fits, a training subset) are chosen to fit, with
   ``[optim] max_seconds`` as a backstop. The run is then evaluated on the
   test split, and exported in half precision to ``DIR/export/default.tympan``
   when its mean test JTFS distance is the best so far. Checkpoints (64 MB
   with Adam's state) never leave the machine, so a run is fitted, evaluated
   and exported in one call; a run that cannot finish before the deadline is
   left for the next call.

``DIR/campaign.json`` records every stage (status, seconds, throughput,
epoch times, checksums), the hardware and each call. ``tympan train
campaign-report`` turns it into ``docs/results.md``.
"""

from __future__ import annotations

import io
import json
import math
import platform
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from matcher.device import resolve_device
from synth.cli_parser import OneLineParser
from synth.files import atomic_savez, atomic_write, atomic_write_text, file_sha256

from .protocol import SPLITS

__all__ = ["Plan", "RunPlan", "MetricPlan", "load_plan", "run_campaign", "pack", "unpack",
           "campaign_main", "report_main", "write_report", "toml_text"]

STATE_FILE = "campaign.json"
PART_BYTES = 15 * 2**20          # device calls return files of at most 16 MiB
MAX_PARTS = 6                    # ... and 8 files: parts + model + log
MODEL = "default.tympan"
LOG = "campaign.log"
OVERHEAD_S = 30.0                # a run's probe, set-up and export, until one is measured


class CampaignError(Exception):
    """A stage that makes the rest of this call pointless (the preflight failed)."""


# -- the plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricPlan:
    """Which splits get M, and how (``tympan train metric`` options)."""

    splits: tuple[str, ...] = SPLITS
    batch: int = 32
    shard_size: int = 256
    limit: int = 0                  # 0: whole split
    phi: str = "jtfs"
    n_samples: int = 2**16
    dtype: str = "float32"


@dataclass(frozen=True)
class RunPlan:
    """One reference run of the campaign."""

    config: str
    budget_s: float = 90.0          # fitting time (probe, epochs, validation)
    n_val: int = 2048               # validation subset (0: the run file's)
    eval_limit: int = 0             # test sounds evaluated (0: the whole split)
    eval_batch: int = 64
    eval_s: float = 60.0            # expected evaluation time until one is measured
    probe_steps: int = 10

    @property
    def name(self) -> str:
        return Path(self.config).stem


@dataclass(frozen=True)
class Plan:
    """A campaign: preflight, metric, runs in order, export precision."""

    path: str
    preflight: bool = True
    metric: MetricPlan | None = MetricPlan()
    runs: tuple[RunPlan, ...] = ()
    half: bool = True
    margin_s: float = 20.0          # kept free at the deadline for packing

    def stages(self) -> list[str]:
        out = ["metric:" + s for s in (self.metric.splits if self.metric else ())]
        return out + ["run:" + r.name for r in self.runs]


def _table(raw: dict[str, Any], key: str, kind: type, where: str, **extra: Any) -> Any:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [{key}] must be a table")
    allowed = set(kind.__dataclass_fields__) - set(extra) - {"path"}
    bad = sorted(set(table) - allowed)
    if bad:
        raise ValueError(f"{where}: [{key}] unknown keys {bad}; allowed: {sorted(allowed)}")
    try:
        return kind(**extra, **table)
    except TypeError as err:
        raise ValueError(f"{where}: [{key}] {err}") from None


def load_plan(path: str | Path) -> Plan:
    """Read a campaign plan (TOML); raises ValueError naming what is wrong."""
    from .config import read_toml

    path = Path(path)
    raw = read_toml(path, "plan file")
    top = {"preflight", "metric", "defaults", "run", "export", "margin_s"}
    bad = sorted(set(raw) - top)
    if bad:
        raise ValueError(f"{path}: unknown keys {bad}; allowed: {sorted(top)}")
    metric = None
    if "metric" in raw:
        metric = _table(raw, "metric", MetricPlan, str(path))
        metric = replace(metric, splits=tuple(metric.splits))
        from .metric_job import DTYPES
        from .phi import PHIS
        if metric.phi not in PHIS or metric.dtype not in DTYPES:
            raise ValueError(f"{path}: [metric] phi {metric.phi!r} / dtype {metric.dtype!r}; "
                             f"allowed phi {', '.join(PHIS)}, dtype {', '.join(DTYPES)}")
        for s in metric.splits:
            if s not in SPLITS:
                raise ValueError(f"{path}: [metric] split {s!r}; allowed: {', '.join(SPLITS)}")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict) or "config" in defaults:
        raise ValueError(f"{path}: [defaults] must be a table of run settings (no 'config')")
    runs = []
    for i, entry in enumerate(raw.get("run", [])):
        if not isinstance(entry, dict) or "config" not in entry:
            raise ValueError(f"{path}: [[run]] number {i + 1} needs config = 'FILE'")
        runs.append(_table({"run": {**defaults, **entry}}, "run", RunPlan, str(path)))
        if not Path(runs[-1].config).is_file():
            raise ValueError(f"{path}: run file {runs[-1].config} does not exist")
        if runs[-1].budget_s <= 0 or runs[-1].probe_steps < 1:
            raise ValueError(f"{path}: run {runs[-1].name}: budget_s must be > 0 and "
                             "probe_steps >= 1")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two runs share a name (the run file's stem): {names}")
    export = raw.get("export", {})
    if not isinstance(export, dict) or set(export) - {"half"}:
        raise ValueError(f"{path}: [export] allows only half = true|false")
    return Plan(str(path), bool(raw.get("preflight", True)), metric, tuple(runs),
                bool(export.get("half", True)), float(raw.get("margin_s", 20.0)))


# -- state ---------------------------------------------------------------------------------

class State:
    """``DIR/campaign.json``: what is done, written atomically after every change."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        path = root / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}, "calls": [], "best": None}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError as err:
                raise ValueError(f"{path} is not a campaign state file ({err}); move it away "
                                 "to start over") from None

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def done(self, name: str) -> bool:
        return self.stage(name).get("status") == "done"

    def record(self, name: str, **values: Any) -> None:
        """Replace the stage's record (a stage that accumulates reads the old one first)."""
        self.data["stages"][name] = values
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=2)
        atomic_write(self.root / STATE_FILE, lambda f: f.write(text.encode()))



def _hardware(device: str) -> dict[str, Any]:
    import os

    import torch

    hw = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "machine": platform.machine()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        hw.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                  cuda=torch.version.cuda)
    else:
        hw["cpu"] = platform.processor() or platform.machine()
    return hw


# -- stages --------------------------------------------------------------------------------

class _Clock:
    def __init__(self, seconds: float, margin: float):
        self.end = time.monotonic() + seconds - margin

    def left(self) -> float:
        return self.end - time.monotonic()


def _metric_stage(plan: MetricPlan, split: str, state: State, device: str, clock: _Clock,
                  progress: bool) -> dict[str, Any]:
    from .metric_job import MetricJob, _shard_path, merge_metric, run_metric
    from .protocol import Protocol

    job = MetricJob(split, Protocol(), plan.shard_size, plan.limit or None, plan.dtype,
                    plan.phi, n_samples=plan.n_samples)
    work = state.root / "metric-work"
    t0 = time.perf_counter()
    # Finished shards are kept across a retry; the rest is redone with smaller passes.
    done, batch = _halving_on_oom(
        lambda b: run_metric(job, work, device=device, batch=b, progress=progress,
                             deadline=time.monotonic() + clock.left()), plan.batch)
    seconds = time.perf_counter() - t0
    n_done = sum(len(job.shard_cells(i)) for i in done)
    prev = state.stage(f"metric:{split}")
    total_s = prev.get("seconds", 0.0) + seconds
    total_n = prev.get("sounds_computed", 0) + n_done
    finished = sum(_shard_path(work / split, i).exists() for i in range(job.n_shards))
    info = {"seconds": total_s, "sounds_computed": total_n, "sounds": job.n_sounds,
            "sounds_per_s": total_n / total_s if total_s > 0 else None,
            "shards": f"{finished}/{job.n_shards}", "batch": batch, "phi": plan.phi}
    if finished < job.n_shards:
        return {**info, "status": "partial"}
    full = merge_metric(split, work)
    out = state.root / "metric" / f"metric-{split}.npz"
    out.parent.mkdir(exist_ok=True)
    with np.load(full, allow_pickle=False) as f:
        ids, M, header = f["cell_ids"], f["M"], f["header"]
    # What MetricTable reads; float32 is the precision training uses anyway.
    atomic_savez(out, cell_ids=ids.astype(np.int64), M=M.astype(np.float32), header=header)
    info.update(status="done", sha256_full=file_sha256(full), bytes_full=full.stat().st_size,
                sha256=file_sha256(out), bytes=out.stat().st_size, file=str(out.relative_to(state.root)))
    shutil.rmtree(work / split)
    full.unlink()
    return info


def _halving_on_oom(work: Callable[[int], Any], batch: int) -> tuple[Any, int]:
    """``work(batch)``, retried with half the batch while the GPU runs out of memory;
    returns its result and the batch that worked."""
    import torch

    while True:
        try:
            return work(batch), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()


def _to_toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v!r} has no TOML form")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_to_toml_value(x) for x in v) + "]"
    raise ValueError(f"{v!r}: no TOML form for {type(v).__name__}")


def toml_text(d: dict[str, Any], header: str = "") -> str:
    """A run configuration (``TrainConfig.to_dict()``: scalars and one level of tables) as TOML."""
    lines = [f"# {line}" for line in header.splitlines()]
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    lines += [f"{k} = {_to_toml_value(v)}" for k, v in d.items() if k not in tables]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_to_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _probe(cfg: Any, device: Any, steps: int) -> dict[str, float]:
    """Seconds per training step and per validation pass of ``cfg`` on ``device``."""
    import torch

    from .trainer import _Run

    run = _Run(cfg, 0, 1, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = run.train.epoch_batches(0)
    for _ in range(min(3, run.train.n_batches())):       # warm-up: kernels, allocator
        run.train_step(next(batches)[1])
    sync()
    t0 = time.perf_counter()
    n = 0
    for _, ids in batches:
        run.train_step(ids)
        n += 1
        if n == steps:
            break
    sync()
    step_s = (time.perf_counter() - t0) / max(n, 1)
    t0 = time.perf_counter()
    run.validate()
    sync()
    return {"step_s": step_s, "val_s": time.perf_counter() - t0, "steps": n}


def _size_run(cfg: Any, budget: float, probe: dict[str, float]) -> Any:
    """``cfg`` with epochs (or a training subset) that fit ``budget`` seconds."""
    from .data import Split

    per_epoch = Split(cfg, "train", cfg.data.n_train).n_batches()
    epoch_s = per_epoch * probe["step_s"] + probe["val_s"]
    optim, data = cfg.optim, cfg.data
    if budget >= epoch_s:
        optim = replace(optim, epochs=max(1, min(optim.epochs, int(budget // epoch_s))))
    else:
        steps = max(1, int((budget - probe["val_s"]) / probe["step_s"]))
        data = replace(data, n_train=min(steps, per_epoch) * data.batch_size)
        optim = replace(optim, epochs=1)
    optim = replace(optim, max_seconds=round(1.15 * budget, 1), max_steps=0)
    return replace(cfg, optim=optim, data=data)


def _epoch_times(run_dir: Path) -> list[float]:
    """Epoch durations (s, validation included) from the run's metrics.csv."""
    import csv

    with (run_dir / "metrics.csv").open() as f:
        val = [float(r["seconds"]) for r in csv.DictReader(f) if r["split"] == "val"]
    return [b - a for a, b in zip([0.0] + val[:-1], val)]


def _run_stage(run: RunPlan, state: State, device: str, half: bool, progress: bool
               ) -> dict[str, Any]:
    import torch

    from .config import load_config
    from .data import Split
    from .evaluate import evaluate
    from .export import export
    from .trainer import fit, load_checkpoint

    t_stage = time.perf_counter()
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    cfg = load_config(run.config, name=run.name)
    cfg = replace(cfg,
                  log=replace(cfg.log, dir=str(state.root / "runs"), progress=progress,
                              tensorboard=False),
                  metric=replace(cfg.metric, dir=str(state.root / "metric")),
                  data=replace(cfg.data, n_val=run.n_val or cfg.data.n_val))
    if cfg.run_dir.exists():            # an attempt cut short on another machine
        shutil.rmtree(cfg.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        probe = _probe(replace(cfg, log=replace(cfg.log, dir=tmp)), dev, run.probe_steps)
    if dev.type == "cuda":
        torch.cuda.empty_cache()        # the probe's model and optimizer are gone
    sized = _size_run(cfg, run.budget_s, probe)
    t0 = time.perf_counter()
    fit(sized, accelerator=device)
    fit_s = time.perf_counter() - t0
    run_dir = sized.run_dir
    epochs = _epoch_times(run_dir)
    steps = load_checkpoint(run_dir / "last.pt")["step"]
    # The run file to reproduce it: the sized epochs, no clock (steps, not seconds).
    reproduce = replace(sized, log=replace(sized.log, dir="runs", progress=True, tensorboard=True),
                        metric=replace(sized.metric, dir="runs/metric"),
                        optim=replace(sized.optim, max_seconds=0.0))
    cut = "" if len(epochs) >= sized.optim.epochs else \
        f"\nOn the GPU the max_seconds backstop stopped it after {steps} steps."
    (state.root / "configs").mkdir(exist_ok=True)
    atomic_write_text(state.root / "configs" / f"{run.name}.toml", toml_text(
        reproduce.to_dict(), f"Run '{run.name}' as the GPU campaign ran it (from {run.config}, "
        f"sized to {run.budget_s:g} s).{cut}\ntympan train fit --config THIS_FILE"))
    ck = load_checkpoint(run_dir / "best.pt")
    t0 = time.perf_counter()
    # The fitted run is lost with the call if its evaluation fails: adapt the batch.
    summary, batch = _halving_on_oom(
        lambda b: evaluate(run_dir / "best.pt", "test", run.eval_limit, b, device, run_dir,
                           progress=progress, plot=True), run.eval_batch)
    eval_s = time.perf_counter() - t0
    info = {"status": "done", "config": run.config, "loss": sized.loss,
            "pitch_known": sized.pitch_known, "budget_s": run.budget_s, "probe": probe,
            "n_train": len(Split(sized, "train", sized.data.n_train)),
            "batch_size": sized.data.batch_size, "epochs_planned": sized.optim.epochs,
            "epochs_done": len(epochs), "steps": steps, "fit_s": fit_s, "epoch_s": epochs,
            "samples_per_s": steps * sized.data.batch_size / fit_s,
            "step_samples_per_s": sized.data.batch_size / probe["step_s"],
            "best_step": ck["step"], "eval_s": eval_s, "eval_batch": batch,
            "eval_sounds": summary["n_sounds"], "jtfs_mean": summary["jtfs_distance"]["mean"],
            "mss_mean": summary["mss_distance"]["mean"], "p_loss": summary["p_loss"],
            "report": str((run_dir / "eval-test-best.json").relative_to(state.root))}
    best = state.data.get("best")
    if best is None or info["jtfs_mean"] < best["jtfs_mean"]:
        path = export(run_dir / "best.pt", state.root / "export" / MODEL,
                      run_dir / "eval-test-best.json", half=half)
        from matcher.model import MatcherModel
        MatcherModel.load(path)        # it must load before it counts
        state.data["best"] = {"run": run.name, "jtfs_mean": info["jtfs_mean"],
                              "sha256": file_sha256(path), "bytes": path.stat().st_size,
                              "half": half}
        info["exported"] = True
    # Probe, set-up and export: what a call must allow beyond fitting and evaluation.
    info["overhead_s"] = time.perf_counter() - t_stage - fit_s - eval_s
    return info


def _preflight(plan: Plan, device: str, progress: bool) -> dict[str, Any]:
    """Every code path on the device in a scratch directory: seconds, not minutes."""
    import torch

    from matcher.model import MatcherModel

    from .config import load_config
    from .evaluate import evaluate
    from .export import export
    from .metric_job import MetricJob, run_metric
    from .protocol import Protocol
    from .trainer import fit

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if plan.metric:
            m = plan.metric
            job = MetricJob("test", Protocol(), 2, 2, m.dtype, m.phi, n_samples=m.n_samples)
            run_metric(job, Path(tmp) / "metric", device=device, batch=2, progress=False)
        for loss in ("p", "pnp", "mss"):
            cfg = load_config(tiny / f"{loss}.toml")
            cfg = replace(cfg, log=replace(cfg.log, dir=f"{tmp}/runs", progress=False,
                                           tensorboard=False),
                          metric=replace(cfg.metric, dir=f"{tmp}/tiny-metric"))
            fit(cfg, accelerator=device)
        ckpt = Path(tmp) / "runs" / "tiny-p" / "best.pt"
        evaluate(ckpt, "test", 4, 4, device, Path(tmp) / "eval", progress=False, plot=True)
        path = export(ckpt, Path(tmp) / "m.tympan", Path(tmp) / "eval" / "eval-test-best.json",
                      half=plan.half)
        model = MatcherModel.load(path, device="cuda" if device == "cuda" else "cpu")
        nu = model.predict_nu(torch.zeros(1, 8192).uniform_(-0.5, 0.5))
        if not torch.isfinite(nu).all():
            raise CampaignError("the exported tiny model predicts non-finite parameters")
    return {"status": "done", "seconds": time.perf_counter() - t0}


# -- the campaign ------------------------------------------------------------------------

def run_campaign(plan: Plan, state_dir: str | Path, seconds: float, device: str = "cuda",
                 progress: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan's unfinished stages for about ``seconds``; returns the state.

    A stage that fails is recorded with its error and the campaign goes on to
    the next (a failed run is retried by the next call); a failed preflight
    ends the call. The state is saved after every stage.
    """
    import torch

    if resolve_device(device).type == "cuda":
        # bf16 autocast covers the encoder; TF32 speeds the float32 rest (CQT, JTFS).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    clock = _Clock(seconds, plan.margin_s)
    state = State(Path(state_dir))
    call = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds_given": seconds, "hardware": _hardware(device), "ran": []}
    state.data["calls"].append(call)
    state.data["hardware"] = call["hardware"]
    state.data["plan"] = plan.path
    state.save()
    n_done = sum(state.done(s) for s in plan.stages())
    say(f"campaign: {len(plan.stages())} stages, {n_done} done; {seconds:.0f} s on "
        f"{call['hardware'].get('gpu', call['hardware']['device'])}")
    if n_done == len(plan.stages()):
        state.data["complete"] = True
        state.save()
        say("campaign: complete; nothing to do")
        return state.data

    def attempt(name: str, work: Callable[[], dict[str, Any]]) -> bool:
        t0 = time.perf_counter()
        say(f"[{name}] start ({clock.left():.0f} s left)")
        fatal = None
        try:
            info = work()
        except Exception as err:  # noqa: BLE001 - recorded; the campaign goes on
            info = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            fatal = err if isinstance(err, CampaignError) else None
        info.setdefault("seconds", time.perf_counter() - t0)
        state.record(name, **info)
        call["ran"].append({"stage": name, "status": info["status"],
                            "seconds": round(time.perf_counter() - t0, 1)})
        state.save()
        say(f"[{name}] {info['status']} in {time.perf_counter() - t0:.1f} s"
            + (f": {info['error']}" if info["status"] == "failed" else ""))
        if fatal is not None:
            raise fatal
        return info["status"] == "done"

    if plan.preflight:
        if not attempt("preflight", lambda: _preflight(plan, device, False)):
            raise CampaignError(f"preflight failed: {state.stage('preflight')['error']}")
    if plan.metric:
        for split in plan.metric.splits:
            name = f"metric:{split}"
            if state.done(name):
                continue
            if clock.left() <= 0:
                say(f"[{name}] deferred: no time left")
                break
            if not attempt(name, lambda s=split: _metric_stage(plan.metric, s, state, device,
                                                               clock, progress)):
                break          # later splits wait for this one (and runs for train/val)
    metric_ready = plan.metric is None or all(state.done(f"metric:{s}")
                                              for s in plan.metric.splits if s != "test")
    for run in plan.runs:
        name = f"run:{run.name}"
        if state.done(name):
            continue
        needs_metric = _loss_of(run.config) == "pnp"
        if needs_metric and not metric_ready:
            say(f"[{name}] deferred: the metric is not finished")
            continue
        stages = state.data["stages"].values()
        need = (run.budget_s * 1.15 + max([run.eval_s] + [s.get("eval_s", 0.0) for s in stages])
                + max([OVERHEAD_S] + [s.get("overhead_s", 0.0) for s in stages]))
        if clock.left() < need:
            say(f"[{name}] deferred: needs about {need:.0f} s, {max(clock.left(), 0):.0f} s left")
            continue
        attempt(name, lambda r=run: _run_stage(r, state, device, plan.half, progress))
    pending = [s for s in plan.stages() if not state.done(s)]
    state.data["complete"] = not pending
    state.save()
    say(f"campaign: {'complete' if not pending else 'pending: ' + ', '.join(pending)}"
        + (f"; best {state.data['best']['run']} (test JTFS {state.data['best']['jtfs_mean']:.4g})"
           if state.data.get("best") else ""))
    return state.data


def _loss_of(config: str) -> str:
    from .config import read_toml

    return read_toml(config).get("loss", "p")


# -- moving the state between machines -------------------------------------------------

def _excluded(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if not parts:
        return info
    if info.name.endswith((".pt", ".tmp")) or "tb" in parts \
            or parts[-2:] == ("export", MODEL):     # the model travels as its own file
        return None
    return info


def pack(state_dir: str | Path, out: str | Path, log: str | None = None) -> list[Path]:
    """Write the state as ``state.tgz.NN`` parts (<= 15 MiB) plus the exported model into ``out``.

    Checkpoints and TensorBoard logs stay behind. Raises ValueError when the
    state would need more than the parts a device call can return.
    """
    state_dir, out = Path(state_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(state_dir, arcname=".", filter=_excluded)
    data = buf.getvalue()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
    if len(parts) > MAX_PARTS:
        raise ValueError(f"the packed state is {len(data) / 2**20:.1f} MiB: more than "
                         f"{MAX_PARTS} parts of {PART_BYTES // 2**20} MiB")
    files = []
    for i, part in enumerate(parts):
        path = out / f"state.tgz.{i:02d}"
        atomic_write(path, lambda f, part=part: f.write(part))
        files.append(path)
    model = state_dir / "export" / MODEL
    if model.exists():
        files.append(Path(shutil.copy2(model, out / MODEL)))
    if log is not None:
        atomic_write_text(out / LOG, log)
        files.append(out / LOG)
    return files


def unpack(files_dir: str | Path, state_dir: str | Path) -> Path:
    """Rebuild the state from what :func:`pack` wrote (e.g. a device call's files)."""
    files_dir, state_dir = Path(files_dir), Path(state_dir)
    parts = sorted(files_dir.glob("state.tgz.[0-9][0-9]"))
    if not parts:
        raise ValueError(f"{files_dir} holds no state.tgz.NN parts (written by "
                         "'tympan train campaign --pack')")
    data = b"".join(p.read_bytes() for p in parts)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"the state parts in {files_dir} do not make a readable archive "
                         f"({err}): are all parts there?") from None
    # The device's state supersedes this one; the old one is kept beside it.
    if state_dir.exists():
        prev = state_dir.with_name(state_dir.name + ".prev")
        if prev.exists():
            shutil.rmtree(prev)
        state_dir.rename(prev)
    state_dir.mkdir(parents=True)
    with tar:
        tar.extractall(state_dir, filter="data")      # no links out, no absolute paths
    if (files_dir / MODEL).exists():
        (state_dir / "export").mkdir(exist_ok=True)
        shutil.copy2(files_dir / MODEL, state_dir / "export" / MODEL)
    return state_dir


# -- the report ---------------------------------------------------------------------------

def write_report(state_dir: str | Path, docs: str | Path, configs: str | Path) -> Path:
    """``docs/results.md`` from a campaign's state; plots to ``docs/results/``, run files to ``configs``."""
    state_dir, docs, configs = Path(state_dir), Path(docs), Path(configs)
    data = State(state_dir).data
    plots = docs / "results"
    plots.mkdir(parents=True, exist_ok=True)
    configs.mkdir(parents=True, exist_ok=True)
    hw = data.get("hardware", {})
    hw_text = ", ".join(f"{k} {v}" for k, v in hw.items())
    lines = ["# Results: the GPU campaign", "",
             "Written by `tympan train campaign-report` from the campaign's state "
             "(`campaign.json`); do not edit by hand. How the campaign is run: "
             "[gpu-campaign.md](gpu-campaign.md).", "",
             f"Hardware of the last call: {hw_text}.", "",
             "## Metric M(theta) of the protocol grid", "",
             "| split | sounds | seconds | sounds/s | sha256 (merged, float64) | sha256 (compact, float32) |",
             "|---|---|---|---|---|---|"]
    for name, st in data["stages"].items():
        if name.startswith("metric:"):
            rate = st.get("sounds_per_s")
            lines.append(f"| {name[7:]} | {st.get('sounds')} | {st.get('seconds', 0):.0f} | "
                         f"{rate:.1f} | `{st.get('sha256_full', '-')}` | `{st.get('sha256', '-')}` |"
                         if rate else f"| {name[7:]} | {st.get('status')} | | | | |")
    lines += ["", "## Reference runs, evaluated on the test split", "",
              "| run | loss | pitch | sounds trained | epochs | JTFS mean | MSS mean | P-loss | "
              "epoch s | samples/s (fit) | samples/s (step) | reproduce |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    params_rows = []
    for name, st in data["stages"].items():
        if not name.startswith("run:") or st.get("status") != "done":
            continue
        run = name[4:]
        shutil.copy2(state_dir / "configs" / f"{run}.toml", configs / f"{run}.toml")
        png = (state_dir / st["report"]).with_suffix(".png")
        if png.exists():
            shutil.copy2(png, plots / f"{run}.png")
        report = json.loads((state_dir / st["report"]).read_text())
        epoch = np.mean(st["epoch_s"]) if st["epoch_s"] else float("nan")
        lines.append(f"| {run} | {st['loss']} | {'known' if st['pitch_known'] else 'unknown'} | "
                     f"{st['n_train']} | {st['epochs_done']} | {st['jtfs_mean']:.4g} | "
                     f"{st['mss_mean']:.4g} | {st['p_loss']:.4g} | {epoch:.1f} | "
                     f"{st['samples_per_s']:.0f} | {st['step_samples_per_s']:.0f} | "
                     f"`tympan train fit --config "
                     f"{configs / (run + '.toml')}` |")
        params_rows.append(f"| {run} | " + " | ".join(
            f"{p['mae_nu']:.3f}" for p in report["parameters"].values()) + " |")
        names = list(report["parameters"])
    if params_rows:
        lines += ["", "Mean absolute error per parameter (normalized nu, in [-1, 1]):", "",
                  "| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += params_rows
        lines += ["", "Epoch s: mean epoch time, validation included. Samples/s (fit): "
                  "sounds trained over the whole fit (set-up, validation and checkpoints "
                  "included); (step): one "
                  "training step alone, from the probe (synthesis, CQT, forward, backward).",
                  "", "Each run: `tympan train evaluate runs/NAME/best.pt --split test` "
                  "(JSON, Markdown, and the error plots below)."]
        lines += [""] + [f"![{p.stem}](results/{p.name})" for p in sorted(plots.glob("*.png"))]
    best = data.get("best")
    if best:
        lines += ["", f"Shipped default: `{best['run']}` (lowest mean test JTFS distance, "
                  f"{best['jtfs_mean']:.4g}), {'float16' if best['half'] else 'float32'} weights, "
                  f"{best['bytes'] / 1e6:.1f} MB, sha256 `{best['sha256']}`."]
    pending = [n for n, s in data["stages"].items() if s.get("status") != "done"]
    if pending or not data.get("complete"):
        lines += ["", "Not finished: " + (", ".join(pending) if pending else "stages not started")]
    out = docs / "results.md"
    atomic_write(out, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return out


# -- command line ----------------------------------------------------------------------------

def campaign_main(argv: Sequence[str]) -> int:
    """``tympan train campaign``: run, pack or unpack a time-boxed campaign."""
    parser = OneLineParser(prog="tympan train campaign", description=(
        "Run a GPU campaign plan (metric, time-boxed reference runs, evaluation, export) for a "
        "given number of seconds, continuing from the state directory; or move that state "
        "between machines (--pack on the device, --unpack here)."))
    parser.add_argument("--plan", metavar="FILE", help="campaign plan (configs/gpu/campaign.toml)")
    parser.add_argument("--state", required=True, metavar="DIR", help="campaign state directory")
    parser.add_argument("--deadline-s", type=float, default=540.0, metavar="S",
                        help="seconds this call may run, packing included (540)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--pack", metavar="OUT", help="after running, write the state's parts, "
                        "the exported model and the log into OUT")
    parser.add_argument("--unpack", metavar="FILES", help="only rebuild --state from the parts "
                        "in FILES (a device call's files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.unpack:
        state = unpack(args.unpack, args.state)
        data = State(state).data
        done = [n for n, s in data["stages"].items() if s.get("status") == "done"]
        print(f"unpacked into {state}: done {', '.join(done) or 'nothing'}")
        return 0
    if not args.plan:
        raise ValueError("--plan FILE is needed to run a campaign (or --unpack FILES)")
    if not args.deadline_s > 0:
        raise ValueError(f"--deadline-s {args.deadline_s}: allowed a positive number of seconds")
    plan = load_plan(args.plan)
    log: list[str] = []

    def say(text: str) -> None:
        log.append(text)
        print(text, flush=True)

    code = 0
    try:
        data = run_campaign(plan, args.state, args.deadline_s, args.device,
                            progress=not args.quiet, say=say)
        failed = [n for n, s in data["stages"].items() if s.get("status") == "failed"]
        code = 1 if failed else 0
    except CampaignError as err:
        say(f"campaign stopped: {err}")
        code = 1
    finally:
        if args.pack:
            files = pack(args.state, args.pack, "\n".join(log) + "\n")
            print("packed: " + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)"
                                         for p in files))
    return code


def report_main(argv: Sequence[str]) -> int:
    """``tympan train campaign-report``: docs/results.md from a campaign's state."""
    parser = OneLineParser(prog="tympan train campaign-report", description=(
        "Write the campaign's evaluation table (docs/results.md), its plots and the run files "
        "as they ran (configs/gpu/ran/)."))
    parser.add_argument("--state", required=True, metavar="DIR")
    parser.add_argument("--docs", default="docs", metavar="DIR")
    parser.add_argument("--configs", default="configs/gpu/ran", metavar="DIR")
    args = parser.parse_args(argv)
    if not (Path(args.state) / STATE_FILE).exists():
        raise ValueError(f"{args.state} holds no {STATE_FILE}: run or unpack a campaign first")
    out = write_report(args.state, args.docs, args.configs)
    print(f"wrote {out}")
    return 0
