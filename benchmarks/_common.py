"""What the benchmark scripts share: the repository on the path, machine facts."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # Run as `python benchmarks/X.py` from a checkout that is not pip-installed.
    try:
        import synth  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))


GMROCKKIT = "/usr/share/hydrogen/data/drumkits/GMRockKit"   # Debian's hydrogen-data
_DRUMS = ("Kick-*.wav", "Snare-*.wav", "Tom1-*.wav", "Tom2-*.wav", "TomFloor-*.wav")


def gmrockkit_hits(kit_dir: str = GMROCKKIT, required: bool = True) -> list[Path]:
    """The GMRockKit's kicks, snares and toms (every velocity layer: 25 files), sorted.

    With ``required``, none found is a clear error (exit) naming the package.
    """
    files = sorted(f for pat in _DRUMS for f in Path(kit_dir).glob(pat))
    if required and not files:
        raise SystemExit(f"no GMRockKit hits in {kit_dir}: install Debian's hydrogen-data "
                         "(apt-get install hydrogen-data; `make install` does) or pass --real DIR")
    return files


def example_hits() -> list[Path]:
    """The example hits shipped with ``tympan demo`` (``plugin_host/examples``)."""
    return sorted((ROOT / "plugin_host" / "examples").glob("*.flac"))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_base(watched: tuple[str, ...]) -> dict:
    """Date, CPU, Python, numpy, and the git commit (``+dirty(...)`` when any
    of the ``watched`` folders has uncommitted changes)."""
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", *watched],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_commit"] = commit + (f"+dirty({'/'.join(watched)})" if dirty else "")
    except Exception:  # informational only
        pass
    return info


def write_json(path: Path, doc: dict) -> None:
    """Write a benchmark's results (numpy scalars as floats) and say where."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"JSON written to {path}")
