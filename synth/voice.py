"""The real-time membrane voice: presets, a bank of voices, a single voice.

Work is split by thread: :meth:`VoicePreset.build` does everything that
allocates (mode mapping, Nyquist cut, peak normalization, rotation powers)
when parameters change, off the audio thread; ``note_on`` and
``render_into`` only copy into and advance preallocated state through the
Numba kernels of :mod:`synth.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import kernels
from .ftm import FTMConfig, Modes, modal_coefficients
from .params import NAMES, DrumParams
from .reference import audible_modes

__all__ = ["DrumVoice", "VoiceBank", "VoicePreset", "IDLE_LEVEL", "RESYNC_EVERY"]

IDLE_LEVEL = 1e-5       # -100 dB re full scale: below this a voice is idle
RESYNC_EVERY = 4096     # samples between exact state resynchronizations


@dataclass(frozen=True, eq=False)
class VoicePreset:
    """Everything a voice needs to play one parameter set at one sample rate.

    Attributes
    ----------
    params : DrumParams
        The (valid) physical parameters.
    sr : float
        Sample rate in Hz.
    amp, sigma, omega : float64 arrays ``[K]``
        Live modes only (below Nyquist, off the nodal lines): amplitude,
        decay rate (1/s), angular frequency (rad/s).
    coef : float64 array ``[3, K]``
        Recursion coefficients ``a``, ``b`` and the pre-onset state (see
        :func:`synth.kernels.recursion_coefficients`).
    peak : float
        Largest magnitude of the unnormalized hit; gain = velocity / peak.
    """

    params: DrumParams
    sr: float
    amp: np.ndarray
    sigma: np.ndarray
    omega: np.ndarray
    coef: np.ndarray
    peak: float

    @property
    def n_modes(self) -> int:
        return int(self.amp.shape[0])

    @classmethod
    def build(cls, params: DrumParams | np.ndarray | Mapping[str, Any], sr: float,
              config: FTMConfig = FTMConfig()) -> "VoicePreset":
        """Prepare a preset; out-of-range or non-finite values are clamped.

        Allocates: call it when parameters change, not in the audio callback.
        """
        if not isinstance(params, DrumParams):
            if isinstance(params, Mapping):
                params = [params.get(n, math.nan) for n in NAMES]
            params = DrumParams.clamped(np.asarray(params, dtype=np.float64).reshape(5))
        modes = modal_coefficients(params.to_array(), config)
        keep = audible_modes(modes, sr)
        live = Modes(*(np.ascontiguousarray(a[keep]) for a in modes))
        k = live.omega.shape[0]
        coef = np.empty((3, k))
        kernels.recursion_coefficients(live.sigma, live.omega, 1.0 / sr, coef)
        peak = np.zeros(1)
        kernels.peak_search(live.gain, live.sigma, coef, np.empty(k), np.empty(k),
                            np.empty(2048), 1.0 / sr, peak)
        return cls(params, float(sr), live.gain, live.sigma, live.omega, coef, float(peak[0]))


class VoiceBank:
    """A fixed pool of membrane voices rendered by one kernel call per block.

    Parameters
    ----------
    n_voices : int
        Polyphony ``V``.
    sr : float
        Sample rate in Hz.
    config : FTMConfig
        Membrane geometry (fixes the most modes a voice can have).
    resync_every : int
        Samples between exact resynchronizations of each voice's state.
    """

    def __init__(self, n_voices: int, sr: float, config: FTMConfig = FTMConfig(),
                 resync_every: int = RESYNC_EVERY):
        if not (isinstance(n_voices, int) and n_voices >= 1):
            raise ValueError(f"n_voices = {n_voices!r}: allowed integers >= 1")
        if not (isinstance(sr, (int, float)) and math.isfinite(sr) and sr > 0):
            raise ValueError(f"sr = {sr!r}: allowed a positive sample rate in Hz")
        self.sr = float(sr)
        self.config = config
        self.resync_every = int(resync_every)
        v, k = n_voices, config.n_modes
        # Three arrays hold everything (layout in synth.kernels); the named
        # attributes below are views for reading from Python.
        self.modes = np.zeros((v, kernels.MODE_ROWS, k))
        self.vf = np.zeros((v, kernels.VOICE_FLOATS))
        self.vi = np.zeros((v, kernels.VOICE_INTS), np.int64)
        self.active = self.vi[:, kernels.ACTIVE]
        self.age = self.vi[:, kernels.AGE]
        self.sync = self.vi[:, kernels.SYNC]
        self.idle = self.vi[:, kernels.IDLE]
        self.level = self.vf[:, kernels.LEVEL]
        self._inv_sr = 1.0 / self.sr
        kernels.warm_up()

    @property
    def n_voices(self) -> int:
        return int(self.active.shape[0])

    def note_on(self, slot: int, preset: VoicePreset, velocity: float = 1.0,
                pan: float = 0.0) -> None:
        """Start voice ``slot`` playing ``preset``; restarts it if sounding.

        ``velocity`` in ``[0, 1]`` is the peak level of the hit; values outside
        are clamped and NaN plays silence. ``pan`` in ``[-1, 1]`` (left to
        right, constant power) applies to stereo renders. Allocation-free;
        never raises for a preset built at this bank's sample rate.

        Raises
        ------
        ValueError
            If ``slot`` is outside the bank, or the preset was built for
            another sample rate or has more modes than the bank holds (a
            programming error: the kernel has no bounds checks, so this is
            checked here).
        """
        if not -self.n_voices <= slot < self.n_voices:
            raise ValueError(f"slot {slot} is outside this bank; allowed 0..{self.n_voices - 1}")
        if preset.sr != self.sr or preset.n_modes > self.modes.shape[2]:
            raise ValueError(f"preset ({preset.n_modes} modes at {preset.sr:g} Hz) does not fit "
                             f"this bank ({self.modes.shape[2]} modes at {self.sr:g} Hz)")
        vel = float(velocity)
        vel = min(max(vel, 0.0), 1.0) if vel == vel else 0.0
        pos = float(pan)
        pos = min(max(pos, -1.0), 1.0) if pos == pos else 0.0
        angle = (pos + 1.0) * (math.pi / 4.0)
        kernels.bank_start(slot % self.n_voices, preset.n_modes, preset.amp, preset.sigma,
                           preset.omega, preset.coef, vel / preset.peak, math.cos(angle),
                           math.sin(angle), self._inv_sr, IDLE_LEVEL, self.resync_every,
                           self.modes, self.vf, self.vi)

    def stop(self, slot: int) -> None:
        """Silence voice ``slot`` at once (no fade)."""
        if not -self.n_voices <= slot < self.n_voices:
            raise ValueError(f"slot {slot} is outside this bank; allowed 0..{self.n_voices - 1}")
        self.active[slot] = 0

    def release(self, slot: int, seconds: float = 0.005) -> None:
        """Fade voice ``slot`` out with time constant ``seconds`` (choke, no click)."""
        if not -self.n_voices <= slot < self.n_voices:
            raise ValueError(f"slot {slot} is outside this bank; allowed 0..{self.n_voices - 1}")
        kernels.bank_release(slot % self.n_voices, float(seconds), self._inv_sr, IDLE_LEVEL,
                             self.modes, self.vf, self.vi)

    def render_into(self, out: np.ndarray) -> None:
        """Add the next ``len(out)`` samples of every active voice into ``out``.

        Parameters
        ----------
        out : float32 or float64 array, ``[n]`` (mono) or ``[2, n]`` (stereo)
            A block of any size; summed into, not overwritten. Each channel
            row must be contiguous (a column slice ``buf[:, :n]`` is fine).
        """
        block = out if out.ndim == 2 else out.reshape(1, -1)
        kernels.bank_render(block, self.modes, self.vf, self.vi, self._inv_sr, self.resync_every)

    @property
    def active_count(self) -> int:
        return int(self.active.sum())


class DrumVoice:
    """One membrane voice: ``note_on(params, velocity)`` then ``render_into(out)``.

    The preset (normalization gain included) is computed when the parameters
    change, not per note; replaying the same parameters or passing a
    :class:`VoicePreset` allocates nothing.

    Parameters
    ----------
    sr : float
        Sample rate in Hz.
    config : FTMConfig
        Membrane geometry.
    """

    def __init__(self, sr: float, config: FTMConfig = FTMConfig(),
                 resync_every: int = RESYNC_EVERY):
        self._bank = VoiceBank(1, sr, config, resync_every)
        self._preset: VoicePreset | None = None

    @property
    def sr(self) -> float:
        return self._bank.sr

    @property
    def preset(self) -> VoicePreset | None:
        """The preset of the last note."""
        return self._preset

    def prepare(self, params: DrumParams | VoicePreset | np.ndarray | Mapping[str, Any]) -> VoicePreset:
        """The preset for ``params`` (cached: rebuilt only when they change)."""
        if isinstance(params, VoicePreset):
            return params
        current = self._preset
        if current is not None and isinstance(params, DrumParams) and params == current.params:
            return current
        return VoicePreset.build(params, self._bank.sr, self._bank.config)

    def note_on(self, params: DrumParams | VoicePreset | np.ndarray | Mapping[str, Any],
                velocity: float = 1.0) -> None:
        """Strike the membrane. Out-of-range parameters are clamped, never raised."""
        preset = self.prepare(params)
        if preset.sr != self._bank.sr:
            preset = VoicePreset.build(preset.params, self._bank.sr, self._bank.config)
        self._preset = preset
        self._bank.note_on(0, preset, velocity)

    def stop(self) -> None:
        self._bank.stop(0)

    def render_into(self, out: np.ndarray) -> None:
        """Add the next ``len(out)`` samples of the hit into ``out`` (any block size)."""
        self._bank.render_into(out)

    @property
    def active(self) -> bool:
        """Whether the voice still sounds (above -100 dB)."""
        return bool(self._bank.active[0])

    @property
    def level(self) -> float:
        """Upper bound of the output magnitude after the last block."""
        return float(self._bank.level[0])

    @property
    def stops_at(self) -> int:
        """Sample (since the note-on) at which the hit is below -100 dB and stops.

        Fixed at ``note_on``, so it does not depend on the block size.
        """
        return int(self._bank.idle[0])
