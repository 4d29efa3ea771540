"""The block processor: exact event timing, voice allocation, controllers, threads."""

from __future__ import annotations

import math
import threading

import mido
import numpy as np
import pytest

from plugin_host.engine import Engine
from plugin_host.kit import load_default_kit
from plugin_host.render import midi_events, render_midi
from synth import DrumParams
from synth.voice import DrumVoice

SR = 48000
KIT = load_default_kit()


def run(engine: Engine, n: int, block: int) -> np.ndarray:
    out = np.zeros((2, n), np.float32)
    for start in range(0, n, block):
        engine.process(out[:, start:start + block])
    return out


def pad(note):
    return KIT.pads[KIT.pad_index(note)]


def solo(params, n, gain=1.0, pan=0.0) -> np.ndarray:
    """The pad's hit as a lone DrumVoice renders it, panned: ``[2, n]``."""
    voice = DrumVoice(SR)
    voice.note_on(params, gain)
    y = np.zeros(n)
    voice.render_into(y)
    angle = (pan + 1) * math.pi / 4
    return np.stack([y * math.cos(angle), y * math.sin(angle)])


@pytest.mark.parametrize("block", [1, 64, 65, 128])
def test_hits_start_on_their_exact_sample(block):
    engine = Engine(KIT, SR, effects=False)
    onsets = {38: 1000, 36: 1000 + 4801, 45: 7777}
    for note, frame in onsets.items():
        engine.note_on(note, 127, frame)
    out = run(engine, 12000, block)
    expect = np.zeros((2, 12000))
    for note, frame in onsets.items():
        p = pad(note)
        gain = 10 ** (p.gain_db / 20)
        expect[:, frame:] += solo(p.params, 12000 - frame, gain, p.pan)
    np.testing.assert_allclose(out, expect, rtol=0, atol=2e-6)
    assert engine.hits == 3 and engine.late == 0


def test_output_does_not_depend_on_the_block_size():
    outs = []
    for block in (1, 64, 65, 128, 8192):
        engine = Engine(KIT, SR, effects=False)
        for i, note in enumerate([36, 38, 42, 46, 42, 49, 50, 41] * 3):
            engine.note_on(note, 40 + 3 * i, 997 * i)
        outs.append(run(engine, 30000, block))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=0, atol=1e-6)


def test_choke_group_fades_the_open_hat():
    def hats(open_hat: bool, closed_hat: bool) -> np.ndarray:
        engine = Engine(KIT, SR, effects=False)
        if open_hat:
            engine.note_on(46, 127, 0)
        if closed_hat:
            engine.note_on(42, 60, 4800)
        return run(engine, 24000, 128)

    ringing, choked, closed = hats(True, False), hats(True, True), hats(False, True)
    residual = choked - closed                 # what is left of the open hat
    np.testing.assert_allclose(residual[:, :4800], ringing[:, :4800], atol=1e-7)
    # The choke fades it with an 8 ms time constant: 100 ms later it is below
    # -80 dB, while unchoked it still rings (tau 0.6 s).
    late = slice(4800 + 4800, 24000)
    assert np.abs(residual[:, late]).max() < 1e-4 < 1e-2 < np.abs(ringing[:, late]).max()


def test_voice_stealing_takes_the_quietest():
    engine = Engine(KIT, SR, polyphony=4, effects=False)
    # A long crash first, then short hits; the sixth hit needs a voice.
    for i, note in enumerate([49, 37, 39, 37, 39]):
        engine.note_on(note, 127, i * 2400)
    run(engine, 5 * 2400 + 10, 128)
    assert engine.pool.stolen == 1
    crash = KIT.pad_index(49)
    assert crash in engine.pool.slot_pad.tolist()         # the loud crash survived
    assert engine.active_voices <= 4


def test_retrigger_restart_reuses_the_pads_voice():
    engine = Engine(KIT, SR, polyphony=8, effects=False)
    for i in range(5):
        engine.note_on(90, 100, i * 1000)                # tuned membrane: retrigger restart
    run(engine, 6000, 64)
    assert engine.active_voices == 1 and engine.hits == 5


def _measured_f0(out: np.ndarray, start: int, n: int = 16384) -> float:
    y = out[0, start:start + n].astype(np.float64)
    spec = np.abs(np.fft.rfft(y * np.hanning(n), 8 * n))
    k = int(np.argmax(spec))
    a, b, c = np.log(spec[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / (8 * n)


def test_pitch_tracking_and_pitch_bend():
    engine = Engine(KIT, SR, effects=False)
    engine.note_on(102, 127, 0)                          # root 90: one octave up
    out = run(engine, 20000, 128)
    assert _measured_f0(out, 0) == pytest.approx(440.0, rel=2e-3)
    engine = Engine(KIT, SR, effects=False)
    engine.midi((0xE9, 0x7F, 0x7F), 0)                   # full bend up: +2 semitones
    engine.note_on(90, 127, 0)
    out = run(engine, 20000, 128)
    assert _measured_f0(out, 0) == pytest.approx(220.0 * 2 ** (2 * 8191 / 8192 / 12), rel=2e-3)


def test_cc_mapping_moves_the_next_hit_only():
    engine = Engine(KIT, SR, effects=False)
    snare = pad(38)
    engine.note_on(38, 127, 0)
    engine.midi((0xB0, 74, 127), 10)                     # CC 74 -> tau, depth 0.6
    engine.note_on(38, 127, 24000)
    first = engine._preset[0].params
    second = engine._preset[1].params
    assert first == snare.params
    nu_shift = 0.6 * (127 - 64) / 63.5
    want_tau = (snare.params.to_nu()[1] + nu_shift + 1) / 2 * (0.8 - 0.07) + 0.07
    assert second.tau == pytest.approx(want_tau, rel=1e-9) and second.tau > first.tau


def test_midi_learn_maps_the_next_cc():
    engine = Engine(KIT, SR, effects=False)
    learned = []
    engine.on_learn = learned.append
    engine.learn("D", depth=-0.4, pad=38)
    engine.midi((0xB3, 20, 100))
    assert learned and learned[0].cc == 20 and learned[0].param == "D" and learned[0].pad == 38
    assert engine.kit.cc_map[-1] == learned[0]
    with pytest.raises(ValueError, match="allowed parameters"):
        engine.learn("pitch")


def test_garbage_and_unknown_notes_are_ignored():
    engine = Engine(KIT, SR, effects=False)
    for msg in [(), (0x90,), (0x42, 1, 2), (0xF0, 1, 2, 0xF7), (0xF8,), (0x90, 3, 100),
                (0x90, 36, 0), (0x80, 36, 64), (0xC0, 5), (0xB0, 125, 0)]:
        engine.midi(msg, 0)
    run(engine, 256, 64)
    # 8 ignored: empty, short, bad status, sysex, clock, unknown note, program
    # change, CC 125 (channel mode); the two note-offs are accepted and do nothing.
    assert engine.hits == 0 and engine.ignored == 8


def test_a_flood_of_hits_is_bounded_and_dropped():
    engine = Engine(KIT, SR, polyphony=16, queue_size=256, effects=False)
    for i in range(10000):
        engine.note_on(36 + i % 12, 100, i)
    assert engine.dropped == 10000 - 256 and engine.pending() == 256
    out = run(engine, 12000, 128)
    assert np.isfinite(out).all() and engine.hits == 256


def test_pad_parameters_swapped_from_another_thread_apply_to_later_hits():
    engine = Engine(KIT, SR, effects=False)
    new = DrumParams(f0=300.0, tau=0.3, p=0.01, D=0.01, alpha=0.9)
    errors = []

    def swap():
        try:
            for i in range(200):
                engine.set_pad(38, new if i % 2 else pad(38).params)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=swap)
    thread.start()
    out = np.zeros((2, 64), np.float32)
    for i in range(400):
        engine.note_on(38, 100, engine.frames + 10)
        engine.process(out)
    thread.join()
    assert not errors and np.isfinite(out).all()
    engine.set_pad(38, new)
    engine.note_on(38, 100, engine.frames)
    assert engine._preset[(engine._head - 1) % engine._size].params == new
    with pytest.raises(ValueError, match="no pad plays note 3"):
        engine.set_pad(3, new)


def _song(path, bpm_changes=((0, 97), (8, 150))):
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    notes = [36, 42, 38, 42] * 4
    for i, note in enumerate(notes):
        for at, bpm in bpm_changes:
            if at == i:
                track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
        track.append(mido.Message("note_on", note=note, velocity=100, channel=9,
                                  time=0 if i == 0 else 240))
        track.append(mido.Message("note_off", note=note, velocity=0, channel=9, time=0))
    mid.save(path)
    return notes


def test_midi_file_frames_follow_the_tempo_map_exactly(tmp_path):
    _song(tmp_path / "s.mid")
    frames = [f for f, m in midi_events(tmp_path / "s.mid", SR) if m[0] & 0xF0 == 0x90 and m[2]]
    # 240 ticks = half a beat: 0.5 * 60 / 97 s for 8 notes, then 0.5 * 60 / 150 s
    want, t = [], 0.0
    from fractions import Fraction
    t = Fraction(0)
    for i in range(16):
        want.append(round(t * SR))
        t += Fraction(30, 97) if i < 7 else Fraction(30, 150)
    assert frames == want


def test_offline_render_matches_the_engine_and_any_block_size(tmp_path):
    _song(tmp_path / "s.mid")
    a = render_midi(tmp_path / "s.mid", KIT, SR, 64, effects=False)
    b = render_midi(tmp_path / "s.mid", KIT, SR, 65, effects=False)
    assert a.notes == a.played == 16
    n = min(a.audio.shape[1], b.audio.shape[1])
    np.testing.assert_allclose(a.audio[:, :n], b.audio[:, :n], rtol=0, atol=1e-6)
    first = [f for f, m in midi_events(tmp_path / "s.mid", SR) if m[0] & 0xF0 == 0x90][1]
    assert np.all(a.audio[:, :1] == 0) and np.abs(a.audio[:, 1:20]).max() > 0
    assert a.seconds > first / SR


def test_live_clock_unwraps_a_wrapping_frame_counter():
    # On JACK the engine's clock is the MIDI input's uint32 frame counter (in seconds),
    # which wraps every 2**32 frames; an event just after the wrap still lands ahead.
    kit = load_default_kit()
    engine = Engine(kit, 48000.0, max_block=128)
    wrap = 2.0**32 / 48000.0
    engine.block_clock, engine.clock_wrap = (lambda: wrap - 64 / 48000.0), wrap
    engine.latency_frames = 128
    engine.process(np.zeros((2, 128), np.float32))
    # the block started at engine frame 0, 64 frames before the wrap; one block ahead
    assert engine.frame_at(10 / 48000.0) == 64 + 10 + 128
    assert engine.frame_at(wrap - 100 / 48000.0) == -36 + 128
