"""Pad routes: the parameter table, a pad's state, edits, undo, playing and rendering."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from synth.params import ParamSpec

from ..api_models import PadOut, PadUpdate, Played
from ..session import Session, param_table
from ..session_shapes import PadState
from ..session_shapes import Played as PlayedShape

__all__ = ["Note", "router"]

Note = PathParam(ge=0, le=127, description="MIDI note of the pad")


def router(session: Session) -> APIRouter:
    """The ``pads`` routes of ``session``."""
    api = APIRouter(tags=["pads"])

    @api.get("/api/params", response_model=list[ParamSpec])
    def params() -> list[ParamSpec]:
        """The five membrane parameters: units, ranges and slider scales."""
        return param_table()

    @api.get("/api/pads/{note}", response_model=PadOut)
    def get_pad(note: int = Note) -> PadState:
        return session.pad_state(note)

    @api.put("/api/pads/{note}", response_model=PadOut)
    def put_pad(body: PadUpdate, note: int = Note) -> PadState:
        """Set some of a pad's parameters, its gain or name (undoable)."""
        values = None if body.params is None else \
            {k: v for k, v in body.params.model_dump().items() if v is not None}
        return session.update_pad(note, values, body.gain_db, body.name)

    @api.post("/api/pads/{note}/undo", response_model=PadOut,
              responses={409: {"description": "nothing to undo"}})
    def undo(note: int = Note) -> PadState:
        """Put the pad back as it was before its last change."""
        return session.undo(note)

    @api.post("/api/pads/{note}/trigger", response_model=Played)
    def trigger(note: int = Note, velocity: int = Query(100, ge=1, le=127)) -> PlayedShape:
        """Play the pad through the audio output (``played`` is false without one)."""
        return session.trigger(note, velocity)

    @api.get("/api/pads/{note}/render.wav", response_class=Response,
             responses={200: {"content": {"audio/wav": {}}}})
    def render(note: int = Note, velocity: int = Query(100, ge=1, le=127)) -> Response:
        """The pad's hit as a wav file, for the browser to play."""
        return Response(session.render_wav(note, velocity), media_type="audio/wav")

    return api
