"""Match quality: random, nearest neighbour, encoder and encoder + refine on two sets.

Sets
----
synthetic
    Hits rendered by the membrane twin at seeded test-split cells (known
    parameters; disjoint from the training split the NN index is built from).
real
    Recorded hits from Debian's ``hydrogen-data`` GMRockKit: every velocity
    layer of the kick, snare and three toms (25 files).

Methods
-------
random
    Uniform nu in [-1, 1]^5 (seeded): the floor any method must clear.
nn
    The nearest training sound in JTFS (``tympan match --method nn``), from
    an index of 2000 seeded training cells (built once, cached in
    ``benchmarks/results/``; ~12 minutes on 2 CPU cores).
encoder
    The shipped model's estimate (``tympan match``).
encoder+refine
    The estimate refined by Adam on the multi-scale spectral distance within
    ``--budget-ms`` (``tympan match --refine``).
hybrid, hybrid+refine
    Whichever of the encoder's and the NN's estimates renders closer in JTFS
    distance (``tympan match --method hybrid``), without and with the same
    refinement.

For each set and method: mean and median JTFS distance (the perceptual
target), mean multi-scale spectral (MSS) distance, and time per file (file
read and preparation, estimate, refinement and render; not the distances,
which only score). On the synthetic set also the mean |error| per parameter
in nu. The target: encoder + refine beats nearest neighbour on the real hits
in JTFS distance (mean, and files won). Prints a table, writes JSON and a
box plot of the distances.

    python benchmarks/eval_match.py [--synthetic 100] [--budget-ms 1000] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import (GMROCKKIT, ROOT, add_matcher_args, box_plots, gmrockkit_hits,
                     load_matcher, machine_base, match_methods, run_methods, summarize, wins,
                     write_json)


def run_set(matcher, items: list[tuple[str, object, np.ndarray | None, float]], methods: dict,
            seed: int) -> list[dict]:
    """Match every item with every method (``_common.run_methods``).

    Parameters
    ----------
    items : list of (name, Hit, true nu ``[5]`` or None, preparation ms)

    Returns
    -------
    list of dict
        One per (item, method): name, method, jtfs, mss, ms, nu, and err (``[5]``, the
        |error| in nu) when the true nu is known.
    """
    rows = run_methods(matcher, [(name, hit, ms) for name, hit, _, ms in items], methods, seed)
    truth = {name: nu for name, _, nu, _ in items}
    for row in rows:
        if truth[row["name"]] is not None:
            row["err"] = [float(v) for v in np.abs(np.asarray(row["nu"]) - truth[row["name"]])]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", type=int, default=100, metavar="K",
                    help="seeded test-split cells (default 100)")
    ap.add_argument("--real", default=GMROCKKIT, metavar="DIR",
                    help=f"GMRockKit folder (default {GMROCKKIT})")
    add_matcher_args(ap, "smoke run: 8 synthetic cells, 5 real files, 300 ms budget")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "eval_match.json")
    args = ap.parse_args()
    if args.quick:
        args.synthetic, args.budget_ms = 8, 300.0

    import torch

    from matcher.audio import load_hit, prepare_hit
    from synth.twin import MembraneTwin
    from training.protocol import Protocol

    files = gmrockkit_hits(args.real)
    if args.quick:
        files = files[::5]
    matcher, load_s = load_matcher(args)
    methods = match_methods(args.budget_ms)
    cfg = matcher.audio_config

    protocol = Protocol()
    ids = protocol.split_indices("test")
    ids = np.sort(np.random.default_rng(args.seed).choice(ids, args.synthetic, replace=False))
    nu_true = protocol.nu(ids)
    twin = MembraneTwin(cfg.sr, cfg.n_samples)
    audio = twin.from_nu(torch.as_tensor(nu_true)).numpy()
    synthetic = []
    for cell, nu, x in zip(ids, nu_true, audio):
        t = time.perf_counter()
        hit = prepare_hit(x.astype(np.float32), cfg.sr, cfg, name=f"cell {cell}")
        synthetic.append((f"cell {cell}", hit, nu, 1e3 * (time.perf_counter() - t)))
    real = []
    for f in files:
        t = time.perf_counter()
        hit = load_hit(f, cfg)
        real.append((Path(f).name, hit, None, 1e3 * (time.perf_counter() - t)))

    results = {}
    for name, items in (("synthetic", synthetic), ("real", real)):
        print(f"{name}: {len(items)} files")
        rows = run_set(matcher, items, methods, args.seed)
        results[name] = {"summary": summarize(rows, methods), "rows": rows}

    won, total = wins(results["real"]["rows"], "encoder+refine", "nn")
    won_h, _ = wins(results["real"]["rows"], "hybrid+refine", "nn")
    real_sum = results["real"]["summary"]
    target_met = real_sum["encoder+refine"]["jtfs_mean"] < real_sum["nn"]["jtfs_mean"]
    doc = {"benchmark": "eval_match", "machine": machine_base(("matcher", "synth")),
           "model": str(matcher.path), "model_load_s": load_s, "nn_index": str(args.nn_index),
           "nn_index_size": len(matcher.nn), "budget_ms": args.budget_ms,
           "torch_threads": args.threads, "real_dir": args.real,
           "target": {"encoder+refine beats nn on real hits (mean JTFS)": bool(target_met),
                      "files won by encoder+refine over nn (JTFS)": [won, total],
                      "files won by hybrid+refine over nn (JTFS)": [won_h, total]},
           **results}
    write_json(args.json, doc)
    box_plots({name: r["rows"] for name, r in results.items()}, methods,
              {"jtfs": "JTFS distance", "mss": "MSS distance"}, args.json.with_suffix(".png"))

    print(f"\nmodel {matcher.path.name}, loaded in {load_s:.1f} s; NN index of "
          f"{len(matcher.nn)} sounds; refinement budget {args.budget_ms:g} ms; CPU, "
          f"{args.threads} threads")
    head = (f"{'set':<10} {'method':<15} {'files':>5} {'JTFS mean':>9} {'median':>7} "
            f"{'MSS mean':>8} {'median':>7} {'ms/file':>8}")
    print(head + "\n" + "-" * len(head))
    for name in results:
        for method, s in results[name]["summary"].items():
            print(f"{name:<10} {method:<15} {s['files']:>5} {s['jtfs_mean']:>9.2f} "
                  f"{s['jtfs_median']:>7.2f} {s['mss_mean']:>8.3f} {s['mss_median']:>7.3f} "
                  f"{s['ms_per_file']:>8.0f}")
    print("\nsynthetic, mean |error| in nu (chance: 0.667)")
    for method, s in results["synthetic"]["summary"].items():
        print(f"  {method:<15} " + "  ".join(f"{k} {v:.3f}" for k, v in s["mae_nu"].items()))
    ratio = real_sum["encoder+refine"]["jtfs_mean"] / real_sum["nn"]["jtfs_mean"]
    print(f"\nreal hits: encoder+refine / nn mean JTFS = {ratio:.2f}; encoder+refine wins "
          f"{won} of {total} files -> target {'MET' if target_met else 'NOT MET'}")
    ratio_h = real_sum["hybrid+refine"]["jtfs_mean"] / real_sum["nn"]["jtfs_mean"]
    print(f"real hits: hybrid+refine / nn mean JTFS = {ratio_h:.2f}; hybrid+refine wins "
          f"{won_h} of {total} files")


if __name__ == "__main__":
    main()
