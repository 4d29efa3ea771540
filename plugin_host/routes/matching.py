"""Matching routes: an uploaded hit is matched in two stages and lands on its pad.

The route answers once the encoder's estimate is on the pad; the worker's
later stages reach the session from the event loop (:func:`.status.post`),
through :meth:`Session.refine_match` and :meth:`Session.finish_match`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from typing_extensions import TypedDict

from fastapi import APIRouter, File, HTTPException, Query, UploadFile

from ..api_models import MatchState, SampleOut
from ..request_guard import audio_kind
from ..session import Session, SessionError
from ..session_shapes import MatchStateOut, PadState
from ..worker import MatchWorker, WorkerError
from .pads import Note
from .status import Hub, post

__all__ = ["router"]


class FastMatch(TypedDict):
    """The fast stage's answer (:class:`plugin_host.api_models.MatchOut`)."""

    job: int
    source: str
    theta: dict[str, float]
    nu: list[float]
    units: dict[str, str]
    timings_ms: dict[str, float]
    stage: Literal["fast", "refined"]


class Sampled(TypedDict):
    pad: PadState
    match: FastMatch


def router(session: Session, worker: MatchWorker | None, hub: Hub,
           uploads: Path) -> APIRouter:
    """The ``matching`` routes; uploads are copied into ``uploads`` while matched."""
    api = APIRouter(tags=["matching"])

    @api.post("/api/pads/{note}/sample", response_model=SampleOut,
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
                     ) -> Sampled:
        """Match an uploaded hit and put the result on the pad, in two stages.

        Answers as soon as the encoder's estimate is on the pad (stage
        ``fast``, milliseconds). The default match (``search``) then replaces
        it (stage ``refined``: WebSocket ``match`` event, ``GET
        /api/pads/{note}/match``), and the distances and pictures follow.
        """
        note = session.pad_note(note)       # a tracked pad answers several notes
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
            lambda fut: post(loop, _scored, note, job.job_id, path, fut))
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
            lambda fut: post(loop, _refined, note, job.job_id, generation, fut))
        match: FastMatch = {"job": job.job_id, "source": source, **{  # type: ignore[typeddict-item]
            k: found[k] for k in ("theta", "nu", "units", "timings_ms", "stage")}}
        return {"pad": pad, "match": match}

    def _refined(note: int, job_id: int, generation: int, fut: Future) -> None:
        if fut.exception() is not None or fut.result() is None:
            return                              # the error reaches _scored as well
        found = fut.result()
        try:
            session.refine_match(note, job_id, generation, found["theta"], found["estimate"])
        except SessionError:
            pass                                # a kit was loaded: the pad is gone

    def _scored(note: int, job_id: int, path: str, fut: Future) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
        err = fut.exception()
        if err is not None:
            session.finish_match(note, job_id, error=str(err))
        else:
            session.finish_match(note, job_id, scored=fut.result())

    @api.get("/api/pads/{note}/match", response_model=MatchState)
    def match_state(note: int = Note) -> MatchStateOut:
        """The pad's last match: parameters, distances and the pictures' data."""
        return session.match_state(session.pad_note(note))

    return api
