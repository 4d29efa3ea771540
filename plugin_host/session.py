"""The server's state: the kit being edited, the live engine, devices, matches, undo.

One :class:`Session` per ``tympan serve``. Its methods are what the HTTP API
does; they run on the server's threads (never in the audio callback) and
take :attr:`Session.lock` for changes, which the audio callback never takes:
the engine sees a new kit as one reference swap (see
:meth:`plugin_host.engine.Engine.set_kit`).
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from synth import DrumParams
from synth.params import NAMES

from .engine import Engine
from .kit import Kit, Pad
from .session_shapes import (Armed, Devices, KitListing, KitState, MatchEntry, MatchStateOut,
                             PadState, Played, SavedKit, Scored, SessionError, Status,
                             midi_ports, pad_state, param_table, status_of)

__all__ = ["KIT_NAME", "Session", "SessionError", "param_table"]

# Kit names on disk: no separators, no leading dot, so a name is never a path.
KIT_NAME = re.compile(r"^[A-Za-z0-9_\- ][A-Za-z0-9_\-. ]{0,63}$")
UNDO_DEPTH = 64


class Session:
    """Kit, engine, audio output, MIDI input and matches of one server.

    Parameters
    ----------
    kit : Kit
        The starting kit.
    kits_dir : Path
        The only folder kits are saved to and loaded from (created).
    sr, blocksize, polyphony, effects
        As for ``tympan play``.
    midi_api : str, optional
        ``jack``, ``alsa``...; default JACK when a server runs.
    rtmidi : bool
        On JACK, read MIDI through python-rtmidi instead of the sample-accurate
        JACK-Client input.
    kit_file : Path, optional
        Where ``kit`` came from (shown; saving asks for a name).

    The session starts with no audio output and no MIDI input: :meth:`open_audio`
    and :meth:`open_midi` open them (without them the page plays ``render.wav``).
    """

    def __init__(self, kit: Kit, kits_dir: Path, sr: int = 48000, blocksize: int = 256,
                 polyphony: int = 64, effects: bool = True,
                 midi_api: str | None = None, rtmidi: bool = False,
                 kit_file: Path | None = None) -> None:
        self.lock = threading.RLock()
        self.kits_dir = Path(kits_dir)
        self.kits_dir.mkdir(parents=True, exist_ok=True)
        self.kit_file = kit_file
        self.sr, self.blocksize = sr, blocksize
        self.engine = Engine(kit, float(sr), polyphony=polyphony, effects=effects,
                             max_block=blocksize)
        self.engine.on_learn = self._learned
        self.output = None
        self.audio_device: str | None = None
        self.audio_error: str | None = None
        self.midi = None
        self.midi_port: str | None = None
        self.midi_error: str | None = None
        self._midi_api, self._rtmidi = midi_api, rtmidi
        self.midi_last: tuple[int, ...] | None = None
        self.midi_count = 0
        self._undo: dict[int, deque[Pad]] = {}
        # Matches per pad note; only the match methods below touch them, under the lock.
        self._matches: dict[int, MatchEntry] = {}
        self._kit_generation = 0          # counts kit loads: a match of an older kit is stale
        self.listeners: list[Callable[[Mapping[str, Any]], None]] = []

    # -- events to the page ---------------------------------------------------
    def subscribe(self, listener: Callable[[Mapping[str, Any]], None]) -> None:
        """Have ``listener`` called with every event (from any thread; it must not block)."""
        self.listeners.append(listener)

    def broadcast(self, message: Mapping[str, Any]) -> None:
        """Hand ``message`` to every listener (the WebSocket hub); never raises."""
        for listener in list(self.listeners):
            try:
                listener(message)
            except Exception:
                pass

    def _learned(self, mapping) -> None:
        with self.lock:
            self.engine.set_kit(self.engine.kit.with_mapping(mapping))
        self.broadcast({"type": "learned", "cc": mapping.cc, "param": mapping.param,
                        "pad": mapping.pad})

    # -- devices ----------------------------------------------------------------
    def open_audio(self, device: str | None) -> None:
        """Move the output to ``device``; if it cannot be opened, the previous one resumes.

        Raises
        ------
        SessionError
            The device cannot be opened (409; the old output, if any, plays on).
        """
        from .audio_output import AudioError, AudioOutput

        def start(name: str | None) -> AudioOutput:
            dev: str | int | None = int(name) if name and name.isdigit() else name
            out = AudioOutput(self.engine, device=dev, blocksize=self.blocksize)
            out.start()
            return out

        with self.lock:
            previous = self.audio_device if self.output is not None else None
            had_output = self.output is not None
            self.close_audio()        # one stream at a time: a device may be exclusive
            try:
                self.output, self.audio_device, self.audio_error = start(device), device, None
            except AudioError as err:
                self.audio_error = str(err)
                if had_output:
                    try:
                        self.output = start(previous)
                    except AudioError:
                        self.output = None
                raise SessionError(str(err), 409) from None

    def close_audio(self) -> None:
        with self.lock:
            out, self.output = self.output, None
            if out is not None:
                try:
                    if out.running:
                        out.stop()
                    out.close()
                except Exception:
                    pass

    def open_midi(self, port: str) -> None:
        """Listen to ``port`` (``virtual``, a name or an index); on failure the old port stays.

        Raises
        ------
        SessionError
            No such port, or no MIDI system (409; the previous input keeps working).
        """
        import rtmidi

        from .jack_midi import JackMidiInput, jack_client_available
        from .midi import MidiError, MidiInput, resolve_api

        with self.lock:
            try:
                api = resolve_api(self._midi_api)
                native = (api == rtmidi.API_UNIX_JACK and not self._rtmidi
                          and jack_client_available())
                # The new input opens beside the old one, so a bad port changes nothing.
                midi = JackMidiInput(port, self._on_midi, client_name="Tympan-serve") \
                    if native else MidiInput(api, port, self._on_midi, client_name="Tympan-serve")
            except (MidiError, ValueError) as err:
                self.midi_error = str(err)
                raise SessionError(str(err), 409) from None
            self.close_midi()
            if native:
                self.engine.block_clock = midi.cycle_start
                self.engine.clock_wrap = midi.wrap_seconds
            self.midi, self.midi_port, self.midi_error = midi, midi.port_name, None

    def close_midi(self) -> None:
        with self.lock:
            midi, self.midi = self.midi, None
            self.engine.block_clock, self.engine.clock_wrap = time.perf_counter, 0.0
            if midi is not None:
                time.sleep(0.02)        # let a block pass on the engine's own clock
                try:
                    midi.close()
                except Exception:
                    pass

    def _on_midi(self, data, t: float) -> None:
        # The MIDI thread: hand the message to the engine, note it for the status bar.
        self.engine.midi(data, self.engine.frame_at(t))
        self.midi_last = tuple(data)
        self.midi_count += 1

    def devices(self) -> Devices:
        """Audio outputs and MIDI inputs, with the ones in use."""
        from .audio_output import list_devices
        from .midi import list_all

        try:
            audio = list_devices()
        except Exception as err:       # no PortAudio: say so instead of failing the page
            audio, self.audio_error = [], str(err)
        ports = midi_ports(list_all())
        current = self.audio_device
        if self.output is not None:          # the default device has a name too: show it
            index = self.output.stream.device
            current = next((d["name"] for d in audio if d["index"] == index), current)
        return {"audio": {"devices": audio, "current": current,
                          "running": self.output is not None and self.output.running,
                          "error": self.audio_error},
                "midi": {"ports": ports, "current": self.midi_port, "error": self.midi_error}}

    # -- pads -----------------------------------------------------------------
    def _index(self, note: int) -> int:
        i = self.engine.kit.pad_index(note)
        if i is None:
            raise SessionError(f"no pad plays note {note}; pads: "
                               f"{', '.join(str(p.note) for p in self.engine.kit.pads)}", 404)
        return i

    def pad(self, note: int) -> Pad:
        return self.engine.kit.pads[self._index(note)]

    def pad_note(self, note: int) -> int:
        """The note of the pad that plays ``note`` (a tracked pad answers several); 404 if none."""
        return self.pad(note).note

    def pad_state(self, note: int) -> PadState:
        """The pad that plays ``note`` as the page sees it."""
        return self.pad_out(self.pad(note))

    def pad_out(self, pad: Pad) -> PadState:
        """A pad as the page sees it."""
        return pad_state(pad, self.has_match(pad.note), bool(self._undo.get(pad.note)))

    def kit_out(self) -> KitState:
        kit = self.engine.kit
        return {"name": kit.name, "file": None if self.kit_file is None else str(self.kit_file),
                "pads": [self.pad_out(p) for p in sorted(kit.pads, key=lambda p: p.note)]}

    def update_pad(self, note: int, params: dict[str, float] | None = None,
                   gain_db: float | None = None, name: str | None = None,
                   undoable: bool = True) -> PadState:
        """Change a pad (the previous state goes on its undo stack unless not
        ``undoable``); the pad as the page sees it.

        Raises
        ------
        SessionError
            No such pad (404); a value out of range (422, naming it and the range).
        """
        with self.lock:
            old = self.pad(note)
            theta = dict(zip(NAMES, map(float, old.params.to_array())))
            unknown = set(params or {}) - set(NAMES)
            if unknown:
                raise SessionError(f"unknown parameter(s) {sorted(unknown)}; allowed "
                                   f"{', '.join(NAMES)}")
            theta.update(params or {})
            try:
                new_params = DrumParams(**theta)
                new = Pad.from_dict({**old.to_dict(), "params": new_params.to_dict(),
                                     **({} if gain_db is None else {"gain_db": gain_db}),
                                     **({} if name is None else {"name": name})},
                                    f"pads[{note}]")
            except ValueError as err:
                raise SessionError(str(err)) from None
            if undoable:
                self._push_undo(old)
            self.engine.set_kit(self.engine.kit.with_pad(new))
            out = self.pad_out(new)
        self.broadcast({"type": "pad", "pad": out})
        return out

    def _push_undo(self, pad: Pad) -> None:
        stack = self._undo.setdefault(pad.note, deque(maxlen=UNDO_DEPTH))
        stack.append(pad)

    def undo(self, note: int) -> PadState:
        """Put the pad back as it was before its last change."""
        with self.lock:
            note = self.pad(note).note          # a tracked pad answers several notes
            stack = self._undo.get(note)
            if not stack:
                raise SessionError(f"nothing to undo on pad {note}", 409)
            self.engine.set_kit(self.engine.kit.with_pad(stack.pop()))
            out = self.pad_out(self.pad(note))
        self.broadcast({"type": "pad", "pad": out})
        return out

    def trigger(self, note: int, velocity: int = 100) -> Played:
        """Play the pad through the audio output, as a MIDI note-on would."""
        self._index(note)
        if not 1 <= velocity <= 127:
            raise SessionError(f"velocity {velocity}: allowed 1..127")
        if self.output is None or not self.output.running:
            why = f" ({self.audio_error})" if self.audio_error else ""
            return {"played": False, "reason": "no audio output" + why}
        # "Now" on the engine's clock (the JACK frame clock when JACK MIDI drives it).
        self.engine.midi((0x99, note, velocity), self.engine.frame_at(self.engine.block_clock()))
        return {"played": True, "reason": None}

    def render_wav(self, note: int, velocity: int = 100) -> bytes:
        """The pad's hit as 16-bit wav bytes at the session's rate (for the browser)."""
        from pedalboard.io import AudioFile

        from synth.showcase import render_hit
        from synth.voice import VoicePreset

        pad = self.pad(note)
        if not 1 <= velocity <= 127:
            raise SessionError(f"velocity {velocity}: allowed 1..127")
        gain = pad.velocity.gain(velocity) * 10 ** (pad.gain_db / 20)
        audio = render_hit(VoicePreset.build(pad.params, self.sr), self.sr, min(1.0, gain))
        buf = io.BytesIO()
        with AudioFile(buf, "w", samplerate=self.sr, num_channels=1, bit_depth=16,
                       format="wav") as f:
            f.write(audio[None].astype(np.float32))
        return buf.getvalue()

    # -- matches ----------------------------------------------------------------
    # A match's life: begin (upload queued) -> apply (parameters on the pad) ->
    # finish (distances and pictures, or an error); or begin -> fail (no
    # parameters: the pad keeps its sound, so it keeps the match that made it).
    # A newer upload to the same pad replaces the entry; loading a kit clears them.

    def begin_match(self, note: int, job_id: int, source: str) -> int:
        """Record an upload to pad ``note`` as pending; returns the kit generation it belongs to."""
        with self.lock:
            self._matches[note] = {"status": "pending", "job": job_id, "source": source,
                                   "previous": self._matches.get(note)}
            return self._kit_generation

    def apply_match(self, note: int, job_id: int, generation: int, source: str,
                    theta: dict[str, float]) -> PadState:
        """Push a match's parameters to its pad (undoable, named after the file).

        Raises
        ------
        SessionError
            409 when a kit was loaded since the upload: its pad is gone, and the
            parameters must not land on the new kit's pad.
        """
        name = Path(source).stem[:64] or "match"
        with self.lock:
            if generation != self._kit_generation:
                raise SessionError(f"{source}: a kit was loaded while it was being matched; "
                                   "drop it again on the new kit's pad", 409)
            # Its entry: the pad's, or one a newer upload keeps to fall back on.
            entry = self._matches.get(note)
            while entry is not None and entry["job"] != job_id:
                entry = entry["previous"]
            if entry is not None:
                entry["theta"] = dict(theta)    # before the pad changes: has_match
                entry["stage"] = "fast"
            try:
                return self.update_pad(note, params=theta, name=name)
            except SessionError:
                if entry is not None:
                    del entry["theta"]
                raise

    def refine_match(self, note: int, job_id: int, generation: int, theta: dict[str, float],
                     estimate: str) -> PadState | None:
        """The second stage of a match: its better parameters replace the fast ones.

        Nothing changes (None) when a newer upload replaced the match or the
        pad was edited since the fast stage: the user's hand wins. The change
        is not a new undo step: undo still goes back to the pad before the upload.

        Raises
        ------
        SessionError
            409 when a kit was loaded since the upload.
        """
        with self.lock:
            if generation != self._kit_generation:
                raise SessionError("a kit was loaded while the match was refined", 409)
            entry = self._matches.get(note)
            if entry is None or entry["job"] != job_id or entry.get("theta") is None:
                return None
            pad = self.pad(note)
            now = dict(zip(NAMES, map(float, pad.params.to_array())))
            if any(abs(now[k] - entry["theta"][k]) > 1e-9 * max(1.0, abs(now[k]))
                   for k in NAMES):
                return None                     # edited by hand since the fast stage
            entry.update(fast_theta=entry["theta"], theta=dict(theta), stage="refined",
                         estimate=estimate)
            return self.update_pad(note, params=theta, undoable=False)

    def fail_match(self, note: int, job_id: int) -> None:
        """An upload that got no parameters: the pad's entry goes back to what it was."""
        with self.lock:
            entry = self._matches.get(note)
            if entry is None or entry["job"] != job_id:
                return                          # replaced, or the kit changed
            previous = entry["previous"]
            if previous is None:
                del self._matches[note]
            else:
                self._matches[note] = previous

    def finish_match(self, note: int, job_id: int, scored: Scored | None = None,
                     error: str | None = None) -> None:
        """The distances and pictures of a match (``scored``), or why it has none (``error``)."""
        with self.lock:
            entry = self._matches.get(note)
            if entry is None or entry["job"] != job_id:
                return                          # a newer upload replaced it, or the kit changed
            entry["previous"] = None            # settled: nothing to go back to
            if error is not None:
                entry.update(status="error", message=error)
            else:
                entry.update(status="scored", **(scored or {}))

    def has_match(self, note: int) -> bool:
        """Whether the pad's sound came from a match whose parameters are known."""
        with self.lock:
            return self._matches.get(note, {}).get("theta") is not None

    def match_state(self, note: int) -> MatchStateOut:
        """The pad's last match (a copy): status, job, source, message, theta, distances, preview."""
        with self.lock:
            entry = self._matches.get(note)
            if entry is None:
                return {"status": "none"}
            out: MatchStateOut = {k: entry.get(k) for k in (  # type: ignore[misc]
                "status", "job", "source", "message", "theta", "jtfs_distance",
                "mss_distance", "stage", "fast_theta", "estimate")}
            if entry.get("status") == "scored":
                out["preview"] = {k: entry[k] for k in ("sr", "seconds", "target", "match")}
            return out

    def learn(self, param: str, pad: int | None, depth: float) -> Armed:
        if not 0 < depth <= 1:
            raise SessionError(f"depth {depth}: allowed (0, 1]")
        try:
            self.engine.learn(param, depth, pad)
        except ValueError as err:
            raise SessionError(str(err)) from None
        return {"armed": True, "param": param, "pad": pad}

    # -- kits -------------------------------------------------------------------
    def _kit_path(self, name: str) -> Path:
        if not isinstance(name, str) or not KIT_NAME.match(name) or ".." in name:
            raise SessionError(f"kit name {name!r}: allowed 1-64 letters, digits, spaces, "
                               "'_', '-', '.' (no folders: kits live in the kits folder)", 400)
        path = (self.kits_dir / f"{name}.json").resolve()
        if path.parent != self.kits_dir.resolve():
            raise SessionError(f"kit name {name!r} leaves the kits folder", 400)
        return path

    def kits(self) -> KitListing:
        names = sorted(p.stem for p in self.kits_dir.glob("*.json") if p.is_file())
        current = None
        if self.kit_file is not None and self.kit_file.parent.resolve() == self.kits_dir.resolve():
            current = self.kit_file.stem
        return {"kits": names, "current": current, "folder": str(self.kits_dir.resolve())}

    def save_kit(self, name: str) -> SavedKit:
        path = self._kit_path(name)
        with self.lock:
            kit = replace(self.engine.kit, name=name)
            written = kit.save(path)          # atomic
            self.engine.set_kit(kit)
            self.kit_file = written
        return {"name": name, "file": str(written)}

    def load_kit(self, name: str) -> KitState:
        path = self._kit_path(name)
        if not path.is_file():
            raise SessionError(f"no kit named {name!r} in {self.kits_dir}; saved kits: "
                               f"{', '.join(self.kits()['kits']) or 'none'}", 404)
        try:
            kit = Kit.load(path)
        except ValueError as err:
            raise SessionError(str(err)) from None
        with self.lock:
            self.engine.set_kit(kit)
            self.kit_file = path
            self._undo.clear()
            self._matches.clear()
            self._kit_generation += 1
        self.broadcast({"type": "kit"})
        return self.kit_out()

    # -- status -----------------------------------------------------------------
    def status(self) -> Status:
        """What the status bar shows (voices, CPU load, underflows, latency, MIDI)."""
        return status_of(self.engine, self.output, self.midi_count, self.midi_last,
                         self.midi_port)

    def close(self) -> None:
        self.close_midi()
        self.close_audio()
