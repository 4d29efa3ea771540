"""Matching speed: time per file for encoder-only and for refinement; model load apart.

What a user waits for after dropping a 3-second hit (the model's 2^16 samples
at 22050 Hz = 2.97 s), measured on real GMRockKit files (hydrogen-data) and
on the bundled examples:

model load
    ``Matcher(...)``: read the artifact, build the CQT kernels and the JTFS
    filters (once per process; reported apart, not in the per-file times).
prepare
    Read the file, downmix, resample to 22050 Hz, align to the onset, trim,
    peak-normalize (:func:`matcher.audio.load_hit`).
encode
    Log-CQT and EfficientNet-B0 forward: the encoder's estimate.
encoder-only
    prepare + encode + render of the match (the parameters and the sound).
default match
    ``tympan match``'s default (the search: encoder, dense index, pitch,
    re-ranked by JTFS distance, scored) within ``--budget-ms`` (target: 2 s p50).
refine
    Adam on the multi-scale spectral distance from the encoder's estimate,
    with what ``--budget-ms`` leaves (the budget covers the whole match;
    reported as the time actually spent and the steps taken).
distances
    The JTFS and MSS distances that ``tympan match`` prints (scoring only).
waveform -> nu, per backend
    ``MatcherModel.predict_nu`` on a prepared hit (CQT + network), with the
    torch backend and the ONNX Runtime one (``MODEL.onnx`` beside the model)
    side by side, interleaved hit by hit so that a busy machine slows both
    alike; p50/p95, their ratio and the largest |nu| difference between them.

Each stage is timed over every file after one warm-up file; p50 and p95 are
printed. The targets: encoder-only <= 50 ms per 3-second hit on this CPU, and
waveform -> nu <= 25 ms (on 2 cores, the backend ``Matcher`` uses).
``--device cuda`` times the same on a GPU. Prints a table, writes JSON.

    python benchmarks/bench_match.py [--repeats 3] [--budget-ms 1000] [--device cpu]
    python benchmarks/bench_match.py --backends-only [--backend-repeats 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import GMROCKKIT, ROOT, example_hits, gmrockkit_hits, machine_base, write_json

TARGET_MS = 50.0
WAVEFORM_TO_NU_MS = 25.0


def _stats(v: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
            "mean_ms": float(np.mean(v)), "min_ms": float(np.min(v)), "n": len(v)}


def time_backends(model_path, hits: list[np.ndarray], repeats: int) -> dict:
    """``predict_nu`` per hit on the torch and ONNX backends, interleaved; p50/p95, ratio."""
    import time as _time

    from matcher.model import DEFAULT_MODEL, MatcherModel

    path = model_path or DEFAULT_MODEL
    models = {"torch": MatcherModel.load(path, backend="torch")}
    try:
        models["onnx"] = MatcherModel.load(path, backend="onnx")
    except ValueError as err:
        print(f"ONNX backend not timed: {err}")
    for m in models.values():                       # warm-up: CQT kernels, first allocations
        m.predict_nu(hits[0])
    times: dict[str, list[float]] = {k: [] for k in models}
    diff = 0.0
    for rep in range(repeats):
        order = list(models) if rep % 2 == 0 else list(models)[::-1]
        for h in hits:
            out = {}
            for name in order:
                t = _time.perf_counter()
                out[name] = models[name].predict_nu(h)
                times[name].append(1e3 * (_time.perf_counter() - t))
            if "onnx" in out:
                diff = max(diff, float((out["onnx"] - out["torch"]).abs().max()))
    doc = {name: _stats(v) for name, v in times.items()}
    if "onnx" in doc:
        doc["torch_over_onnx_p50"] = doc["torch"]["p50_ms"] / doc["onnx"]["p50_ms"]
        doc["max_abs_nu_diff"] = diff
        doc["onnx_threads"] = models["onnx"].onnx.session.get_session_options().intra_op_num_threads
    return doc


def print_backends(doc: dict, threads: int) -> None:
    print(f"\nwaveform -> nu per 3-second hit ({threads} threads; interleaved):")
    print(f"{'backend':<8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'min ms':>8} {'n':>5}")
    for k in ("torch", "onnx"):
        if k in doc:
            s = doc[k]
            print(f"{k:<8} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['mean_ms']:>8.1f} "
                  f"{s['min_ms']:>8.1f} {s['n']:>5}")
    if "onnx" in doc:
        p50 = doc["onnx"]["p50_ms"]
        print(f"torch / onnx p50: {doc['torch_over_onnx_p50']:.2f}x; max |nu| difference "
              f"{doc['max_abs_nu_diff']:.1e}; onnx p50 {p50:.1f} ms vs the "
              f"{WAVEFORM_TO_NU_MS:g} ms target -> {'PASS' if p50 <= WAVEFORM_TO_NU_MS else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch and ONNX Runtime CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the files (default 3)")
    ap.add_argument("--budget-ms", type=float, default=2000.0,
                    help="whole-match budget of the default match and of refinement (2000)")
    ap.add_argument("--refine-files", type=int, default=6,
                    help="files refined (each costs the budget; default 6)")
    ap.add_argument("--model", help="matcher artifact (default: the shipped model)")
    ap.add_argument("--real", default=GMROCKKIT, metavar="DIR")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_match.json")
    ap.add_argument("--backend-repeats", type=int, default=10,
                    help="passes over the files for waveform -> nu per backend (default 10)")
    ap.add_argument("--backends-only", action="store_true",
                    help="time only waveform -> nu per backend (CPU)")
    args = ap.parse_args()

    import torch

    from matcher.audio import load_hit
    from matcher.match import Matcher

    torch.set_num_threads(args.threads)
    files = gmrockkit_hits(args.real, required=False) + example_hits()
    if not files:
        raise SystemExit("no hits to time")
    if args.backends_only:
        from matcher.audio import AudioConfig
        from matcher.model import DEFAULT_MODEL, MatcherModel
        fc = MatcherModel.load(args.model or DEFAULT_MODEL, backend="torch").feature_config
        hits = [load_hit(f, AudioConfig(sr=float(fc.sr), n_samples=int(fc.n_samples))).audio
                for f in files]
        backends = time_backends(args.model, hits, args.backend_repeats)
        write_json(args.json.with_name(args.json.stem + "_backends.json"), {
            "benchmark": "bench_match --backends-only",
            "machine": machine_base(("matcher", "synth")), "threads": args.threads,
            "torch": torch.__version__, "files": [str(f) for f in files],
            "repeats": args.backend_repeats, "waveform_to_nu": backends,
            "target_ms": WAVEFORM_TO_NU_MS})
        print_backends(backends, args.threads)
        return
    t0 = time.perf_counter()
    matcher = Matcher(args.model, device=args.device)
    construct_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _ = matcher.model.features, matcher.jtfs
    setup_s = time.perf_counter() - t0
    cfg = matcher.audio_config
    sync = torch.cuda.synchronize if matcher.device.type == "cuda" else (lambda: None)

    # Warm-up: first calls allocate and pick kernels.
    warm = load_hit(files[0], cfg)
    matcher.match_hit(warm, method="encoder")
    matcher.match_hit(warm)                                  # the default search
    matcher.match_hit(warm, method="encoder", refine="adam", budget_ms=args.budget_ms)

    stages: dict[str, list[float]] = {k: [] for k in
                                      ("prepare", "encode", "render", "encoder-only", "distances",
                                       "default match")}
    for _ in range(args.repeats):
        for f in files:
            sync()
            t = time.perf_counter()
            hit = load_hit(f, cfg)
            prep = 1e3 * (time.perf_counter() - t)
            r = matcher.match_hit(hit, method="encoder")
            tm = r.timings_ms
            stages["prepare"].append(prep)
            stages["encode"].append(tm["encode"])
            stages["render"].append(tm["render"])
            stages["encoder-only"].append(prep + tm["encode"] + tm["render"])
            stages["distances"].append(tm["distances"])
            # tympan match's default (search, re-ranked, scored) within --budget-ms
            d = matcher.match_hit(hit, budget_ms=args.budget_ms).timings_ms
            stages["default match"].append(prep + d["total"] - d.get("setup", 0.0))
    refine_ms, refine_steps, improved = [], [], []
    for f in files[:: max(1, len(files) // args.refine_files)][: args.refine_files]:
        r = matcher.match_hit(load_hit(f, cfg), method="encoder", refine="adam",
                              budget_ms=args.budget_ms)
        refine_ms.append(r.timings_ms["refine"])
        refine_steps.append(r.refinement["iterations"])
        improved.append(r.refinement["best"] / r.refinement["start"])
    stages["refine"] = refine_ms
    backends = None
    if matcher.device.type == "cpu":
        backends = time_backends(args.model, [load_hit(f, cfg).audio for f in files],
                                 args.backend_repeats)

    summary = {k: _stats(v) for k, v in stages.items()}
    enc = summary["encoder-only"]["p50_ms"]
    doc = {"benchmark": "bench_match", "machine": machine_base(("matcher", "synth")),
           "device": str(matcher.device), "torch_threads": args.threads,
           "encoder_backend": matcher.model.backend, "waveform_to_nu": backends,
           "torch": torch.__version__, "model": str(matcher.path),
           "model_load_s": {"artifact": construct_s, "cqt_and_jtfs_setup": setup_s},
           "files": [str(f) for f in files], "repeats": args.repeats,
           "budget_ms": args.budget_ms, "refine_steps": refine_steps,
           "refine_mss_ratio_best_over_start": improved, "stages": summary,
           "target": {"encoder_only_p50_ms": enc, "limit_ms": TARGET_MS,
                      "met": enc <= TARGET_MS, "ratio_to_limit": enc / TARGET_MS}}
    write_json(args.json, doc)
    print(f"\ndevice {matcher.device} (encoder on {matcher.model.backend}), {args.threads} "
          f"threads; {len(files)} files x "
          f"{args.repeats}; model load {construct_s:.2f} s + CQT/JTFS setup {setup_s:.2f} s "
          "(once per process, not below)")
    print(f"{'stage':<13} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'n':>4}")
    for k, s in summary.items():
        print(f"{k:<13} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['mean_ms']:>8.1f} {s['n']:>4}")
    print(f"refine: {np.mean(refine_steps):.1f} Adam steps in the {args.budget_ms:g} ms budget; "
          f"MSS best/start {np.mean(improved):.2f} (mean over {len(improved)} files)")
    print(f"encoder-only p50 {enc:.1f} ms per 3-second hit: {enc / TARGET_MS:.2f} x the "
          f"{TARGET_MS:g} ms target -> {'PASS' if enc <= TARGET_MS else 'FAIL'}")
    if backends:
        print_backends(backends, args.threads)


if __name__ == "__main__":
    main()
