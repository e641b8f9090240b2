"""HTTP control API (FastAPI). Thin: validation and errors here, work in ``Daemon``.

Every error is JSON: ``{"error": {"status": 422, "message": "...", ...}}``. Only
``/healthz``, ``/metrics`` (Prometheus scrapes carry no token) and the OpenAPI schema are
served without the bearer token.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from . import __version__
from .data.images import ImageDecodeError
from .errors import UnknownIdError
from .queue import IdempotencyConflict

if TYPE_CHECKING:
    from .daemon import Daemon

PUBLIC = {"/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class DeletionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_ids: list[str] = Field(default_factory=list, description="Sample ids to forget.")
    subject_ids: list[str] = Field(
        default_factory=list, description="Subject ids: every sample of each is forgotten."
    )
    idempotency_key: str | None = Field(
        default=None,
        max_length=200,
        description="Resubmitting with this key returns the same request.",
    )
    deadline: datetime | None = Field(
        default=None,
        description="ISO 8601 time by which the deletion must be published "
        "(default: now + daemon.default_deadline_s).",
    )

    @field_validator("sample_ids", "subject_ids")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for ident in value:
            if not ident or len(ident) > 1000 or any(ord(c) < 32 for c in ident):
                raise ValueError("ids must be non-empty strings without control characters")
        return value


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "message": message, **extra}}, status_code=status
    )


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, streamed or not."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = _error(413, f"request body exceeds {self.limit} bytes")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_big(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(
        title="eraserd",
        version=__version__,
        description="Exact machine unlearning: deletion queue and predictions.",
    )

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if request.url.path not in PUBLIC:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return _error(401, "missing bearer token (Authorization: Bearer <token>)")
            if not hmac.compare_digest(token.strip().encode(), daemon.token.encode()):
                return _error(401, "invalid bearer token")
        return await call_next(request)

    app.add_middleware(BodyLimit, limit=daemon.cfg.daemon.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed JSON body")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "version": daemon.predictor.version}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, ctype = daemon.metrics.exposition()
        return Response(body, media_type=ctype)

    @app.post("/v1/deletions", status_code=202)
    def submit(body: DeletionIn):
        deadline = None
        if body.deadline is not None:
            d = body.deadline
            deadline = (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
        try:
            out, created = daemon.submit(
                body.sample_ids, body.subject_ids, body.idempotency_key, deadline
            )
        except UnknownIdError as exc:
            return _error(422, str(exc), unknown=exc.unknown)
        except IdempotencyConflict as exc:
            return _error(409, str(exc))
        except ValueError as exc:
            return _error(422, str(exc))
        return JSONResponse(out, status_code=202 if created else 200)

    @app.get("/v1/deletions/{request_id}")
    def get_request(request_id: str):
        out = daemon.request(request_id)
        if out is None:
            return _error(404, f"no deletion request {request_id!r}")
        return out

    @app.get("/v1/status")
    def status() -> dict:
        return daemon.status()

    @app.post("/v1/flush", status_code=202)
    def flush() -> dict:
        return daemon.flush()

    @app.post("/v1/predict")
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return _error(422, "multipart upload needs a file field named 'image'")
            data = await upload.read()
        else:
            data = await request.body()
        if not data:
            return _error(422, "empty upload: send image bytes or a multipart 'image' field")
        try:
            return await run_in_threadpool(daemon.predict, data)
        except ImageDecodeError as exc:
            return _error(415, f"not a readable image ({exc})")

    return app
