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

from _common import GMROCKKIT, ROOT, gmrockkit_hits, machine_base, write_json

METHODS = ("random", "nn", "encoder", "encoder+refine", "hybrid", "hybrid+refine")
# Stages of MatchResult.timings_ms that make a match; "distances" and "setup" do not.
MATCH_STAGES = ("load", "encode", "search", "choose", "refine", "render")


def nn_index(path: Path, size: int) -> Path:
    """The cached NN index, built with ``tympan train nn-index`` when missing."""
    if not path.is_file():
        import tympan_cli

        print(f"building the NN index ({size} training cells) at {path}; done once")
        rc = tympan_cli.main(["train", "nn-index", "--out", str(path), "--limit", str(size)])
        if rc != 0:
            raise SystemExit(f"building the NN index failed (exit {rc})")
    return path


def run_set(matcher, items: list[tuple[str, object, np.ndarray | None, float]], budget_ms: float,
            seed: int, progress: bool) -> list[dict]:
    """Match every item with every method.

    Parameters
    ----------
    items : list of (name, Hit, true nu ``[5]`` or None, preparation ms)

    Returns
    -------
    list of dict
        One per (item, method): name, method, jtfs, mss, ms, nu, and err (``[5]``) when
        the true nu is known.
    """
    import torch
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    rows = []
    for name, hit, nu_true, prep_ms in tqdm(items, disable=not progress, unit="file",
                                            desc="matching"):
        target = torch.tensor(np.asarray(hit.audio), dtype=torch.float32)
        for method in METHODS:
            if method == "random":
                t0 = time.perf_counter()
                nu = rng.uniform(-1.0, 1.0, 5)
                est = matcher._render(nu)[0]
                ms = prep_ms + 1e3 * (time.perf_counter() - t0)
                d_jtfs, d_mss = matcher.distances(est, target)
            else:
                base, _, refined = method.partition("+")
                opts = {"method": base}
                if refined:
                    opts.update(refine="adam", budget_ms=budget_ms)
                r = matcher.match_hit(hit, **opts)
                nu = np.asarray(r.nu)
                ms = prep_ms + sum(r.timings_ms.get(k, 0.0) for k in MATCH_STAGES)
                d_jtfs, d_mss = r.jtfs_distance, r.mss_distance
            row = {"name": name, "method": method, "jtfs": d_jtfs, "mss": d_mss, "ms": ms,
                   "nu": [float(v) for v in nu]}
            if nu_true is not None:
                row["err"] = [float(v) for v in np.abs(nu - nu_true)]
            rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per method: mean/median JTFS, mean/median MSS, mean ms, and mean |error| in nu."""
    from synth.params import NAMES

    out = {}
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        j, m = np.array([r["jtfs"] for r in rs]), np.array([r["mss"] for r in rs])
        s = {"files": len(rs), "jtfs_mean": j.mean(), "jtfs_median": float(np.median(j)),
             "mss_mean": m.mean(), "mss_median": float(np.median(m)),
             "ms_per_file": float(np.mean([r["ms"] for r in rs]))}
        if rs and "err" in rs[0]:
            s["mae_nu"] = dict(zip(NAMES, np.mean([r["err"] for r in rs], axis=0).tolist()))
        out[method] = s
    return out


def wins(rows: list[dict], a: str, b: str) -> tuple[int, int]:
    """Files where method ``a`` has a smaller JTFS distance than ``b``, of all files."""
    da = {r["name"]: r["jtfs"] for r in rows if r["method"] == a}
    db = {r["name"]: r["jtfs"] for r in rows if r["method"] == b}
    return sum(da[k] < db[k] for k in da), len(da)


def plot(results: dict, path: Path) -> None:
    """Box plots of JTFS and MSS distance per method, one row per set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results)
    fig, axes = plt.subplots(len(sets), 2, figsize=(10, 3.2 * len(sets)), squeeze=False)
    for row, name in zip(axes, sets):
        rows = results[name]["rows"]
        for ax, key, label in zip(row, ("jtfs", "mss"), ("JTFS distance", "MSS distance")):
            ax.boxplot([[r[key] for r in rows if r["method"] == m] for m in METHODS],
                       showmeans=True)
            ax.set_xticks(range(1, len(METHODS) + 1), METHODS)
            ax.set_title(f"{name} ({results[name]['summary']['encoder']['files']} files): {label}")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", type=int, default=100, metavar="K",
                    help="seeded test-split cells (default 100)")
    ap.add_argument("--real", default=GMROCKKIT, metavar="DIR",
                    help=f"GMRockKit folder (default {GMROCKKIT})")
    ap.add_argument("--budget-ms", type=float, default=1000.0, help="refinement budget per hit")
    ap.add_argument("--model", help="matcher artifact (default: the shipped model)")
    ap.add_argument("--nn-index", type=Path,
                    default=ROOT / "benchmarks" / "results" / "nn-train-2000.npz")
    ap.add_argument("--nn-size", type=int, default=2000,
                    help="training cells in the index when it is built (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8 synthetic cells, 5 real files, 300 ms budget")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "eval_match.json")
    args = ap.parse_args()
    if args.quick:
        args.synthetic, args.budget_ms = 8, 300.0

    import torch

    from matcher.audio import load_hit, prepare_hit
    from matcher.match import Matcher
    from synth.twin import MembraneTwin
    from training.protocol import Protocol

    torch.set_num_threads(args.threads)
    files = gmrockkit_hits(args.real)
    if args.quick:
        files = files[::5]
    index = nn_index(args.nn_index, args.nn_size)
    t0 = time.perf_counter()
    matcher = Matcher(args.model, device="cpu", nn_index=index)
    _ = matcher.model.features, matcher.jtfs
    load_s = time.perf_counter() - t0
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
        rows = run_set(matcher, items, args.budget_ms, args.seed, progress=True)
        results[name] = {"summary": summarize(rows), "rows": rows}

    won, total = wins(results["real"]["rows"], "encoder+refine", "nn")
    won_h, _ = wins(results["real"]["rows"], "hybrid+refine", "nn")
    real_sum = results["real"]["summary"]
    target_met = real_sum["encoder+refine"]["jtfs_mean"] < real_sum["nn"]["jtfs_mean"]
    doc = {"benchmark": "eval_match", "machine": machine_base(("matcher", "synth")),
           "model": str(matcher.path), "model_load_s": load_s, "nn_index": str(index),
           "nn_index_size": len(matcher.nn), "budget_ms": args.budget_ms,
           "torch_threads": args.threads, "real_dir": args.real,
           "target": {"encoder+refine beats nn on real hits (mean JTFS)": bool(target_met),
                      "files won by encoder+refine over nn (JTFS)": [won, total],
                      "files won by hybrid+refine over nn (JTFS)": [won_h, total]},
           **results}
    write_json(args.json, doc)
    plot(results, args.json.with_suffix(".png"))

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
