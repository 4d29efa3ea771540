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
from .params import NAMES, DrumParams, clamp_theta
from .reference import audible_modes, peak_amplitude

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
    pr, pi : float64 arrays ``[STRIDE, K]``
        Rotation powers for the kernel.
    peak : float
        Largest magnitude of the unnormalized hit; gain = velocity / peak.
    """

    params: DrumParams
    sr: float
    amp: np.ndarray
    sigma: np.ndarray
    omega: np.ndarray
    pr: np.ndarray
    pi: np.ndarray
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
        pr = np.empty((kernels.STRIDE, live.omega.shape[0]))
        pi = np.empty_like(pr)
        kernels.rotation_powers(live.sigma, live.omega, 1.0 / sr, pr, pi)
        peak = peak_amplitude(live, sr)
        return cls(params, float(sr), live.gain, live.sigma, live.omega, pr, pi, peak)


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
        self.zr = np.zeros((v, k))
        self.zi = np.zeros((v, k))
        self.pr = np.zeros((v, kernels.STRIDE, k))
        self.pi = np.zeros((v, kernels.STRIDE, k))
        self.amp = np.zeros((v, k))
        self.sigma = np.zeros((v, k))
        self.omega = np.zeros((v, k))
        self.n = np.zeros(v, np.int64)
        self.gain = np.zeros(v)
        self.age = np.zeros(v, np.int64)
        self.sync = np.zeros(v, np.int64)
        self.active = np.zeros(v, np.uint8)
        self.level = np.zeros(v)
        self._state = (self.zr, self.zi, self.pr, self.pi, self.amp, self.sigma, self.omega,
                       self.n, self.gain, self.age, self.sync, self.active, self.level)
        self._inv_sr = 1.0 / self.sr
        kernels.warm_up()

    @property
    def n_voices(self) -> int:
        return int(self.active.shape[0])

    def note_on(self, slot: int, preset: VoicePreset, velocity: float = 1.0) -> None:
        """Start voice ``slot`` playing ``preset``; restarts it if sounding.

        ``velocity`` in ``[0, 1]`` is the peak level of the hit; values outside
        are clamped and NaN plays silence. Allocation-free; never raises for a
        preset built at this bank's sample rate.
        """
        vel = min(max(velocity, 0.0), 1.0) if velocity == velocity else 0.0
        kernels.bank_start(slot, preset.n_modes, preset.amp, preset.sigma, preset.omega,
                           preset.pr, preset.pi, vel / preset.peak, *self._state)

    def stop(self, slot: int) -> None:
        """Silence voice ``slot`` at once (no fade)."""
        self.active[slot] = 0

    def render_into(self, out: np.ndarray) -> None:
        """Add the next ``len(out)`` samples of every active voice into ``out``.

        Parameters
        ----------
        out : float32 or float64 array ``[n]``, C-contiguous
            A mono block of any size; summed into, not overwritten.
        """
        kernels.bank_render(out, *self._state, self._inv_sr, self.resync_every, IDLE_LEVEL)

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
