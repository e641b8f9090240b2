"""What the control API refuses before any route runs, and how it answers: a request body over
its size or time limit (``BodyLimit``), a full disk (``disk_full``), and the JSON error body
every refusal uses (``error_response``)."""

from __future__ import annotations

import errno
import sqlite3
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
