"""Training cost per loss: time per step and per epoch for P, PNP, MSS and JTFS.

Every loss runs the same full training step of the reference configuration
(render the batch with the twin, CQT features, EfficientNet-B0 forward and
backward, the loss, Adam), in one process, on the same hardware, one after
the other. PNP reads a precomputed metric (here a random positive definite
table written for the benchmark's cells: the step's cost does not depend on
the values); its one-off precompute is measured by ``bench_jtfs.py``.

Epoch time = step time x steps per epoch of the full training split at this
batch size (extrapolated, not run). Each step is also cut into the phases of
``Run.train_step`` (batch: render, augment, CQT features, M; forward; loss;
backward; optimizer), with the CQT front end timed apart on the same batch,
so the table says where the time goes. Prints a table and the ratios PNP/P and
JTFS/PNP (the published claim: PNP costs about what P-loss costs and is about
100x faster than DDSP with JTFS); writes JSON.

    python benchmarks/bench_train.py [--batch 16] [--steps 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _common import ROOT, machine_base, write_json

LOSSES = ("p", "pnp", "mss", "jtfs")
PHASES = ("batch", "forward", "loss", "backward", "optimizer")   # Run.train_step's


def _metric_file(cfg, dirname: Path) -> None:
    """A random SPD metric for every train and val cell of the run (timing stand-in)."""
    from training.data import Split
    from synth.files import atomic_savez
    from training.shard_headers import json_array

    rng = np.random.default_rng(0)
    for split, limit in (("train", cfg.data.n_train), ("val", cfg.data.n_val)):
        ids = Split(cfg, split, limit).ids
        a = rng.standard_normal((len(ids), 5, 5))
        M = a @ a.transpose(0, 2, 1) + np.eye(5)
        header = {"phi": cfg.metric.phi, "sr": cfg.data.sr, "n_samples": cfg.data.n_samples,
                  "protocol": cfg.data.protocol.to_dict(), "jtfs": {}}
        atomic_savez(dirname / f"metric-{split}.npz", cell_ids=ids, nu=cfg.data.protocol.nu(ids),
                     theta=cfg.data.protocol.theta(ids), M=M, eigvals=np.linalg.eigvalsh(M),
                     header=json_array(header))


def time_loss(loss: str, batch: int, steps: int, device: str, tmp: Path) -> dict:
    import torch

    from training.config import TrainConfig
    from training.trainer import Run

    cfg = TrainConfig(name=f"bench-{loss}", loss=loss)
    cfg = replace(cfg, data=replace(cfg.data, batch_size=batch, n_train=batch * (steps + 1),
                                    n_val=batch),
                  metric=replace(cfg.metric, dir=str(tmp)),
                  log=replace(cfg.log, dir=str(tmp), progress=False, tensorboard=False))
    if loss == "pnp":
        _metric_file(cfg, tmp)
    run = Run(cfg, 0, 1, torch.device(device))
    batches = [ids for _, ids in run.train.epoch_batches(0)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run.train_step(batches[0])           # warm-up: allocations, kernel caches
    sync()
    times, phases = [], {name: [] for name in PHASES}

    @contextlib.contextmanager
    def clock(name: str):
        sync()
        t = time.perf_counter()
        yield
        sync()
        phases[name].append(time.perf_counter() - t)

    for ids in batches[1:steps + 1]:
        t0 = time.perf_counter()
        run.train_step(ids, clock)
        sync()
        times.append(time.perf_counter() - t0)
    # The CQT front end's share of "batch": the same features of one rendered batch.
    with torch.no_grad():
        audio = run.renderer.twin.from_nu(torch.as_tensor(
            cfg.data.protocol.nu(batches[1]), device=run.device)).float()
        run.renderer.features(audio)
        cqt = []
        for _ in range(steps):
            sync()
            t = time.perf_counter()
            run.renderer.features(audio)
            sync()
            cqt.append(time.perf_counter() - t)
    per_epoch = 82224 // batch        # full reference training split
    step = float(np.median(times))
    phase_s = {name: float(np.median(v)) for name, v in phases.items()}
    phase_s["cqt_in_batch"] = float(np.median(cqt))
    return {"loss": loss, "batch": batch, "steps_timed": len(times), "step_s": step,
            "step_s_all": times, "samples_per_s": batch / step, "phase_s": phase_s,
            "steps_per_epoch": per_epoch, "epoch_s": step * per_epoch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per loss (median)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/bench_train.json")
    args = ap.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    losses = [s for s in args.losses.split(",") if s]
    bad = sorted(set(losses) - set(LOSSES))
    if bad:
        raise SystemExit(f"bench_train: unknown losses {bad}; allowed {', '.join(LOSSES)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for loss in losses:
            r = time_loss(loss, args.batch, args.steps, args.device, Path(tmp))
            results.append(r)
            print(f"  {loss:5s} {r['step_s']:8.3f} s/step", flush=True)
    by = {r["loss"]: r for r in results}
    ratios = {}
    if "p" in by and "pnp" in by:
        ratios["pnp_over_p"] = by["pnp"]["step_s"] / by["p"]["step_s"]
    if "pnp" in by and "jtfs" in by:
        ratios["jtfs_over_pnp"] = by["jtfs"]["step_s"] / by["pnp"]["step_s"]
    if "pnp" in by and "mss" in by:
        ratios["mss_over_pnp"] = by["mss"]["step_s"] / by["pnp"]["step_s"]
    info = machine_base(("synth", "matcher", "training"))
    info.update(torch=torch.__version__, threads=torch.get_num_threads(), device=args.device)
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    doc = {"machine": info, "results": results, "ratios": ratios}
    print()
    print(f"Training step, batch {args.batch}, {args.device} ({info.get('gpu', info['cpu_model'])}, "
          f"{info['threads']} threads)")
    print(f"{'loss':6s} {'s/step':>9s} {'samples/s':>10s} {'epoch (h, extrapolated)':>24s}")
    for r in results:
        print(f"{r['loss']:6s} {r['step_s']:9.3f} {r['samples_per_s']:10.1f} "
              f"{r['epoch_s'] / 3600:24.2f}")
    print("\nWhere a step's time goes, s (median per phase; batch = render the twin, "
          "augment, CQT features, look up M; of it, the CQT alone):")
    print(f"{'loss':6s} " + " ".join(f"{p:>10s}" for p in PHASES) + f" {'(cqt)':>10s}")
    for r in results:
        ph = r["phase_s"]
        print(f"{r['loss']:6s} " + " ".join(f"{ph[p]:10.3f}" for p in PHASES)
              + f" {ph['cqt_in_batch']:10.3f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    write_json(args.json, doc)
    print(json.dumps({"ratios": ratios, "step_s": {r['loss']: r['step_s'] for r in results}}))


if __name__ == "__main__":
    main()
