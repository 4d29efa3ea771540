"""Shared fixtures for the real-time tests: a JACK dummy server, port helpers, and a
second process that sends MIDI through a python-rtmidi JACK port.

The JACK tests fail (never skip) when JACK is missing: CI must notice.

- ``jack_server`` (session): a :class:`plugin_host.jack_server.JackServer`, the
  running JACK server, or ``jackd -d dummy -r 48000 -p 256`` started here
  (real-time if allowed, else ``--no-realtime``) and killed (by PID) at the end.
  Its methods list, wait for, and connect ports (``jack_lsp``, ``jack_connect``).
- ``midi_sender``: factory of ``MidiSender`` processes (closed at teardown).
- ``wait_until``: poll a predicate with a timeout.

Clients get ``JACK_NO_START_SERVER=1`` so no client ever starts a server of its
own, and jackd gets ``JACK_NO_AUDIO_RESERVATION=1`` (no D-Bus device reservation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from plugin_host.jack_server import (JACK_ENV, JackServer, JackStartError, jackd_command,
                                     missing_tools)

JACK_SR = 48000
JACK_PERIOD = 256


@pytest.fixture(scope="session")
def jack_server() -> Iterator[JackServer]:
    """A JACK dummy server at 48000 Hz, period 256: the running one, or one started here."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"JACK is not installed (missing {', '.join(missing)}): run `make install` "
                    "(as root it installs jackd2) or `sudo apt-get install jackd2`; the "
                    "real-time tests need a JACK server and fail without one", pytrace=False)
    saved = {k: os.environ.get(k) for k in JACK_ENV}
    os.environ.update(JACK_ENV)  # in-process clients (rtmidi) never start a server either
    server = None
    try:
        try:
            server = JackServer.attach_or_start(JACK_PERIOD, JACK_SR)
        except JackStartError as err:
            pytest.fail(str(err), pytrace=False)
        if (server.sample_rate, server.period) != (JACK_SR, JACK_PERIOD):
            pytest.fail(f"the running JACK server is at {server.sample_rate} Hz, period "
                        f"{server.period}; the tests need {JACK_SR} Hz, period {JACK_PERIOD}: stop "
                        f"it or restart it as `{' '.join(jackd_command(JACK_PERIOD, JACK_SR))}`",
                        pytrace=False)
        yield server
    finally:
        if server is not None:
            # sounddevice starts PortAudio at import; a test that imported it in this
            # process (the API fuzz lists devices in-process) holds a JACK client that
            # Pa_Terminate at exit must close while the server still runs, or it
            # aborts the whole pytest process (pa_jack.c: Assertion `err == 0').
            sd = sys.modules.get("sounddevice")
            if sd is not None and server.started_here:
                while sd._initialized:
                    sd._terminate()
            server.stop()  # kills jackd only if started here
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """``wait_until(predicate, timeout=5.0, interval=0.01) -> bool`` (True when it held)."""
    def wait(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True
    return wait


# The sender process. argv[1]: JSON {"client", "target" or "virtual", "timeout"}.
# stdin, one JSON object per line: {"events": [[t_s, [byte, ...]], ...]} sends each
# message at t_s seconds after the batch starts and answers {"sent", "errors",
# "times"} (time.perf_counter() just before each send: CLOCK_MONOTONIC on Linux, the
# same clock in every process); {"quit": true} or EOF ends it.
_SENDER = r"""
import json, sys, time
import rtmidi
cfg = json.loads(sys.argv[1])
def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
try:
    out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=cfg["client"])
    if cfg.get("virtual"):
        out.open_virtual_port(cfg["virtual"])
    else:
        deadline = time.monotonic() + cfg["timeout"]
        while cfg["target"] not in out.get_ports():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no JACK MIDI input {cfg['target']!r}: {out.get_ports()}")
            time.sleep(0.02)
        out.open_port(out.get_ports().index(cfg["target"]), "out")
        time.sleep(0.05)  # the connection takes effect from the next JACK cycle
except Exception as err:
    reply({"error": f"{type(err).__name__}: {err}"}); sys.exit(1)
reply({"ready": True})
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("quit"):
        break
    start, times, errors = time.perf_counter(), [], []
    for i, (at, msg) in enumerate(cmd["events"]):
        while (wait := start + at - time.perf_counter()) > 0:
            time.sleep(min(wait, 0.002))
        times.append(time.perf_counter())
        try:
            out.send_message(msg)
        except Exception as err:
            errors.append([i, f"{type(err).__name__}: {err}"])
    reply({"sent": len(times) - len(errors), "errors": errors, "times": times})
time.sleep(0.1)  # let RtMidi's ring buffer drain into the next JACK cycles
out.delete()
"""


class MidiSender:
    """A second process with a python-rtmidi JACK MIDI output.

    ``MidiSender(server, target="client:port")`` connects to an existing input port;
    ``MidiSender(server, virtual="out")`` creates an output port ``<client>:out`` for
    the code under test to open. Keep under ~1000 messages per JACK period: RtMidi's
    JACK output buffer drops the excess silently.
    """

    def __init__(self, server: JackServer, target: str | None = None,
                 virtual: str | None = None, client: str | None = None,
                 timeout: float = 10.0) -> None:
        assert (target is None) != (virtual is None), "give exactly one of target, virtual"
        self.client = client or server.unique_name("tympan-sender")
        self.port = f"{self.client}:{virtual}" if virtual else None
        cfg = {"client": self.client, "target": target, "virtual": virtual, "timeout": timeout}
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", _SENDER, json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=server.env)
        reply = self._read(timeout + 10)
        if not reply.get("ready"):
            self.close()
            raise AssertionError(f"MIDI sender failed: {reply}")
        if self.port:
            server.wait_for_port(self.port)

    def _read(self, timeout: float) -> dict[str, Any]:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.close()
            raise AssertionError(f"MIDI sender gave no answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise AssertionError(f"MIDI sender exited ({self.proc.poll()}): {err}")
        return json.loads(line)

    def send(self, events: Sequence[tuple[float, Sequence[int]]],
             timeout: float = 30.0) -> dict[str, Any]:
        """Send ``(t_s, message)`` pairs, each ``t_s`` after the batch starts; wait till done.

        Returns ``{"sent": n, "errors": [[i, text], ...], "times": [perf_counter, ...]}``.
        """
        self.proc.stdin.write(json.dumps({"events": [[t, list(m)] for t, m in events]}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def send_until(self, message: Sequence[int], seen: Callable[[], bool],
                   timeout: float = 10.0, every: float = 0.2) -> int:
        """Send ``message`` every ``every`` s until ``seen()``; return how many were sent.

        A new JACK connection carries data only from a later cycle on, and a loaded
        machine delays cycles: use this once before the messages a test counts.
        """
        deadline, sent = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            self.send([(0.0, message)])
            sent += 1
            until = time.monotonic() + every
            while time.monotonic() < until:
                if seen():
                    return sent
                time.sleep(0.005)
        raise AssertionError(f"{list(message)} sent {sent} times in {timeout} s, never seen")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream and not stream.closed:
                stream.close()


@pytest.fixture
def midi_sender(jack_server: JackServer) -> Iterator[Callable[..., MidiSender]]:
    """Factory: ``midi_sender(target=... | virtual=..., client=None) -> MidiSender``."""
    made: list[MidiSender] = []

    def make(**kwargs: Any) -> MidiSender:
        sender = MidiSender(jack_server, **kwargs)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    """A 64-sound PCA index (6 dims) at 8192 samples, 22050 Hz: fast to build."""
    from dataclasses import replace

    from matcher.jtfs import JTFSConfig
    from matcher.sound_index import build_dense

    out = tmp_path_factory.mktemp("index") / "small.npz"
    build_dense(out, replace(JTFSConfig.reference(), N=8192), size=64, dims=6, progress=False)
    return out
