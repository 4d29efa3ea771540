"""The fundamental of a drum hit from its spectrum: a pitch candidate for the match.

A struck membrane's lowest mode is its fundamental (mode (1, 1) of Tympan's
model has ``omega_11 = omega``), and on a recording it is the lowest strong
peak of the spectrum. Snare wires, beater clicks and room noise add energy
*above* it, which can pull a learnt estimate up an octave; the lowest
prominent peak is not fooled by them. The spectrum is taken over the first
``window_s`` of the hit (where the low modes are loudest), Hann-windowed and
zero-padded to ``0.1`` Hz resolution, and the peak's frequency refined by
parabolic interpolation of the log magnitude. A peak counts when it stands
``prominence_db`` above the median level of the third of an octave around it
(at least 50 Hz):
a mode does (tens of dB), while the largest spikes of a noise spectrum stand
about 11 dB above its median.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks

__all__ = ["estimate_f0"]


def estimate_f0(audio: np.ndarray, sr: float, fmin: float = 40.0, fmax: float = 1000.0,
                window_s: float = 0.5, floor_db: float = 30.0,
                prominence_db: float = 18.0) -> float | None:
    """The lowest prominent spectral peak of a hit, Hz, or None.

    Parameters
    ----------
    audio : np.ndarray ``[n]``
        The hit, onset at sample 0 (as :func:`matcher.audio.load_hit` prepares it).
    sr : float
        Its rate, Hz.
    fmin, fmax : float
        The range searched, Hz (the membrane's f0 range by default).
    window_s : float
        Length analysed from the onset, s.
    floor_db : float
        A peak counts if it is within this many dB of the strongest peak in range.
    prominence_db : float
        ... and stands this many dB above the median level within a sixth of an
        octave (at least 25 Hz) on either side.

    Returns
    -------
    float or None
        The frequency in Hz, or None when no peak in range qualifies (silence,
        pure noise).
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1 or sr <= 0 or not 0 < fmin < fmax:
        raise ValueError(f"estimate_f0: audio of shape {x.shape} at {sr} Hz, range "
                         f"{fmin}..{fmax} Hz: allowed 1-D audio, sr > 0, 0 < fmin < fmax")
    x = x[:max(16, int(window_s * sr))]
    if not np.any(x):
        return None
    n_fft = 1 << int(np.ceil(np.log2(max(len(x), sr / 0.1))))
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    db = 20 * np.log10(mag + 1e-12 * mag.max())
    band = (freqs >= fmin * 0.94) & (freqs <= fmax * 1.06)
    lo = int(np.argmax(band))
    seg = db[band]
    peaks, _ = find_peaks(seg, prominence=6.0)
    if len(peaks) == 0:
        return None
    f = freqs[band]
    # Neighbourhood: a sixth of an octave each side, at least 25 Hz (wider than the
    # window's main lobe at low f0, so the median is the floor around the peak).
    half = np.maximum(f[peaks] * (2 ** (1 / 6) - 1), 25.0)
    lo_f, hi_f = np.searchsorted(f, f[peaks] - half), np.searchsorted(f, f[peaks] + half)
    above = np.array([seg[p] - np.median(seg[a:b]) for p, a, b in zip(peaks, lo_f, hi_f)])
    peaks = peaks[above >= prominence_db]
    if len(peaks) == 0:
        return None
    peaks = peaks[seg[peaks] >= seg[peaks].max() - floor_db]
    i = lo + int(peaks[0])
    a, b, c = db[i - 1], db[i], db[i + 1]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
    f0 = float(freqs[i] + shift * (freqs[1] - freqs[0]))
    return f0 if fmin <= f0 <= fmax else None
