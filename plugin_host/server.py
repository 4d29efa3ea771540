"""``tympan serve``: the plugin backend, an HTTP + WebSocket API and the page.

One process holds the live engine (audio callback, MIDI input) and this
API; matching runs in :mod:`plugin_host.worker`'s separate process. The
routes live in :mod:`plugin_host.routes` (one router per group), their bodies
and answers in :mod:`plugin_host.api_models`.

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
from typing import Callable

import uvicorn

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from . import routes
from .request_guard import BodyCap, LocalOnly
from .routes.status import Hub
from .session import Session, SessionError
from .signals import StopSignals
from .worker import MatchWorker

__all__ = ["create_app"]

WEB = Path(__file__).resolve().parent / "web"


def create_app(session: Session, worker: MatchWorker | None, port: int,
               extra_hosts: tuple[str, ...] = (), upload_limit: int = 50 * 2**20) -> FastAPI:
    """The ASGI application serving ``session``: the routers of :mod:`plugin_host.routes`,
    the page, and the request guards.

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
    session.subscribe(hub.publish)
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
    app.include_router(routes.pads.router(session))
    app.include_router(routes.matching.router(session, worker, hub, uploads))
    app.include_router(routes.kits.router(session))
    app.include_router(routes.devices.router(session))
    app.include_router(routes.status.router(session, worker, hub))

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
