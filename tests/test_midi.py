"""MIDI input on a real JACK server: a second process sends through python-rtmidi,
``MidiInput`` receives. No mocks. Needs JACK (the ``jack_server`` fixture fails
without it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rtmidi

from plugin_host.midi import (API_NAMES, DEFAULT_VIRTUAL_PORT, MidiError, MidiInput,
                              is_channel_voice, list_all, list_ports, resolve_api)

REPO = Path(__file__).resolve().parents[1]
HAS_ALSA_SEQ = os.path.exists("/dev/snd/seq")

VALID = [
    (0x90, 36, 100), (0x99, 38, 127), (0x80, 36, 0), (0xB0, 7, 100), (0xE0, 0x00, 0x40),
    (0xE5, 0x7F, 0x7F), (0xC0, 5), (0xD3, 64), (0xA0, 60, 30), (0x90, 40, 0),
]
DROPPED_BY_RTMIDI = [  # sysex, clock, MTC quarter frame, active sensing: filtered at the source
    [0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7], [0xF8], [0xF1, 0x10], [0xFE],
]
GARBAGE = [  # reaches Python, must be ignored and counted
    [0x40], [0x90, 0x80, 0x40], [0x90, 60], [0xC0, 5, 6], [0xB0], [0xF2, 0, 0], [0xF4],
    [0xF9], [0xFA], [0xE0, 0x40, 0xFF],
]
REFUSED = [[0x90, 1, 2, 3]]  # python-rtmidi refuses to send: > 3 bytes, not sysex
SYNC = (0xBF, 0x7F, 0)  # CC 127 on channel 16: "the connection carries data now"


class Recorder:
    """on_message that keeps everything it is given, except SYNC messages (counted)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, ...]] = []
        self.times: list[float] = []
        self.syncs = 0

    def __call__(self, data: tuple[int, ...], t: float) -> None:
        if data == SYNC:
            self.syncs += 1
            return
        self.messages.append(data)
        self.times.append(t)


def inp_client(inp: MidiInput) -> str:
    return inp.port_name.split(":", 1)[0]


def sync(sender, rec: Recorder) -> None:
    """Wait until the new connection carries messages (see MidiSender.send_until)."""
    sender.send_until(SYNC, lambda: rec.syncs > 0)


@pytest.fixture
def open_input(jack_server):
    """Factory of MidiInputs on JACK with unique client names, closed at teardown."""
    made: list[MidiInput] = []

    def make(port="virtual", on_message=None, **kwargs) -> MidiInput:
        kwargs.setdefault("client_name", jack_server.unique_name("tympan-in"))
        inp = MidiInput("jack", port, on_message or Recorder(), **kwargs)
        made.append(inp)
        return inp

    yield make
    for inp in made:
        inp.close()


def test_virtual_port_is_a_jack_midi_input_and_goes_away_on_close(jack_server, open_input):
    inp = open_input()
    assert inp.port_name == f"{inp_client(inp)}:{DEFAULT_VIRTUAL_PORT}"
    jack_server.wait_for_port(inp.port_name)
    info = jack_server.port_info(inp.port_name)
    assert info["type"] == "8 bit raw midi" and "input" in info["properties"]
    assert inp.is_open and "open" in repr(inp)
    inp.close()
    inp.close()  # idempotent
    assert not inp.is_open
    jack_server.wait_for_port(inp.port_name, present=False)


def retry_on_jack_xruns(attempt, tries: int = 3) -> None:
    """Run ``attempt()`` until it returns True (at most ``tries`` times).

    On an overloaded machine JACK clients miss cycles (xruns); JACK then loses MIDI
    events, or delivers one twice when the sender also missed its cycle. An attempt
    returns False when the number of messages that arrived is off; it asserts on
    everything else, so a real bug fails every attempt.
    """
    for _ in range(tries):
        if attempt():
            return
    pytest.fail(f"the message count was off in all {tries} attempts: more than JACK xruns")


def test_valid_messages_arrive_in_order_and_the_rest_is_ignored(open_input, midi_sender,
                                                                wait_until):
    stream = []  # interleave: every valid message preceded by some junk
    junk = DROPPED_BY_RTMIDI + GARBAGE + REFUSED
    for i, msg in enumerate(VALID):
        stream += [junk[j] for j in range(i, len(junk), len(VALID))] + [list(msg)]
    assert len(stream) == len(VALID) + len(junk)
    expected = len(VALID) + len(GARBAGE)

    def attempt() -> bool:
        rec = Recorder()
        inp = open_input(on_message=rec)
        sender = midi_sender(target=inp.port_name)
        sync(sender, rec)
        t0 = time.perf_counter()
        result = sender.send([(i * 0.001, m) for i, m in enumerate(stream)])
        # python-rtmidi refuses the over-long non-sysex message before it reaches JACK.
        assert [e[1] for e in result["errors"]] == [
            "ValueError: 'message' longer than 3 bytes but does not start with 0xF0."]
        wait_until(lambda: inp.received - rec.syncs >= expected, timeout=3)
        time.sleep(0.1)  # nothing more may come
        t1 = time.perf_counter()
        if inp.received - rec.syncs != expected:
            return False
        assert rec.messages == VALID
        assert all(type(m) is tuple and all(type(b) is int for b in m) for m in rec.messages)
        assert inp.stats() == {"received": expected + rec.syncs,
                               "forwarded": len(VALID) + rec.syncs,
                               "ignored": len(GARBAGE), "dropped": 0, "errors": 0}
        # t is perf_counter at arrival: in order, never before its send time
        # (CLOCK_MONOTONIC is shared between processes), and at most a few periods late.
        sent_at = [result["times"][stream.index(list(m))] for m in VALID]
        assert rec.times == sorted(rec.times) and t0 <= rec.times[0] and rec.times[-1] <= t1
        lateness = [t - s for t, s in zip(rec.times, sent_at)]
        assert min(lateness) >= 0 and max(lateness) < 0.1, lateness
        return True

    retry_on_jack_xruns(attempt)


def test_flood_is_bounded_and_the_input_survives(open_input, midi_sender, wait_until):
    rec = Recorder()
    inp = open_input(on_message=rec)  # default cap: 5000 messages/s, burst 500
    assert (inp.max_rate, inp.burst) == (5000.0, 500)
    sender = midi_sender(target=inp.port_name)
    sync(sender, rec)
    flood = [(i * 1e-4, [0x90 | (i % 16), i % 128, 1 + i % 127]) for i in range(10_000)]
    result = sender.send(flood)
    assert result["sent"] == 10_000 and not result["errors"]
    assert result["times"][-1] - result["times"][0] < 1.5  # it was a flood
    def quiet() -> bool:  # nothing new for 0.2 s: the flood is over
        now = inp.received
        time.sleep(0.2)
        return inp.received == now

    assert wait_until(quiet, timeout=10)
    s = inp.stats()
    flood_times = rec.times[:]
    # Counted: everything that arrived. When the machine is overloaded JACK clients
    # miss cycles and JACK loses (or repeats) some events, hence no exact total.
    assert 8_000 <= s["received"] - rec.syncs <= 10_500, s
    assert s["forwarded"] + s["dropped"] + s["ignored"] == s["received"]
    assert s["ignored"] == 0 and s["errors"] == 0
    assert s["forwarded"] == len(rec.messages) + rec.syncs
    # The token bucket: at most `burst` plus `max_rate` per second of arrivals.
    allowed = inp.burst + inp.max_rate * (flood_times[-1] - flood_times[0]) + 1
    assert len(flood_times) <= allowed, (len(flood_times), allowed)
    assert s["forwarded"] <= 5000 * 1.5 + 500 and s["dropped"] >= 1000, s
    # Still alive and forwarding: a final note-on arrives intact.
    final = (0x99, 99, 99)
    sender.send_until(final, lambda: rec.messages[-1:] == [final])
    assert inp.is_open and inp.stats()["errors"] == 0


def test_exceptions_in_the_callback_are_counted_and_input_goes_on(open_input, midi_sender,
                                                                  wait_until):
    def attempt() -> bool:
        good, rec = [], Recorder()

        def picky(data, t):
            if data == SYNC:
                return rec(data, t)
            if data[1] % 2:
                raise RuntimeError(f"odd note {data[1]}")
            good.append(data)

        inp = open_input(on_message=picky)
        sender = midi_sender(target=inp.port_name)
        sync(sender, rec)
        sender.send([(i * 0.001, [0x90, n, 100]) for i, n in enumerate(range(40, 60))])
        wait_until(lambda: inp.forwarded - rec.syncs >= 20, timeout=3)
        time.sleep(0.1)
        if inp.received - rec.syncs != 20:
            return False
        assert inp.errors == 10 and inp.forwarded - rec.syncs == 20, inp.stats()
        assert inp.last_error == "RuntimeError: odd note 59"
        assert [d[1] for d in good] == list(range(40, 60, 2))
        last = (0x90, 70, 1)
        sender.send_until(last, lambda: last in good)  # still alive
        return True

    retry_on_jack_xruns(attempt)


def test_open_by_index_digits_exact_name_and_substring(jack_server, open_input, midi_sender):
    sender = midi_sender(virtual="pads out")
    ports = list_ports("jack")
    assert sender.port in ports
    index = ports.index(sender.port)
    note = (0x99, 36, 90)
    for spec in (index, str(index), sender.port, sender.client.upper()):
        rec = Recorder()
        inp = open_input(spec, on_message=rec)
        assert inp.port_name == sender.port
        ours = jack_server.connections(sender.port)
        assert len(ours) == 1 and ours[0].endswith(f":{DEFAULT_VIRTUAL_PORT}"), ours
        sender.send_until(note, lambda: note in rec.messages)
        assert set(rec.messages) == {note}, rec.messages
        inp.close()


def test_bad_port_specs_name_the_available_ports(jack_server, midi_sender, open_input):
    base = jack_server.unique_name("tympan-pads")
    a = midi_sender(virtual="out", client=f"{base}-a")
    b = midi_sender(virtual="out", client=f"{base}-b")
    with pytest.raises(MidiError) as err:
        open_input("no such port anywhere")
    text = str(err.value)
    assert "no MIDI input port matches 'no such port anywhere' on JACK" in text
    assert repr(a.port) in text and repr(b.port) in text and "'virtual'" in text
    with pytest.raises(MidiError, match="out of range"):
        open_input(len(list_ports("jack")) + 5)
    with pytest.raises(MidiError, match="ambiguous") as err:
        open_input(base)
    assert repr(a.port) in str(err.value) and repr(b.port) in str(err.value)


def test_resolve_api_names(jack_server):
    with pytest.raises(MidiError) as err:
        resolve_api("bogus")
    assert all(name in str(err.value) for name in ("jack", "alsa", "coremidi", "winmm"))
    missing = [n for n, api in API_NAMES.items() if api not in rtmidi.get_compiled_api()]
    assert missing  # no build has all four
    for name in missing:
        with pytest.raises(MidiError, match="not compiled"):
            resolve_api(name)
    assert resolve_api("jack") == resolve_api(" JACK ") == rtmidi.API_UNIX_JACK
    assert resolve_api(None) == rtmidi.API_UNIX_JACK  # a JACK server is running
    if HAS_ALSA_SEQ:
        assert resolve_api("alsa") == rtmidi.API_LINUX_ALSA
    else:  # this machine: no /dev/snd/seq
        with pytest.raises(MidiError, match="^no ALSA sequencer: start a JACK server or "
                                            "pass --midi-api jack"):
            resolve_api("alsa")
        with pytest.raises(MidiError, match="no ALSA sequencer"):
            MidiInput("alsa", "virtual", Recorder())


def test_without_a_jack_server(jack_server, monkeypatch):
    # A server name nobody runs: libjack finds no server (and does not start one).
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"tympan-none-{os.getpid()}")
    with pytest.raises(MidiError, match="^no JACK server running: start one"):
        resolve_api("jack")
    with pytest.raises(MidiError, match="no JACK server running"):
        MidiInput("jack", "virtual", Recorder())
    if HAS_ALSA_SEQ:
        assert resolve_api(None) == rtmidi.API_LINUX_ALSA
    else:
        with pytest.raises(MidiError, match="^no MIDI system available .*jack: no JACK server"):
            resolve_api(None)
    assert "no JACK server running" in list_all()["jack"]


def test_list_all(jack_server, midi_sender):
    sender = midi_sender(virtual="out")
    everything = list_all()
    assert set(everything) == {n for n, api in API_NAMES.items()
                               if api in rtmidi.get_compiled_api()}
    assert sender.port in everything["jack"]
    if not HAS_ALSA_SEQ:
        assert everything["alsa"].startswith("no ALSA sequencer")


def test_closing_during_a_flood_neither_hangs_nor_crashes(jack_server, midi_sender):
    """Closing while a callback waits for the GIL deadlocked python-rtmidi+JACK (a
    naive delete() hung within a few tries); run opens/closes in a child process."""
    sender = midi_sender(virtual="out")
    child = (
        "import sys, time\n"
        "from plugin_host.midi import MidiInput\n"
        "n = 0\n"
        "def busy(data, t):\n"
        "    global n; n += 1; sum(range(500))\n"
        "for _ in range(8):\n"
        "    with MidiInput('jack', sys.argv[1], busy, client_name=sys.argv[2], max_rate=None):\n"
        "        time.sleep(0.03)\n"
        "print(n)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child, sender.port,
                             jack_server.unique_name("tympan-closer")],
                            cwd=REPO, env={**jack_server.env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flood = [(i * 1e-4, [0x90, i % 128, 100]) for i in range(5_000)]
    # The child takes ~2 s alone; 60 s leaves room for a loaded CI machine (a hang never ends).
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        sender.send(flood)  # 0.5 s at 10,000 messages/s, again until the child is done
    try:
        out, err = proc.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("closing a MidiInput during a flood hung (deadlock)")
    assert proc.returncode == 0, err
    assert int(out) > 100  # messages did arrive while it opened and closed


@pytest.mark.parametrize("data, ok", [
    ((0x90, 60, 100), True), ((0xC5, 127), True), ((0xEF, 0, 127), True),
    ((), False), ((60, 100), False), ((0x90, 60), False), ((0x90, 60, 128), False),
    ((0xC0, 1, 2), False), ((0xF8,), False), ((0xF0, 1, 0xF7), False), ((0x90, -1, 3), False),
])
def test_is_channel_voice(data, ok):
    assert is_channel_voice(data) is ok
