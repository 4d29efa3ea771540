"""The campaign's stages: preflight, ``metric:{split}`` and ``run:{name}``, each a StageRecord.

A run is time-boxed: a probe of a few steps measures the step and validation
times, the epochs (or, when not even one fits, a training subset) are chosen
to fit its budget, with ``[optim] max_seconds`` as a backstop. It is then
evaluated on the test split and exported when it is the best so far.
Checkpoints (64 MB with Adam's state) never leave the device, so a run is
fitted, evaluated and exported in one call.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
# Imported here, not in toml_text: a device without it fails at start, not after a fit.
import tomli_w

from synth.files import atomic_savez, atomic_write_text, file_sha256

from .plan import MetricPlan, Plan, RunPlan
from .state import CampaignError, MetricRecord, RunRecord, StageRecord, State

__all__ = ["MODEL", "Clock", "metric_stage", "preflight", "run_stage", "toml_text"]

MODEL = "default.tympan"


class Clock:
    """Seconds left before a call's deadline, less the margin kept for packing."""

    def __init__(self, seconds: float, margin: float):
        self.end = time.monotonic() + seconds - margin

    def left(self) -> float:
        return self.end - time.monotonic()


def halving_on_oom(work: Callable[[int], Any], batch: int) -> tuple[Any, int]:
    """``work(batch)``, retried with half the batch while the GPU runs out of memory.

    Returns
    -------
    result, batch
        What ``work`` returned and the batch that worked.
    """
    import torch

    while True:
        try:
            return work(batch), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()


def metric_stage(plan: MetricPlan, split: str, state: State, device: str, clock: Clock,
                 progress: bool) -> StageRecord:
    """M(theta) of ``split`` in resumable shards until ``clock`` runs out; merged when all are done.

    The finished metric is compacted to what training reads (cell ids and
    float32 M) in ``DIR/metric/metric-{split}.npz``; the sha256 of the merged
    file and of the compact one are recorded, and the shards are dropped.
    """
    from ..metric_job import MetricJob, merge_metric, run_metric, shard_path
    from ..protocol import Protocol

    job = MetricJob(split, Protocol(), plan.shard_size, plan.limit or None, plan.dtype,
                    plan.phi, n_samples=plan.n_samples)
    work = state.root / "metric-work"
    t0 = time.perf_counter()
    # Finished shards are kept across a retry; the rest is redone with smaller passes.
    done, batch = halving_on_oom(
        lambda b: run_metric(job, work, device=device, batch=b, progress=progress,
                             deadline=time.monotonic() + clock.left()), plan.batch)
    seconds = time.perf_counter() - t0
    n_done = sum(len(job.shard_cells(i)) for i in done)
    prev = state.stage(f"metric:{split}")         # an earlier call's partial work
    total_s = ((prev.seconds or 0.0) if prev is not None else 0.0) + seconds
    total_n = (prev.metric.sounds_computed if prev is not None and prev.metric else 0) + n_done
    finished = sum(shard_path(work / split, i).exists() for i in range(job.n_shards))
    info = MetricRecord(sounds_computed=total_n, sounds=job.n_sounds,
                        sounds_per_s=total_n / total_s if total_s > 0 else None,
                        shards=f"{finished}/{job.n_shards}", batch=batch, phi=plan.phi)
    if finished < job.n_shards:
        return StageRecord("partial", total_s, metric=info)
    full = merge_metric(split, work)
    out = state.root / "metric" / f"metric-{split}.npz"
    out.parent.mkdir(exist_ok=True)
    with np.load(full, allow_pickle=False) as f:
        ids, M, header = f["cell_ids"], f["M"], f["header"]
    # What MetricTable reads; float32 is the precision training uses anyway.
    atomic_savez(out, cell_ids=ids.astype(np.int64), M=M.astype(np.float32), header=header)
    info = replace(info, sha256_full=file_sha256(full), bytes_full=full.stat().st_size,
                   sha256=file_sha256(out), bytes=out.stat().st_size,
                   file=str(out.relative_to(state.root)))
    shutil.rmtree(work / split)
    full.unlink()
    return StageRecord("done", total_s, metric=info)


def toml_text(d: dict[str, Any], header: str = "") -> str:
    """A run configuration (``TrainConfig.to_dict()``) as TOML, ``header`` as leading comments.

    Raises
    ------
    ValueError
        A value TOML cannot hold (None, an object).
    """
    try:
        body = tomli_w.dumps(d)
    except TypeError as err:
        raise ValueError(f"no TOML form: {err}") from None
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def _probe(cfg: Any, device: Any, steps: int) -> dict[str, float]:
    """Seconds per training step and per validation pass of ``cfg`` on ``device``."""
    import torch

    from ..trainer import Run

    run = Run(cfg, 0, 1, device)
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
    from ..data import Split

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


def run_stage(run: RunPlan, state: State, device: str, half: bool, progress: bool
              ) -> StageRecord:
    """Probe, size, fit, evaluate on test and (when best so far) export one reference run.

    The run file as it ran goes to ``DIR/configs/{name}.toml`` (sized epochs,
    no clock), the best model to ``DIR/export/default.tympan``.
    """
    import torch

    from ..config import load_config
    from ..data import Split
    from ..evaluate import evaluate
    from ..model_export import export
    from ..trainer import fit, load_checkpoint

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
    summary, batch = halving_on_oom(
        lambda b: evaluate(run_dir / "best.pt", "test", run.eval_limit, b, device, run_dir,
                           progress=progress, plot=True), run.eval_batch)
    eval_s = time.perf_counter() - t0
    record = RunRecord(
        config=run.config, loss=sized.loss, pitch_known=sized.pitch_known,
        budget_s=run.budget_s, probe=probe, n_train=len(Split(sized, "train", sized.data.n_train)),
        batch_size=sized.data.batch_size, epochs_planned=sized.optim.epochs,
        epochs_done=len(epochs), steps=steps, fit_s=fit_s, epoch_s=epochs,
        samples_per_s=steps * sized.data.batch_size / fit_s,
        step_samples_per_s=sized.data.batch_size / probe["step_s"], best_step=ck["step"],
        eval_s=eval_s, eval_batch=batch, eval_sounds=summary["n_sounds"],
        jtfs_mean=summary["jtfs_distance"]["mean"], mss_mean=summary["mss_distance"]["mean"],
        p_loss=summary["p_loss"],
        report=str((run_dir / "eval-test-best.json").relative_to(state.root)))
    best = state.data.get("best")
    if best is None or record.jtfs_mean < best["jtfs_mean"]:
        path = export(run_dir / "best.pt", state.root / "export" / MODEL,
                      run_dir / "eval-test-best.json", half=half)
        from matcher.model import MatcherModel
        MatcherModel.load(path)        # it must load before it counts
        state.data["best"] = {"run": run.name, "jtfs_mean": record.jtfs_mean,
                              "sha256": file_sha256(path), "bytes": path.stat().st_size,
                              "half": half}
        record = replace(record, exported=True)
    # Probe, set-up and export: what a call must allow beyond fitting and evaluation.
    record = replace(record, overhead_s=time.perf_counter() - t_stage - fit_s - eval_s)
    return StageRecord("done", run=record)


def preflight(plan: Plan, device: str) -> StageRecord:
    """Every code path on the device in a scratch directory: seconds, not minutes.

    The tiny configs are fitted once per loss, evaluated, exported at the
    plan's precision and loaded back, so a broken environment costs seconds,
    not a call.

    Raises
    ------
    CampaignError
        The exported tiny model predicts non-finite parameters.
    """
    import torch

    from matcher.model import MatcherModel

    from ..config import load_config
    from ..evaluate import evaluate
    from ..model_export import export
    from ..metric_job import MetricJob, run_metric
    from ..protocol import Protocol
    from ..trainer import fit

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny"
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
    return StageRecord("done", time.perf_counter() - t0)
