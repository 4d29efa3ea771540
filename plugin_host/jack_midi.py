"""Sample-accurate MIDI input on JACK, through JACK-Client.

python-rtmidi's JACK backend hands messages over once per JACK cycle and
drops each event's position inside the cycle, so a live engine fed by it can
place notes only to within one period (measured: jitter std 1.56 ms at a
256-frame period). A JACK MIDI port read in our own process callback keeps
every event's frame offset: each event is stamped on JACK's own frame clock,
``(last_frame_time + offset) / sr`` seconds, and the engine, whose audio
blocks are anchored on the same clock (:meth:`JackMidiInput.cycle_start`),
places it on its sample. No wall clock is involved: a callback woken late
(measured up to 5 ms on the dummy driver in this VM) delays nothing.

Same interface as :class:`plugin_host.midi.MidiInput` (``on_message(data, t)``,
counters, ``port_name``, ``close``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

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


class JackMidiInput(_Gate):
    """A JACK MIDI input port whose messages keep their sample position.

    Parameters
    ----------
    port : int or str
        ``"virtual"`` (just the port, others connect to it), or a JACK MIDI
        output to connect from: index, exact name or unique substring.
    on_message : callable(data, t)
        Called in the JACK process thread (keep it short) with the message
        (tuple of ints) and its time on the JACK frame clock in seconds
        (see :meth:`cycle_start`), exact to the sample.
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

    def cycle_start(self) -> float:
        """Start of the current JACK cycle on the JACK frame clock, in seconds.

        ``jack_last_frame_time / sr``: exact (whole frames), the same for every
        client of the server during a cycle, so the audio output's callback can
        anchor the engine with it and MIDI stamps and audio blocks share one time
        base with no clock conversion. The frame counter wraps every 2**32 frames
        (:attr:`wrap_seconds`); the engine's ``frame_at`` unwraps differences.
        """
        client = self._client
        if client is None:                   # closed: no cycle to refer to
            return 0.0
        return client.last_frame_time / self._sr

    @property
    def wrap_seconds(self) -> float:
        """Period of the JACK frame clock (uint32 frames), seconds."""
        return 2.0**32 / self._sr

    def _process(self, frames: int) -> None:
        # JACK process thread: each event at the cycle's first frame + its offset.
        start = self.cycle_start()
        now = time.perf_counter()
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
