"""Sample-accurate JACK MIDI input: events keep their position inside the cycle."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from plugin_host.jack_midi import JackMidiInput
from plugin_host.midi import MidiError

# (cycle, frame offset inside the cycle, message)
PLAN = [(0, 5, (0x99, 36, 100)), (0, 100, (0x99, 38, 90)), (0, 200, (0x89, 38, 0)),
        (1, 17, (0x99, 42, 80)), (3, 255, (0x99, 46, 70))]


class Sender:
    """A JACK client that writes PLAN's events at exact frames, once armed."""

    def __init__(self):
        import jack

        self.client = jack.Client("tympan-test-sender", no_start_server=True)
        self.port = self.client.midi_outports.register("out")
        self.armed = threading.Event()
        self.cycle = -1
        self.client.set_process_callback(self._process)

    def _process(self, frames):
        self.port.clear_buffer()
        if not self.armed.is_set():
            return
        self.cycle += 1
        for cycle, offset, msg in PLAN:
            if cycle == self.cycle:
                self.port.write_midi_event(offset, bytes(msg))
        # a garbage event and a clock tick, both to be ignored
        if self.cycle == 2:
            self.port.write_midi_event(3, bytes([0x42, 0x99]))
            self.port.write_midi_event(9, bytes([0xF8]))


def test_events_keep_their_frame_offsets(jack_server, wait_until):
    got: list[tuple[tuple[int, ...], float]] = []
    midi = JackMidiInput("virtual", lambda m, t: got.append((m, t)),
                         client_name="tympan-test-in")
    sender = Sender()
    try:
        sender.client.activate()
        jack_server.connect("tympan-test-sender:out", midi.port_name)
        time.sleep(0.1)
        sender.armed.set()
        assert wait_until(lambda: len(got) >= len(PLAN), timeout=5)
        time.sleep(0.05)
    finally:
        sender.client.deactivate()
        sender.client.close()
        midi.close()
    assert [m for m, _ in got] == [m for _, _, m in PLAN]
    assert midi.ignored == 2 and midi.errors == 0          # garbage and clock
    sr, period = jack_server.sample_rate, jack_server.period
    t = np.array([t for _, t in got])
    frames = np.array([c * period + o for c, o, _ in PLAN], float)
    # Stamps are on JACK's frame clock: exact to the frame within and across cycles,
    # however late the process thread woke up.
    np.testing.assert_allclose((t - t[0]) * sr, frames - frames[0], atol=1e-6)
    assert abs(t[0] * sr - round(t[0] * sr)) < 1e-6          # a whole JACK frame


def test_connects_to_a_source_by_name_and_reports_unknown_ports(jack_server):
    import jack

    source = jack.Client("tympan-test-src", no_start_server=True)
    source.midi_outports.register("keys")
    source.activate()
    try:
        with JackMidiInput("test-src:keys", lambda m, t: None,
                           client_name="tympan-test-in2") as midi:
            assert midi.source == "tympan-test-src:keys"
            assert jack_server.connections(midi.port_name) == ["tympan-test-src:keys"]
        with pytest.raises(MidiError, match="no MIDI input port matches 'nothing-like-this'"):
            JackMidiInput("nothing-like-this", lambda m, t: None, client_name="tympan-test-in3")
    finally:
        source.deactivate()
        source.close()
