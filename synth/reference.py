"""Offline numpy reference render: the closed-form sum of damped sinusoids.

``y[k] = sum_m gain_m * exp(-sigma_m t) * sin(omega_m t)`` at ``t = k / sr``
exactly, in float64, with modes at or above Nyquist dropped. No recursion, no
state: this is what the real-time voice and the torch twin are checked against.

Loudness convention shared by every renderer: a hit is scaled so that its
largest sample magnitude is ``velocity``. Here and in the voice that peak is
found over the whole hit by :func:`peak_amplitude`; the torch twin divides by
the largest sample it rendered, which is the same peak whenever the render
covers the attack (from ~256 samples on for every valid membrane).
"""

from __future__ import annotations

import numpy as np

from .ftm import FTMConfig, Modes, modal_coefficients
from .params import DrumParams, validate_theta

__all__ = ["audible_modes", "peak_amplitude", "render_reference"]

# Samples per chunk of the time axis: bounds memory at modes x chunk x 8 bytes.
_CHUNK = 4096


def audible_modes(modes: Modes, sr: float) -> np.ndarray:
    """Mask of modes that are rendered: below Nyquist and with non-zero gain.

    Parameters
    ----------
    modes : Modes
        Coefficients of shape ``[..., K]`` (numpy).
    sr : float
        Sample rate in Hz.

    Returns
    -------
    numpy.ndarray of bool, shape ``[..., K]``
    """
    # A mode on a nodal line of the strike/pickup point has gain exactly 0
    # up to rounding of sin(k pi); 1e-12 of the largest gain separates them.
    g = np.abs(modes.gain)
    return (modes.omega < np.pi * sr) & (g > 1e-12 * g.max(axis=-1, keepdims=True))


def _chunk(modes: Modes, start: int, stop: int, sr: float) -> np.ndarray:
    """Unnormalized samples ``start..stop-1`` of one or a batch of hits, ``[..., n]``."""
    t = np.arange(start, stop, dtype=np.float64) / sr
    env = np.exp(-modes.sigma[..., :, None] * t)
    osc = np.sin(modes.omega[..., :, None] * t)
    return np.einsum("...k,...kn->...n", modes.gain, env * osc)


def peak_amplitude(modes: Modes, sr: float) -> float:
    """Largest ``|y[k]|`` over the whole (unnormalized) hit of one membrane.

    Renders chunk by chunk until the envelope bound ``sum_m |g_m| exp(-sigma_m t)``
    falls below the peak found so far, so no later sample can exceed it.

    Parameters
    ----------
    modes : Modes
        Audible modes of one hit, each of shape ``[K]``.
    sr : float
        Sample rate in Hz.
    """
    peak, start = 0.0, 0
    bound_gain = np.abs(modes.gain)
    while True:
        stop = start + _CHUNK
        peak = max(peak, float(np.abs(_chunk(modes, start, stop, sr)).max(initial=0.0)))
        bound = float(bound_gain @ np.exp(-modes.sigma * stop / sr))
        if bound <= peak or stop > 3600 * sr:
            return peak
        start = stop


def _select(modes: Modes, keep: np.ndarray) -> Modes:
    return Modes(*(np.where(keep, a, 0.0) for a in modes))


def render_reference(theta: DrumParams | np.ndarray, sr: float, n_samples: int,
                     config: FTMConfig = FTMConfig(), velocity: float = 1.0,
                     normalize: bool = True) -> np.ndarray:
    """Render hits by direct summation of the closed-form modes.

    Parameters
    ----------
    theta : DrumParams or array of shape ``[5]`` or ``[B, 5]``
        Physical parameters (validated).
    sr : float
        Sample rate in Hz.
    n_samples : int
        Length ``N`` of the output.
    config : FTMConfig
        Membrane geometry.
    velocity : float
        Peak level of the normalized hit (full scale = 1).
    normalize : bool
        Scale each hit so its peak magnitude is ``velocity``; otherwise
        return physical amplitude times ``velocity``.

    Returns
    -------
    numpy.ndarray, float64, shape ``[N]`` or ``[B, N]``
    """
    arr = theta.to_array() if isinstance(theta, DrumParams) else validate_theta(theta)
    modes = modal_coefficients(arr, config)
    modes = _select(modes, audible_modes(modes, sr))
    out = np.empty(arr.shape[:-1] + (n_samples,), dtype=np.float64)
    for start in range(0, n_samples, _CHUNK):
        stop = min(start + _CHUNK, n_samples)
        out[..., start:stop] = _chunk(modes, start, stop, sr)
    if normalize:
        flat = modes if arr.ndim > 1 else Modes(*(a[None] for a in modes))
        peaks = np.array([peak_amplitude(Modes(*(a[i] for a in flat)), sr)
                          for i in range(flat.omega.shape[0])])
        out /= peaks.reshape(arr.shape[:-1] + (1,))
    return out * velocity
