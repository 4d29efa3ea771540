"""A JACK dummy server driven from Python: start or attach, ports, connections, stop.

One implementation for the real-time tests (``tests/conftest.py``'s ``jack_server``
fixture) and the host benchmarks (``benchmarks/bench_host.py``,
``benchmarks/bench_server.py``). Everything goes through jackd and JACK's
command-line tools (``jack_lsp``, ``jack_connect``, ...), so it needs no Python
JACK binding and imports nothing of Tympan.

Every command runs with ``JACK_NO_START_SERVER=1`` (a client never starts a
server of its own) and ``JACK_NO_AUDIO_RESERVATION=1`` (jackd asks D-Bus for no
device reservation); a named server is reached through ``JACK_DEFAULT_SERVER``.
:attr:`JackServer.env` is that environment, for subprocesses that are JACK clients.

A server found running is used, never stopped; one started here is stopped by
its PID. Failures raise :class:`JackError` subclasses whose message says what
was asked and what JACK answered.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["JACK_ENV", "TOOLS", "JackError", "JackPortError", "JackServer", "JackStartError",
           "jack_running", "jackd_command", "missing_tools"]

JACK_ENV = {"JACK_NO_START_SERVER": "1", "JACK_NO_AUDIO_RESERVATION": "1"}
TOOLS = ("jackd", "jack_lsp", "jack_connect", "jack_disconnect", "jack_samplerate",
         "jack_bufsize")
# Seconds a real-time jackd gets to fail before the start falls back to --no-realtime:
# without the privilege it exits at once.
_RT_GRACE_S = 0.5
_names = itertools.count()


class JackError(RuntimeError):
    """A JACK server or tool did not do what was asked."""


class JackStartError(JackError):
    """No JACK server came up (or none answers where one was expected)."""


class JackPortError(JackError):
    """A port is unknown, did not appear or go away in time, or a (dis)connection failed."""


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    """The JACK programs of ``tools`` that are not on ``PATH``."""
    return [tool for tool in tools if shutil.which(tool) is None]


def jackd_command(period: int = 256, rate: int = 48000, name: str | None = None,
                  realtime: bool = False) -> list[str]:
    """The jackd command line of a dummy (clocked, no sound card) server.

    Parameters
    ----------
    period : int
        Frames per JACK cycle (``-p``).
    rate : int
        Sample rate in Hz (``-r``).
    name : str, optional
        Server name (``-n``); None for the default server.
    realtime : bool
        SCHED_FIFO threads (``-R -P 70``, needs root, CAP_SYS_NICE or an rtprio
        limit) instead of ``--no-realtime``.
    """
    mode = ["-R", "-P", "70"] if realtime else ["--no-realtime"]
    return ["jackd", *(["-n", name] if name else []), *mode, "-d", "dummy", "-r", str(rate),
            "-p", str(period)]


def _env(name: str | None) -> dict[str, str]:
    return {**os.environ, **JACK_ENV, **({"JACK_DEFAULT_SERVER": name} if name else {})}


def _tool(env: dict[str, str], *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)


def jack_running(name: str | None = None) -> bool:
    """True if the JACK server ``name`` (None: the default one) answers.

    ``jack_lsp`` exits 0; with ``JACK_NO_START_SERVER`` it never starts one.
    """
    try:
        return _tool(_env(name), "jack_lsp", timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; by the PID of ``proc`` only."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class JackServer:
    """A JACK server: its settings, ports and connections; stoppable if started here.

    Build one with :meth:`start`, :meth:`attach` or :meth:`attach_or_start`.

    Parameters
    ----------
    name : str, optional
        Server name; None for the default server.
    process : subprocess.Popen, optional
        The jackd process when started here; None for a server that is not ours.
    log_path : pathlib.Path, optional
        The file jackd's output goes to (removed by :meth:`stop`).

    Attributes
    ----------
    sample_rate, period : int
        Read back from the server (``jack_samplerate``, ``jack_bufsize``).
    env : dict
        ``os.environ`` with :data:`JACK_ENV` (and ``JACK_DEFAULT_SERVER`` for a
        named server): the environment for subprocesses that are JACK clients.
    """

    def __init__(self, name: str | None = None, process: subprocess.Popen | None = None,
                 log_path: Path | None = None) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.env = _env(name)
        self.sample_rate = int(self._run("jack_samplerate").stdout.strip() or 0)
        self.period = int(self._run("jack_bufsize").stdout.strip() or 0)

    # -- making one -------------------------------------------------------------------
    @classmethod
    def attach(cls, name: str | None = None) -> JackServer:
        """The running server ``name`` (None: the default one); never stopped here.

        Raises
        ------
        JackStartError
            If no such server answers.
        """
        if not jack_running(name):
            raise JackStartError(f"no JACK server {name!r} is running" if name
                                 else "no JACK server is running")
        return cls(name)

    @classmethod
    def start(cls, period: int = 256, rate: int = 48000, *, name: str | None = None,
              realtime: bool | None = None, timeout: float = 15.0) -> JackServer:
        """Start a dummy jackd (:func:`jackd_command`) and wait until its ports exist.

        Parameters
        ----------
        period, rate : int
            Frames per cycle and sample rate.
        name : str, optional
            Server name; None for the default server.
        realtime : bool or None
            True: real-time only; False: ``--no-realtime`` only; None: real-time
            first, then ``--no-realtime`` if that jackd exits at once (no privilege).
            Real-time scheduling keeps Python clients from missing cycles on a
            busy machine.
        timeout : float
            Seconds to wait for the server to answer.

        Returns
        -------
        JackServer
            Owned (:attr:`started_here`), unless another process started a server
            of the same name first and ours exited: then that one, not owned.

        Raises
        ------
        JackStartError
            If no server answers within ``timeout``; the message holds jackd's log.
        """
        env = _env(name)
        fd, log_name = tempfile.mkstemp(prefix="tympan-jackd-", suffix=".log")
        os.close(fd)
        log_path = Path(log_name)
        cmd = jackd_command(period, rate, name, realtime=realtime is not False)

        def launch(cmd: list[str]) -> subprocess.Popen:
            with open(log_path, "ab") as log:
                return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env)

        proc = launch(cmd)
        if realtime is None:
            time.sleep(_RT_GRACE_S)
            if proc.poll() is not None:
                cmd = jackd_command(period, rate, name, realtime=False)
                proc = launch(cmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = proc.poll() is None
            try:
                r = _tool(env, "jack_lsp", timeout=5)
            except subprocess.TimeoutExpired:
                r = None
            # jack_lsp can answer before the dummy driver has registered its ports.
            if r is not None and r.returncode == 0 and (not alive or "system:playback_1"
                                                        in r.stdout.splitlines()):
                if alive:
                    return cls(name, proc, log_path)
                return cls(name, None, log_path)  # ours died: another server won the race
            if not alive:
                break
            time.sleep(0.05)
        _stop_process(proc)
        log = log_path.read_text(errors="replace")
        log_path.unlink(missing_ok=True)
        raise JackStartError(f"the JACK server did not come up ({' '.join(cmd)}, exit code "
                             f"{proc.poll()}); its log:\n{log}")

    @classmethod
    def attach_or_start(cls, period: int = 256, rate: int = 48000, *, name: str | None = None,
                        realtime: bool | None = None, timeout: float = 15.0) -> JackServer:
        """The running server ``name`` if one answers (not owned), else :meth:`start`.

        The caller checks :attr:`sample_rate` and :attr:`period`: a running server
        keeps its own.
        """
        if jack_running(name):
            return cls(name)
        return cls.start(period, rate, name=name, realtime=realtime, timeout=timeout)

    # -- state and log ----------------------------------------------------------------
    @property
    def started_here(self) -> bool:
        """Whether this object owns the jackd process (and :meth:`stop` stops it)."""
        return self.process is not None

    def log(self) -> str:
        """What jackd printed so far ("" for a server not started here)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """:meth:`log` as lines; ``len(server.log_lines())`` marks a point to read from."""
        return self.log().splitlines()

    def xrun_report(self, since: int = 0) -> dict:
        """What jackd logged about xruns from log line ``since`` on.

        Returns
        -------
        dict
            ``driver_woke_late``: how often the dummy driver woke late;
            ``clients_not_finished``: ``{"client/state": count}``, where state
            ``Triggered`` is a client not yet running (woken late or waiting) and
            ``Running`` one still computing.
        """
        late_driver, clients = 0, {}
        for line in self.log_lines()[since:]:
            if "JackTimedDriver::Process XRun" in line:
                late_driver += 1
            m = re.search(r"client = (.+) was not finished, state = (\w+)", line)
            if m:
                key = f"{m.group(1)}/{m.group(2)}"
                clients[key] = clients.get(key, 0) + 1
        return {"driver_woke_late": late_driver, "clients_not_finished": clients}

    def stop(self) -> None:
        """Stop jackd if started here (by its PID) and remove its log; idempotent.

        A server that was already running is left alone.
        """
        if self.process is not None:
            _stop_process(self.process)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> JackServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- ports ------------------------------------------------------------------------
    @staticmethod
    def unique_name(prefix: str = "tympan") -> str:
        """A JACK client name no other caller (or process) uses."""
        return f"{prefix}-{os.getpid()}-{next(_names)}"

    def _run(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        return _tool(self.env, *args, timeout=timeout)

    def ports(self, contains: str = "") -> list[str]:
        """Full names of all ports (``client:port``), optionally filtered by substring."""
        out = self._run("jack_lsp", *([contains] if contains else [])).stdout
        return [line for line in out.splitlines() if line and not line[0].isspace()]

    def port_info(self, name: str) -> dict[str, str]:
        """``{"type": ..., "properties": ...}`` of one port, from ``jack_lsp -t -p``.

        Raises
        ------
        JackPortError
            If there is no port ``name``.
        """
        lines = self._run("jack_lsp", "-t", "-p", name).stdout.splitlines()
        for i, line in enumerate(lines):
            if line == name:
                rest = [x.strip() for x in lines[i + 1:i + 3]]
                props = next((x.split(":", 1)[1].strip() for x in rest
                              if x.startswith("properties:")), "")
                kind = next((x for x in rest if not x.startswith("properties:")), "")
                return {"type": kind, "properties": props}
        raise JackPortError(f"no JACK port {name!r}; ports: {self.ports()}")

    def connections(self, name: str) -> list[str]:
        """Ports connected to ``name`` ([] for an unknown port)."""
        lines = self._run("jack_lsp", "-c", name).stdout.splitlines()
        result, inside = [], False
        for line in lines:
            if not line[:1].isspace():
                inside = line == name
            elif inside:
                result.append(line.strip())
        return result

    def wait_for_port(self, name: str, timeout: float = 5.0, present: bool = True) -> str:
        """Wait until the port ``name`` exists (or, with ``present=False``, is gone).

        Raises
        ------
        JackPortError
            If it did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports()
            if (name in ports) == present:
                return name
            if time.monotonic() > deadline:
                state = "appear" if present else "go away"
                raise JackPortError(f"JACK port {name!r} did not {state} within {timeout} s; "
                                    f"ports: {ports}")
            time.sleep(0.02)

    def wait_for_new_port(self, pattern: str, before: list[str], timeout: float = 5.0) -> str:
        """The first port matching the regex ``pattern`` that was not in ``before``.

        JACK renames a client whose name is taken (``PortAudio`` -> ``PortAudio-01``),
        so a command's ports are found by what appeared, not by a fixed name.

        Raises
        ------
        JackPortError
            If none appeared within ``timeout`` seconds.
        """
        regex, old = re.compile(pattern), set(before)
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports()
            new = [p for p in ports if p not in old and regex.fullmatch(p)]
            if new:
                return new[0]
            if time.monotonic() > deadline:
                raise JackPortError(f"no new JACK port matching {pattern!r} within {timeout} s; "
                                    f"ports: {ports}")
            time.sleep(0.02)

    def connect(self, source: str, destination: str) -> None:
        """``jack_connect source destination``.

        Raises
        ------
        JackPortError
            With jack_connect's message, if it failed.
        """
        r = self._run("jack_connect", source, destination)
        if r.returncode != 0:
            raise JackPortError(f"jack_connect {source} {destination}: {r.stderr or r.stdout}")

    def disconnect(self, source: str, destination: str) -> None:
        """``jack_disconnect source destination``; :class:`JackPortError` if it failed."""
        r = self._run("jack_disconnect", source, destination)
        if r.returncode != 0:
            raise JackPortError(f"jack_disconnect {source} {destination}: "
                                f"{r.stderr or r.stdout}")
