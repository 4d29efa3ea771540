"""The engine's voice pool: which slot a hit takes, stealing, choke groups.

Wraps :class:`synth.voice.VoiceBank` (all voices rendered by one kernel call)
with the allocation policy of a drum machine. Slot choice and choking run in
small Numba functions so a note-on costs a few microseconds and allocates
nothing on the audio thread.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from synth import kernels
from synth.ftm import FTMConfig
from synth.voice import IDLE_LEVEL, VoiceBank, VoicePreset

__all__ = ["CHOKE_SECONDS", "VoicePool"]

CHOKE_SECONDS = 0.008   # fade time constant of a choked voice (~90 ms to -100 dB)


@nb.njit(cache=True, nogil=True)
def _choose_slot(vi, vf, slot_pad, pad, restart, result):
    """Write into ``result``: [slot, stolen (0/1)].

    ``restart``: the pad's own sounding voice if it has one. Otherwise a free
    slot, else the quietest sounding voice (lowest level bound) is stolen.
    """
    free = -1
    quiet = -1
    quiet_level = np.inf
    for v in range(vi.shape[0]):
        if vi[v, kernels.ACTIVE] == 0:
            if free < 0:
                free = v
            continue
        if restart and slot_pad[v] == pad:
            result[0] = v
            result[1] = 0
            return
        if vf[v, kernels.LEVEL] < quiet_level:
            quiet_level = vf[v, kernels.LEVEL]
            quiet = v
    if free >= 0:
        result[0] = free
        result[1] = 0
    else:
        result[0] = quiet
        result[1] = 1


@nb.njit(cache=True, nogil=True)
def _choke(group, pad, slot_pad, slot_group, seconds, inv_sr, idle_level, modes, vf, vi):
    # Fade every sounding voice of the same choke group played by another pad.
    for v in range(vi.shape[0]):
        if vi[v, kernels.ACTIVE] != 0 and slot_group[v] == group and slot_pad[v] != pad:
            kernels.bank_release(v, seconds, inv_sr, idle_level, modes, vf, vi)


class VoicePool:
    """A fixed number of voices with drum-machine allocation.

    Parameters
    ----------
    polyphony : int
        Most voices sounding at once.
    sr : float
        Sample rate in Hz.
    config : FTMConfig
        Membrane geometry.
    """

    def __init__(self, polyphony: int, sr: float, config: FTMConfig = FTMConfig()):
        self.bank = VoiceBank(polyphony, sr, config)
        self.slot_pad = np.full(polyphony, -1, np.int64)
        self.slot_group = np.zeros(polyphony, np.int64)
        self._pick = np.zeros(2, np.int64)
        self.stolen = 0
        _choose_slot(self.bank.vi, self.bank.vf, self.slot_pad, 0, False, self._pick)
        _choke(1, 0, self.slot_pad, self.slot_group, CHOKE_SECONDS, self.bank._inv_sr,
               IDLE_LEVEL, self.bank.modes, self.bank.vf, self.bank.vi)

    def strike(self, pad: int, preset: VoicePreset, gain: float, pan: float,
               choke_group: int, restart: bool) -> int:
        """Start a hit of pad index ``pad``; returns the slot used.

        ``choke_group`` > 0 fades the other pads' voices of that group;
        ``restart`` re-uses the pad's sounding voice instead of a new one.
        """
        bank = self.bank
        if choke_group > 0:
            _choke(choke_group, pad, self.slot_pad, self.slot_group, CHOKE_SECONDS,
                   bank._inv_sr, IDLE_LEVEL, bank.modes, bank.vf, bank.vi)
        _choose_slot(bank.vi, bank.vf, self.slot_pad, pad, restart, self._pick)
        slot = int(self._pick[0])
        self.stolen += int(self._pick[1])
        bank.note_on(slot, preset, gain, pan)
        self.slot_pad[slot] = pad
        self.slot_group[slot] = choke_group
        return slot

    def render_into(self, out: np.ndarray) -> None:
        """Add every sounding voice into ``out`` ``[2, n]`` (or ``[n]`` mono)."""
        self.bank.render_into(out)

    @property
    def active_count(self) -> int:
        return self.bank.active_count
