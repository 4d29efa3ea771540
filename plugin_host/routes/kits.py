"""Kit routes: the kit being played, the kits folder, saving and loading."""

from __future__ import annotations

from fastapi import APIRouter

from ..api_models import KitList, KitName, KitOut, Saved
from ..session import Session
from ..session_shapes import KitListing, KitState, SavedKit

__all__ = ["router"]


def router(session: Session) -> APIRouter:
    """The ``kits`` routes of ``session``."""
    api = APIRouter(tags=["kits"])

    @api.get("/api/kit", response_model=KitOut)
    def kit() -> KitState:
        """The kit being played and edited."""
        return session.kit_out()

    @api.get("/api/kits", response_model=KitList)
    def kits() -> KitListing:
        """Kits saved in the kits folder."""
        return session.kits()

    @api.post("/api/kits/save", response_model=Saved)
    def save_kit(body: KitName) -> SavedKit:
        """Save the current kit in the kits folder under ``name``."""
        return session.save_kit(body.name)

    @api.post("/api/kits/load", response_model=KitOut)
    def load_kit(body: KitName) -> KitState:
        """Replace the kit with one from the kits folder."""
        return session.load_kit(body.name)

    return api
