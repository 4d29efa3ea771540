"""Headers and directories of resumable sharded jobs (the files go through :mod:`synth.files`).

A job writes each result file whole or not at all (temp file in the same
directory, then :func:`os.replace`), so a killed run leaves only finished files
and, at worst, a stale ``.NAME.*.tmp`` that the next run removes. Every file
carries a JSON header (the settings its numbers depend on); a run that finds a
file with another header stops with an error naming the differences instead of
mixing results.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from synth.files import atomic_write

__all__ = ["check_header", "claim_header", "json_array", "writable_dir"]

def json_array(obj: Any) -> np.ndarray:
    """``obj`` as a 0-d str array of JSON: stored in ``.npz``, loads without pickle."""
    return np.array(json.dumps(obj, sort_keys=True))


def check_header(found: Mapping[str, Any], wanted: Mapping[str, Any], where: str | Path) -> None:
    """ValueError naming each differing key if the headers differ."""
    diff = [f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} here"
            for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
    if diff:
        raise ValueError(f"{where} was written by a run with other settings ({'; '.join(diff)}); "
                         f"use another --out, or delete {Path(where).parent} to start over")


def claim_header(path: Path, header: Mapping[str, Any]) -> None:
    """Write a run's header to ``path``, or check it against the one already there.

    Concurrent workers of one run write identical bytes, so the race is harmless.
    """
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it to start over") from None
        check_header(found, header, path)
        return
    atomic_write(path, lambda f: f.write(json.dumps(header, indent=1).encode()))


def writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and check that files can be made in it (ValueError if not)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"--out {path}: cannot write there ({err.strerror or err})") from None
    return path
