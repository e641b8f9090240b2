"""HTTP control API (FastAPI). Thin: validation and errors here, work in ``Daemon``.

Every error is JSON: ``{"error": {"status": 422, "message": "...", ...}}``. Only
``/healthz``, ``/metrics`` (Prometheus scrapes carry no token), the OpenAPI schema and ``/docs``
(a self-contained page, ``apidocs.py``) are served without the bearer token; the schema
declares the token (HTTP bearer) on every other operation.

Hostile input is refused before it costs anything: a request body is read whole, within
``daemon.max_body_bytes`` (413) and ``daemon.body_timeout_s`` (408), before any route runs;
an image's size and aspect ratio are checked from its header before a pixel is decoded
(413); ids must be printable text (422); a full disk is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from . import __version__, apidocs
from .apischema import PREDICT_BODY, PUBLIC, responses, with_bearer
from .data.images import API_FORMATS, ImageDecodeError, ImageTooLarge, check_image_limits
from .errors import UnknownIdError
from .httpguard import BearerAuth, BodyLimit, disk_full, error_response
from .idfile import id_problem
from .model.predictor import ClustersUnavailable
from .queue import IdempotencyConflict, RequestState, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("eraserd.api")

RETRY_AFTER_S = 30
"""``Retry-After`` of a 503 (the disk is full): a client retries the same submission."""

MAX_KEY_CHARS = 200

PAGE_SIZE = 50
"""Requests per page of ``GET /v1/deletions`` when ``limit`` is not given."""
MAX_PAGE_SIZE = 500
MAX_CURSOR_CHARS = 200


def _valid_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Ident = Annotated[str, AfterValidator(_valid_id)]


class DeletionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_ids: list[Ident] = Field(
        default_factory=list,
        description="Sample ids to forget: printable text, 1-1000 characters each.",
    )
    subject_ids: list[Ident] = Field(
        default_factory=list,
        description="Subject ids: every sample of each is forgotten. Printable text, "
        "1-1000 characters each.",
    )
    idempotency_key: str | None = Field(
        default=None,
        max_length=MAX_KEY_CHARS,
        description="Resubmitting with this key returns the same request. Printable text, "
        "1-200 characters; omit it for no idempotency.",
    )
    deadline: datetime | None = Field(
        default=None,
        description="ISO 8601 time by which the deletion must be published "
        "(default: now + daemon.default_deadline_s).",
    )

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must not be empty (omit the key to submit without one)")
        problem = id_problem(value, MAX_KEY_CHARS)
        if problem is not None:
            raise ValueError(problem)
        return value


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(
        title="eraserd",
        version=__version__,
        description="Exact machine unlearning: deletion queue and predictions.",
        docs_url=None,  # Swagger UI from a CDN; ``/docs`` below works offline
        redoc_url=None,
    )
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with_bearer(generate())  # generate() caches its schema in app.openapi_schema
        assert app.openapi_schema is not None
        return app.openapi_schema

    # FastAPI's documented way to customize the schema: replace the app's openapi method.
    app.openapi = openapi  # type: ignore[method-assign]
    limits = daemon.cfg.daemon

    # Added first, so it runs inside ``BearerAuth``: a request without a valid token is
    # refused before its body is read.
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, timeout=limits.body_timeout_s)
    app.add_middleware(BearerAuth, token=daemon.token, public=PUBLIC)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed JSON body")
        first = errors[0] if errors else {}
        where = (
            ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
            or "body"
        )
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return error_response(422, f"{where}: {message}")

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.OperationalError)
    async def storageerror_response(request: Request, exc: Exception):
        if not disk_full(exc):
            raise exc
        log.warning(
            "request refused: the disk is full",
            extra={"fields": {"path": request.url.path, "error": type(exc).__name__}},
        )
        return error_response(
            503,
            f"the disk is full: nothing was stored; retry the same request in {RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return error_response(500, "internal error (logged by the daemon)")

    @app.get("/healthz", responses=responses())
    def healthz() -> dict:
        return {"ok": True, "version": daemon.predictor.version}

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(apidocs.PAGE, headers={"Content-Security-Policy": apidocs.CSP})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, ctype = daemon.metrics.exposition()
        return Response(body, media_type=ctype)

    @app.post(
        "/v1/deletions",
        status_code=202,
        responses=responses(
            400,
            401,
            409,
            422,
            503,
            ok={200: "The idempotency key already made this request: that request."},
            why={
                400: "Malformed JSON body.",
                422: "Invalid fields (ids must be printable text), unknown ids (listed in "
                "`unknown`; nothing is queued), too many ids, or a past deadline.",
            },
        ),
    )
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
            return error_response(422, str(exc), unknown=exc.unknown)
        except IdempotencyConflict as exc:
            return error_response(409, str(exc))
        except ValueError as exc:
            return error_response(422, str(exc))
        return JSONResponse(out, status_code=202 if created else 200)

    @app.get(
        "/v1/deletions",
        responses=responses(
            401,
            422,
            ok={200: "`requests` (newest first) and `next_cursor` (null on the last page)."},
            why={
                422: "An unknown state (the message lists the states), a limit outside "
                f"1-{MAX_PAGE_SIZE}, or a cursor this API did not return."
            },
        ),
    )
    def list_requests(
        state: Annotated[
            RequestState | None, Query(description="Only requests in this state.")
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description="Requests per page.")
        ] = PAGE_SIZE,
        cursor: Annotated[
            str | None,
            Query(
                max_length=MAX_CURSOR_CHARS,
                description="The previous page's `next_cursor`, as it came.",
            ),
        ] = None,
    ):
        """Deletion requests, newest first (submission time, then id), a page at a time.

        Keyset paging: a request submitted while a client pages is never shifted into a later
        page, so each request shows up once. Items have the fields of
        ``GET /v1/deletions/{id}`` without the pending ``plan``.
        """
        try:
            after = None if cursor is None else decode_cursor(cursor)
        except ValueError as exc:
            return error_response(422, f"cursor: {exc}")
        page = daemon.requests(None if state is None else state.value, limit, after)
        return {
            "requests": [r.to_dict() for r in page.requests],
            "next_cursor": None if page.after is None else encode_cursor(page.after),
        }

    @app.get(
        "/v1/deletions/{request_id}",
        responses=responses(401, 404, 422, why={422: "A request id over 200 characters."}),
    )
    def get_request(request_id: Annotated[str, PathParam(max_length=200)]):
        """The request; while it is pending, also its ``plan``: the clusters it will retrain
        and the expected cost, in the current version (see the README)."""
        out = daemon.request(request_id)
        if out is None:
            return error_response(404, f"no deletion request {request_id!r}")
        return out

    @app.get(
        "/v1/deletions/{request_id}/certificate",
        responses=responses(
            401,
            404,
            422,
            why={
                404: "No such request, or it is not published (yet).",
                422: "A request id over 200 characters.",
            },
        ),
    )
    def get_certificate(request_id: Annotated[str, PathParam(max_length=200)]):
        """The deletion certificate of a published request: its audit log entry."""
        entry = daemon.certificate(request_id)
        if entry is None:
            req = daemon.request(request_id)
            if req is None:
                return error_response(404, f"no deletion request {request_id!r}")
            return error_response(404, f"request {request_id!r} is {req['state']}: no certificate")
        return entry

    @app.get("/v1/status", responses=responses(401))
    def status() -> dict:
        return daemon.status()

    @app.post("/v1/flush", status_code=202, responses=responses(401))
    def flush() -> dict:
        return daemon.flush()

    @app.post(
        "/v1/predict",
        responses=responses(
            400,
            401,
            413,
            415,
            422,
            503,
            ok={200: "Label, cluster, serving version, probability and fallback."},
            why={
                400: "Malformed multipart upload.",
                413: "Request body over daemon.max_body_bytes, or an image over "
                "daemon.max_image_pixels pixels or daemon.max_image_aspect (checked from "
                "its header, before decoding); `limit` names the key.",
                415: "Not a readable image (" + ", ".join(API_FORMATS) + ").",
                422: "Empty body, or a multipart upload without the field `image`.",
                503: "Every cluster is withdrawn from serving (a deletion missed its "
                "deadline): none can answer until it is done.",
            },
        ),
        openapi_extra=PREDICT_BODY,
    )
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return error_response(422, "multipart upload needs a file field named 'image'")
            data = await upload.read()
        else:
            data = await request.body()
        if not data:
            return error_response(
                422, "empty upload: send image bytes or a multipart 'image' field"
            )

        def checked_predict() -> dict:
            check_image_limits(data, limits.max_image_pixels, limits.max_image_aspect)
            return daemon.predict(data)

        try:
            return await run_in_threadpool(checked_predict)
        except ImageTooLarge as exc:
            key = f"daemon.max_image_{exc.limit}"
            value = getattr(limits, f"max_image_{exc.limit}")
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            return error_response(413, f"{exc} (limit: {key} = {shown})", limit=key)
        except ImageDecodeError as exc:
            return error_response(415, f"not a readable image ({exc})")
        except ClustersUnavailable as exc:
            return error_response(
                503, f"{exc}: a deletion missed its deadline; retry once it is done"
            )

    return app
