"""Kits: the shipped General MIDI kit, velocity curves, validation, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from plugin_host.kit import CCMapping, Kit, KitError, VelocityCurve, load_default_kit, load_kit
from synth.voice import DrumVoice

SR = 48000


def measure_f0_and_tau(params) -> tuple[float, float]:
    """Fundamental from the spectrum, decay from the late envelope of the hit.

    f0: the spectral peak within 5 % of the nominal f0 (Hann window, 16x zero
    padding, parabolic interpolation). tau: slope of log RMS in 20 ms windows
    between 1.5 tau and 4.5 tau, where the fundamental dominates (every other
    mode decays at least as fast: sigma_m >= 1/tau).
    """
    n = int(5 * params.tau * SR)
    voice = DrumVoice(SR)
    voice.note_on(params)
    y = np.zeros(n)
    voice.render_into(y)
    seg = y[: max(int(params.tau * SR), 4096)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 16 * len(seg)))
    freqs = np.fft.rfftfreq(16 * len(seg), 1 / SR)
    band = np.flatnonzero(np.abs(freqs - params.f0) < 0.05 * params.f0)
    k = band[np.argmax(spec[band])]
    a, b, c = np.log(spec[k - 1:k + 2])
    f0 = freqs[k] + 0.5 * (a - c) / (a - 2 * b + c) * (freqs[1] - freqs[0])
    w = int(0.02 * SR)
    starts = np.arange(int(1.5 * params.tau * SR), int(4.5 * params.tau * SR) - w, w // 2)
    t = (starts + w / 2) / SR
    rms = np.array([np.sqrt(np.mean(y[s:s + w] ** 2)) for s in starts])
    slope = np.polyfit(t, np.log(rms), 1)[0]
    return f0, -1.0 / slope


KIT = load_default_kit()


@pytest.mark.parametrize("pad", KIT.pads, ids=lambda p: f"{p.note}-{p.name}")
def test_each_pad_sounds_at_its_f0_and_decays_at_its_tau(pad):
    f0, tau = measure_f0_and_tau(pad.params)
    assert f0 == pytest.approx(pad.params.f0, rel=0.005)
    assert tau == pytest.approx(pad.params.tau, rel=0.08)


def test_general_midi_layout():
    names = {p.note: p.name for p in KIT.pads}
    for note in (35, 36, 38, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51):
        assert note in names, f"GM note {note} has no pad"
    toms = [KIT.pads[KIT.pad_index(n)].params.f0 for n in (41, 43, 45, 47, 48, 50)]
    assert toms == sorted(toms) and len(set(toms)) == 6      # floor to high, rising
    hats = {KIT.pads[KIT.pad_index(n)].choke_group for n in (42, 44, 46)}
    assert hats == {1}
    assert KIT.pad_index(100) == KIT.pad_index(90)            # pitch-tracked range


def test_velocity_curve_is_monotonic_and_spans_its_range():
    for curve in (VelocityCurve(30.0, 1.0), VelocityCurve(48.0, 0.4), VelocityCurve(12.0, 3.0)):
        g = [curve.gain(v) for v in range(1, 128)]
        assert all(b > a for a, b in zip(g, g[1:]))
        assert g[-1] == pytest.approx(1.0)
        assert 20 * math.log10(g[0]) == pytest.approx(-curve.range_db * (1 - (1 / 127) ** curve.curve))
    assert VelocityCurve(0.0).gain(1) == 1.0


def _kit_dict() -> dict:
    return KIT.to_dict()


def _set(d: dict, path: str, value) -> dict:
    keys = path.replace("]", "").replace("[", ".").split(".")
    node = d
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    node[int(last) if last.isdigit() else last] = value
    return d


@pytest.mark.parametrize("path, value, message", [
    ("format", "drumkit", "kit field format = 'drumkit' is invalid; allowed: 'tympan-kit'"),
    ("version", 7, "kit field version = 7 is invalid; allowed: 1"),
    ("pads[0].note", 128, "pads[0].note = 128 is invalid; allowed: an integer in [0, 127]"),
    ("pads[1].gain_db", "loud", "pads[1].gain_db = 'loud' is invalid; allowed: a number in [-60, 12] dB"),
    ("pads[1].pan", 1.5, "pads[1].pan = 1.5 is invalid; allowed: [-1, 1]"),
    ("pads[2].retrigger", "again", "pads[2].retrigger = 'again' is invalid; allowed: new, restart"),
    ("pads[2].choke_group", 0, "pads[2].choke_group = 0 is invalid; allowed: an integer in [1, 16] or null"),
    ("pads[3].velocity.range_db", 200, "pads[3].velocity.range_db = 200 is invalid; allowed: [0, 96] dB"),
    ("pads[3].params.f0", 5000, "parameter 'f0' = 5000 is out of range; allowed: [40, 1000] Hz"),
    ("pads[3].params.tau", float("nan"), "parameter 'tau' = nan is not finite"),
    ("pads[4].colour", "red", "pads[4].colour = 'red' is invalid; allowed: known fields"),
    ("pads[5].note", 36, "a note no other pad plays"),
    ("pads[27].tracking.low", 95, "low <= root <= high"),
    ("cc_map[0].param", "pitch", "cc_map[0].param = 'pitch' is invalid; allowed: f0, tau, p, D, alpha"),
    ("cc_map[0].cc", 123, "cc_map[0].cc = 123 is invalid; allowed: an integer in [0, 119]"),
    ("pitch_bend_range", -2, "pitch_bend_range = -2 is invalid; allowed: [0, 24] semitones"),
    ("pads", [], "kit field pads = [] is invalid; allowed: a list of 1 to 128 pads"),
])
def test_malformed_kits_name_the_field(path, value, message):
    with pytest.raises(KitError) as err:
        Kit.from_dict(_set(_kit_dict(), path, value))
    assert message in str(err.value)


def test_kit_files_round_trip_and_errors_name_the_file(tmp_path):
    path = tmp_path / "mine.json"
    kit = KIT.with_mapping(CCMapping(cc=20, param="D", depth=-0.3, pad=38))
    kit.save(path)
    again = Kit.load(path)
    assert again == kit
    assert json.loads(path.read_text())["cc_map"][-1] == {"cc": 20, "param": "D", "depth": -0.3,
                                                        "pad": 38}
    assert [p.name for p in tmp_path.iterdir()] == ["mine.json"]      # no temporary left
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KitError, match="bad.json' is not valid JSON"):
        Kit.load(bad)
    bad.write_text(json.dumps(_set(_kit_dict(), "pads[0].pan", 9)))
    with pytest.raises(KitError, match=r"bad.json': kit field pads\[0\].pan = 9"):
        Kit.load(bad)
    with pytest.raises(KitError, match="cannot read kit"):
        Kit.load(tmp_path / "missing.json")


def test_a_commands_kit_option_loads_the_file_or_the_general_midi_kit(tmp_path):
    # load_kit is what `tympan play / render / serve --kit FILE` call.
    assert load_kit(None) == load_default_kit()
    path = tmp_path / "mine.json"
    kit = KIT.with_mapping(CCMapping(cc=21, param="tau", depth=0.5, pad=36))
    kit.save(path)
    assert load_kit(path) == kit and load_kit(str(path)) == kit
    with pytest.raises(KitError, match="cannot read kit .*missing.json"):
        load_kit(tmp_path / "missing.json")
