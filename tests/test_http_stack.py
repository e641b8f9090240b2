"""The control API's HTTP stack: uvicorn parses requests with httptools' C parser on uvloop's
loop (both are eraserd dependencies), not with the pure-Python h11 on asyncio's loop, which
uvicorn falls back to without a word when either cannot be imported."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
import time

import pytest
import uvloop
from conftest import small_raw
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from eraserd import serving
from eraserd.config import Config, config_from_dict

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@pytest.fixture(autouse=True)
def _restore_uvicorn_log_levels():
    """``uvicorn.Config`` sets its loggers' levels process-wide: put them back."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, UVICORN_LOGGERS)]
    yield
    for lg, level in saved:
        lg.setLevel(level)


def daemon_cfg(tmp_path) -> Config:
    with socket.socket() as s:  # a free loopback port, as daemon_util.free_port picks one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return config_from_dict(small_raw(tmp_path / "state", tmp_path / "src", daemon={"port": port}))


async def whoami(scope, receive, send):
    """A stand-in for the API app: answers which event loop runs it."""
    assert scope["type"] == "http"
    loop = asyncio.get_running_loop()
    body = json.dumps({"loop": f"{type(loop).__module__}.{type(loop).__qualname__}"}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_the_daemon_config_picks_httptools_and_uvloop(tmp_path):
    config = serving.server_config(daemon_cfg(tmp_path), whoami, "info")
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    loop = config.get_loop_factory()()  # what Server.run hands asyncio.run
    try:
        assert isinstance(loop, uvloop.Loop), type(loop)
    finally:
        loop.close()


@pytest.fixture
def server(tmp_path):
    """The daemon's own server class and config, on its own socket, on loopback, serving
    ``whoami`` in a thread; stopped after the test."""
    cfg = daemon_cfg(tmp_path)
    sock = serving.listen(cfg)
    server = serving._server_class()(serving.server_config(cfg, whoami, "info"))
    bound: list[list[str]] = []
    server.banner = bound.append
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        assert bound == [[f"http://127.0.0.1:{cfg.daemon.port}"]]
        server.port = cfg.daemon.port
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def test_the_daemon_server_answers_over_httptools_on_uvloop(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"loop": "uvloop.Loop"}
        # The connection is kept alive: its protocol object is still the server's.
        (kind,) = {type(c) for c in list(server.server_state.connections)}
        assert issubclass(kind, HttpToolsProtocol)
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
        except OSError:  # closed by the server mid-send: read what it answered
            pass
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_a_request_head_over_the_cap_gets_431_and_a_closed_connection(server):
    """httptools buffers a head of any size; the daemon's protocol stops at MAX_HEAD_BYTES,
    whether the head comes at once or in pieces, and heads under the cap still work."""
    big = b"x" * (serving.MAX_HEAD_BYTES + 1)
    answer = raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + big + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert b"connection: close" in answer.lower()
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["status"] == 431

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        sent, refused = 0, b""
        while sent < 4 * serving.MAX_HEAD_BYTES and not refused:
            try:
                s.sendall(b"X-Many: " + b"y" * 1000 + b"\r\n")
            except OSError:
                break
            sent += 1010
            s.setblocking(False)
            try:
                refused = s.recv(65536)
            except BlockingIOError:
                pass
            s.setblocking(True)
        while not refused.endswith(b"}") and (chunk := s.recv(65536)):
            refused += chunk  # the answer to a send that the close cut short
        assert refused.startswith(b"HTTP/1.1 431 "), refused[:80]

    # Under the cap, twice on one kept-alive connection (the count restarts per request).
    ok = b"GET / HTTP/1.1\r\nHost: a\r\nX-Ok: " + b"z" * (serving.MAX_HEAD_BYTES // 2) + b"\r\n\r\n"
    answer = raw_exchange(server.port, ok + ok[:-2] + b"Connection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:200]


def _asgi_call(app, headers: list[tuple[bytes, bytes]], path: str = "/v1/status"):
    """One HTTP request through an ASGI app; (status, response headers, body, body read)."""
    sent: list[dict] = []
    reads: list[int] = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, bool(reads)


def test_bearer_auth_refuses_before_the_body_and_passes_the_token_holder():
    """The plain-ASGI token check: public paths pass without a token; a missing or wrong token
    gets its 401 (JSON, connection closed) without the app running or the body being read;
    the scheme is case-insensitive and the token may carry spaces around it."""
    from eraserd.httpguard import BearerAuth

    calls: list[str] = []

    async def inner(scope, receive, send):
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = BearerAuth(inner, token="s3cret", public={"/healthz"})
    assert _asgi_call(app, [], path="/healthz")[0] == 200
    for headers, message in (
        ([], "missing bearer token"),
        ([(b"authorization", b"Basic s3cret")], "missing bearer token"),
        ([(b"authorization", b"Bearer ")], "missing bearer token"),
        ([(b"authorization", b"Bearer s3cre")], "invalid bearer token"),
        ([(b"authorization", b"Bearer s3cret-and-more")], "invalid bearer token"),
    ):
        status, head, body, read = _asgi_call(app, headers)
        assert status == 401, headers
        assert head[b"connection"] == b"close"
        assert json.loads(body)["error"] == {"status": 401, "message": message + _hint(message)}
        assert not read, "the body was read before the token was checked"
    assert calls == ["/healthz"]
    for value in (b"Bearer s3cret", b"bearer s3cret", b"BEARER  s3cret "):
        assert _asgi_call(app, [(b"Authorization", value)])[0] == 200, value
    assert calls == ["/healthz"] + ["/v1/status"] * 3


def _hint(message: str) -> str:
    return " (Authorization: Bearer <token>)" if message.startswith("missing") else ""
