"""File helpers every layer uses: atomic writes and content hashes.

A file goes to a temporary file beside the destination and is renamed over
it only when complete, so an interrupted or failed write never leaves a
truncated file or destroys an existing one. :func:`atomic_write` is the
general form Tympan's writers use (models, checkpoints, metric tables, indexes,
kits, reports, plots; the audio writer renames a temporary file of its own,
because pedalboard needs the file's extension). It lives in ``synth`` because that is
the ground floor of the layering: every package may import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["atomic_savez", "atomic_write", "atomic_write_text", "file_sha256", "plain_mode",
           "remove_stale"]

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def plain_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file (0o666 less the umask)."""
    return 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], Any]) -> Path:
    """Write ``path`` whole or not at all; ``write(f)`` fills the binary file ``f``.

    The temporary file ``.NAME.*.tmp`` lives beside ``path``, is synced, gets
    the permissions a plain ``open`` would give (not mkstemp's 0600), and is
    removed if ``write`` fails. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), plain_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_savez(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """:func:`numpy.savez` to ``path`` (exactly that name: no ``.npz`` added), atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def remove_stale(path: str | os.PathLike[str]) -> None:
    """Remove temp files a killed writer of ``path`` left behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
