"""MIDI input for the live engine: python-rtmidi on JACK, ALSA, CoreMIDI or Windows MM.

``resolve_api`` picks and checks a MIDI system, ``list_ports``/``list_all`` list
input ports, ``MidiInput`` opens one (name, substring, index, or a new virtual
port) and passes each valid channel-voice message to a callback with its arrival
time on the ``time.perf_counter`` clock; the engine turns times into sample offsets.

python-rtmidi 1.5 (RtMidi 5.0) with JACK, as measured: the callback runs in the
JACK process thread, holding the GIL; arrival times are quantized to the JACK
period (RtMidi drops the events' frame offsets); closing while a callback waits
for the GIL hangs (see ``MidiInput.close``); an event starting with 0xF0 but not
ending with 0xF7 makes RtMidi drop all later events until one ends with 0xF7.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import rtmidi

API_NAMES: dict[str, int] = {
    "jack": rtmidi.API_UNIX_JACK,
    "alsa": rtmidi.API_LINUX_ALSA,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
_LABELS = {"jack": "JACK", "alsa": "ALSA", "coremidi": "CoreMIDI", "winmm": "Windows MM"}
_PLATFORM_DEFAULT = {"linux": "alsa", "darwin": "coremidi", "win32": "winmm"}
VIRTUAL = "virtual"
DEFAULT_VIRTUAL_PORT = "Tympan MIDI In"
DEFAULT_MAX_RATE = 5000.0
# Data bytes after the status byte, by (status >> 4) - 8: note off, note on, poly
# aftertouch, control change, program change, channel aftertouch, pitch bend.
_DATA_BYTES = (2, 2, 2, 2, 1, 1, 2)
_DRAIN_S = 0.02  # in close: time for a callback already waiting on the GIL to finish
_RTMIDI_ERRORS = (rtmidi.RtMidiError, RuntimeError)

OnMessage = Callable[[tuple[int, ...], float], None]


class MidiError(RuntimeError):
    """No usable MIDI system or port; the message says what to do."""


def _name_of(api: int) -> str:
    return next((n for n, v in API_NAMES.items() if v == api), rtmidi.get_api_name(api))


def _compiled() -> list[int]:
    skip = (rtmidi.API_UNSPECIFIED, rtmidi.API_RTMIDI_DUMMY)
    return [api for api in rtmidi.get_compiled_api() if api not in skip]


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while libjack/libasound print diagnostics
    of failures that come back to us as rtmidi exceptions anyway."""
    with _STDERR_LOCK:
        with contextlib.suppress(AttributeError, ValueError):
            sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _why_unavailable(api: int) -> str:
    name = _name_of(api)
    if name == "jack":
        return "no JACK server running"
    if name == "alsa":
        return ("cannot open the ALSA sequencer /dev/snd/seq (check its permissions)"
                if os.path.exists("/dev/snd/seq") else "no ALSA sequencer")
    return f"no {_LABELS.get(name, name)} MIDI backend available"


def _backend_error(api: int, err: BaseException) -> MidiError:
    others = " or ".join(_name_of(a) for a in _compiled() if a != api)
    fix = {"jack": "start one (jackd -d dummy -r 48000)",
           "alsa": "start a JACK server"}.get(_name_of(api), "check the MIDI system")
    hint = f" or pass --midi-api {others}" if others else ""
    return MidiError(f"{_why_unavailable(api)}: {fix}{hint} (rtmidi: {err})")


def _open_client(api: int, client_name: str, queue_size: int = 1024) -> rtmidi.MidiIn:
    """A ``rtmidi.MidiIn`` on ``api``. Creating it connects to the backend (a JACK
    client, an ALSA sequencer handle); failures become ``MidiError``."""
    try:
        with _quiet_native_stderr():
            return rtmidi.MidiIn(rtapi=api, name=client_name, queue_size_limit=queue_size)
    except _RTMIDI_ERRORS as err:
        raise _backend_error(api, err) from None


def _checked_api(api: str | int) -> int:
    if isinstance(api, str):
        if api.strip().lower() not in API_NAMES:
            raise MidiError(f"unknown MIDI API {api!r}; allowed: {', '.join(API_NAMES)}")
        api = API_NAMES[api.strip().lower()]
    if api not in _compiled():
        have = ", ".join(_name_of(a) for a in _compiled()) or "none"
        raise MidiError(f"MIDI API {_name_of(api)!r} is not compiled into python-rtmidi "
                        f"here; available: {have}")
    return int(api)


def resolve_api(name: str | int | None) -> int:
    """The ``rtmidi.API_*`` constant for ``name``, checked to have a working backend.

    Parameters
    ----------
    name : str, int or None
        ``"jack"``, ``"alsa"``, ``"coremidi"``, ``"winmm"`` (any case), an
        ``rtmidi.API_*`` constant, or None: JACK if a JACK server answers, else the
        platform's API. The check opens and closes an ``rtmidi.MidiIn``, as
        ``MidiInput`` will (on JACK a client that never starts a server; ~30 ms).

    Raises
    ------
    MidiError
        Unknown name (the message lists the allowed ones), API not compiled in, or
        no backend: "no ALSA sequencer: start a JACK server or pass --midi-api jack".
    """
    if name is not None:
        candidates = [_checked_api(name)]
    else:
        platform = next((v for k, v in _PLATFORM_DEFAULT.items() if sys.platform.startswith(k)),
                        None)
        candidates = [a for a in (API_NAMES["jack"], API_NAMES.get(platform or "", -1))
                      if a in _compiled()] or _compiled()[:1]
    for api in candidates:
        try:
            _open_client(api, "Tympan probe").delete()
            return api
        except MidiError:
            if name is not None:
                raise
    reasons = "; ".join(f"{_name_of(a)}: {_why_unavailable(a)}" for a in candidates)
    raise MidiError(f"no MIDI system available ({reasons}): start a JACK server "
                    "(jackd -d dummy -r 48000) or load the ALSA sequencer (modprobe snd-seq)")


def list_ports(api: str | int) -> list[str]:
    """Names of the MIDI input sources on ``api`` (JACK: ``"client:port"``); MidiError
    if the API is unknown or unavailable."""
    client = _open_client(_checked_api(api), "Tympan list")
    try:
        return list(client.get_ports())
    finally:
        client.delete()


def list_all() -> dict[str, list[str] | str]:
    """For each compiled API (by user-facing name): its input ports, or why it is unusable."""
    result: dict[str, list[str] | str] = {}
    for api in _compiled():
        try:
            result[_name_of(api)] = list_ports(api)
        except MidiError as err:
            result[_name_of(api)] = str(err)
    return result


def is_channel_voice(data: Sequence[int]) -> bool:
    """True for a whole channel-voice message: status 0x80-0xEF, right length, data < 0x80."""
    if not data or not 0x80 <= data[0] <= 0xEF:
        return False
    return (len(data) == 1 + _DATA_BYTES[(data[0] >> 4) - 8]
            and all(0 <= b < 0x80 for b in data[1:]))


class _Gate:
    """What every MIDI input does with a message: validate, rate-limit, forward.

    Subclasses call :meth:`_deliver` from their backend thread; it never raises.
    """

    def _init_gate(self, on_message: OnMessage, max_rate: float | None,
                   burst: int | None) -> None:
        if not callable(on_message):
            raise TypeError(f"on_message must be callable, got {on_message!r}")
        if max_rate is not None and not max_rate > 0:
            raise ValueError(f"max_rate must be > 0 messages/s or None, got {max_rate!r}")
        self._on_message = on_message
        self.max_rate = None if max_rate is None else float(max_rate)
        self.burst = max(1, int(burst if burst is not None else (self.max_rate or 10) / 10))
        self.received = self.ignored = self.dropped = self.forwarded = self.errors = 0
        self.last_error: str | None = None
        self._tokens, self._t_last = float(self.burst), time.perf_counter()

    def _deliver(self, message: Sequence[int], t: float, now: float) -> None:
        """Forward ``message`` stamped ``t`` (``now``: arrival, for the rate limit)."""
        self.received += 1
        try:
            if not is_channel_voice(message):
                self.ignored += 1
                return
            if self.max_rate is not None:
                tokens = min(self.burst, self._tokens + (now - self._t_last) * self.max_rate)
                self._t_last = now
                if tokens < 1.0:
                    self._tokens = tokens
                    self.dropped += 1
                    return
                self._tokens = tokens - 1.0
            self.forwarded += 1
            self._on_message(tuple(message), t)
        except Exception as err:  # the user's callback (or anything odd): count, go on
            self.errors += 1
            self.last_error = f"{type(err).__name__}: {err}"

    def stats(self) -> dict[str, int]:
        return {"received": self.received, "forwarded": self.forwarded,
                "ignored": self.ignored, "dropped": self.dropped, "errors": self.errors}

    def close(self) -> None:  # pragma: no cover - every input defines it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def find_port(port: int | str, ports: list[str], where: str) -> int:
    """Index of ``port`` (index, exact name or unique case-insensitive substring) in ``ports``."""
    listing = (f"available: {', '.join(map(repr, ports))}" if ports else
               "there are no input ports") + f"; or use {VIRTUAL!r} for a new port"
    if isinstance(port, int) or port.strip().isdigit():
        if not 0 <= int(port) < len(ports):
            raise MidiError(f"MIDI input index {port} out of range {where}; {listing}")
        return int(port)
    if port in ports:
        return ports.index(port)
    hits = [i for i, name in enumerate(ports) if port.lower() in name.lower()]
    if not hits:
        raise MidiError(f"no MIDI input port matches {port!r} {where}; {listing}")
    if len(hits) > 1:
        names = ", ".join(repr(ports[i]) for i in hits)
        raise MidiError(f"MIDI input {port!r} is ambiguous {where}: it matches {names}")
    return hits[0]


class MidiInput(_Gate):
    """An open MIDI input that passes valid channel-voice messages to ``on_message``.

    Parameters
    ----------
    api : str, int or None
        As for ``resolve_api``.
    port : int or str
        ``"virtual"``: a new input port other programs connect to (its full name is
        ``port_name``, on JACK ``"<client_name>:<virtual_name>"``); an index into
        ``list_ports(api)`` (int or digits); an exact port name; or a substring of
        exactly one port name (any case).
    on_message : callable(data, t)
        ``data``: tuple of 2 or 3 ints (status, data bytes); ``t``: seconds,
        ``time.perf_counter()`` when the message reached Python (CLOCK_MONOTONIC on
        Linux; with JACK, quantized to the JACK cycle: up to one period late,
        messages of one cycle together). Runs in the backend's thread (JACK's
        process thread): keep it short. Its exceptions are caught and counted.
    client_name : str
        Client name in the MIDI system (JACK appends ``-01`` if it is taken).
    queue_size : int
        rtmidi's own buffer, used only while no callback is attached (in ``close``).
    max_rate : float or None
        Messages per second forwarded at most (token bucket of ``burst`` tokens);
        the excess is dropped and counted. None: no limit.
    burst : int or None
        Messages forwarded back to back at most; default ``max_rate / 10``.
    virtual_name : str
        Port name for ``port="virtual"``.

    Attributes
    ----------
    received, ignored, dropped, forwarded, errors : int
        Messages that reached Python; malformed or non-channel ones; valid ones over
        the rate; ones passed to ``on_message``; exceptions it raised (``last_error``).
        Sysex, clock, MTC and active sensing are dropped by rtmidi, never counted.
    """

    def __init__(self, api: str | int | None, port: int | str, on_message: OnMessage,
                 client_name: str = "Tympan", queue_size: int = 1024,
                 max_rate: float | None = DEFAULT_MAX_RATE, burst: int | None = None,
                 virtual_name: str = DEFAULT_VIRTUAL_PORT) -> None:
        if not 1 <= queue_size <= 2**20:
            raise ValueError(f"queue_size must be in [1, 1048576] messages, got {queue_size!r}")
        self._init_gate(on_message, max_rate, burst)
        self.port_name = ""
        self._closing = False
        self._midi: rtmidi.MidiIn | None = None
        self.api = _checked_api(api) if isinstance(api, int) else resolve_api(api)
        self._midi = _open_client(self.api, client_name, queue_size)
        self._midi.ignore_types(sysex=True, timing=True, active_sense=True)
        # Attach the callback before the port exists (nothing waits in rtmidi's queue)
        # and hold python-rtmidi's (func, data) tuple ourselves: its cancel_callback
        # frees it while a backend thread may be about to read it.
        self._midi.set_callback(self._on_rtmidi, None)
        self._keepalive: Any = [r for r in gc.get_referents(self._midi) if type(r) is tuple
                                and len(r) == 2 and r[0] == self._on_rtmidi]
        try:
            if isinstance(port, str) and port.strip().lower() == VIRTUAL:
                self.port_name = self._open_virtual(virtual_name, client_name)
            else:
                ports = list(self._midi.get_ports())
                index = self._find(port, ports)
                self._midi.open_port(index, virtual_name)
                self.port_name = ports[index]
        except BaseException as err:
            self.close()
            if isinstance(err, _RTMIDI_ERRORS) and not isinstance(err, MidiError):
                raise MidiError(f"cannot open MIDI input {port!r}: {err}") from None
            raise

    def _find(self, port: int | str, ports: list[str]) -> int:
        return find_port(port, ports, f"on {_LABELS.get(self.api_name, self.api_name)}")

    def _open_virtual(self, virtual_name: str, client_name: str) -> str:
        """Open the virtual port; its full name is the one new destination that a
        separate ``MidiOut`` lister sees (best effort, else ``client:port``)."""
        assert self._midi is not None
        lister = None
        with contextlib.suppress(*_RTMIDI_ERRORS), _quiet_native_stderr():
            lister = rtmidi.MidiOut(rtapi=self.api, name=f"{client_name} list")
        before = set(lister.get_ports()) if lister else set()
        try:
            self._midi.open_virtual_port(virtual_name)
            new = [p for p in (lister.get_ports() if lister else []) if p not in before]
        except NotImplementedError as err:  # Windows MM has no virtual ports
            raise MidiError(f"no virtual MIDI ports on {self.api_name} ({err}); open an "
                            "existing port instead") from None
        finally:
            if lister is not None:
                lister.delete()
        mine = [p for p in new if virtual_name in p]
        return mine[0] if len(mine) == 1 else f"{client_name}:{virtual_name}"

    def _on_rtmidi(self, event: tuple[list[int], float], _data: object = None) -> None:
        """rtmidi's callback (backend thread): validate, rate-limit, forward; never raises."""
        if self._closing:
            return
        now = time.perf_counter()
        self._deliver(event[0], now, now)

    @property
    def is_open(self) -> bool:
        return self._midi is not None

    @property
    def api_name(self) -> str:
        return _name_of(self.api)

    def close(self) -> None:
        """Close port and client; idempotent. Order found under a 10 kHz flood: detach
        the callback, release the GIL so a call already waiting for it finishes, then
        close. Closing with the callback attached hangs: the backend joins or cancels
        its thread while that thread waits for the GIL we hold."""
        midi, self._midi = self._midi, None
        if midi is None:
            return
        self._closing = True
        midi.cancel_callback()
        time.sleep(_DRAIN_S)
        midi.close_port()
        midi.delete()
        self._keepalive = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"MidiInput({self.api_name}, {self.port_name!r}, {state})"
