"""What the control API's OpenAPI schema says beyond FastAPI's own: the error model and every
error code each route can answer, the bearer token as a security scheme, and the body of
``POST /v1/predict`` (raw bytes or a multipart upload)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .data.images import API_FORMATS

PUBLIC = {"/healthz", "/metrics", "/openapi.json", "/docs"}

BEARER = "bearer"
"""The OpenAPI security scheme of the token: ``Authorization: Bearer <token>``."""
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorOut(BaseModel):
    """Every error: ``{"error": {"status": N, "message": "..."}}`` (some add fields)."""

    error: ErrorDetail


_WHY = {
    400: "Malformed body (JSON, or a multipart upload).",
    401: "Missing or wrong bearer token.",
    404: "No such deletion request.",
    408: "The request body did not arrive within daemon.body_timeout_s; the connection is closed.",
    409: "The idempotency key came with another body.",
    413: "Request body over daemon.max_body_bytes.",
    415: "Not a readable image.",
    422: "Invalid fields.",
    500: "Unexpected error (logged by the daemon).",
    503: "The disk is full: nothing was stored. Retry the same request after Retry-After seconds.",
}

_EVERY = (408, 413, 500)
"""What any route can answer: the body middleware's refusals, and an unexpected error."""


def responses(
    *codes: int, why: dict[int, str] | None = None, ok: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=``: every error code a route can return, with the error model."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"description": text} for code, text in (ok or {}).items()
    }
    for code in sorted({*codes, *_EVERY}):
        out[code] = {"model": ErrorOut, "description": (why or {}).get(code, _WHY[code])}
    if 503 in codes and 503 not in (why or {}):  # a full disk: retry the same request
        out[503]["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        }
    return out


_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image's raw bytes as the body (PNG or JPEG; also "
        + ", ".join(f for f in API_FORMATS if f not in ("PNG", "JPEG"))
        + "), or a multipart upload with the file in the field `image`. At most "
        "daemon.max_body_bytes bytes, daemon.max_image_pixels pixels and an aspect ratio of "
        "daemon.max_image_aspect.",
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


def with_bearer(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the bearer token as an HTTP bearer security scheme, required by every
    operation outside ``PUBLIC`` (so that OpenAPI tools can send it). Changes ``schema``."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The token in daemon.token_file (default: state_dir/api-token).",
    }
    for path, item in schema.get("paths", {}).items():
        if path not in PUBLIC:
            for method, op in item.items():
                if method in _METHODS:
                    op["security"] = [{BEARER: []}]
    return schema
