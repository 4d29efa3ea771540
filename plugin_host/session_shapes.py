"""What :class:`plugin_host.session.Session` hands out: its JSON shapes and its error.

The shapes are :class:`~typing_extensions.TypedDict` (plain dicts at run
time), so the session's answers go straight to ``send_json`` and the routes'
pydantic response models (:mod:`plugin_host.api_models`) without a copy; a
shape that drifts from its response model makes the route answer 500 in the
tests. ``NotRequired`` keys are absent, not null, when unknown. The parameter
table is the exception: its rows are :class:`synth.params.ParamSpec` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from typing_extensions import NotRequired, TypedDict

from synth.params import NAMES, PARAMS, ParamSpec

if TYPE_CHECKING:
    from .engine import Engine
    from .kit import Pad

__all__ = ["Armed", "AudioDevice", "Devices", "FullStatus", "KitListing", "KitState",
           "MatchEntry", "MatchStateOut", "PadState", "Picture", "Played",
           "Preview", "SavedKit", "Scored", "SessionError", "Status", "WorkerStatus",
           "midi_ports", "pad_state", "param_table", "status_of"]


class SessionError(ValueError):
    """A request the session cannot carry out; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def param_table() -> list[ParamSpec]:
    """The five parameters for sliders: name, unit, range (and whether ``low`` is
    allowed), scale, description.

    The rows are the :class:`~synth.params.ParamSpec` dataclasses themselves, not
    dicts: ``GET /api/params`` (``response_model=list[ParamSpec]``) serializes
    their fields, so the row shape is declared once, in :mod:`synth.params`.
    """
    return list(PARAMS)


# -- pads and kits -------------------------------------------------------------------
class PadState(TypedDict):
    """A pad as the page sees it; ``params`` maps each of the five names to its value."""

    note: int
    name: str
    params: dict[str, float]
    gain_db: float
    has_match: bool
    can_undo: bool


def pad_state(pad: Pad, has_match: bool, can_undo: bool) -> PadState:
    """``pad`` as the page sees it (plain floats: numpy's do not serialize)."""
    return {"note": pad.note, "name": pad.name,
            "params": dict(zip(NAMES, map(float, pad.params.to_array()))),
            "gain_db": float(pad.gain_db), "has_match": has_match, "can_undo": can_undo}


class KitState(TypedDict):
    name: str
    file: str | None
    pads: list[PadState]


class Played(TypedDict):
    played: bool
    reason: str | None


class KitListing(TypedDict):
    kits: list[str]
    current: str | None
    folder: str


class SavedKit(TypedDict):
    name: str
    file: str


class Armed(TypedDict):
    armed: bool
    param: str
    pad: int | None


# -- matches -------------------------------------------------------------------------
class Picture(TypedDict):
    """A hit reduced for drawing (:func:`plugin_host.worker.preview_data`)."""

    wave_min: list[float]
    wave_max: list[float]
    spec: list[list[int]]


class Scored(TypedDict, total=False):
    """The matcher's last step: distances and both hits' pictures (seconds, Hz)."""

    jtfs_distance: float
    mss_distance: float
    sr: float
    seconds: float
    target: Picture
    match: Picture
    score_ms: float


class MatchEntry(Scored, total=False):
    """The session's record of a pad's match; ``previous`` is the entry to fall back on."""

    status: Literal["pending", "scored", "error"]
    job: int
    source: str
    previous: MatchEntry | None
    message: str
    theta: dict[str, float]
    fast_theta: dict[str, float]
    stage: Literal["fast", "refined"]
    estimate: str


class Preview(TypedDict):
    sr: float
    seconds: float
    target: Picture
    match: Picture


class MatchStateOut(TypedDict, total=False):
    """A pad's match as the page sees it: ``status`` alone when ``none``, every other
    key (null where unknown) otherwise, ``preview`` once scored."""

    status: Literal["none", "pending", "scored", "error"]
    job: int | None
    source: str | None
    message: str | None
    theta: dict[str, float] | None
    jtfs_distance: float | None
    mss_distance: float | None
    stage: Literal["fast", "refined"] | None
    fast_theta: dict[str, float] | None
    estimate: str | None
    preview: Preview


# -- devices and status ----------------------------------------------------------------
class AudioDevice(TypedDict):
    """An output device (:func:`plugin_host.audio_output.list_devices`); samplerate in Hz."""

    index: int
    name: str
    api: str
    channels: int
    samplerate: float


class AudioDevices(TypedDict):
    devices: list[AudioDevice]
    current: str | None
    running: bool
    error: str | None


class MidiPorts(TypedDict):
    ports: list[str]
    current: str | None
    error: str | None


class Devices(TypedDict):
    audio: AudioDevices
    midi: MidiPorts


class MidiStatus(TypedDict):
    received: int
    last: list[int] | None
    port: str | None


class Status(TypedDict):
    """The status bar: live voices, callback CPU load (0..1), latency in ms."""

    type: Literal["status"]
    voices: int
    cpu_load: float
    underflows: int
    latency_ms: float | None
    blocks: int
    hits: int
    audio: bool
    midi: MidiStatus


def status_of(engine: Engine, out, midi_count: int, midi_last: tuple[int, ...] | None,
              midi_port: str | None) -> Status:
    """The status bar's figures from the engine and the audio output ``out`` (or None)."""
    running = out is not None and out.running
    return {"type": "status", "voices": int(engine.active_voices),
            "cpu_load": float(out.cpu_load) if running else 0.0,
            "underflows": int(out.underflows) if out is not None else 0,
            "latency_ms": 1e3 * out.total_latency if running else None,
            "blocks": int(out.callbacks) if out is not None else 0,
            "hits": int(engine.hits), "audio": running,
            "midi": {"received": midi_count,
                     "last": None if midi_last is None else list(midi_last),
                     "port": midi_port}}


def midi_ports(found: dict[str, list[str] | str]) -> list[str]:
    """Every input port of :func:`plugin_host.midi.list_all`, once each (an API that
    could not list its ports gives a reason, not a list: skipped)."""
    ports: list[str] = []
    for listed in found.values():
        if isinstance(listed, list):
            ports += [p for p in listed if p not in ports]
    return ports


class WorkerStatus(TypedDict):
    """The matcher worker's state; ``pid`` is absent when the server runs without one."""

    alive: bool
    ready: bool
    queued: int
    restarts: int
    last_error: str | None
    pid: NotRequired[int | None]
    current: int | None


class FullStatus(Status):
    """:class:`Status` with the matcher's (``GET /api/status`` and the WebSocket)."""

    worker: WorkerStatus
