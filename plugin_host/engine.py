"""The block processor: MIDI events in, stereo audio out, any audio backend.

Two sides, two threads, no lock between them:

- the control side (MIDI input thread, an offline file reader, the server)
  calls :meth:`Engine.midi`, :meth:`Engine.note_on`, :meth:`Engine.set_pad`.
  It resolves each hit completely (pad, pitch tracking, pitch bend and CC
  offsets, the voice preset, gain, pan) and pushes it with its absolute sample
  frame into a preallocated single-producer/single-consumer ring;
- the audio side calls :meth:`Engine.process` once per block. It pops the
  hits due in the block, renders the voices up to each hit's exact sample,
  strikes, and renders on; then the effects chain runs.

Parameter changes (a matched sound pushed to a pad, a CC move, pitch bend)
replace immutable objects on the control side and so apply to the next hit;
sounding voices are never touched, so there are no clicks.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from synth.ftm import FTMConfig
from synth.params import NAMES, DrumParams, clamp_theta, nu_to_theta, theta_to_nu
from synth.voice import VoicePreset

from .kit import CCMapping, Kit, Pad
from .voices import VoicePool

__all__ = ["Engine"]

_PRESET_CACHE = 1024   # distinct (pad, note, bend, CC) presets kept


class Engine:
    """Real-time drum engine over a kit of membrane pads.

    Parameters
    ----------
    kit : Kit
        Pads, controller map and effects settings.
    sr : float
        Sample rate in Hz.
    polyphony : int
        Voices sounding at once (the quietest is stolen beyond that).
    queue_size : int
        Hits that can wait between the control and the audio side; more are
        dropped and counted in :attr:`dropped`.
    effects : bool
        Run the kit's effects chain (pedalboard) after the voices.
    max_block : int
        Largest block :meth:`process` will be given.
    """

    def __init__(self, kit: Kit, sr: float, polyphony: int = 64, queue_size: int = 4096,
                 effects: bool = True, max_block: int = 8192, config: FTMConfig = FTMConfig()):
        if not (math.isfinite(sr) and sr > 0):
            raise ValueError(f"sample rate {sr!r}: allowed a positive rate in Hz")
        if not (isinstance(polyphony, int) and 1 <= polyphony <= 1024):
            raise ValueError(f"polyphony {polyphony!r}: allowed integers 1..1024")
        self.sr = float(sr)
        self.config = config
        self.kit = kit
        self.pool = VoicePool(polyphony, self.sr, config)
        self.max_block = int(max_block)
        self.effects = self._build_effects(kit) if effects else None
        # Ring of pending hits: parallel Python lists (reads allocate nothing).
        self._size = int(queue_size)
        self._frame = [0] * self._size
        self._pad = [0] * self._size
        self._gain = [0.0] * self._size
        self._pan = [0.0] * self._size
        self._group = [0] * self._size
        self._restart = [False] * self._size
        self._preset: list[VoicePreset | None] = [None] * self._size
        self._head = 0   # written by the control side only
        self._tail = 0   # written by the audio side only
        # Control-side state.
        self._cc = [64] * 128
        self._bend = 0.0                     # semitones
        self._presets: dict[tuple, VoicePreset] = {}
        self._learn: tuple[str, float, int | None] | None = None
        self.on_learn: Callable[[CCMapping], None] | None = None
        # Counters (read by status displays).
        self.frames = 0          # samples processed so far (audio side)
        self.blocks = 0
        self.hits = 0
        self.dropped = 0
        self.ignored = 0
        self.late = 0
        # Clock for live input: (frame, perf_counter time) at the last block start.
        self._clock = (0, time.perf_counter())
        self.latency_frames = 0
        # Where the live clock reads a block's start time; on JACK, the MIDI input's
        # frame clock (one time base for MIDI stamps and audio blocks), which wraps
        # every `clock_wrap` seconds (0: never).
        self.block_clock: Callable[[], float] = time.perf_counter
        self.clock_wrap = 0.0

    # ------------------------------------------------------------------ control side
    def midi(self, message: Sequence[int], frame: int | None = None) -> None:
        """Handle one MIDI channel message (all channels).

        Note-on starts a hit (velocity 0 is a note-off; drums ignore note-offs),
        CC moves mapped parameters (or completes a MIDI learn), pitch bend
        transposes the next hits. Anything else is counted in :attr:`ignored`.

        Parameters
        ----------
        message : sequence of int
            Status byte and data bytes.
        frame : int, optional
            Absolute sample frame of the event; default "now" from the live
            clock (:meth:`frame_at`).
        """
        if len(message) < 2 or not 0x80 <= message[0] <= 0xEF:
            self.ignored += 1
            return
        kind = message[0] & 0xF0
        if kind == 0x90 and len(message) >= 3 and message[2] > 0:
            self.note_on(message[1], message[2], frame)
        elif kind == 0xB0 and len(message) >= 3:
            self.control_change(message[1], message[2])
        elif kind == 0xE0 and len(message) >= 3:
            value = ((message[2] & 0x7F) << 7) | (message[1] & 0x7F)
            self._bend = (value - 8192) / 8192.0 * self.kit.pitch_bend_range
        elif kind in (0x80, 0x90):
            pass  # note-off: a struck membrane rings on
        else:
            self.ignored += 1

    def note_on(self, note: int, velocity: int, frame: int | None = None) -> None:
        """Queue a hit of the pad playing ``note`` at MIDI ``velocity`` (1..127)."""
        index = self.kit.pad_index(note)
        if index is None or not 1 <= velocity <= 127:
            self.ignored += 1
            return
        pad = self.kit.pads[index]
        preset = self._resolve(index, pad, note)
        gain = pad.velocity.gain(velocity) * 10.0 ** (pad.gain_db / 20.0)
        when = self.frame_at(time.perf_counter()) if frame is None else int(frame)
        head = self._head
        if head - self._tail >= self._size:
            self.dropped += 1
            return
        i = head % self._size
        self._frame[i] = when
        self._pad[i] = index
        self._gain[i] = min(gain, 1.0)
        self._pan[i] = pad.pan
        self._group[i] = pad.choke_group or 0
        self._restart[i] = pad.retrigger == "restart"
        self._preset[i] = preset
        self._head = head + 1    # publish after the fields are written

    def control_change(self, cc: int, value: int) -> None:
        """Move the parameters mapped to ``cc`` (0..119), or complete a MIDI learn."""
        if not (0 <= cc < 120 and 0 <= value <= 127):
            self.ignored += 1
            return
        if self._learn is not None:
            param, depth, pad = self._learn
            self._learn = None
            mapping = CCMapping(cc=cc, param=param, depth=depth, pad=pad)
            self.kit = self.kit.with_mapping(mapping)
            if self.on_learn is not None:
                self.on_learn(mapping)
        self._cc[cc] = value

    def learn(self, param: str, depth: float = 0.5, pad: int | None = None) -> None:
        """Arm MIDI learn: the next CC moved will control ``param`` (of ``pad``, or all)."""
        if param not in NAMES:
            raise ValueError(f"cannot learn {param!r}: allowed parameters {', '.join(NAMES)}")
        if pad is not None and self.kit.pad_index(pad) is None:
            raise ValueError(f"cannot learn for note {pad}: no pad plays it")
        self._learn = (param, float(depth), pad)

    def set_pad(self, note: int, params: DrumParams) -> None:
        """Give the pad playing ``note`` new parameters (from any thread); next hits use them."""
        index = self.kit.pad_index(note)
        if index is None:
            raise ValueError(f"no pad plays note {note}")
        self.kit = self.kit.with_pad(replace(self.kit.pads[index], params=params))

    def set_kit(self, kit: Kit) -> None:
        """Swap the whole kit; sounding voices ring on, next hits use the new kit."""
        self.kit = kit

    def frame_at(self, t: float) -> int:
        """Sample frame at which an event arriving at ``perf_counter`` time ``t`` plays.

        The last block's start frame plus the time elapsed since, plus
        :attr:`latency_frames` (one block in live use) so every event lands in
        a future block at its true relative position: constant latency, no
        quantization to block boundaries.
        """
        frame, t0 = self._clock
        d = t - t0
        if self.clock_wrap and abs(d) > 0.5 * self.clock_wrap:     # the counter wrapped
            d -= math.copysign(self.clock_wrap, d)
        return frame + int(round(d * self.sr)) + self.latency_frames

    def _resolve(self, index: int, pad: Pad, note: int) -> VoicePreset:
        # Effective parameters of this hit: CC offsets in nu, then pitch.
        theta = pad.params.to_array()
        # CCs at rest (64) shift nothing and are skipped, so an untouched pad
        # plays its parameters exactly (no round trip through nu).
        offsets = [(m.param, m.depth * (self._cc[m.cc] - 64) / 63.5)
                   for m in self.kit.cc_map
                   if self._cc[m.cc] != 64 and (m.pad is None or m.pad == pad.note)]
        if offsets:
            nu = theta_to_nu(theta)
            for param, shift in offsets:
                nu[NAMES.index(param)] += shift
            theta = nu_to_theta(np.clip(nu, -1.0, 1.0))
        theta[0] = pad.f0_for(note) * 2.0 ** (self._bend / 12.0)
        theta = clamp_theta(theta)
        key = tuple(np.round(theta, 9))
        preset = self._presets.get(key)
        if preset is None:
            if len(self._presets) >= _PRESET_CACHE:
                self._presets.clear()
            preset = VoicePreset.build(DrumParams.from_array(theta), self.sr, self.config)
            self._presets[key] = preset
        return preset

    # ------------------------------------------------------------------ audio side
    def process(self, out: np.ndarray) -> None:
        """Render the next block into ``out`` ``[2, n]`` (overwritten), ``n <= max_block``.

        Hits due in the block start on their exact sample; a hit whose frame
        has already passed (late) plays at the block's first free sample and
        is counted in :attr:`late`.
        """
        n = out.shape[1]
        start = self.frames
        self._clock = (start, self.block_clock())
        end = start + n
        out[:] = 0.0
        pos = 0
        pool = self.pool
        while self._tail < self._head:
            i = self._tail % self._size
            frame = self._frame[i]
            if frame >= end:
                break
            offset = frame - start
            if offset < pos:
                self.late += 1
                offset = pos
            if offset > pos:
                pool.render_into(out[:, pos:offset])
                pos = offset
            pool.strike(self._pad[i], self._preset[i], self._gain[i], self._pan[i],
                        self._group[i], self._restart[i])
            self.hits += 1
            self._tail += 1
        if pos < n:
            pool.render_into(out[:, pos:n])
        if self.effects is not None:
            out[:] = self.effects.process(out)
        self.frames = end
        self.blocks += 1

    def pending(self) -> int:
        """Hits queued but not yet played."""
        return self._head - self._tail

    @property
    def active_voices(self) -> int:
        return self.pool.active_count

    def _build_effects(self, kit: Kit):
        from .effects import DEFAULT_EFFECTS, EffectsChain, EffectsConfig

        config = EffectsConfig.from_dict(kit.effects) if kit.effects is not None \
            else DEFAULT_EFFECTS
        chain = EffectsChain(config, self.sr, channels=2, max_block=self.max_block)
        chain.warm_up()
        return chain
