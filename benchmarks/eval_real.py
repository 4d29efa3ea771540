"""Match quality on recorded hits: every match method, two recorded sets, three distances.

Sets (the files are listed by name in ``_common.py``, so each set is fixed)
-----------------------------------------------------------------------------
GMRockKit
    Debian's ``hydrogen-data`` (GPL; read from ``/usr/share/hydrogen``, never
    shipped): every velocity layer of the kick, snare and three toms (25 files).
sonic-pi
    The membranophone one-shots of Debian's ``sonic-pi-samples`` (CC0 / CC-BY,
    ``/usr/share/sonic-pi/samples``): the acoustic kit's kicks, snares and toms,
    the ``bd_*`` kicks, ``sn_*`` snares, every ``tabla_*`` stroke, and the
    electronic kicks and snares (61 files; no cymbals, hats, loops or rolls).

A set with a listed file missing is an error (exit 1, one line naming the
package), never skipped. Results are given per set and for both together.

Methods
-------
Those of ``eval_match.py`` (``_common.match_methods``: random, nn, encoder,
encoder+refine, hybrid, hybrid+refine), through ``matcher.match.Matcher``, and
``default``: what ``tympan match FILE`` does with no option, read from its
argument parser (scored once if it equals another method, and reported as such).
The NN index is eval_match's (2000 seeded training cells, cached in
``benchmarks/results/``; built once, ~12 minutes on 2 CPU cores).

Distances (each of the matched sound, rendered by the twin, to the prepared
recording; all on peak-normalized 2^16-sample signals at 22050 Hz)
-----------------------------------------------------------------------------
jtfs
    The project's JTFS distance (``matcher.distances``; the perceptual target).
mss
    The project's multi-scale spectral distance (``matcher.distances``; what
    ``+refine`` descends).
auraloss
    An independent multi-resolution STFT distance computed by the ``auraloss``
    library at another configuration (``_common.auraloss_distance``), so that no
    method wins by fitting one of our own metrics.

Each set is also reported in its two halves (``configs/real-hits.toml``): ``SET/ft``,
the files fine-tuning may train on, and ``SET/val``, the files it never sees.

Reported per set and method: median and mean of each distance, files won
against the nearest-neighbour baseline in each distance, and p50/p95 wall time
per file (file preparation, estimate, refinement, render; model load and the
scoring apart). Prints a table, writes JSON and box plots (one row per set, one
column per distance).

    python benchmarks/eval_real.py [--budget-ms 1000] [--limit N] [--quick]
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

from _common import (REAL_SETS, ROOT, add_matcher_args, auraloss_distance, box_plots,
                     listed_hits, load_matcher, machine_base, match_methods, run_methods,
                     summarize, wins, write_json)

DISTANCES = {"jtfs": "JTFS distance", "mss": "MSS distance", "auraloss": "auraloss MR-STFT"}
BASELINE = "nn"
REAL_HITS = ROOT / "configs" / "real-hits.toml"   # each set's fine-tuning / validation halves


def default_options(nn_index: Path) -> dict:
    """``Matcher.match_hit`` options of ``tympan match FILE`` with no option given
    (its parser's defaults; ``--nn-index`` is passed so a default that needs the index
    is accepted)."""
    from matcher.cli import match_options, parser

    return match_options(parser().parse_args(["FILE", "--nn-index", str(nn_index)]))


def _normalized(opts: dict) -> dict:
    """Options with ``match_hit``'s own defaults filled in (to compare two methods)."""
    from matcher.match import Matcher

    params = inspect.signature(Matcher.match_hit).parameters
    full = {k: p.default for k, p in params.items() if k in ("method", "refine", "refine_loss",
                                                              "budget_ms")}
    full.update(opts)
    if full.get("refine") is None:
        full.pop("budget_ms", None)
        full.pop("refine_loss", None)
    return full


def methods_with_default(budget_ms: float, nn_index: Path) -> tuple[dict, str | None, dict]:
    """``(methods to run, the method "default" equals or None, default's options)``."""
    methods = match_methods(budget_ms)
    default = default_options(nn_index)
    same = next((name for name, opts in methods.items()
                 if opts is not None and _normalized(opts) == _normalized(default)), None)
    if same is None:
        methods["default"] = default
    return methods, same, default


def set_files(limit: int | None) -> dict[str, list[Path]]:
    """Each set's listed files (the first ``limit``); exits naming the package if any is
    missing."""
    return {name: listed_hits(folder, files, package)[:limit]
            for name, (folder, files, package) in REAL_SETS.items()}


def load_sets(cfg, files: dict[str, list[Path]]) -> dict[str, list[tuple[str, object, float]]]:
    """Each set's hits, prepared for the model: ``(file name, Hit, preparation ms)``."""
    from matcher.audio import load_hit

    sets = {}
    for name, paths in files.items():
        items = []
        for f in paths:
            t = time.perf_counter()
            hit = load_hit(f, cfg)
            items.append((f.name, hit, 1e3 * (time.perf_counter() - t)))
        sets[name] = items
    return sets


def halves(per_set: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each set's rows cut into its fine-tuning and validation halves
    (``configs/real-hits.toml``): ``"SET/ft"`` and ``"SET/val"``. A model fine-tuned
    on recorded hits is judged on the ``/val`` rows; the ``/ft`` rows are its training."""
    from training.finetune import read_real_sets

    out = {}
    for name, s in read_real_sets(REAL_HITS).items():
        rows = per_set.get(name, [])
        for half, key in (("finetune", "ft"), ("validation", "val")):
            keep = set(getattr(s, half))
            part = [r for r in rows if r["name"] in keep]
            if part:
                out[f"{name}/{key}"] = part
    return out


def report(sets: dict[str, list[dict]], methods: list[str]) -> dict[str, dict]:
    """Per set: the summary per method and the files each method wins against nn."""
    out = {}
    for name, rows in sets.items():
        won = {m: {k: wins(rows, m, BASELINE, k) for k in DISTANCES}
               for m in methods if m != BASELINE}
        out[name] = {"summary": summarize(rows, methods, tuple(DISTANCES)),
                     f"wins_vs_{BASELINE}": won}
    return out


def print_table(results: dict[str, dict], methods: list[str]) -> None:
    """Medians and means of the distances, wins against nn, p50/p95 ms."""
    head = (f"{'set':<14} {'method':<15} {'files':>5} "
            + " ".join(f"{k + ' med':>12} {'mean':>7}" for k in DISTANCES)
            + f"  {'won vs ' + BASELINE + ' (J/M/A)':>20} {'p50 ms':>7} {'p95 ms':>7}")
    print(head + "\n" + "-" * len(head))
    for name, res in results.items():
        for method in methods:
            s = res["summary"][method]
            won = res[f"wins_vs_{BASELINE}"].get(method)
            won_text = "-" if won is None else "/".join(str(w[0]) for w in won.values())
            print(f"{name:<14} {method:<15} {s['files']:>5} "
                  + " ".join(f"{s[k + '_median']:>12.3f} {s[k + '_mean']:>7.3f}"
                             for k in DISTANCES)
                  + f"  {won_text:>20} {s['ms_p50']:>7.0f} {s['ms_p95']:>7.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_matcher_args(ap, "smoke run: 3 files per set, 300 ms budget")
    ap.add_argument("--limit", type=int, default=None, metavar="N",
                    help="only the first N files of each set (development)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "eval_real.json")
    ap.add_argument("--no-default", action="store_true",
                    help="leave out tympan match's default method (comparing models by --methods "
                         "encoder: the default search costs its whole budget per file)")
    args = ap.parse_args()
    if args.quick:
        args.limit, args.budget_ms = args.limit or 3, 300.0

    files = set_files(args.limit)          # before the NN index is built: fail early
    matcher, load_s = load_matcher(args)
    methods, same, default = methods_with_default(args.budget_ms, args.nn_index)
    if args.no_default:
        methods.pop("default", None)
        same = None
    if args.methods:
        keep = {BASELINE, *args.methods.split(","), *([] if same is None else [same])}
        unknown = keep - set(methods) - {"default"}
        if unknown:
            raise SystemExit(f"--methods: unknown {sorted(unknown)}; allowed {', '.join(methods)}")
        methods = {k: v for k, v in methods.items()
                   if k in keep or (k == "default" and not args.no_default)}
    sets = load_sets(matcher.audio_config, files)
    names = list(methods) + ([] if same is None else ["default"])
    extra = {"auraloss": auraloss_distance}

    per_set = {}
    for name, items in sets.items():
        print(f"{name}: {len(items)} files, methods {', '.join(methods)}"
              + ("" if same is None else f" (default = {same})"))
        rows = run_methods(matcher, items, methods, args.seed, extra=extra)
        for r in rows:
            r["set"] = name
        if same is not None:   # "default" is one of the others: its rows, renamed
            rows += [{**r, "method": "default"} for r in rows if r["method"] == same]
        per_set[name] = rows
    per_set["all"] = [r for rows in list(per_set.values()) for r in rows]
    per_set.update(halves(per_set))
    results = report(per_set, names)

    doc = {"benchmark": "eval_real", "machine": machine_base(("matcher", "synth", "benchmarks")),
           "model": str(matcher.path), "model_load_s": load_s, "nn_index": str(args.nn_index),
           "nn_index_size": len(matcher.nn), "budget_ms": args.budget_ms,
           "torch_threads": args.threads, "methods": {**methods, "default": default},
           "default_same_as": same, "auraloss_distance": inspect.getdoc(auraloss_distance),
           "files": {name: [i[0] for i in items] for name, items in sets.items()},
           "results": results, "rows": per_set["all"]}
    write_json(args.json, doc)
    box_plots(per_set, names, DISTANCES, args.json.with_suffix(".png"))

    print(f"\nmodel {matcher.path.name}, loaded in {load_s:.1f} s; NN index of {len(matcher.nn)} "
          f"sounds; budget {args.budget_ms:g} ms per match; CPU, {args.threads} threads; "
          f"default = {same or default}")
    print(f"distances: median and mean; won vs {BASELINE}: files with a smaller JTFS / MSS / "
          "auraloss distance than the nearest neighbour's; ms: wall time per file, model load "
          "apart")
    print_table(results, names)


if __name__ == "__main__":
    main()
