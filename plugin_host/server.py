"""``tympan serve``: the plugin backend, an HTTP + WebSocket API and the page.

One process holds the live engine (audio callback, MIDI input) and this
API; matching runs in :mod:`plugin_host.worker`'s separate process. Handlers
that touch the session are plain ``def`` functions, which FastAPI runs in its
thread pool, so the event loop never waits on the session's lock.

The routes, their bodies and answers are described by the served OpenAPI
document (``/openapi.json``, browsable at ``/docs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Literal

import uvicorn

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.websockets import WebSocketDisconnect

from synth.params import NAMES, PARAMS, ParamSpec

from .request_guard import BodyCap, LocalOnly, audio_kind
from .session import Session, SessionError, param_table
from .signals import StopSignals
from .worker import MatchWorker, WorkerError

__all__ = ["create_app"]

WEB = Path(__file__).resolve().parent / "web"
STATUS_PERIOD_S = 0.25
Note = PathParam(ge=0, le=127, description="MIDI note of the pad")


# -- bodies and answers ------------------------------------------------------------
# Built from synth's one parameter table, so names, ranges and units cannot drift.
Params = create_model(
    "Params", __config__=ConfigDict(extra="forbid"),
    __doc__="Some or all of the five parameters, each inside its range.",
    **{s.name: (float | None, Field(None, ge=s.low, le=s.high,
                                    description=f"{s.description} ({s.unit or 'no unit'})"))
       for s in PARAMS})
FullParams = create_model("FullParams", **{s.name: (float, ...) for s in PARAMS})
ParamName = Literal[tuple(NAMES)]


class PadUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: Params | None = None
    gain_db: float | None = Field(None, ge=-60.0, le=12.0)
    name: str | None = Field(None, min_length=1, max_length=64)


class PadOut(BaseModel):
    note: int
    name: str
    params: FullParams
    gain_db: float
    has_match: bool
    can_undo: bool


class KitOut(BaseModel):
    name: str
    file: str | None
    pads: list[PadOut]


class MatchOut(BaseModel):
    job: int
    source: str
    theta: FullParams
    nu: list[float]
    units: dict[str, str]
    timings_ms: dict[str, float]
    stage: Literal["fast", "refined"] = Field(
        description="fast: the encoder's estimate; the default match's follows as 'refined'")


class SampleOut(BaseModel):
    pad: PadOut
    match: MatchOut


class Picture(BaseModel):
    wave_min: list[float]
    wave_max: list[float]
    spec: list[list[int]]


class Preview(BaseModel):
    sr: float
    seconds: float
    target: Picture
    match: Picture


class MatchState(BaseModel):
    status: Literal["none", "pending", "scored", "error"]
    job: int | None = None
    source: str | None = None
    message: str | None = None
    theta: FullParams | None = None
    jtfs_distance: float | None = None
    mss_distance: float | None = None
    stage: Literal["fast", "refined"] | None = Field(
        None, description="which stage's parameters are on the pad")
    fast_theta: FullParams | None = Field(None, description="the fast stage's, once refined")
    estimate: str | None = Field(None, description="the refined stage's winning candidate")
    preview: Preview | None = None


class Played(BaseModel):
    played: bool
    reason: str | None


class KitName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64,
                      description="letters, digits, spaces, '_', '-', '.'; no folders")


class KitList(BaseModel):
    kits: list[str]
    current: str | None
    folder: str


class Saved(BaseModel):
    name: str
    file: str


class AudioChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str | None = Field(None, max_length=256)


class MidiChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: str = Field(min_length=1, max_length=256)


class Learn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    param: ParamName
    pad: int | None = Field(None, ge=0, le=127)
    depth: float = Field(0.5, gt=0.0, le=1.0)


class Armed(BaseModel):
    armed: bool
    param: str
    pad: int | None


# -- the WebSocket hub -----------------------------------------------------------
class Hub:
    """Fans messages from any thread out to every connected page."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue] = set()
        self.lock = threading.Lock()

    def publish(self, message: dict[str, Any]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self.lock:
            queues = list(self.queues)
        for q in queues:
            _post(loop, _put_latest, q, message)


def _post(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """Run ``fn(*args)`` on ``loop`` from another thread; nothing if the loop has closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:            # shutting down: the loop closed under us
        pass


def _put_latest(q: asyncio.Queue, message: dict[str, Any]) -> None:
    # A page that stopped reading must not grow memory: drop its oldest message.
    if q.full():
        try:
            q.get_nowait()
        except asyncio.QueueEmpty:
            pass
    q.put_nowait(message)


def create_app(session: Session, worker: MatchWorker | None, port: int,
               extra_hosts: tuple[str, ...] = (), upload_limit: int = 50 * 2**20) -> FastAPI:
    """The ASGI application serving ``session``.

    Parameters
    ----------
    session : Session
    worker : MatchWorker or None
        The matcher process (None: uploads answer 503).
    port : int
        The port served on (Origin checks compare it).
    extra_hosts : tuple of str
        Host names accepted besides the loopback ones.
    upload_limit : int
        Largest accepted request body, bytes (default 50 MiB).
    """
    hub = Hub()
    session.listeners.append(hub.publish)
    uploads = Path(tempfile.mkdtemp(prefix="tympan-uploads-"))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        hub.loop = asyncio.get_running_loop()     # where other threads post messages
        try:
            yield
        finally:
            shutil.rmtree(uploads, ignore_errors=True)

    app = FastAPI(title="Tympan", version="1", lifespan=lifespan,
                  description="Backend of the Tympan drum plugin: pads, matching, "
                              "devices and live status. Local requests only.")

    # -- pads ------------------------------------------------------------------
    @app.get("/api/params", response_model=list[ParamSpec], tags=["pads"])
    def params() -> list[dict[str, Any]]:
        """The five membrane parameters: units, ranges and slider scales."""
        return param_table()

    @app.get("/api/kit", response_model=KitOut, tags=["kits"])
    def kit() -> dict[str, Any]:
        """The kit being played and edited."""
        return session.kit_out()

    @app.get("/api/pads/{note}", response_model=PadOut, tags=["pads"])
    def get_pad(note: int = Note) -> dict[str, Any]:
        return session.pad_out(session.pad(note))

    @app.put("/api/pads/{note}", response_model=PadOut, tags=["pads"])
    def put_pad(body: PadUpdate, note: int = Note) -> dict[str, Any]:
        """Set some of a pad's parameters, its gain or name (undoable)."""
        values = None if body.params is None else \
            {k: v for k, v in body.params.model_dump().items() if v is not None}
        return session.update_pad(note, values, body.gain_db, body.name)

    @app.post("/api/pads/{note}/undo", response_model=PadOut, tags=["pads"],
              responses={409: {"description": "nothing to undo"}})
    def undo(note: int = Note) -> dict[str, Any]:
        """Put the pad back as it was before its last change."""
        return session.undo(note)

    @app.post("/api/pads/{note}/trigger", response_model=Played, tags=["pads"])
    def trigger(note: int = Note, velocity: int = Query(100, ge=1, le=127)) -> dict[str, Any]:
        """Play the pad through the audio output (``played`` is false without one)."""
        return session.trigger(note, velocity)

    @app.get("/api/pads/{note}/render.wav", tags=["pads"], response_class=Response,
             responses={200: {"content": {"audio/wav": {}}}})
    def render(note: int = Note, velocity: int = Query(100, ge=1, le=127)) -> Response:
        """The pad's hit as a wav file, for the browser to play."""
        return Response(session.render_wav(note, velocity), media_type="audio/wav")

    # -- matching ----------------------------------------------------------------
    @app.post("/api/pads/{note}/sample", response_model=SampleOut, tags=["matching"],
              responses={413: {"description": "upload too large"},
                         409: {"description": "a kit was loaded while matching"},
                         415: {"description": "not an audio file"},
                         422: {"description": "unreadable, silent or too short"},
                         503: {"description": "the matcher is not available"}})
    async def sample(note: int = Note, file: UploadFile = File(...),
                     method: Literal["search", "encoder"] = Query(
                         "search", description="the second stage: search (the default match "
                                               "of 'tympan match') or none (encoder)"),
                     refine: bool = Query(False, description="also refine the best candidate"),
                     budget_ms: float = Query(2000.0, ge=10.0, le=30000.0,
                                              description="time of the second stage, ms")
                     ) -> dict[str, Any]:
        """Match an uploaded hit and put the result on the pad, in two stages.

        Answers as soon as the encoder's estimate is on the pad (stage
        ``fast``, milliseconds). The default match (``search``) then replaces
        it (stage ``refined``: WebSocket ``match`` event, ``GET
        /api/pads/{note}/match``), and the distances and pictures follow.
        """
        note = session.pad(note).note       # a tracked pad answers several notes
        head = await file.read(64)
        kind = audio_kind(head)
        if kind is None:
            raise HTTPException(415, f"{file.filename or 'upload'}: not an audio file (its "
                                     "content is none of wav, flac, aiff, ogg, mp3)")
        if worker is None:
            raise HTTPException(503, "this server runs without a matcher")
        fd, path = tempfile.mkstemp(suffix=f".{kind}", dir=uploads)
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            while chunk := await file.read(1 << 20):
                out.write(chunk)
        source = Path(file.filename or f"upload.{kind}").name
        options = {"method": method, "budget_ms": budget_ms, "refine": "adam" if refine else None}
        loop = asyncio.get_running_loop()

        def on_event(stage: str, payload: dict[str, Any]) -> None:
            hub.publish({"type": "match", "note": note, "job": payload["job"], "stage": stage,
                         "message": payload.get("message"), "ahead": payload.get("ahead"),
                         "estimate": payload.get("estimate")})

        try:
            job = worker.submit(path, options, on_event=on_event)
        except WorkerError as err:            # the model could not load: say why
            os.unlink(path)
            raise HTTPException(err.status, str(err))
        generation = session.begin_match(note, job.job_id, source)
        job.scored.add_done_callback(
            lambda fut: _post(loop, _scored, note, job.job_id, path, fut))
        try:
            found = await asyncio.wrap_future(job.params)
        except WorkerError as err:
            session.fail_match(note, job.job_id)
            # Messages name the file: the user's name, not the temporary copy's.
            raise HTTPException(err.status, str(err).replace(path, source))
        pad = await asyncio.to_thread(session.apply_match, note, job.job_id, generation,
                                      source, found["theta"])
        # Only now: the refined stage must land after the fast one.
        job.refined.add_done_callback(
            lambda fut: _post(loop, _refined, note, job.job_id, generation, fut))
        return {"pad": pad, "match": {"job": job.job_id, "source": source, **{
            k: found[k] for k in ("theta", "nu", "units", "timings_ms", "stage")}}}

    def _refined(note: int, job_id: int, generation: int, fut) -> None:
        if fut.exception() is not None or fut.result() is None:
            return                              # the error reaches _scored as well
        found = fut.result()
        try:
            session.refine_match(note, job_id, generation, found["theta"], found["estimate"])
        except SessionError:
            pass                                # a kit was loaded: the pad is gone

    def _scored(note: int, job_id: int, path: str, fut) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
        err = fut.exception()
        if err is not None:
            session.finish_match(note, job_id, error=str(err))
        else:
            session.finish_match(note, job_id, scored=fut.result())

    @app.get("/api/pads/{note}/match", response_model=MatchState, tags=["matching"])
    def match_state(note: int = Note) -> dict[str, Any]:
        """The pad's last match: parameters, distances and the pictures' data."""
        return session.match_state(session.pad(note).note)

    # -- kits ---------------------------------------------------------------------
    @app.get("/api/kits", response_model=KitList, tags=["kits"])
    def kits() -> dict[str, Any]:
        """Kits saved in the kits folder."""
        return session.kits()

    @app.post("/api/kits/save", response_model=Saved, tags=["kits"])
    def save_kit(body: KitName) -> dict[str, Any]:
        """Save the current kit in the kits folder under ``name``."""
        return session.save_kit(body.name)

    @app.post("/api/kits/load", response_model=KitOut, tags=["kits"])
    def load_kit(body: KitName) -> dict[str, Any]:
        """Replace the kit with one from the kits folder."""
        return session.load_kit(body.name)

    # -- devices ------------------------------------------------------------------
    @app.get("/api/devices", tags=["devices"])
    def devices() -> dict[str, Any]:
        """Audio outputs and MIDI inputs, and those in use."""
        return session.devices()

    @app.put("/api/devices/audio", tags=["devices"])
    def set_audio(body: AudioChoice) -> dict[str, Any]:
        """Move the output to another device (null: the system default)."""
        session.open_audio(body.device)
        return session.devices()

    @app.put("/api/devices/midi", tags=["devices"])
    def set_midi(body: MidiChoice) -> dict[str, Any]:
        """Listen to another MIDI input (a port name, index, or ``virtual``)."""
        session.open_midi(body.port)
        return session.devices()

    @app.post("/api/midi-learn", response_model=Armed, tags=["devices"])
    def midi_learn(body: Learn) -> dict[str, Any]:
        """The next controller (CC) moved will control ``param`` (of ``pad``, or all pads)."""
        return session.learn(body.param, body.pad, body.depth)

    # -- status ---------------------------------------------------------------------
    def full_status() -> dict[str, Any]:
        if worker is None:
            matcher = {"alive": False, "ready": False, "queued": 0, "restarts": 0,
                       "last_error": "no matcher", "current": None}
        else:
            matcher = {"alive": worker.alive, "ready": worker.ready.is_set(),
                       "queued": worker.queued, "restarts": worker.restarts,
                       "last_error": worker.last_error, "pid": worker.pid,
                       "current": worker.current}
        return {**session.status(), "worker": matcher}

    @app.get("/api/status", tags=["status"])
    def status() -> dict[str, Any]:
        """What the status bar shows (also pushed on the WebSocket every 0.25 s)."""
        return full_status()

    @app.websocket("/api/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        q: asyncio.Queue = asyncio.Queue(maxsize=256)
        with hub.lock:
            hub.queues.add(q)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(q.get(), STATUS_PERIOD_S)
                except asyncio.TimeoutError:
                    message = full_status()
                await socket.send_json(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            with hub.lock:
                hub.queues.discard(q)

    # -- the page -----------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    # A session error carries its HTTP status (404 no pad, 409 nothing to undo or a
    # device that would not open, 422 bad value, 400 bad kit name): every route
    # lets it propagate to here.
    @app.exception_handler(SessionError)
    async def _session_error(_: Request, err: SessionError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    # Outermost first: refuse foreign requests before reading any body.
    app.add_middleware(BodyCap, limit=upload_limit)
    app.add_middleware(LocalOnly, port=port, extra_hosts=extra_hosts)
    return app


def _kits_dir_default() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "tympan" / "kits"


class _Server(uvicorn.Server):
    """uvicorn's server, closing the matcher worker as its shutdown starts.

    Uploads waiting for parameters then answer 503 at once instead of holding
    the graceful shutdown until their match ends.
    """

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets=None) -> None:
        await asyncio.to_thread(self._on_shutdown)
        await super().shutdown(sockets)


def main(argv: list[str] | None = None) -> int:
    """``tympan serve``: engine, MIDI, matcher worker and the page, until Ctrl-C."""
    import ipaddress
    import sys

    from synth.cli_parser import OneLineParser

    from .cli import add_live_options

    parser = OneLineParser(prog="tympan serve", description=(
        "Run the plugin backend: the live engine with MIDI input, a matcher worker and the "
        "web page (drag a hit onto a pad, hear the match, play it from MIDI)."))
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--kit", metavar="FILE", help="kit to start with (default: General MIDI)")
    parser.add_argument("--kits-dir", metavar="DIR", default=None,
                        help=f"the folder kits are saved to and loaded from "
                             f"(default {_kits_dir_default()})")
    parser.add_argument("--model", metavar="FILE", help="matcher artifact (default: shipped)")
    parser.add_argument("--match-device", choices=("cpu", "cuda"), default=None,
                        help="where the matcher runs (default CUDA when present)")
    parser.add_argument("--worker-threads", type=int, default=1,
                        help="torch threads of the matcher (default 1: audio keeps a core)")
    parser.add_argument("--upload-limit-mb", type=float, default=50.0,
                        help="largest upload, MiB (default 50)")
    parser.add_argument("--no-audio", action="store_true",
                        help="no audio output (the page plays hits itself)")
    add_live_options(parser, blocksize=256, midi_none=True)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: allowed 1..65535")
    if not 16 <= args.blocksize <= 8192:
        raise ValueError(f"--blocksize {args.blocksize}: allowed 16..8192")
    if not 0 < args.upload_limit_mb <= 4096:
        raise ValueError(f"--upload-limit-mb {args.upload_limit_mb:g}: allowed (0, 4096]")
    if not 1 <= args.worker_threads <= 64:
        raise ValueError(f"--worker-threads {args.worker_threads}: allowed 1..64")
    if args.model is not None and not Path(args.model).is_file():
        raise ValueError(f"--model {args.model}: no such file")
    extra: tuple[str, ...] = ()
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        extra = (args.host,)
        print(f"tympan serve: warning: binding {args.host}: other machines can reach the API "
              "(Host and Origin must still name this address)", file=sys.stderr)
    from .kit import load_kit
    from .session import Session

    session = Session(load_kit(args.kit),
                      Path(args.kits_dir) if args.kits_dir else _kits_dir_default(),
                      sr=args.sr, blocksize=args.blocksize, polyphony=args.polyphony,
                      effects=not args.no_effects, midi_api=args.midi_api, rtmidi=args.rtmidi,
                      kit_file=None if args.kit is None else Path(args.kit))
    notes: list[str] = []
    if not args.no_audio:
        try:
            session.open_audio(args.audio_device)
        except SessionError as err:     # the page still works: it plays hits itself
            notes.append(f"no audio output ({err})")
    if args.midi_in != "none":
        try:
            session.open_midi(args.midi_in)
        except SessionError as err:
            notes.append(f"no MIDI input ({err})")
    worker = MatchWorker(args.model, args.match_device, threads=args.worker_threads)
    with StopSignals("tympan serve") as stop:
        try:
            app = create_app(session, worker, args.port, extra,
                             upload_limit=int(args.upload_limit_mb * 2**20))
            # Pending uploads get their 503 at once; a connection that still
            # lingers is cut after a second.
            server = _Server(uvicorn.Config(app, host=args.host, port=args.port,
                                            log_level="warning", lifespan="on",
                                            timeout_graceful_shutdown=1),
                             on_shutdown=worker.close)
            worker.start()
            # uvicorn in a thread of its own: then it installs no signal handlers,
            # and StopSignals alone decides (a first Ctrl-C winds down, a second
            # forces the exit, whatever the server is doing).
            thread = threading.Thread(target=server.run, name="tympan-http", daemon=True)
            thread.start()
            while not server.started and thread.is_alive() and not stop.wait(0.05):
                pass
            if server.started:
                url = (f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}"
                       f":{args.port}/")
                print(f"tympan serve: {url}  kit {session.engine.kit.name!r} "
                      f"({len(session.engine.kit.pads)} pads), audio "
                      f"{'on' if session.output else 'off'}, MIDI in "
                      f"{session.midi_port or 'none'!r}, kits in {session.kits_dir}; "
                      "Ctrl-C to stop", flush=True)
                for note in notes:
                    print(f"tympan serve: warning: {note}", file=sys.stderr, flush=True)
            while thread.is_alive() and not stop.wait(0.1):
                pass
            server.should_exit = True         # Ctrl-C is how a server stops: not an error
            thread.join(5.0)
        finally:
            worker.close()
            session.close()
    if not server.started:
        raise OSError(f"could not serve on {args.host}:{args.port} (port in use?)")
    print("tympan serve: stopped", flush=True)
    return 0
