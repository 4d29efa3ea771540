"""The showcase: the presets and a short groove rendered to wav files (``tympan demo``'s first part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .audio_writer import write_audio
from .presets import PRESETS
from .voice import DrumVoice, VoiceBank, VoicePreset

__all__ = ["render_groove", "render_hit", "render_showcase"]

# (beat, preset, velocity) over two 4/4 bars, in eighth notes.
_GROOVE = [
    (0, "kick", 1.0), (1, "tabla", 0.3), (2, "snare_head", 0.9), (3, "tabla", 0.35),
    (4, "kick", 0.8), (5, "kick", 0.6), (6, "snare_head", 0.95), (7, "wood_block", 0.4),
    (8, "kick", 1.0), (9, "tabla", 0.3), (10, "snare_head", 0.9), (11, "wood_block", 0.5),
    (12, "rack_tom", 0.8), (13, "rack_tom", 0.7), (14, "floor_tom", 0.9), (15, "floor_tom", 0.8),
]


def render_groove(presets: dict[str, VoicePreset], sr: float, bpm: float = 100.0,
                  block: int = 128) -> np.ndarray:
    """Play :data:`_GROOVE` through a voice bank, block by block, ``[N]`` float64."""
    eighth = 60.0 / bpm / 2
    onsets = [(round(b * eighth * sr), name, vel) for b, name, vel in _GROOVE]
    n = round((len(_GROOVE) * eighth + 1.5) * sr)
    bank = VoiceBank(8, sr)
    out = np.zeros(n)
    events = iter(onsets)
    pending = next(events, None)
    slot = 0
    pos = 0
    while pos < n:
        # Split the block at the next onset so every hit starts on its sample.
        stop = min(pos + block, n)
        if pending is not None and pending[0] < stop:
            stop = max(pending[0], pos)
        bank.render_into(out[pos:stop])
        pos = stop
        while pending is not None and pending[0] <= pos:
            bank.note_on(slot, presets[pending[1]], pending[2])
            slot = (slot + 1) % bank.n_voices
            pending = next(events, None)
    # Several hits overlap: keep the mix below full scale.
    return out * (0.9 / max(1.0, np.abs(out).max()))


def render_showcase(out_dir: Path, sr: int) -> list[Path]:
    """Render every showcase preset, then the groove, to wav files in ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Existing folder to write into.
    sr : int
        Sample rate, Hz.

    Returns
    -------
    list of Path
        The files written (one per preset, then ``groove.wav``); a table goes to stdout.
    """
    presets = {name: VoicePreset.build(p, sr) for name, p in PRESETS.items()}
    print(f"{'preset':<11} {'f0 Hz':>7} {'tau s':>6} {'p':>8} {'D':>7} {'alpha':>5} "
          f"{'modes':>5}  file")
    written = []
    for name, preset in presets.items():
        p = preset.params
        path = write_audio(out_dir / f"{name}.wav", render_hit(preset, sr), sr)
        written.append(path)
        print(f"{name:<11} {p.f0:>7.1f} {p.tau:>6.2f} {p.p:>8.2g} {p.D:>7.2g} {p.alpha:>5.2f} "
              f"{preset.n_modes:>5}  {path}")
    groove = write_audio(out_dir / "groove.wav", render_groove(presets, sr), sr)
    print(f"groove (two bars at 100 BPM through a voice bank): {groove}")
    return written + [groove]


def render_hit(preset: VoicePreset, sr: float, velocity: float = 0.9) -> np.ndarray:
    """One hit of ``preset`` through a real voice, long enough to fall by 60 dB, ``[N]`` float64.

    ``N`` is ``min(3 s, 6.9 tau + 50 ms)`` at ``sr`` Hz (60 dB is ``ln(1000) ~ 6.9`` time constants).
    """
    n = round(min(3.0, 6.9 * preset.params.tau + 0.05) * sr)
    audio = np.zeros(n)
    voice = DrumVoice(sr)
    voice.note_on(preset, velocity)
    voice.render_into(audio)
    return audio
