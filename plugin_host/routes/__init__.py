"""The HTTP API's routes, one :class:`fastapi.APIRouter` per group.

Each module's ``router(...)`` builds its group around the objects it serves
(the :class:`~plugin_host.session.Session`, the matcher worker, the WebSocket
hub); :func:`plugin_host.server.create_app` includes them in this order, which
is the order of the OpenAPI document. Handlers that touch the session are
plain ``def`` functions, which FastAPI runs in its thread pool, so the event
loop never waits on the session's lock; they call the session's methods only.
"""

from __future__ import annotations

from . import devices, kits, matching, pads, status

__all__ = ["devices", "kits", "matching", "pads", "status"]
