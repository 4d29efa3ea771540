"""Time from Ctrl-C to exit of ``tympan play`` and ``tympan serve``, under load.

Runs the suite's own shutdown test (``tests/test_shutdown.py``: the commands
on a JACK dummy server, notes playing or a long match in flight, two busy
processes on the two cores, SIGINT, exit timed) with ``--runs`` runs of each
command, and prints the median and maximum of the exits, as JSON and a table.
The test asserts each exit within 3 s; this script reports the figures.

    python benchmarks/bench_shutdown.py [--runs 20]      # ~10 minutes at 20 runs
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from _common import ROOT, machine_base, write_json

LINE = re.compile(r"^(tympan \w+): (\d+) SIGINT exits under load: .*\(all: ([0-9., ]+)\)$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_shutdown.json"))
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: allowed 1 or more")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_shutdown.py", "-s", "-q",
         "-p", "no:cacheprovider", "-k", "within_the_bound"],
        cwd=ROOT, env={**os.environ, "TYMPAN_SHUTDOWN_RUNS": str(args.runs)},
        capture_output=True, text=True)
    results = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            times = [float(t) for t in m.group(3).split(",")]
            results[m.group(1)] = {"runs": len(times), "median_s": statistics.median(times),
                                   "max_s": max(times), "exits_s": times}
    if proc.returncode != 0 or len(results) != 2:
        print(proc.stdout[-4000:] + proc.stderr[-2000:], file=sys.stderr)
        print(f"bench_shutdown: the shutdown test failed (exit code {proc.returncode})",
              file=sys.stderr)
        return 1
    doc = {**machine_base(("plugin_host",)), "load": "two busy processes (one per core)",
           "bound_s": 3.0, "commands": results}
    print(f"\n{'command':<14} {'runs':>5} {'median s':>9} {'max s':>7}   (SIGINT to exit, "
          "under load)")
    for name, r in results.items():
        print(f"{name:<14} {r['runs']:>5} {r['median_s']:>9.2f} {r['max_s']:>7.2f}")
    write_json(Path(args.json), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
