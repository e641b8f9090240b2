"""``eraserd run``'s process: the control API's socket, the HTTP server and the signals,
around one ``Daemon`` (``daemon.py``), which wires everything else.

SIGTERM and SIGINT stop serving once open requests are answered, then the daemon finishes
the batch in progress (the queue keeps the rest). SIGHUP is logged and ignored: the config is
read once at start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import logs
from .config import Config
from .errors import EraserdError
from .locking import StateLock

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

log = logging.getLogger("eraserd.daemon")


def serve(
    cfg: Config,
    level: str,
    as_json: bool,
    banner: Callable[[int, list[str]], None] | None = None,
) -> None:
    """Build a model if none exists, then serve until SIGTERM or SIGINT. ``banner(version,
    addresses)`` is called once the server listens, with the addresses it bound."""
    from .api import create_app
    from .daemon import Daemon

    logs.configure(cfg.daemon.log_json or as_json, level)
    sock = listen(cfg)  # before the lock and any build: a taken port fails at once
    daemon = Daemon(cfg)
    server = _server_class()(server_config(cfg, create_app(daemon), level))

    def _graceful(signum, frame):
        server.should_exit = True

    def _hangup(signum, frame):
        log.warning(
            "SIGHUP ignored: the config is read once at start; restart eraserd to change it"
        )

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    signal.signal(signal.SIGHUP, _hangup)  # a closed terminal or a stray reload never kills it
    daemon.start()
    if banner is not None:
        server.banner = lambda addresses: banner(daemon.predictor.version, addresses)
    try:
        server.run(sockets=[sock])  # returns on SIGINT/SIGTERM once open requests are answered
    finally:
        daemon.stop()  # finishes the batch in progress; the queue keeps the rest


MAX_HEAD_BYTES = 64 * 1024
"""The largest request head (request line and headers) the API reads; a longer one is
answered 431 and the connection closed."""


def server_config(cfg: Config, app: FastAPI, level: str) -> uvicorn.Config:
    """The HTTP server's settings for ``app``: httptools' C parser, capped at
    ``MAX_HEAD_BYTES`` (``_capped_httptools``), and uvloop's loop (both dependencies of
    eraserd). Where they cannot be imported (uvloop has no Windows build) uvicorn falls back
    to pure-Python h11, which caps a request head itself, and asyncio's loop."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=cfg.daemon.host,
        port=cfg.daemon.port,
        http=_capped_httptools() or "h11",
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        loop="auto",
        log_config=None,  # uvicorn logs through eraserd's handler (``logs.configure``)
        log_level=logs.server_log_level(level),
        access_log=logs.access_log(level),
        lifespan="off",
    )


def _capped_httptools():
    """httptools' protocol with a cap on the request head, which httptools itself buffers at
    any size. Two counts: the head's parsed bytes (request target and headers), checked as
    each header arrives, and the bytes received while a head is incomplete (a single header
    that never ends). Past ``MAX_HEAD_BYTES`` the client gets 431 and a closed connection,
    and no route runs. None without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeadTooLarge(Exception):
        pass

    class CappedHttpToolsProtocol(HttpToolsProtocol):
        _received = 0
        _parsed = 0
        _in_head = True
        _too_large = False

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._received += len(data)
            super().data_received(data)
            if self._in_head and self._received > MAX_HEAD_BYTES and not self._too_large:
                self._too_large = True
                self.send_400_response("")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._parsed = 0

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._parsed += n
            if self._parsed > MAX_HEAD_BYTES:
                self._too_large = True
                raise HeadTooLarge  # stops the parser; uvicorn answers via send_400_response

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._received = True, 0

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:
                return super().send_400_response(msg)
            if self.transport.is_closing():
                return None
            msg = f"request head exceeds {MAX_HEAD_BYTES} bytes"
            self.logger.warning(msg)
            body = json.dumps({"error": {"status": 431, "message": msg}}).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
            self.transport.close()
            return None

    return CappedHttpToolsProtocol


def listen(cfg: Config) -> socket.socket:
    """The control API's socket, bound to ``daemon.host:daemon.port``. A port in use is one
    clear error (exit 6 when it is this state dir's own daemon, else 1)."""
    host, port = cfg.daemon.host, cfg.daemon.port
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise EraserdError(f"daemon.host {host!r}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            with StateLock(cfg.state_dir, "eraserd run"):  # StateLocked if it is our daemon
                pass
        assert exc.strerror is not None  # bind fails with an errno and its message
        raise EraserdError(
            f"cannot listen on {host}:{port}: {exc.strerror.lower()} "
            "(another process has it: stop it or set daemon.port)"
            if exc.errno == errno.EADDRINUSE
            else f"cannot listen on {host}:{port}: {exc.strerror.lower()} (daemon.host/daemon.port)"
        ) from None
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its shutdown, which would skip ``daemon.stop``;
        eraserd installs its own handlers instead."""

        banner = None
        """Called with the bound addresses once the server listens (the startup banner)."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.banner is not None:
                self.banner(
                    [_bound_url(s.getsockname()) for srv in self.servers for s in srv.sockets]
                )

    return Server


def _bound_url(sockname) -> str:
    """``http://HOST:PORT`` of a listening socket; a wildcard bind says so."""
    host, port = sockname[0], sockname[1]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return url + (" (every interface)" if host in ("0.0.0.0", "::") else "")
