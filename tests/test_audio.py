"""matcher.audio: file -> mono, resampled, onset-aligned, normalized model-side audio.

Every file is written with pedalboard into pytest's tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pedalboard.io import AudioFile

from matcher.audio import AudioConfig, AudioError, Hit, load_hit, prepare_hit

CFG = AudioConfig()
N = CFG.n_samples


def decaying_sine(sr: float, seconds: float = 1.0, start: float = 0.25, freq: float = 200.0,
                  decay: float = 0.3, amp: float = 0.5) -> np.ndarray:
    """float32 ``[frames]``: silence, then ``amp sin(2 pi f t) exp(-t / decay)`` from ``start``."""
    t = np.arange(round(seconds * sr)) / sr - start
    x = np.where(t >= 0, amp * np.sin(2 * np.pi * freq * t) * np.exp(-np.maximum(t, 0) / decay), 0)
    return x.astype(np.float32)


def write(path: Path, x: np.ndarray, sr: float, bit_depth: int = 16) -> Path:
    x = np.atleast_2d(x)
    with AudioFile(str(path), "w", sr, x.shape[0], bit_depth=bit_depth) as f:
        f.write(x)
    return path


def dominant_hz(audio: np.ndarray, sr: float = CFG.sr) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * sr / len(audio))


def check_hit(h: Hit, onset: float, onset_tol: float, freq: float = 200.0) -> None:
    assert h.audio.shape == (N,) and h.audio.dtype == np.float32
    assert abs(np.abs(h.audio).max() - 1.0) <= 1e-6
    assert abs(h.onset_seconds - onset) <= onset_tol, h.onset_seconds
    assert abs(dominant_hz(h.audio) - freq) <= 0.02 * freq, dominant_hz(h.audio)


# --- formats -------------------------------------------------------------------------

@pytest.mark.parametrize("ext, onset_tol", [("wav", 3e-3), ("flac", 3e-3), ("aiff", 3e-3),
                                            ("ogg", 30e-3), ("mp3", 30e-3)])
def test_every_format_round_trips(tmp_path, ext, onset_tol):
    path = write(tmp_path / f"hit.{ext}", decaying_sine(44100), 44100)
    h = load_hit(path)
    check_hit(h, 0.25, onset_tol)
    assert (h.source, h.source_sr, h.source_channels) == (str(path), 44100, 1)
    assert 1.0 <= h.source_seconds < 1.1  # mp3 pads to whole frames
    assert not h.truncated
    # The hit starts before the attack: the first ~1.5 ms stay (nearly) silent.
    assert np.abs(h.audio[:30]).max() < 0.05


def test_onset_rule_is_exact_across_block_boundaries():
    # A step to 0.5 at n0 (22050 Hz: 1 ms = 22 frames). The 1 ms mean ending at
    # n0 + k is 0.5 (k + 1) / 22; it first exceeds 0.1 * 0.5 at k = 2. Minus the
    # 2 ms pre-roll (44 frames): audio[0] is at n0 + 2 - 44.
    for n0 in (5000, 2**18 - 3, 2**18 - 1, 2**18 + 1):  # 2**18: the module's read block
        x = np.zeros(2**18 + 30000)
        x[n0:n0 + 20000] = 0.5
        h = prepare_hit(x, 22050)
        assert h.onset_seconds * 22050 == pytest.approx(n0 - 42, abs=1e-6), n0
        np.testing.assert_array_equal(h.audio[:42], 0)
        np.testing.assert_allclose(h.audio[42:20042], 1.0, atol=1e-6)


def test_click_before_the_hit_is_no_onset():
    x = decaying_sine(44100)
    x[int(0.1 * 44100)] = 1.0  # one-sample click louder than the hit
    h = prepare_hit(x, 44100)
    assert abs(h.onset_seconds - 0.25) <= 3e-3


def test_onset_round_trip_gives_the_same_hit(tmp_path):
    path = write(tmp_path / "hit.wav", decaying_sine(48000), 48000)
    h = load_hit(path)
    again = load_hit(path, onset=h.onset_seconds)
    np.testing.assert_array_equal(again.audio, h.audio)


# --- odd shapes ----------------------------------------------------------------------

def test_eight_channels_are_averaged(tmp_path):
    mono = decaying_sine(48000)
    gains = np.arange(8) / 7.0  # mean 0.5
    path = write(tmp_path / "eight.wav", gains[:, None] * mono, 48000, bit_depth=32)
    h = load_hit(path)
    check_hit(h, 0.25, 3e-3)
    assert h.source_channels == 8
    assert h.peak == pytest.approx(0.5 * np.abs(mono).max(), rel=0.01)  # not the sum, not ch 0
    ref = prepare_hit((gains[:, None] * mono).mean(axis=0), 48000)
    np.testing.assert_allclose(h.audio, ref.audio, atol=1e-5)


@pytest.mark.parametrize("sr", [8000, 192000])
def test_low_and_high_rates(tmp_path, sr):
    h = load_hit(write(tmp_path / f"r{sr}.wav", decaying_sine(sr), sr))
    check_hit(h, 0.25, 3e-3)
    assert h.source_sr == sr


def test_ten_minute_file_and_given_onset(tmp_path):
    sr = 22050
    x = np.zeros(600 * sr, np.float32)
    first = decaying_sine(sr, seconds=1.5, start=0.0, freq=200.0, amp=0.4)
    second = decaying_sine(sr, seconds=1.5, start=0.0, freq=330.0, amp=0.8)
    x[100 * sr:100 * sr + len(first)] = first
    x[400 * sr:400 * sr + len(second)] = second
    path = write(tmp_path / "long.wav", x, sr)
    h = load_hit(path)
    check_hit(h, 100.0, 3e-3)
    assert h.source_seconds == pytest.approx(600.0)
    later = load_hit(path, onset=400.0)
    check_hit(later, 400.0, 1 / sr, freq=330.0)
    assert later.audio[0] == 0 and abs(later.audio[1]) > 0  # starts right at the onset
    assert not h.truncated and not later.truncated


def test_five_ms_file_is_too_short(tmp_path):
    path = write(tmp_path / "blip.wav", np.full(240, 0.5, np.float32), 48000)  # 5 ms
    with pytest.raises(AudioError, match="shorter") as err:
        load_hit(path)
    assert "blip.wav" in str(err.value) and "5 ms" in str(err.value)


# --- bad input -----------------------------------------------------------------------

def raises(call, *words: str) -> str:
    with pytest.raises(AudioError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_bad_files(tmp_path):
    raises(lambda: load_hit(tmp_path / "missing.wav"), "missing.wav", "no such file")
    (tmp_path / "folder.wav").mkdir()
    raises(lambda: load_hit(tmp_path / "folder.wav"), "folder.wav", "directory")
    (tmp_path / "text.wav").write_text("not audio at all\n")
    raises(lambda: load_hit(tmp_path / "text.wav"), "text.wav", "unreadable as audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    raises(lambda: load_hit(tmp_path / "empty.wav"), "empty.wav", "unreadable as audio")
    zeros = write(tmp_path / "zeros.wav", np.zeros(44100, np.float32), 44100)
    raises(lambda: load_hit(zeros), "zeros.wav", "silent")
    nan = np.array(decaying_sine(44100))
    nan[30000] = np.nan
    raises(lambda: load_hit(write(tmp_path / "nan.wav", nan, 44100, bit_depth=32)),
           "nan.wav", "non-finite")


def test_bad_arrays_and_onsets(tmp_path):
    x = decaying_sine(44100)
    y = x.copy()
    y[20000] = np.inf
    raises(lambda: prepare_hit(np.stack([x, y]), 44100, name="take 3"), "take 3", "non-finite")
    raises(lambda: prepare_hit(np.full(44100, np.nan), 44100, name="nans"), "nans", "non-finite")
    raises(lambda: prepare_hit(np.zeros((44100, 2)), 44100, name="tc"), "tc", "[channels, frames]")
    raises(lambda: prepare_hit(x, 0.0, name="no rate"), "no rate", "sample rate")
    path = write(tmp_path / "hit.wav", x, 44100)
    for onset in (1.0, 5.0, -0.1, float("nan"), "0.3"):
        raises(lambda: load_hit(path, onset=onset), "hit.wav", "outside", "duration 1 s")
    tail = np.concatenate([x, np.zeros(44100, np.float32)])
    raises(lambda: prepare_hit(tail, 44100, onset=1.5, name="tail"), "tail", "silent from 1.5 s")


def test_config_is_validated():
    for field, value in [("sr", 0.0), ("n_samples", 0), ("n_samples", 2.0), ("min_seconds", -1.0),
                         ("silence_db", 3.0), ("silence_db", float("-inf")),
                         ("onset_pre_ms", float("nan")), ("sr", True)]:
        with pytest.raises(ValueError, match=f"audio {field} = .*allowed") as err:
            AudioConfig(**{field: value})
        assert repr(value) in str(err.value)


# --- length --------------------------------------------------------------------------

def test_long_hit_is_truncated_short_one_zero_padded(tmp_path):
    sr = 22050
    long = load_hit(write(tmp_path / "long.wav", decaying_sine(sr, 5.0, decay=3.0), sr))
    assert long.truncated
    short = load_hit(write(tmp_path / "short.wav", decaying_sine(sr, 0.5), sr))
    assert not short.truncated
    end = round((0.5 - short.onset_seconds) * sr)  # the file's end in the output
    assert np.abs(short.audio[end - 100:end]).max() > 1e-3
    np.testing.assert_array_equal(short.audio[end:], 0)
    # Resampled from 44.1 kHz: past the filter's reach the padding is still zero.
    short44 = load_hit(write(tmp_path / "short44.wav", decaying_sine(44100, 0.5), 44100))
    end = int(np.ceil((0.5 - short44.onset_seconds) * sr))
    assert np.abs(short44.audio[end - 100:end]).max() > 1e-3
    np.testing.assert_array_equal(short44.audio[end + 1:], 0)


def test_cut_tail_below_silence_is_not_truncation():
    sr = 22050
    x = decaying_sine(sr, 5.0, decay=0.3)  # at the window's end (~3.2 s): -92 dBFS
    assert not prepare_hit(x, sr).truncated
    assert prepare_hit(x, sr, AudioConfig(silence_db=-120.0)).truncated


# --- file vs array -------------------------------------------------------------------

@pytest.mark.parametrize("ext, sr", [("wav", 44100), ("wav", 22050), ("mp3", 44100)])
def test_prepare_hit_matches_load_hit(tmp_path, ext, sr):
    rng = np.random.default_rng(0)
    x = np.stack([decaying_sine(sr), decaying_sine(sr, freq=310.0, amp=0.3)])
    x += (1e-3 * rng.standard_normal(x.shape)).astype(np.float32)
    path = write(tmp_path / f"two.{ext}", x, sr, bit_depth=32 if ext == "wav" else 16)
    with AudioFile(str(path)) as f:
        decoded = f.read(f.frames)
    if ext == "wav":
        np.testing.assert_array_equal(decoded, x)  # float32 wav is lossless
    h, ref = load_hit(path), prepare_hit(decoded, sr, name=str(path))
    assert np.abs(h.audio - ref.audio).max() <= 1e-4
    assert h.onset_seconds == ref.onset_seconds and h.truncated == ref.truncated
    assert h.peak == pytest.approx(ref.peak, rel=1e-6)
    assert (h.source, h.source_channels) == (ref.source, ref.source_channels) == (str(path), 2)


@pytest.mark.parametrize("sr, up, down", [(44100, 1, 2), (48000, 147, 320), (8000, 441, 160)])
def test_window_equals_resampling_the_whole_source(sr, up, down):
    from scipy.signal import resample_poly
    x = decaying_sine(sr, 5.0, decay=3.0)  # still loud at the window's end
    h = prepare_hit(x, sr)
    assert h.truncated
    lo = round(h.onset_seconds * sr)
    whole = resample_poly(x[lo:].astype(np.float64), up, down)[:N]
    np.testing.assert_allclose(h.audio * h.peak, whole, atol=1e-6)
