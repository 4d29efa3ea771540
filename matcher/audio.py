"""Recorded hit -> model-side audio: the first step of the matcher's data flow.

1. Load with ``pedalboard.io.AudioFile`` (wav, flac, aiff, ogg, mp3; any rate and
   channels) in blocks, at most twice (a scan, then the hit's stretch), never
   seeking (pedalboard's mp3 decoder glitches after a seek): a 10-minute 192 kHz
   file is never in memory whole. :func:`prepare_hit` takes an array instead and
   shares steps 2-4, so a file and its samples agree to float rounding.
2. Mono: average the channels; reject NaN/inf, too short and silent sources.
3. Onset: given, or detected (the rule is in :func:`load_hit`).
4. Resample only the hit's stretch to ``sr`` (``scipy.signal.resample_poly`` at the
   exact rational ratio), trim or zero-pad to ``n_samples``, normalize to peak 1.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from typing import Callable, Iterator

import numpy as np
from pedalboard.io import AudioFile
from scipy.signal import resample_poly

__all__ = ["AudioConfig", "AudioError", "Hit", "load_hit", "prepare_hit"]

_BLOCK = 1 << 18    # frames per read: a few MB per block at any channel count
_THRESHOLD = 0.1    # onset level relative to the loudest window (-20 dB)
_WINDOW_S = 1e-3    # |x| is averaged over 1 ms: a one-sample click is no onset
_TAIL_S = 0.05      # sound within 50 ms (a 20 Hz period) after the window: truncated
_READ_ERRORS = (ValueError, RuntimeError, OSError)  # what pedalboard raises on bad files


def _real(v: object) -> float:
    """``float(v)`` for a real number (numpy's too), NaN for anything else."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    return float(v) if ok else math.nan


class AudioError(ValueError):
    """Bad audio input; the one-line message names the source and the problem."""


@dataclass(frozen=True)
class AudioConfig:
    """Model-side audio settings.

    Parameters
    ----------
    sr : float
        Model-side sample rate, Hz.
    n_samples : int
        Model-side length, samples (2**16 at 22050 Hz: 2.97 s).
    min_seconds : float
        Shortest source accepted, s.
    silence_db : float
        Silence level, dBFS: quieter sources fail; quieter cut tails are no truncation.
    onset_pre_ms : float
        Kept before a detected onset, ms, so that the attack stays whole.
    """

    sr: float = 22050.0
    n_samples: int = 2**16
    min_seconds: float = 0.02
    silence_db: float = -80.0
    onset_pre_ms: float = 2.0

    def __post_init__(self) -> None:
        for name, allowed, ok in [
                ("sr", "a finite number > 0", lambda v: 0 < _real(v) < math.inf),
                ("n_samples", "integers >= 1", lambda v: type(v) is int and v >= 1),
                ("min_seconds", "a finite number >= 0", lambda v: 0 <= _real(v) < math.inf),
                ("silence_db", "a finite number < 0 (dBFS)", lambda v: -math.inf < _real(v) < 0),
                ("onset_pre_ms", "a finite number >= 0", lambda v: 0 <= _real(v) < math.inf)]:
            if not ok(v := getattr(self, name)):
                raise ValueError(f"audio {name} = {v!r}: allowed {allowed}")


@dataclass(frozen=True, eq=False)  # eq=False: an array field has no single truth value
class Hit:
    """One hit, ready for the model.

    Attributes
    ----------
    audio : np.ndarray
        float32 ``[n_samples]`` at ``cfg.sr``, peak |x| = 1; read-only.
    source, source_sr, source_channels, source_seconds : str, float, int, float
        The file's path (or :func:`prepare_hit`'s name), rate (Hz), channels, duration (s).
    onset_seconds : float
        Time of ``audio[0]`` in the source, s: the given onset, or the detected one
        minus ``onset_pre_ms`` (passed back as ``onset=``, it gives the same hit).
    peak : float
        Peak |x| of the mono, resampled hit before normalizing; ``audio * peak`` has its level.
    truncated : bool
        The hit was cut: sound above ``silence_db`` within 50 ms after the window.
    """

    audio: np.ndarray
    source: str
    source_sr: float
    source_channels: int
    source_seconds: float
    onset_seconds: float
    peak: float
    truncated: bool


def load_hit(path: str | os.PathLike, cfg: AudioConfig = AudioConfig(),
             onset: float | None = None) -> Hit:
    """Read one hit from an audio file.

    Parameters
    ----------
    path : str or os.PathLike
        wav, flac, aiff, ogg or mp3 (anything pedalboard reads), any rate and channels.
    cfg : AudioConfig
    onset : float, optional
        Time of ``audio[0]`` in the source, s. None detects the onset: the first
        frame where the mean |x| (mono) of the 1 ms ending there exceeds 0.1 times
        (-20 dB) the largest such mean in the source; ``audio[0]`` lies
        ``cfg.onset_pre_ms`` before it, and not before 0.

    Returns
    -------
    Hit
        ``audio``: float32 ``[cfg.n_samples]`` at ``cfg.sr``, peak 1.

    Raises
    ------
    AudioError
        Missing path, directory, not audio, too short, silent, NaN/inf, bad onset.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory, not an audio file")

    def checked(call: Callable):  # pedalboard's errors on bad files -> AudioError
        try:
            return call()
        except _READ_ERRORS as e:  # kept to one line, whatever pedalboard's message holds
            raise AudioError(f"{name}: unreadable as audio ({' '.join(str(e).split())})") from None

    def blocks() -> Iterator[np.ndarray]:
        with checked(lambda: AudioFile(name)) as f:
            while (x := checked(lambda: f.read(_BLOCK))).shape[-1]:
                yield x.mean(axis=0, dtype=np.float64)

    with checked(lambda: AudioFile(name)) as f:
        sr, channels = float(f.samplerate), int(f.num_channels)
    return _hit(blocks, sr, channels, cfg, onset, name)


def prepare_hit(samples: np.ndarray, sr: float, cfg: AudioConfig = AudioConfig(),
                onset: float | None = None, name: str = "<array>") -> Hit:
    """:func:`load_hit` on samples in memory.

    Parameters
    ----------
    samples : np.ndarray
        float ``[channels, frames]`` or ``[frames]``, full scale 1.
    sr : float
        Sample rate of ``samples``, Hz.
    cfg, onset
        As in :func:`load_hit`.
    name : str
        The source's name in messages and in ``Hit.source``.
    """
    x = np.asarray(samples)
    if x.ndim not in (1, 2) or x.size == 0 or x.dtype.kind != "f" \
            or (x.ndim == 2 and x.shape[0] > x.shape[1]):  # more channels than frames: [T, C]?
        raise AudioError(f"{name}: samples of shape {x.shape}, dtype {x.dtype}: allowed "
                         "a non-empty float [channels, frames] or [frames] array")
    if not 0 < _real(sr) < math.inf:
        raise AudioError(f"{name}: sample rate {sr!r}: allowed a finite number > 0")
    mono = x.reshape(-1, x.shape[-1]).mean(axis=0, dtype=np.float64)
    blocks = lambda: (mono[i:i + _BLOCK] for i in range(0, len(mono), _BLOCK))  # noqa: E731
    return _hit(blocks, float(sr), x.shape[0] if x.ndim == 2 else 1, cfg, onset, name)


def _hit(blocks: Callable[[], Iterator[np.ndarray]], sr: float, channels: int,
         cfg: AudioConfig, onset: float | None, name: str) -> Hit:
    """Steps 2-4; each ``blocks()`` is a fresh pass over the mono float64 source at ``sr`` Hz."""
    w = max(1, round(_WINDOW_S * sr))
    # Scan: length, finiteness, peak, and per block its start and loudest window.
    frames, peak, starts, levels, ctx = 0, 0.0, [], [], np.zeros(w - 1)
    for x in blocks():
        if not np.isfinite(x).all():
            at = (frames + np.flatnonzero(~np.isfinite(x))[0]) / sr
            raise AudioError(f"{name}: has non-finite samples (NaN or inf), first at {at:.6g} s")
        a = np.concatenate([ctx, np.abs(x)])  # ctx: the w - 1 frames before the block
        starts.append(frames)
        levels.append(_means(a, w).max())
        frames, peak, ctx = frames + len(x), max(peak, a.max()), a[len(a) - (w - 1):]
    seconds, floor = frames / sr, 10 ** (cfg.silence_db / 20)
    if seconds < cfg.min_seconds:
        raise AudioError(f"{name}: is {seconds * 1e3:.3g} ms long, shorter than the "
                         f"{cfg.min_seconds * 1e3:.3g} ms minimum")
    if peak < floor:
        raise _silent(name, "", peak, cfg.silence_db)
    up, down = _ratio(sr, cfg.sr)
    need = math.ceil(cfg.n_samples * down / up)     # source frames under the window
    reach = math.ceil(10 * max(up, down) / up) + 2  # resample_poly's filter half-length
    pre, tail = round(cfg.onset_pre_ms * 1e-3 * sr), round(_TAIL_S * sr)
    if onset is None:
        b = next(i for i, v in enumerate(levels) if v > _THRESHOLD * max(levels))
        lo = max(starts[b] - pre, 0)
    elif 0 <= _real(onset) < seconds:
        lo = min(round(float(onset) * sr), frames - 1)
    else:
        raise AudioError(f"{name}: onset {onset!r} s is outside the file "
                         f"(duration {seconds:.6g} s)")
    hi = lo + _BLOCK + need + reach + tail  # covers any final lo, the filter and the tail
    i0 = bisect_right(starts, max(lo - w, 0)) - 1  # read again the blocks over [lo - w, hi)
    base, data = starts[i0], np.concatenate(list(islice(blocks(), i0, bisect_left(starts, hi))))
    if onset is None:  # block b's windows again, from the very same numbers as the scan
        a = np.abs(np.concatenate([np.zeros(w - 1), data]))[starts[b] - base:]
        lo = max(starts[b] + int(np.argmax(_means(a, w) > _THRESHOLD * max(levels))) - pre, 0)
    y = data[lo - base:lo - base + need + reach]
    y = y if up == down else resample_poly(y, up, down)
    y = np.pad(y[:cfg.n_samples], (0, max(cfg.n_samples - len(y), 0)))
    top = float(np.abs(y).max())
    if top < floor:
        raise _silent(name, f" from {lo / sr:.6g} s on", top, cfg.silence_db)
    cut = np.abs(data[lo + need - base:lo + need + tail - base]).max(initial=0.0) >= floor
    audio = (y / top).astype(np.float32)
    audio.flags.writeable = False
    return Hit(audio, name, sr, channels, seconds, lo / sr, top, bool(cut))


def _means(a: np.ndarray, w: int) -> np.ndarray:
    """Means of ``a`` over its ``w``-frame windows, ``[len(a) - w + 1]``."""
    c = np.concatenate([[0.0], np.cumsum(a)])
    return (c[w:] - c[:-w]) / w


def _ratio(src: float, dst: float) -> tuple[int, int]:
    """``(up, down)`` with ``dst / src = up / down``: exact, or within ~1e-6 for odd rates."""
    r = Fraction(dst) / Fraction(src)  # a huge up or down would make a huge filter:
    r = r if max(r.numerator, r.denominator) <= 4096 else r.limit_denominator(4096)
    return r.numerator, r.denominator


def _silent(name: str, where: str, level: float, db: float) -> AudioError:
    dbfs = f"{20 * math.log10(level):.1f}" if level > 0 else "-inf"
    return AudioError(f"{name}: is silent{where} (peak {dbfs} dBFS, below {db:g} dBFS)")
