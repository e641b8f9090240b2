"""Structured logging: ``key=value`` text or one JSON object per line.

Callers pass fields with ``extra={"fields": {...}}``. Fields carry request ids, counts and
versions, never sample or subject ids: those are private data.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", {}) or {}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{ts} {record.levelname.lower():7s} {record.name}: {record.getMessage()}"
        line = f"{line} {tail}" if tail else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **(getattr(record, "fields", {}) or {}),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


LEVELS = ("debug", "info", "warning", "error")
"""``daemon.log_level`` and ``eraserd run --log-level``: the least severity logged."""


def server_log_level(level: str) -> str:
    """uvicorn's level for eraserd's ``level``: its startup lines stay off at ``info`` (the
    banner says where eraserd listens); ``debug`` shows them and its access log."""
    return level if level in ("debug", "error") else "warning"


def access_log(level: str) -> bool:
    """uvicorn's access log (one line per HTTP request, path included) only at ``debug``."""
    return level == "debug"


def configure(as_json: bool, level: str = "info") -> None:
    """One stderr handler for eraserd's loggers and uvicorn's (``uvicorn.error``, and
    ``uvicorn.access`` when it is on); eraserd's log at ``level``. Pass uvicorn
    ``log_config=None``, ``log_level=server_log_level(level)`` and
    ``access_log=access_log(level)``, so that it keeps this handler."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if as_json else _Text())
    for name in ("eraserd", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("eraserd").setLevel(level.upper())
