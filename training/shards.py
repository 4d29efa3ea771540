"""Storage for resumable sharded jobs: atomic writes, headers, writable directories.

A job writes each result file whole or not at all (temp file in the same
directory, then :func:`os.replace`), so a killed run leaves only finished files
and, at worst, a stale ``.NAME.*.tmp`` that the next run removes. Every file
carries a JSON header (the settings its numbers depend on); a run that finds a
file with another header stops with an error naming the differences instead of
mixing results.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["atomic_savez", "atomic_write", "check_header", "claim_header", "json_array",
           "remove_stale", "writable_dir"]

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write ``path`` whole or not at all; ``write(f)`` fills the binary file ``f``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0600 would hide it from others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """:func:`numpy.savez` to ``path`` (exactly that name), atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def remove_stale(path: Path) -> None:
    """Remove temp files a killed writer of ``path`` left behind."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


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
