"""Shared fixtures for the real-time tests: a JACK dummy server, port helpers, and a
second process that sends MIDI through a python-rtmidi JACK port.

The JACK tests fail (never skip) when JACK is missing: CI must notice.

- ``jack_server`` (session): uses a running JACK server, or starts
  ``jackd --no-realtime -d dummy -r 48000 -p 256`` and kills it (by PID) at the
  end. Its methods list, wait for, and connect ports (``jack_lsp``, ``jack_connect``).
- ``midi_sender``: factory of ``MidiSender`` processes (closed at teardown).
- ``wait_until``: poll a predicate with a timeout.

Clients get ``JACK_NO_START_SERVER=1`` so no client ever starts a server of its
own, and jackd gets ``JACK_NO_AUDIO_RESERVATION=1`` (no D-Bus device reservation).
"""

from __future__ import annotations

import itertools
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

JACK_SR = 48000
JACK_PERIOD = 256
JACK_ENV = {"JACK_NO_START_SERVER": "1", "JACK_NO_AUDIO_RESERVATION": "1"}
JACKD_CMD = ["jackd", "--no-realtime", "-d", "dummy", "-r", str(JACK_SR), "-p", str(JACK_PERIOD)]
# Tried first: real-time scheduling (as an audio system runs), which keeps the
# Python JACK clients of the tests from missing cycles when the VM is busy.
# Needs root or an rtprio limit; without it jackd exits and JACKD_CMD is used.
JACKD_RT_CMD = ["jackd", "-R", "-P", "70", "-d", "dummy", "-r", str(JACK_SR), "-p",
                str(JACK_PERIOD)]
_names = itertools.count()


def _jack(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env={**os.environ, **JACK_ENV}, capture_output=True,
                          text=True, timeout=timeout)


def jack_running() -> bool:
    """True if a JACK server answers (``jack_lsp`` exits 0; it never starts one)."""
    try:
        return _jack("jack_lsp", timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class JackServer:
    """A JACK server for the session: settings, port listing, connections."""

    def __init__(self, process: subprocess.Popen | None, log_path: Path | None) -> None:
        self.process = process          # None: the server was already running; not ours
        self.log_path = log_path
        self.sample_rate = int(_jack("jack_samplerate").stdout.strip() or 0)
        self.period = int(_jack("jack_bufsize").stdout.strip() or 0)
        self.env = {**os.environ, **JACK_ENV}  # for subprocesses that are JACK clients

    @property
    def started_here(self) -> bool:
        return self.process is not None

    @staticmethod
    def unique_name(prefix: str = "tympan-test") -> str:
        """A JACK client name no other test (or test session) uses."""
        return f"{prefix}-{os.getpid()}-{next(_names)}"

    def ports(self, contains: str = "") -> list[str]:
        """Full names of all ports (``client:port``), optionally filtered by substring."""
        out = _jack("jack_lsp", *([contains] if contains else [])).stdout
        return [line for line in out.splitlines() if line and not line[0].isspace()]

    def port_info(self, name: str) -> dict[str, str]:
        """``{"type": ..., "properties": ...}`` of one port, from ``jack_lsp -t -p``."""
        lines = _jack("jack_lsp", "-t", "-p", name).stdout.splitlines()
        for i, line in enumerate(lines):
            if line == name:
                rest = [x.strip() for x in lines[i + 1:i + 3]]
                props = next((x.split(":", 1)[1].strip() for x in rest
                              if x.startswith("properties:")), "")
                kind = next((x for x in rest if not x.startswith("properties:")), "")
                return {"type": kind, "properties": props}
        raise AssertionError(f"no JACK port {name!r}; ports: {self.ports()}")

    def connections(self, name: str) -> list[str]:
        """Ports connected to ``name``."""
        lines = _jack("jack_lsp", "-c", name).stdout.splitlines()
        result, inside = [], False
        for line in lines:
            if not line[:1].isspace():
                inside = line == name
            elif inside:
                result.append(line.strip())
        return result

    def wait_for_port(self, name: str, timeout: float = 5.0, present: bool = True) -> str:
        """Wait until the port ``name`` exists (or, with ``present=False``, is gone)."""
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports()
            if (name in ports) == present:
                return name
            if time.monotonic() > deadline:
                state = "appear" if present else "go away"
                raise AssertionError(f"JACK port {name!r} did not {state} within {timeout} s; "
                                     f"ports: {ports}")
            time.sleep(0.02)

    def wait_for_new_port(self, pattern: str, before: list[str], timeout: float = 5.0) -> str:
        """The first port matching the regex ``pattern`` that was not in ``before``.

        JACK renames a client whose name is taken (``PortAudio`` -> ``PortAudio-01``),
        so a command's ports are found by what appeared, not by a fixed name.
        """
        regex, old = re.compile(pattern), set(before)
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports()
            new = [p for p in ports if p not in old and regex.fullmatch(p)]
            if new:
                return new[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no new JACK port matching {pattern!r} within {timeout} s; "
                                     f"ports: {ports}")
            time.sleep(0.02)

    def connect(self, source: str, destination: str) -> None:
        """``jack_connect source destination``; fails the test with jack's message."""
        r = _jack("jack_connect", source, destination)
        assert r.returncode == 0, f"jack_connect {source} {destination}: {r.stderr or r.stdout}"

    def disconnect(self, source: str, destination: str) -> None:
        r = _jack("jack_disconnect", source, destination)
        assert r.returncode == 0, f"jack_disconnect {source} {destination}: {r.stderr or r.stdout}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def _start_jackd() -> JackServer:
    log_path = Path(tempfile.mkstemp(prefix="tympan-jackd-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(JACKD_RT_CMD, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **JACK_ENV})
    time.sleep(0.5)
    if proc.poll() is not None:  # no real-time privileges here: run without
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(JACKD_CMD, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **JACK_ENV})
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if jack_running():
            if proc.poll() is None:
                return JackServer(proc, log_path)
            return JackServer(None, log_path)  # ours died: another session's server won the race
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _stop(proc)
    pytest.fail(f"the JACK server did not come up ({' '.join(JACKD_CMD)}, exit code "
                f"{proc.poll()}); its log ({log_path}):\n{log_path.read_text(errors='replace')}",
                pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def jack_server() -> Iterator[JackServer]:
    """A JACK dummy server at 48000 Hz, period 256: the running one, or one started here."""
    missing = [tool for tool in ("jackd", "jack_lsp", "jack_connect", "jack_samplerate",
                                 "jack_bufsize") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"JACK is not installed (missing {', '.join(missing)}): run `make install` "
                    "(as root it installs jackd2) or `sudo apt-get install jackd2`; the "
                    "real-time tests need a JACK server and fail without one", pytrace=False)
    saved = {k: os.environ.get(k) for k in JACK_ENV}
    os.environ.update(JACK_ENV)  # in-process clients (rtmidi) never start a server either
    server = JackServer(None, None) if jack_running() else _start_jackd()
    try:
        if (server.sample_rate, server.period) != (JACK_SR, JACK_PERIOD):
            pytest.fail(f"the running JACK server is at {server.sample_rate} Hz, period "
                        f"{server.period}; the tests need {JACK_SR} Hz, period {JACK_PERIOD}: stop "
                        f"it or restart it as `{' '.join(JACKD_CMD)}`", pytrace=False)
        yield server
    finally:
        # sounddevice starts PortAudio at import; a test that imported it in this
        # process (the API fuzz lists devices in-process) holds a JACK client that
        # Pa_Terminate at exit must close while the server still runs, or it
        # aborts the whole pytest process (pa_jack.c: Assertion `err == 0').
        sd = sys.modules.get("sounddevice")
        if sd is not None and server.process is not None:
            while sd._initialized:
                sd._terminate()
        if server.process is not None:
            _stop(server.process)
        if server.log_path is not None:
            server.log_path.unlink(missing_ok=True)
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
