"""What the server lets in: local Host and Origin only, capped uploads that are audio.

A page on any website can make the user's browser send requests to
``127.0.0.1``; two defences stop it from driving Tympan:

- the Host header must name this machine (a DNS-rebinding attack makes the
  browser send the attacker's host name, e.g. ``evil.example:8765``);
- an Origin header, when present (browsers send it on cross-site requests
  and on every WebSocket handshake), must be this server's own origin.

Uploads are capped while they are read (the Content-Length header is a hint,
not trusted) and recognized by their first bytes, not their name.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

__all__ = ["BodyCap", "LocalOnly", "audio_kind", "LOCAL_NAMES"]

LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")

# (offset, magic bytes, extra check at offset 8, format)
_MAGIC = (
    (b"RIFF", b"WAVE", "wav"),
    (b"RF64", b"WAVE", "wav"),
    (b"FORM", b"AIFF", "aiff"),
    (b"FORM", b"AIFC", "aiff"),
)


def audio_kind(head: bytes) -> str | None:
    """The container of an audio file from its first bytes, or None.

    Parameters
    ----------
    head : bytes
        At least the first 12 bytes of the file (fewer: None).

    Returns
    -------
    str or None
        ``wav``, ``aiff``, ``flac``, ``ogg``, ``mp3``; None when the bytes are
        none of these (text, images, archives, executables...).
    """
    if len(head) < 12:
        return None
    for magic, sub, kind in _MAGIC:
        if head[:4] == magic and head[8:12] == sub:
            return kind
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    # A bare MPEG audio frame: 11 sync bits, layer III, a valid bitrate index.
    if head[0] == 0xFF and (head[1] & 0xE6) == 0xE2 and (head[2] >> 4) not in (0, 15):
        return "mp3"
    return None


def _host_is_local(host: str, allowed: set[str]) -> bool:
    name = host.strip().lower()
    if name.startswith("["):                      # [::1]:8765
        name = name[: name.find("]") + 1] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name in allowed:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class LocalOnly:
    """ASGI middleware: 400 for a foreign Host, 403 for a foreign Origin.

    Parameters
    ----------
    app : ASGI application
    port : int
        The server's port: an Origin must be ``http://<local name>:<port>``.
    extra_hosts : sequence of str
        More accepted host names (``--host`` when it is not a loopback address).
    """

    def __init__(self, app: Any, port: int, extra_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.port = port
        self.hosts = {h.lower() for h in (*LOCAL_NAMES, *extra_hosts)}

    def origin_ok(self, origin: str) -> bool:
        if origin == "null":            # sandboxed frames, file:// pages: not ours
            return False
        parts = urlsplit(origin)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host      # urlsplit drops IPv6 brackets
        return parts.scheme == "http" and port == self.port and _host_is_local(host, self.hosts)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not _host_is_local(host, self.hosts):
            return await self._refuse(scope, send, 400,
                                      f"host {host!r} is not this machine: Tympan's server "
                                      "answers local requests only")
        origin = headers.get("origin")
        if origin is not None and not self.origin_ok(origin):
            return await self._refuse(scope, send, 403,
                                      f"origin {origin!r} is not this server's page: "
                                      "cross-site requests are refused")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: dict, send: Callable[[dict], Awaitable[None]], status: int,
                      message: str) -> None:
        import json

        if scope["type"] == "websocket":
            # Refuse the handshake: an HTTP response before accepting (ASGI's
            # websocket.http.response when supported, else a close -> 403).
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyCap:
    """ASGI middleware: 413 for a request body over ``limit`` bytes.

    A declared Content-Length over the limit is refused before reading; a
    body that turns out longer (chunked, or a false header) is cut off where
    it crosses the limit: the application sees a disconnect and its answer is
    replaced by the 413.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = int(limit)

    def _message(self) -> bytes:
        import json

        return json.dumps({"detail": f"upload too large: the limit is "
                                     f"{self.limit / 2**20:g} MiB"}).encode()

    async def _send_413(self, send: Callable[[dict], Awaitable[None]]) -> None:
        body = self._message()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    return await self._send_413(send)
        seen = 0
        over = False
        responded = False

        async def capped_receive() -> dict:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal responded
            if over:
                return                    # the 413 below answers instead
            responded = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not responded:
            await self._send_413(send)
