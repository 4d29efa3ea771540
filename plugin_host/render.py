"""Offline rendering of MIDI files through the live engine.

The same :class:`~plugin_host.engine.Engine` that plays live renders a
Standard MIDI File block by block, faster than real time. Event times come
from the file's tempo map in exact rational arithmetic, so every note-on
starts on the sample ``round(seconds * sr)``, however long the song.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .engine import Engine
from .kit import Kit

__all__ = ["MidiFileError", "RenderResult", "midi_events", "render_midi"]

_TAIL_LIMIT_S = 10.0    # most audio rendered after the last event
_SILENCE = 10 ** (-90 / 20)


class MidiFileError(ValueError):
    """The file is missing or is not a readable Standard MIDI File."""


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render_midi` produced.

    Attributes
    ----------
    audio : float32 array ``[2, N]``
    sr : float
        Sample rate in Hz.
    notes : int
        Note-ons in the file; ``played`` of them hit a pad.
    played : int
    seconds : float
        Length of the audio.
    render_seconds : float
        Wall-clock time the render took.
    """

    audio: np.ndarray
    sr: float
    notes: int
    played: int
    seconds: float
    render_seconds: float


def midi_events(path: str | Path, sr: float) -> Iterator[tuple[int, tuple[int, ...]]]:
    """``(frame, message bytes)`` of every channel message of a MIDI file, in order.

    Tracks are merged; ``set_tempo`` meta events shape the time axis
    (default 120 BPM). Frames are exact: ``round(t * sr)`` with ``t`` a fraction.
    """
    import mido

    p = Path(path)
    if not p.is_file():
        raise MidiFileError(f"cannot read {str(p)!r}: no such file")
    try:
        mid = mido.MidiFile(str(p))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as err:
        raise MidiFileError(f"cannot read {str(p)!r}: not a Standard MIDI File ({err})") from None
    if mid.type == 2:
        raise MidiFileError(f"cannot read {str(p)!r}: type 2 MIDI files (independent "
                            "sequences) are not supported; allowed types 0 and 1")
    tpb = mid.ticks_per_beat
    tempo = 500_000                     # microseconds per beat
    seconds = Fraction(0)
    rate = Fraction(sr)
    for msg in mido.merge_tracks(mid.tracks):
        seconds += Fraction(msg.time * tempo, tpb * 1_000_000)
        if msg.type == "set_tempo":
            tempo = msg.tempo
        elif not msg.is_meta and msg.type != "sysex":
            yield round(seconds * rate), tuple(msg.bytes())


def render_midi(path: str | Path, kit: Kit, sr: float = 48000.0, blocksize: int = 128,
                effects: bool = True,
                progress: Callable[[float], None] | None = None) -> RenderResult:
    """Render a MIDI file with ``kit`` through the engine; returns stereo audio.

    Rendering goes on after the last event until every voice is idle and the
    effects' tail is below -90 dBFS (at most 10 s).
    """
    events = list(midi_events(path, sr))
    started = time.perf_counter()
    engine = Engine(kit, sr, effects=effects, max_block=blocksize)
    notes = sum(1 for _, m in events if m[0] & 0xF0 == 0x90 and len(m) > 2 and m[2] > 0)
    last = events[-1][0] if events else 0
    limit = last + int(_TAIL_LIMIT_S * sr)
    blocks: list[np.ndarray] = []
    quiet_since = None
    i = 0
    frame = 0
    while frame < limit:
        end = frame + blocksize
        while i < len(events) and events[i][0] < end:
            engine.midi(events[i][1], events[i][0])
            i += 1
        block = np.zeros((2, blocksize), np.float32)
        engine.process(block)
        blocks.append(block)
        frame = end
        if progress is not None and len(blocks) % 256 == 0:
            progress(min(1.0, frame / max(last, 1)))
        if i == len(events) and engine.active_voices == 0:
            if np.abs(block).max() < _SILENCE:
                quiet_since = frame if quiet_since is None else quiet_since
                if frame - quiet_since >= int(0.25 * sr):
                    break
            else:
                quiet_since = None
    audio = np.concatenate(blocks, axis=1) if blocks else np.zeros((2, 0), np.float32)
    if quiet_since is not None:
        audio = audio[:, :max(quiet_since, last + 1)]
    return RenderResult(audio=audio, sr=float(sr), notes=notes, played=engine.hits,
                        seconds=audio.shape[1] / sr,
                        render_seconds=time.perf_counter() - started)


def peak_dbfs(audio: np.ndarray) -> float:
    """Peak level of ``audio`` in dBFS (-inf for silence)."""
    peak = float(np.abs(audio).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else -math.inf
