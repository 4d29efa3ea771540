"""Live status: ``GET /api/status`` and the WebSocket hub that pushes it and every event.

Events come from any thread (the session's, the worker's supervisor); the
hub hands them to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Mapping

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..session import Session
from ..session_shapes import FullStatus, WorkerStatus
from ..worker import MatchWorker

__all__ = ["STATUS_PERIOD_S", "Hub", "post", "router"]

STATUS_PERIOD_S = 0.25


class Hub:
    """Fans messages from any thread out to every connected page."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue] = set()
        self.lock = threading.Lock()

    def publish(self, message: Mapping[str, Any]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self.lock:
            queues = list(self.queues)
        for q in queues:
            post(loop, _put_latest, q, message)


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from another thread; nothing if the loop has closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:            # shutting down: the loop closed under us
        pass


def _put_latest(q: asyncio.Queue, message: Mapping[str, Any]) -> None:
    # A page that stopped reading must not grow memory: drop its oldest message.
    if q.full():
        try:
            q.get_nowait()
        except asyncio.QueueEmpty:
            pass
    q.put_nowait(message)


def worker_status(worker: MatchWorker | None) -> WorkerStatus:
    """The matcher's state for the status bar (no ``pid`` without a worker)."""
    if worker is None:
        return {"alive": False, "ready": False, "queued": 0, "restarts": 0,
                "last_error": "no matcher", "current": None}
    return {"alive": worker.alive, "ready": worker.ready.is_set(),
            "queued": worker.queued, "restarts": worker.restarts,
            "last_error": worker.last_error, "pid": worker.pid,
            "current": worker.current}


def router(session: Session, worker: MatchWorker | None, hub: Hub) -> APIRouter:
    """``GET /api/status`` and the WebSocket ``/api/ws`` fed by ``hub``."""
    api = APIRouter(tags=["status"])

    def full_status() -> FullStatus:
        return {**session.status(), "worker": worker_status(worker)}  # type: ignore[typeddict-item]

    @api.get("/api/status")
    def status() -> FullStatus:
        """What the status bar shows (also pushed on the WebSocket every 0.25 s)."""
        return full_status()

    @api.websocket("/api/ws")
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

    return api
