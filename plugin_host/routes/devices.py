"""Device routes: audio outputs, MIDI inputs, and MIDI learn (a controller to a parameter)."""

from __future__ import annotations

from fastapi import APIRouter

from ..api_models import Armed, AudioChoice, Learn, MidiChoice
from ..session import Session
from ..session_shapes import Armed as ArmedShape
from ..session_shapes import Devices

__all__ = ["router"]


def router(session: Session) -> APIRouter:
    """The ``devices`` routes of ``session``, MIDI learn included."""
    api = APIRouter(tags=["devices"])

    @api.get("/api/devices")
    def devices() -> Devices:
        """Audio outputs and MIDI inputs, and those in use."""
        return session.devices()

    @api.put("/api/devices/audio")
    def set_audio(body: AudioChoice) -> Devices:
        """Move the output to another device (null: the system default)."""
        session.open_audio(body.device)
        return session.devices()

    @api.put("/api/devices/midi")
    def set_midi(body: MidiChoice) -> Devices:
        """Listen to another MIDI input (a port name, index, or ``virtual``)."""
        session.open_midi(body.port)
        return session.devices()

    @api.post("/api/midi-learn", response_model=Armed)
    def midi_learn(body: Learn) -> ArmedShape:
        """The next controller (CC) moved will control ``param`` (of ``pad``, or all pads)."""
        return session.learn(body.param, body.pad, body.depth)

    return api
