"""Speed of Tympan's JTFS (``matcher.jtfs``) and metric M against the kymatio-dev reference.

Run from the repository root::

    .venv/bin/python benchmarks/bench_jtfs.py --quick    # N=2**13 configuration, 1-2 minutes
    .venv/bin/python benchmarks/bench_jtfs.py            # reference configuration, ~10-15 minutes
    .venv/bin/python benchmarks/bench_jtfs.py --threads 1 --ref-timeout 3600 --json /tmp/j.json

One run, one input, one configuration for both sides: 4 sounds ``MembraneTwin(22050,
N).from_nu(nu)``, ``nu`` seeded uniform in [-0.8, 0.8]^5, rendered in float64 and cast to
float32; ``JTFSConfig()`` (N=2**16, J=13, Q=(12, 1), J_fr=4, Q_fr=1, F=24, T global, format
'time') or, with ``--quick``, N=2**13, J=9, Q=(8, 1), J_fr=3, F=16; float32; the same torch
thread count (``--threads``, default 2) in Tympan and in the reference's child process.

1. JTFS forward per sound, batches 1 and 4: ``JTFS(cfg)(x)`` under ``inference_mode`` (best
   of several runs after a warm-up) against ``tests/jtfs_reference.reference_jtfs`` (best of
   its repeats; process start-up and filter build excluded).
2. M per sound: ``matcher.metric.metric(nu, twin, JTFS(cfg).phi)`` (forward-mode Jacobian
   ``[P, 5]``, then ``J^T J``), batches 1 and 4, against ``reference_jacobian_time`` (Jacobian
   of ``log1p(S / 1e-3)`` of the same twin, one sound: it loops sound by sound, so its time
   per sound is the same for any batch; ``J^T J`` adds microseconds). Past ``--ref-timeout``
   the reference time is a lower bound (timeout minus its start-up and build) and so is the
   ratio; a target judged on a lower bound below it reads UNDECIDED.
3. Equality: Tympan S against the reference S on the same 4 sounds, float64 and float32 (max
   elementwise relative difference; max |dS| / max |S_ref|).
4. Throughput (sounds/s, best batch) on CPU and, when torch sees a GPU, on CUDA (batches up
   to 32, synchronized), with the time of the 10^5-sound grid = 100000 / throughput.

Targets: forward >= 20x and M >= 50x faster than the reference on this CPU (judged on the
ratio at batch 1, the CPU default of ``tympan train metric``); M >= 200 sounds/s on one H100.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine_base, write_json  # noqa: E402  (puts the repository on sys.path)

sys.path.insert(0, str(ROOT / "tests"))
import torch  # noqa: E402
from jtfs_reference import JAC_MODES, reference_jacobian_time, reference_jtfs  # noqa: E402

from matcher.jtfs import JTFS, JTFSConfig  # noqa: E402
from synth.twin import MembraneTwin  # noqa: E402
from matcher.metric import metric  # noqa: E402

SR = 22050.0
QUICK = JTFSConfig(N=2**13, J=9, Q1=8, J_fr=3, F=16)   # the reference accepts it (N_fr = 144)
BATCHES = (1, 4)
GPU_BATCHES = (1, 4, 16, 32)
GRID = 100_000
TARGET_FWD, TARGET_M, TARGET_GPU_M = 20.0, 50.0, 200.0


def best_time(fn, runs: int, warmup: int = 1, sync=lambda: None) -> tuple[float, float]:
    """(best, median) wall time of ``fn()`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def ref_config(cfg: JTFSConfig, dtype: str, threads: int, repeats: int = 1) -> dict:
    return {"N": cfg.N, "J": cfg.J, "Q": [cfg.Q1, cfg.Q2], "J_fr": cfg.J_fr, "Q_fr": cfg.Q_fr,
            "T": "global", "F": cfg.F, "format": "time", "dtype": dtype, "threads": threads,
            "repeats": repeats}


def rel_diff(a: np.ndarray, ref: np.ndarray) -> dict:
    d = np.abs(a - ref)
    return {"max_elementwise": float((d / np.maximum(np.abs(ref), 1e-300)).max()),
            "max_over_max": float(d.max() / np.abs(ref).max())}


def tympan_times(jtfs: JTFS, twin: MembraneTwin, x: torch.Tensor, nu: torch.Tensor,
                 batches, runs: int, m_runs: int, sync=lambda: None) -> list[dict]:
    rows = []
    for b in batches:
        with torch.inference_mode():
            fb, fm = best_time(lambda: jtfs(x[:b]), runs, 1, sync)
        mb, mm = best_time(lambda: metric(nu[:b], twin, jtfs.phi), m_runs, 1, sync)
        rows.append({"batch": b, "fwd_s": fb / b, "fwd_median_s": fm / b,
                     "m_s": mb / b, "m_median_s": mm / b})
    return rows


def run_reference(cfg, x32, nu, opts) -> dict:
    """Reference forward (float32, per batch; float64 for equality) and Jacobian time."""
    res: dict = {"forward": []}
    overhead = 0.0
    for b in BATCHES:
        t0 = time.perf_counter()
        r = reference_jtfs(x32[:b].astype(np.float64), ref_config(cfg, "float32", opts.threads,
                                                                  opts.ref_repeats), timeout=7200)
        wall = time.perf_counter() - t0
        overhead = max(overhead, wall - r["first_forward_s"]
                       - (opts.ref_repeats - 1) * r["forward_s"])
        res["forward"].append({"batch": b, "fwd_s": r["forward_s"] / b, "build_s": r["build_s"],
                               "first_forward_s": r["first_forward_s"] / b})
        if b == max(BATCHES):
            res["S32"] = r["S"]
        print(f"  reference forward, batch {b}: {r['forward_s'] / b:.3f} s/sound", flush=True)
    res["startup_and_build_s"] = overhead
    res["S64"] = reference_jtfs(x32.astype(np.float64), ref_config(cfg, "float64", opts.threads),
                                timeout=7200)["S"]
    print(f"  reference forward done ({time.perf_counter() - opts.t_start:.0f} s); "
          f"Jacobian (timeout {opts.ref_timeout:g} s) ...", flush=True)
    try:
        jr = reference_jacobian_time({k: v for k, v in ref_config(cfg, "float32", opts.threads)
                                      .items() if k != "repeats"}, nu[:1].astype(np.float64),
                                     mode=opts.ref_mode, sr=SR, eps=cfg.eps,
                                     timeout=opts.ref_timeout)
        res["jac"] = {"per_sound_s": jr["per_sound_s"], "mode": jr["mode"], "lower_bound": False,
                      "failed_modes": jr["errors"]}
    except RuntimeError as err:
        if "timed out" not in str(err):
            res["jac"] = {"error": str(err)[-2000:]}
        else:
            res["jac"] = {"per_sound_s": max(opts.ref_timeout - overhead, 0.0),
                          "mode": opts.ref_mode, "lower_bound": True}
    return res


def gpu_rows(cfg: JTFSConfig, opts, dev: str = "cuda") -> dict:
    jtfs, twin = JTFS(cfg).to(dev), MembraneTwin(sr=SR, n_samples=cfg.N).to(dev)
    nu = torch.as_tensor(np.random.default_rng(opts.seed).uniform(-0.8, 0.8, (
        max(GPU_BATCHES), 5)), dtype=torch.float32, device=dev)   # rows 0-3: the CPU input
    with torch.inference_mode():
        x = twin.from_nu(nu)
    rows = []
    for b in GPU_BATCHES:
        try:
            rows += tympan_times(jtfs, twin, x, nu, (b,), opts.runs, opts.m_runs,
                                 torch.cuda.synchronize)
        except torch.cuda.OutOfMemoryError:
            print(f"  CUDA batch {b}: out of memory, skipped")
            torch.cuda.empty_cache()
    return {"name": torch.cuda.get_device_name(0), "rows": rows}


def _dur(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_snapshot() -> dict:
    """Wall time, all-CPU busy and steal seconds (/proc/stat), own CPU time (children too)."""
    t = os.times()
    out = {"wall": time.monotonic(), "own": t.user + t.system + t.children_user + t.children_system}
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["busy"] = sum(int(f[i]) for i in (1, 2, 3, 6, 7)) / tick
        out["steal"] = int(f[8]) / tick
    except (OSError, ValueError, IndexError):
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller shared configuration "
                    "(N=2**13, J=9, Q1=8, J_fr=3, F=16): a few minutes")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/bench_jtfs.json",
                    help="where to write the JSON results (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, Tympan and the "
                    "reference alike (default: %(default)s)")
    ap.add_argument("--ref-timeout", type=float, default=1800.0, help="seconds allowed to the "
                    "reference Jacobian; past it its time is a lower bound (default: %(default)s)")
    ap.add_argument("--ref-mode", default="auto", choices=("auto", *JAC_MODES),
                    help="the reference's AD mode (default: %(default)s)")
    ap.add_argument("--no-reference", action="store_true", help="Tympan only (e.g. on a GPU box)")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args(argv)
    opts.t_start = time.perf_counter()
    snap0 = cpu_snapshot()
    opts.runs, opts.m_runs = (5, 3) if opts.quick else (3, 2)
    opts.ref_repeats = 3 if opts.quick else 2
    cfg = QUICK if opts.quick else JTFSConfig()
    torch.set_num_threads(opts.threads)

    info = machine_base(("matcher", "training", "synth"))
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    jtfs, twin = JTFS(cfg), MembraneTwin(sr=SR, n_samples=cfg.N)
    print(f"Tympan JTFS benchmark  {info['date_utc']}  ({'quick' if opts.quick else 'full'})")
    print(f"CPU: {info['cpu_model']}, {info['logical_cpus']} logical CPUs; torch {info['torch']}, "
          f"numpy {info['numpy']}, python {info['python']}, commit {info.get('git_commit', '?')}")
    print(f"Reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
    print(f"Configuration (both sides): N={cfg.N}, J={cfg.J}, Q=({cfg.Q1}, {cfg.Q2}), "
          f"J_fr={cfg.J_fr}, Q_fr={cfg.Q_fr}, F={cfg.F}, T=global, format=time; "
          f"N_pad={jtfs.n_pad}, N_fr={jtfs.n_fr}, P={jtfs.n_paths} paths; float32; "
          f"torch threads {opts.threads} (Tympan and reference)")
    rng = np.random.default_rng(opts.seed)
    nu64 = torch.as_tensor(rng.uniform(-0.8, 0.8, (max(BATCHES), 5)))
    with torch.inference_mode():
        x64 = twin.from_nu(nu64)
    x32, nu32 = x64.float(), nu64.float()
    print(f"Input: {max(BATCHES)} membrane-twin sounds, nu ~ U[-0.8, 0.8]^5 (seed {opts.seed})\n",
          flush=True)

    rows = tympan_times(jtfs, twin, x32, nu32, BATCHES, opts.runs, opts.m_runs)
    with torch.inference_mode():
        s32, s64 = jtfs(x32).double().numpy(), jtfs(x32.double()).numpy()
    print(f"  Tympan done ({time.perf_counter() - opts.t_start:.0f} s): " + ", ".join(
        f"batch {r['batch']}: forward {r['fwd_s']:.4f}, M {r['m_s']:.3f} s/sound" for r in rows)
        + "; reference ...", flush=True)
    ref, ref_error = None, None
    try:
        if not opts.no_reference:
            ref = run_reference(cfg, x32.numpy(), nu32.numpy(), opts)
    except RuntimeError as err:   # a failed reference forward: report Tympan alone
        ref_error = str(err).strip().splitlines()[-1][:400]
        print(f"  reference forward FAILED: {ref_error}")
    gpu = gpu_rows(cfg, opts) if torch.cuda.is_available() else None

    jac = ref["jac"] if ref else {}
    lb = jac.get("lower_bound", False)
    ge = ">= " if lb else ""
    print(f"\n{'':22}{'batch':>5}  {'Tympan s/sound':>14}  {'reference s/sound':>22}  "
          f"{'ratio ref/Tympan':>17}")
    for r in rows:
        rf = next(f for f in ref["forward"] if f["batch"] == r["batch"]) if ref else None
        r["fwd_ratio"] = rf["fwd_s"] / r["fwd_s"] if rf else None
        print(f"{'JTFS forward':22}{r['batch']:>5}  {r['fwd_s']:>14.4f}  "
              f"{format(rf['fwd_s'], '.3f') if rf else 'n/a':>22}  "
              f"{format(r['fwd_ratio'], '.1f') + 'x' if rf else 'n/a':>17}")
    for r in rows:
        ok = "per_sound_s" in jac
        r["m_ratio"] = jac["per_sound_s"] / r["m_s"] if ok else None
        label = f"{ge}{jac['per_sound_s']:.2f} ({jac['mode']})" if ok else "n/a"
        print(f"{'M = J^T J (float32)':22}{r['batch']:>5}  {r['m_s']:>14.3f}  {label:>22}  "
              f"{(ge + format(r['m_ratio'], '.1f') + 'x') if ok else 'n/a':>17}")
    if ref:
        print("  reference M: one sound (it loops sound by sound: the same per sound at any batch)"
              + (f"; timed out after {opts.ref_timeout:g} s: its time and the M ratios are LOWER "
                 f"BOUNDS (timeout minus {ref['startup_and_build_s']:.0f} s start-up and build)"
                 if lb else "") + (f"; FAILED: {jac['error'].strip().splitlines()[-1][:400]}"
                                       if "error" in jac else ""))
    tput = {"fwd": 1 / min(r["fwd_s"] for r in rows), "m": 1 / min(r["m_s"] for r in rows)}
    print(f"\nThroughput CPU (threads={opts.threads}, float32, best batch): forward "
          f"{tput['fwd']:.2f} sounds/s, M {tput['m']:.3f} sounds/s -> 10^5 grid: M "
          f"{_dur(GRID / tput['m'])} (forward {_dur(GRID / tput['fwd'])})")
    if gpu:
        for r in gpu["rows"]:
            print(f"  CUDA {gpu['name']}, batch {r['batch']:>2}: forward {1 / r['fwd_s']:.1f} "
                  f"sounds/s, M {1 / r['m_s']:.1f} sounds/s")
        gpu["m_tput"] = max((1 / r["m_s"] for r in gpu["rows"]), default=0.0)
        print(f"Throughput CUDA (best batch): M {gpu['m_tput']:.1f} sounds/s -> 10^5 grid: "
              f"{_dur(GRID / max(gpu['m_tput'], 1e-12))}")
    else:
        print("Throughput CUDA: not measured: no GPU")

    eq = {"float32": rel_diff(s32, ref["S32"]), "float64": rel_diff(s64, ref["S64"])} if ref else {}
    for k, d in eq.items():
        print(f"Equality {k} (Tympan vs reference S, {max(BATCHES)} sounds x {s32.shape[1]} "
              f"paths): max |dS|/|S_ref| = {d['max_elementwise']:.2e}, max |dS| / max |S_ref| = "
              f"{d['max_over_max']:.2e}")

    print()
    goals = []
    if ref:
        # Judged at batch 1: the CPU default of `tympan train metric` (larger batches
        # only spill caches on a CPU); every batch's ratio is in the table above.
        f_min = next(r["fwd_ratio"] for r in rows if r["batch"] == 1)
        goals.append((_verdict(f_min >= TARGET_FWD), f"forward >= {TARGET_FWD:g}x faster than the "
                      f"reference: measured {f_min:.1f}x (batch 1)"))
        if "per_sound_s" in jac:
            m_min = next(r["m_ratio"] for r in rows if r["batch"] == 1)
            v = "UNDECIDED" if lb and m_min < TARGET_M else _verdict(m_min >= TARGET_M)
            goals.append((v, f"M >= {TARGET_M:g}x faster than the reference: measured {ge}"
                          f"{m_min:.1f}x{' (LOWER BOUND: reference timed out)' if lb else ''}"))
        else:
            goals.append(("NOT MEASURED", f"M >= {TARGET_M:g}x faster than the reference: "
                          "the reference Jacobian failed, no ratio"))
    else:
        goals.append(("SKIPPED" if opts.no_reference else "NOT MEASURED", "forward and M "
                      f"ratios: {'--no-reference' if opts.no_reference else 'reference failed'}"))
    if gpu:
        h100 = "H100" in gpu["name"]
        goals.append((_verdict(gpu["m_tput"] >= TARGET_GPU_M) if h100 else "NOT JUDGED",
                      f">= {TARGET_GPU_M:g} sounds/s for M on an H100: measured "
                      f"{gpu['m_tput']:.1f} sounds/s on {gpu['name']}"))
    else:
        goals.append(("NOT MEASURED", f">= {TARGET_GPU_M:g} sounds/s for M on an H100: "
                      "not measured: no GPU"))
    for v, text in goals:
        print(f"{v}: {text}")
    elapsed = time.perf_counter() - opts.t_start
    snap1 = cpu_snapshot()
    if "busy" in snap0 and "busy" in snap1:
        wall = snap1["wall"] - snap0["wall"]
        load = {"other_processes_cores": max(snap1["busy"] - snap0["busy"] - snap1["own"]
                                             + snap0["own"], 0.0) / wall,
                "steal_cores": (snap1["steal"] - snap0["steal"]) / wall}
        info.update(load)
        print(f"Other processes used {load['other_processes_cores']:.2f} cores on average, "
              f"hypervisor steal {load['steal_cores']:.2f} cores (of {os.cpu_count()}).")
        if load["other_processes_cores"] > 0.1 or load["steal_cores"] > 0.1:
            print("WARNING: the machine was busy with other work; timings are not the code's "
                  "own. Run again on a quiet machine.")
    print(f"\nTotal benchmark time {elapsed:.0f} s")

    for k in ("S32", "S64"):
        (ref or {}).pop(k, None)
    doc = {"machine": info, "config": {**ref_config(cfg, "float32", opts.threads),
                                       "P": jtfs.n_paths},
           "quick": opts.quick, "seed": opts.seed, "tympan_cpu": rows, "reference": ref,
           "reference_error": ref_error,
           "throughput_cpu": tput, "cuda": gpu, "equality": eq,
           "targets": [{"verdict": v, "text": t} for v, t in goals], "elapsed_s": elapsed,
           "command": shlex.join([sys.executable, *sys.argv])}
    write_json(opts.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
