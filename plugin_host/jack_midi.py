"""Sample-accurate MIDI input on JACK, through JACK-Client.

python-rtmidi's JACK backend hands messages over once per JACK cycle and
drops each event's position inside the cycle, so a live engine fed by it can
place notes only to within one period (measured: jitter std 1.56 ms at a
256-frame period). A JACK MIDI port read in our own process callback keeps
every event's frame offset: the callback stamps the cycle's start on the
``time.perf_counter`` clock and each event is delivered at
``cycle_start + offset / sr``, so the engine's ``frame_at`` places it on its
sample.

The cycle start is JACK's DLL estimate (``jack_get_cycle_times``: the
predicted next cycle less one period), not the moment the driver woke up:
a late wake-up (measured up to 5 ms on the dummy driver in this VM) would
otherwise move every event of that cycle. The JACK clock is mapped to
``perf_counter`` by reading both back to back in the same callback.

Same interface as :class:`plugin_host.midi.MidiInput` (``on_message(data, t)``,
counters, ``port_name``, ``close``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from .midi import (DEFAULT_MAX_RATE, DEFAULT_VIRTUAL_PORT, VIRTUAL, MidiError, OnMessage,
                   _Gate, find_port)

__all__ = ["JackMidiInput", "jack_client_available"]


def jack_client_available() -> bool:
    """Whether the JACK-Client package (and libjack) can be loaded."""
    try:
        import jack  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _cycle_times_reader(client: Any) -> Callable[[], float | None] | None:
    """A function giving the seconds since the current cycle's smoothed start.

    Uses ``jack_get_cycle_times`` (JACK >= 0.120, not wrapped by JACK-Client),
    called through a cffi handle of our own; ``None`` where libjack lacks it.
    The function returns ``None`` when JACK has no estimate yet.
    """
    try:
        import cffi

        ffi = cffi.FFI()
        ffi.cdef("int jack_get_cycle_times(void *client, uint32_t *current_frames, "
                 "uint64_t *current_usecs, uint64_t *next_usecs, float *period_usecs);"
                 "uint64_t jack_get_time(void);")
        lib = ffi.dlopen("libjack.so.0")
        lib.jack_get_cycle_times  # noqa: B018 - raises AttributeError when missing
    except (ImportError, OSError, AttributeError):
        return None
    ptr = ffi.cast("void *", client._ptr)
    frames, cur, nxt, period = (ffi.new("uint32_t *"), ffi.new("uint64_t *"),
                                ffi.new("uint64_t *"), ffi.new("float *"))

    def elapsed() -> float | None:
        if lib.jack_get_cycle_times(ptr, frames, cur, nxt, period) != 0 or period[0] <= 0:
            return None
        # Read the JACK clock right after the perf_counter stamp the caller took.
        return (lib.jack_get_time() - (nxt[0] - period[0])) * 1e-6

    return elapsed


class JackMidiInput(_Gate):
    """A JACK MIDI input port whose messages keep their sample position.

    Parameters
    ----------
    port : int or str
        ``"virtual"`` (just the port, others connect to it), or a JACK MIDI
        output to connect from: index, exact name or unique substring.
    on_message : callable(data, t)
        Called in the JACK process thread (keep it short) with the message
        (tuple of ints) and its time on the ``time.perf_counter`` clock,
        accurate to the sample within the cycle.
    client_name, virtual_name : str
        JACK client and port names (JACK appends ``-01`` to a taken client name).
    max_rate, burst
        Rate limit, as for :class:`~plugin_host.midi.MidiInput`.
    """

    def __init__(self, port: int | str, on_message: OnMessage, client_name: str = "Tympan",
                 virtual_name: str = DEFAULT_VIRTUAL_PORT,
                 max_rate: float | None = DEFAULT_MAX_RATE, burst: int | None = None) -> None:
        self._init_gate(on_message, max_rate, burst)
        try:
            import jack
        except (ImportError, OSError) as err:
            raise MidiError(f"sample-accurate JACK MIDI needs the JACK-Client package and "
                            f"libjack ({err}); pass --rtmidi to use python-rtmidi") from None
        try:
            self._client: Any = jack.Client(client_name, no_start_server=True)
        except jack.JackError as err:
            raise MidiError(f"no JACK server running: start one (jackd -d dummy -r 48000) or "
                            f"pass --midi-api alsa ({err})") from None
        self.api_name = "jack"
        self._sr = float(self._client.samplerate)
        self._port = self._client.midi_inports.register(virtual_name)
        self._cycle_times = _cycle_times_reader(self._client)
        self._client.set_process_callback(self._process)
        self._client.activate()
        self.port_name = self._port.name
        if not (isinstance(port, str) and port.strip().lower() == VIRTUAL):
            sources = [p.name for p in self._client.get_ports(is_midi=True, is_output=True)]
            try:
                source = sources[find_port(port, sources, "on JACK")]
                self._client.connect(source, self._port)
            except BaseException:
                self.close()
                raise
            self.source = source

    def _process(self, frames: int) -> None:
        # JACK process thread: stamp the cycle start, then each event at its offset.
        now = time.perf_counter()
        elapsed = self._cycle_times() if self._cycle_times is not None else None
        if elapsed is None:
            elapsed = self._client.frames_since_cycle_start / self._sr
        start = now - elapsed
        for offset, data in self._port.incoming_midi_events():
            self._deliver(bytes(data), start + offset / self._sr, now)

    @property
    def is_open(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        """Deactivate and close the client (libjack joins the process thread first,
        so the callback never sees a closed client)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.deactivate()
            with contextlib.suppress(Exception):
                client.close()
            self._client = None
