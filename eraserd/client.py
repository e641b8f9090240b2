"""A small HTTP client for the control API (stdlib only), used by ``eraserctl``."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    DaemonError,
    DaemonUnreachableError,
    EraserdError,
    InvalidInputError,
    UnauthorizedError,
    UnknownIdError,
    UnknownRequestError,
)


def deletions_path(state: str | None, limit: int | None, cursor: str | None) -> str:
    """The path of one page of ``GET /v1/deletions``."""
    params = {"state": state, "limit": limit, "cursor": cursor}
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return "/v1/deletions" + (f"?{query}" if query else "")


def base_url(host: str, port: int) -> str:
    """The URL a client uses for a bind address: wildcards mean this host; IPv6 bracketed."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True)
class Client:
    url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def locate(
        cls, config: Path | None, url: str | None, token: str | None, timeout: float = 30.0
    ) -> Client:
        """Flags win over the environment (ERASERD_URL, ERASERD_TOKEN), which wins over
        the config file (daemon.host/port and the token file)."""
        url = url or os.environ.get("ERASERD_URL")
        token = token or os.environ.get("ERASERD_TOKEN")
        if config is not None and (url is None or token is None):
            from .config import load_config

            cfg = load_config(config)
            url = url or base_url(cfg.daemon.host, cfg.daemon.port)
            if token is None:
                try:
                    token = cfg.token_path.read_text().strip()
                except OSError as exc:
                    raise UnauthorizedError(
                        f"cannot read token file {cfg.token_path}: {exc.strerror} "
                        "(has the daemon started once?)"
                    ) from None
        if url is None:
            raise InvalidInputError("no daemon address: pass --config, --url or set ERASERD_URL")
        if token is None:
            raise InvalidInputError("no API token: pass --config, --token or set ERASERD_TOKEN")
        return cls(url.rstrip("/"), token, timeout)

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> dict:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonUnreachableError(f"cannot reach eraserd at {self.url}: {reason}") from None
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise DaemonError(
                f"{self.url}{path}: the reply is not JSON (is this an eraserd daemon?)"
            ) from None

    def deletions(
        self, state: str | None, limit: int | None, follow: bool
    ) -> tuple[list[dict], bool]:
        """Requests, newest first: one page, or with ``follow`` every page (following
        ``next_cursor``); and whether more are left."""
        found: list[dict] = []
        cursor = None
        while True:
            page = self.call("GET", deletions_path(state, limit, cursor))
            found.extend(page["requests"])
            after = page.get("next_cursor")
            if after is not None and after == cursor:
                raise DaemonError("the daemon returned the same next_cursor twice")
            cursor = after
            if not (follow and cursor):
                return found, cursor is not None


def _http_error(exc: urllib.error.HTTPError) -> EraserdError:
    """The daemon's error reply as the exception whose exit code names it (see
    ``eraserd.errors.EXIT_CODES``); ``--json`` shows its error body as well."""
    try:
        payload = json.loads(exc.read() or b"{}")
    except ValueError:
        payload = {}
    err = payload.get("error", {}) if isinstance(payload, dict) else {}
    err = err if isinstance(err, dict) else {}
    message = err.get("message") or exc.reason
    if exc.code in (401, 403):
        return UnauthorizedError(
            f"unauthorized ({exc.code}): {message}; check --token, ERASERD_TOKEN or the token file",
            err,
        )
    if exc.code == 404:
        return UnknownRequestError(f"not found (404): {message}", payload=err)
    if exc.code == 422 and err.get("unknown"):
        return UnknownIdError(f"rejected ({exc.code}): {message}", err["unknown"], err)
    if 400 <= exc.code < 500:
        return InvalidInputError(f"rejected ({exc.code}): {message}", err)
    return DaemonError(f"daemon error ({exc.code}): {message}", err)
