"""Real time, for real: `tympan play` on a JACK server, MIDI from another process,
the audio output looped back with jack_connect and recorded.

Needs a JACK server (the ``jack_server`` fixture starts a dummy one); fails, never
skips, without JACK. Underflows are counted and reported, not required to be zero
(this VM has scheduling jitter).
"""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plugin_host.kit import load_default_kit

REPO = Path(__file__).resolve().parents[1]
SR = 48000
KIT = load_default_kit()
# Pads with well separated fundamentals, so each hit can be told by its pitch.
SEQUENCE = [36, 45, 63, 56, 51, 38, 41, 65, 36, 56]
SPACING_S = 0.35


class Recorder:
    """A JACK client with two inputs writing into a preallocated buffer.

    Each cycle lands at its JACK frame time, so a cycle this (Python) client
    misses under load leaves a gap of zeros instead of shifting everything
    after it earlier in time.
    """

    def __init__(self, seconds: float, name: str = "tympan-rec"):
        import jack

        self.client = jack.Client(name, no_start_server=True)
        self.ports = [self.client.inports.register(f"in_{i}") for i in range(2)]
        self.audio = np.zeros((2, int(seconds * self.client.samplerate)), np.float32)
        self.pos = 0
        self.start: int | None = None
        self.missed = 0
        self.recording = threading.Event()
        self.client.set_process_callback(self._process)

    def _process(self, frames: int) -> None:
        if not self.recording.is_set():
            return
        now = self.client.last_frame_time
        if self.start is None:
            self.start = now
        at = (now - self.start) & 0xFFFFFFFF          # JACK frame times wrap at 2**32
        if at > self.pos:
            self.missed += (at - self.pos) // frames
        n = max(0, min(frames, self.audio.shape[1] - at))
        for i, port in enumerate(self.ports):
            self.audio[i, at:at + n] = port.get_array()[:n]
        self.pos = at + n

    def __enter__(self) -> "Recorder":
        self.client.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.client.deactivate()
        self.client.close()


def onsets(mono: np.ndarray, hop: int = 128, n: int = 1024) -> list[int]:
    """Hit onsets by spectral flux (robust when hits overlap, as drums do).

    Positive log-magnitude differences between 21 ms frames every 2.7 ms,
    summed over frequency; peaks above 8 x the median at least 0.1 s apart.
    Measured on this loopback: hits give 540-1590, the ringing between them
    ~60, the median ~37. (A threshold tied to the maximum would let one
    underflow click, with its huge broadband flux, hide real hits.)
    """
    frames = np.lib.stride_tricks.sliding_window_view(mono.astype(np.float64), n)[::hop]
    mag = np.log1p(1000 * np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)))
    flux = np.maximum(mag[1:] - mag[:-1], 0).sum(axis=1)
    threshold = 8 * np.median(flux)
    peaks: list[int] = []
    for i in range(1, len(flux) - 1):
        if flux[i] > threshold and flux[i] >= flux[i - 1] and flux[i] >= flux[i + 1]:
            if not peaks or (i - peaks[-1]) * hop > 0.1 * SR:
                peaks.append(i)
            elif flux[i] > flux[peaks[-1]]:
                peaks[-1] = i
    return [(p + 1) * hop + n // 2 for p in peaks]


def new_partial(mono: np.ndarray, at: int) -> tuple[float, float]:
    """The strongest partial that appears at ``at``, and how clearly it is new.

    Spectrum of the 8192 samples after ``at`` minus 1.5 x the spectrum of the
    8192 before it (30-1200 Hz; zero-padded at the start). "Before" skips a run
    of exact zeros just ahead of ``at`` (an underflow's dropout, or a cycle the
    recorder missed), so sound resuming after a gap shows nothing new. Returns
    (Hz, gain / peak after), or (0, 0) for an onset less than 8192 samples from
    the end.
    """
    n = 8192
    win = np.hanning(n)
    end = at
    while end > 0 and mono[end - 1] == 0.0 and at - end < 4096:
        end -= 1
    if at + n > len(mono):
        # Too close to the end to judge: the recording runs 1.2 s past the last
        # send, so this is a dropout click, never a hit of the sequence.
        return 0.0, 0.0
    after_seg = mono[at:at + n]
    before_seg = np.zeros(n)
    head = mono[max(0, end - n):end]
    before_seg[n - len(head):] = head
    after = np.abs(np.fft.rfft(after_seg * win, 4 * n))
    before = np.abs(np.fft.rfft(before_seg * win, 4 * n))
    freqs = np.fft.rfftfreq(4 * n, 1 / SR)
    band = (freqs > 30) & (freqs < 1200)
    gain = np.where(band, after - 1.5 * before, 0.0)
    k = int(np.argmax(gain))
    return float(freqs[k]), float(gain[k] / max(after[band].max(), 1e-12))


def _attempt(jack_server, midi_sender):
    """One run of `tympan play` with the loopback; returns what it heard and said."""
    duration = 0.5 + SPACING_S * len(SEQUENCE) + 1.0
    cmd = [sys.executable, "-m", "tympan_cli", "play", "--midi-api", "jack", "--midi-in",
           "virtual", "--blocksize", "256", "--seconds", "60", "--quiet"]
    before = jack_server.ports()
    proc = subprocess.Popen(cmd, cwd=REPO, env=jack_server.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # The first line names the MIDI port (JACK renames a client whose name is taken).
        ready = select.select([proc.stdout], [], [], 90)[0]
        first = proc.stdout.readline() if ready else ""
        match = re.search(r"MIDI in '([^']+)'", first)
        assert match, f"tympan play did not start: {first!r} {proc.stderr.read() if not ready else ''}"
        # The reported latency counts the effects chain's delay (limiter lookahead 0.25 ms).
        lat = re.search(r"output latency ([0-9.]+) ms \(device ([0-9.]+) ms \+ effects (\d+) "
                        r"frames\)", first)
        assert lat and int(lat.group(3)) == 12, first
        assert float(lat.group(1)) == pytest.approx(float(lat.group(2)) + 0.25, abs=0.11), first
        midi_port = jack_server.wait_for_port(match.group(1), timeout=10)
        # Its PortAudio client: "PortAudio", or "PortAudio-NN" where that name is taken
        # (an earlier attempt's client not yet gone, or one in this test process).
        out0 = jack_server.wait_for_new_port(r"PortAudio(-\d+)?:out_0", before, timeout=30)
        outputs = [out0, jack_server.wait_for_port(out0[:-1] + "1", timeout=30)]
        with Recorder(duration + 2.0) as rec:
            for i, port in enumerate(outputs):
                jack_server.connect(port, f"tympan-rec:in_{i}")
            sender = midi_sender(target=midi_port)
            rec.recording.set()
            events = [(0.5 + SPACING_S * i, (0x99, note, 120)) for i, note in enumerate(SEQUENCE)]
            reply = sender.send(events)
            assert reply["sent"] == len(SEQUENCE) and not reply["errors"]
            time.sleep(1.2)
            rec.recording.clear()
            audio = rec.audio[:, :rec.pos].copy()
            missed = rec.missed
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    summary = re.search(r"stopped: (\d+) hits, (\d+) underflows, (\d+) callback errors, "
                        r"(\d+) events dropped", stdout)
    assert summary, stdout + stderr
    hits, underflows, errors, dropped = map(int, summary.groups())
    print(f"\nJACK loopback: {hits} hits, {underflows} underflows over the run, "
          f"{errors} callback errors, {dropped} dropped; recorder missed {missed} cycles")
    return hits, underflows, errors, dropped, audio, reply, missed


def _check(hits, underflows, errors, dropped, audio, reply, missed, tmp_path) -> None:
    """Every hit, in order, on the right pad (raises AssertionError otherwise)."""
    assert hits == len(SEQUENCE) and errors == 0 and dropped == 0

    mono = audio.sum(axis=0)
    np.save(tmp_path / "loopback.npy", audio)        # kept for inspection on failure
    found = onsets(mono)
    # Every hit, in order, on the right pad: each onset is named by the partial it
    # adds. Onsets that are sound resuming after a dropout, or name no pad of the
    # sequence, are reported as clicks: underflows are counted, not forbidden. Timing to the sample is measured by
    # benchmarks/bench_host.py (here a VM stall can desynchronize JACK's dummy
    # clock from the sender's wall clock).
    assert found, "no onset in the recording"
    f0s = {note: KIT.pads[KIT.pad_index(note)].params.f0 for note in set(SEQUENCE)}
    named, clicks = [], 0
    for at in found:
        partial, clarity = new_partial(mono, at)
        note = min(f0s, key=lambda n: abs(partial / f0s[n] - 1))
        if clarity >= 0.3 and abs(partial / f0s[note] - 1) <= 0.03:
            named.append((note, at))
        else:
            clicks += 1
    print(f"onsets {len(found)}, named {len(named)}, unnamed (clicks) {clicks}")
    # The sent hits, in order, among the named onsets; any extra onset must be
    # explained by a dropout this run had (underflow or recorder-missed cycle).
    hit_at, k = [], 0
    for note, at in named:
        if k < len(SEQUENCE) and note == SEQUENCE[k]:
            hit_at.append(at)
            k += 1
    assert k == len(SEQUENCE), f"heard {named}, sent {SEQUENCE}"
    extra = len(named) - len(SEQUENCE)
    assert extra <= underflows + missed, \
        f"{extra} onsets beyond the hits sent, with only {underflows + missed} dropouts: {named}"
    sent = np.array(reply["times"]) - reply["times"][0]
    heard = (np.array(hit_at) - hit_at[0]) / SR
    print("onset - send time (ms):", np.round((heard - sent) * 1000, 2).tolist())


def test_tympan_play_through_jack_plays_every_hit_on_the_right_pad(jack_server, midi_sender,
                                                                   tmp_path):
    # JACK on this VM (no real-time priority allowed) sometimes loses or repeats
    # a MIDI event, and an underflow's dropout can hide or fake an onset. An
    # attempt that fails while its run had such trouble (hits delivered !=
    # sent, underflows, or cycles the recorder missed) is run again, at most 3
    # in all; a failure in a clean run fails at once, and so does a bug that
    # fails every attempt.
    for attempt in range(3):
        result = _attempt(jack_server, midi_sender)
        hits, underflows, errors, dropped, audio, reply, missed = result
        try:
            _check(*result, tmp_path)
            return
        except AssertionError as err:
            troubled = hits != len(SEQUENCE) or underflows + missed > 0
            if not troubled or attempt == 2:
                raise
            print(f"attempt {attempt + 1} failed with {underflows} underflows, {missed} missed "
                  f"cycles, {hits} of {len(SEQUENCE)} hits delivered ({err}); again")


