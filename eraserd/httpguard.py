"""What the control API refuses before any route runs, and how it answers: a request without
the bearer token (``BearerAuth``), a request body over its size or time limit (``BodyLimit``),
a full disk (``disk_full``), and the JSON error body every refusal uses (``error_response``).

Both middlewares are plain ASGI: no task group or stream per request, as Starlette's
``BaseHTTPMiddleware`` would add to every call."""

from __future__ import annotations

import errno
import hmac
import sqlite3
from collections.abc import Collection
from typing import Any

import anyio
from fastapi.responses import JSONResponse


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """``{"error": {"status": ..., "message": ..., ...}}`` with that status."""
    return JSONResponse(
        {"error": {"status": status, "message": message, **extra}},
        status_code=status,
        headers=headers,
    )


def disk_full(exc: BaseException) -> bool:
    """A full disk: ``ENOSPC``/``EDQUOT``, or SQLite's ``database or disk is full``."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return "disk is full" in str(exc).lower()
    return False


class BearerAuth:
    """ASGI middleware: a path outside ``public`` needs ``Authorization: Bearer <token>``.

    Without it: 401, answered before the body is read, and the connection is closed, which
    keeps a client without the token from trickling an endless body into it. Tokens are
    compared in constant time.
    """

    def __init__(self, app, token: str, public: Collection[str]):
        self.app, self.token, self.public = app, token.encode(), frozenset(public)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        header = b""
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                header = value
                break
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            message = "missing bearer token (Authorization: Bearer <token>)"
        elif not hmac.compare_digest(token.strip().encode(), self.token):
            message = "invalid bearer token"
        else:
            return await self.app(scope, receive, send)
        refusal = error_response(401, message, headers={"Connection": "close"})
        await refusal(scope, receive, send)


class BodyLimit:
    """ASGI middleware: the request body is read whole before the app runs.

    Over ``limit`` bytes (declared in Content-Length, or counted as it streams, chunked or
    not): 413. Not complete within ``timeout`` seconds of the app being called (a client that
    stalls or trickles): 408. Both answer JSON and close the connection; the app never sees
    a partial body, so nothing downstream raises or logs a traceback.
    """

    def __init__(self, app, limit: int, timeout: float):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def _refuse(self, status: int, message: str, scope, receive, send) -> None:
        await error_response(status, message, headers={"Connection": "close"})(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"request body exceeds {self.limit} bytes (daemon.max_body_bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(413, too_big, scope, receive, send)
        chunks: list[bytes] = []
        seen = 0
        refusal: tuple[int, str] | None = None
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # http.disconnect: the client left, nobody to answer
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > self.limit:
                        refusal = (413, too_big)
                        break
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            refusal = (
                408,
                f"request body not received within {self.timeout:g} s (daemon.body_timeout_s)",
            )
        if refusal is not None:
            return await self._refuse(*refusal, scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect is left

        await self.app(scope, replay, send)
