"""Exceptions a user can act on, and the one exit-code table ``eraserd`` and ``eraserctl`` share.

The CLIs print ``str(exc)`` as one line on stderr (``eraserd: error: ...`` or
``eraserctl: ...``), or with ``--json`` the object ``error_json(exc)`` on stdout, and exit with
``exc.exit_code``. A code means the same thing in both commands; ``EXIT_CODES`` is the table
(README.md, "Exit codes", shows it, and ``tests/test_exit_codes.py`` checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

ERASERD, ERASERCTL = "eraserd", "eraserctl"
BOTH = (ERASERD, ERASERCTL)

OK = 0
ERROR = 1
USAGE = 2
DATA = 3
UNKNOWN_ID = 4
REGISTRY = 5
IN_USE = 6
WAIT_TIMEOUT = 7
UNREACHABLE = 8
UNAUTHORIZED = 9


@dataclass(frozen=True)
class ExitCode:
    code: int
    name: str
    """A short name, e.g. for scripts that want a constant (``EXIT_CODES[7].name``)."""
    commands: tuple[str, ...]
    """The commands that can exit with it."""
    types: tuple[str, ...]
    """The error ``type`` values (``--json``) reported with it; click adds its own for 2."""
    meaning: str


EXIT_CODES: dict[int, ExitCode] = {
    e.code: e
    for e in (
        ExitCode(OK, "ok", BOTH, (), "Success."),
        ExitCode(
            ERROR,
            "error",
            BOTH,
            ("EraserdError", "DaemonError", "RequestFailedError"),
            "A general error, or a check that found problems (verify, audit verify), "
            "or a request that failed (eraserctl --wait), or a daemon-side error (HTTP 5xx).",
        ),
        ExitCode(
            USAGE,
            "usage",
            BOTH,
            ("ConfigError", "InvalidInputError"),
            "A usage error or invalid input: a bad or missing option, an invalid config, "
            "or a request the daemon rejected (HTTP 4xx other than 401, 403 and 404).",
        ),
        ExitCode(
            DATA, "data", (ERASERD,), ("DataError",), "Data could not be ingested or removed."
        ),
        ExitCode(
            UNKNOWN_ID,
            "unknown-id",
            BOTH,
            ("UnknownIdError", "UnknownRequestError"),
            "Unknown or already forgotten ids, or an unknown request id: nothing was changed.",
        ),
        ExitCode(
            REGISTRY,
            "registry",
            (ERASERD,),
            ("RegistryError", "CorruptBlobError"),
            "No model yet, or the registry is missing, corrupt or inconsistent.",
        ),
        ExitCode(
            IN_USE,
            "in-use",
            (ERASERD,),
            ("StateLocked",),
            "The state directory is in use by another eraserd process.",
        ),
        ExitCode(
            WAIT_TIMEOUT,
            "wait-timeout",
            (ERASERCTL,),
            ("WaitTimeoutError",),
            "--wait ran out of time; the request is still pending.",
        ),
        ExitCode(
            UNREACHABLE,
            "unreachable",
            (ERASERCTL,),
            ("DaemonUnreachableError",),
            "The daemon cannot be reached.",
        ),
        ExitCode(
            UNAUTHORIZED,
            "unauthorized",
            (ERASERCTL,),
            ("UnauthorizedError",),
            "The daemon refused the token (HTTP 401 or 403), or the token file cannot be read.",
        ),
    )
}


class EraserdError(Exception):
    """Base class for every error eraserd and eraserctl report to a user."""

    exit_code = ERROR

    def __init__(self, message: str = "", payload: dict | None = None):
        super().__init__(message)
        self.payload = dict(payload or {})
        """More fields for the ``--json`` error object (e.g. the daemon's error body)."""


def error_json(exc: BaseException) -> dict:
    """The ``--json`` form of an error: ``{"error", "type", "exit_code"}``, plus any payload
    and, for unknown ids, the ``unknown`` list."""
    code = getattr(exc, "exit_code", ERROR)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    unknown = getattr(exc, "unknown", None)
    return {
        **getattr(exc, "payload", {}),
        **({"unknown": list(unknown)} if unknown else {}),
        "error": message,
        "type": type(exc).__name__,
        "exit_code": int(code),
    }


class ConfigError(EraserdError):
    """The configuration file is missing, malformed or holds an invalid value."""

    exit_code = USAGE


class InvalidInputError(EraserdError):
    """A command line or request that cannot be carried out as given (eraserctl: also a
    request the daemon rejected with a 4xx other than 401, 403 and 404)."""

    exit_code = USAGE


class DataError(EraserdError):
    """Private data could not be ingested: nothing was written."""

    exit_code = DATA


class UnknownIdError(EraserdError):
    """A request named ids that are not in the live store: nothing was changed."""

    exit_code = UNKNOWN_ID

    def __init__(self, message: str, unknown: list[str] | None = None, payload: dict | None = None):
        super().__init__(message, payload)
        self.unknown = list(unknown or [])


class UnknownRequestError(UnknownIdError):
    """eraserctl: the daemon has no such request (HTTP 404)."""


class RegistryError(EraserdError):
    """The registry is missing, corrupt or inconsistent."""

    exit_code = REGISTRY


class CorruptBlobError(RegistryError):
    """A stored blob does not match its content hash."""


class DaemonError(EraserdError):
    """eraserctl: the daemon failed to answer (HTTP 5xx, or a reply that is not its JSON)."""


class RequestFailedError(EraserdError):
    """eraserctl ``--wait``: the request ended failed, not published."""


class WaitTimeoutError(EraserdError):
    """eraserctl ``--wait`` gave up: the request is still pending (not failed)."""

    exit_code = WAIT_TIMEOUT


class DaemonUnreachableError(EraserdError):
    """eraserctl: no connection to the daemon (refused, timed out, unresolvable)."""

    exit_code = UNREACHABLE


class UnauthorizedError(EraserdError):
    """eraserctl: the daemon refused the token (401/403), or the token file cannot be read."""

    exit_code = UNAUTHORIZED
