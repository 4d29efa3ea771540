"""Write rendered hits as audio files (pedalboard's writer), atomically.

The format and bit depth are checked before any work (:func:`check_destination`);
the file is written to a temporary file beside it (with its extension, which
pedalboard's writer needs, so not through :func:`synth.files.atomic_write`) and
renamed, so an interrupted write never leaves a truncated file or destroys an
existing one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .files import plain_mode

__all__ = ["AudioWriteError", "FORMATS", "check_destination", "write_audio"]

# Extension -> bit depths the format accepts (None: lossy, depth not applicable).
FORMATS: dict[str, tuple[int, ...] | None] = {
    ".wav": (16, 24, 32), ".flac": (16, 24), ".aiff": (16, 24), ".aif": (16, 24),
    ".ogg": None, ".mp3": None,
}


class AudioWriteError(OSError):
    """The audio file cannot be written as asked (format, depth, place)."""


def check_destination(path: str | os.PathLike[str], bit_depth: int = 24) -> Path:
    """Check that ``path`` can be written as asked, before any work is done.

    Raises
    ------
    AudioWriteError
        Unknown extension, a bit depth the format lacks, or a missing folder.
    """
    dest = Path(path)
    ext = dest.suffix.lower()
    if ext not in FORMATS:
        raise AudioWriteError(f"cannot write {str(dest)!r}: unknown extension {ext or '(none)'!r}; "
                              f"allowed: {', '.join(FORMATS)}")
    depths = FORMATS[ext]
    if depths is not None and bit_depth not in depths:
        raise AudioWriteError(f"cannot write {str(dest)!r}: bit depth {bit_depth} is not "
                              f"available for {ext}; allowed: {', '.join(map(str, depths))}")
    if not dest.parent.is_dir():
        raise AudioWriteError(f"cannot write {str(dest)!r}: folder {str(dest.parent)!r} "
                              "does not exist")
    return dest


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, sr: float,
                bit_depth: int = 24) -> Path:
    """Write mono or multichannel audio to ``path``, atomically.

    Parameters
    ----------
    path : path-like
        Destination; the extension picks the format (wav, flac, aiff, ogg, mp3).
    samples : array ``[N]`` (mono) or ``[C, N]``
        Samples in full-scale units (+-1).
    sr : float
        Sample rate in Hz.
    bit_depth : int
        16 or 24 (integer PCM) or 32 (float, wav only); ignored by lossy formats.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from pedalboard.io import AudioFile

    dest = check_destination(path, bit_depth)
    ext = dest.suffix.lower()
    depths = FORMATS[ext]
    data = np.asarray(samples, dtype=np.float32)
    data = data[None] if data.ndim == 1 else data
    if not np.isfinite(data).all():
        raise AudioWriteError(f"cannot write {str(dest)!r}: the audio has non-finite samples")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=ext, dir=dest.parent)
    os.close(fd)
    try:
        with AudioFile(tmp, "w", samplerate=sr, num_channels=data.shape[0],
                       bit_depth=bit_depth if depths is not None else 16) as f:
            f.write(data)
        os.chmod(tmp, plain_mode())          # mkstemp's 0600 would hide the hit from others
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
