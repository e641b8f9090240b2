"""A small HTTP client for the control API (stdlib only), used by ``eraserctl``."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class ClientError(Exception):
    """One clear line for the user, plus the exit code that names the kind of failure."""

    def __init__(self, message: str, exit_code: int = 1, payload: dict | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.payload = payload or {}


UNREACHABLE, UNAUTHORIZED, NOT_FOUND, INVALID = 3, 4, 5, 2


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
                    raise ClientError(
                        f"cannot read token file {cfg.token_path}: {exc.strerror} "
                        "(has the daemon started once?)",
                        UNAUTHORIZED,
                    ) from None
        if url is None:
            raise ClientError("no daemon address: pass --config, --url or set ERASERD_URL", INVALID)
        if token is None:
            raise ClientError("no API token: pass --config, --token or set ERASERD_TOKEN", INVALID)
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
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(
                f"cannot reach eraserd at {self.url}: {reason}", UNREACHABLE
            ) from None


def _http_error(exc: urllib.error.HTTPError) -> ClientError:
    try:
        payload = json.loads(exc.read() or b"{}")
    except ValueError:
        payload = {}
    err = payload.get("error", {}) if isinstance(payload, dict) else {}
    message = err.get("message") or exc.reason
    if exc.code == 401:
        return ClientError(
            f"unauthorized (401): {message}; check --token, ERASERD_TOKEN or the token file",
            UNAUTHORIZED,
            err,
        )
    if exc.code == 404:
        return ClientError(f"not found (404): {message}", NOT_FOUND, err)
    if 400 <= exc.code < 500:
        return ClientError(f"rejected ({exc.code}): {message}", INVALID, err)
    return ClientError(f"daemon error ({exc.code}): {message}", 1, err)
