"""``eraserd run``'s process: the control API's socket, the HTTP server and the signals,
around one ``Daemon`` (``daemon.py``), which wires everything else.

SIGTERM and SIGINT stop serving once open requests are answered, then the daemon finishes
the batch in progress (the queue keeps the rest). SIGHUP is logged and ignored: the config is
read once at start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Callable

from . import logs
from .config import Config
from .errors import EraserdError
from .locking import StateLock

log = logging.getLogger("eraserd.daemon")


def serve(
    cfg: Config,
    level: str,
    as_json: bool,
    banner: Callable[[int, list[str]], None] | None = None,
) -> None:
    """Build a model if none exists, then serve until SIGTERM or SIGINT. ``banner(version,
    addresses)`` is called once the server listens, with the addresses it bound."""
    import uvicorn

    from .api import create_app
    from .daemon import Daemon

    logs.configure(cfg.daemon.log_json or as_json, level)
    sock = listen(cfg)  # before the lock and any build: a taken port fails at once
    daemon = Daemon(cfg)
    server = _server_class()(
        uvicorn.Config(
            create_app(daemon),
            host=cfg.daemon.host,
            port=cfg.daemon.port,
            log_config=None,  # uvicorn logs through eraserd's handler (``logs.configure``)
            log_level=logs.server_log_level(level),
            access_log=logs.access_log(level),
            lifespan="off",
        )
    )

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
