"""Hostile input to the HTTP API (issue 11, item 4): each red-team finding, against one real
daemon over loopback and real sockets. Image bombs are refused from their header, oversized
and slow bodies get 413/408 and a closed connection, ids must be printable, a non-loopback
bind needs ``daemon.allow_remote``, a full disk is a 503 with ``Retry-After``, and the OpenAPI
schema documents what each route returns."""

from __future__ import annotations

import errno
import itertools
import json
import re
import select
import socket
import sqlite3
import struct
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from daemon_util import DaemonProc, built_state, ctl, prebuilt_config

from eraserd.config import config_from_dict
from eraserd.data.images import ImageDecodeError, ImageTooLarge, canonical_view
from eraserd.errors import ConfigError, EraserdError
from eraserd.httpguard import disk_full
from eraserd.idfile import read_ids

BODY_TIMEOUT = 2.0
BODY_LIMIT = 64 * 1024
SLACK = 20.0
"""How long past its deadline the test waits for the server before calling it a failure."""

BANNER = re.compile(r"eraserd serving version 1 on (http://\S+)( \(every interface\))? \(token")

UNPRINTABLE = [
    *"\u202a\u202b\u202c\u202d\u202e",  # bidi embeddings and overrides
    *"\u2066\u2067\u2068\u2069",  # bidi isolates
    *"\u200e\u200f\u061c",  # bidi marks
    *"\u2028\u2029\u0085",  # line and paragraph separators, NEL
    *"\x00\x1b\x7f",  # C0 controls, DEL
]


def png(width: int, height: int, bits: int = 8) -> bytes:
    """A valid greyscale PNG of zeros: a 13000x13000 1-bit one is 20 KB, a 50000x1 128 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\0" + bytes((width * bits + 7) // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


# ---- pure validation: no daemon --------------------------------------------------------------


def daemon_cfg(**daemon):
    return config_from_dict({"daemon": daemon}).daemon


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "eraserd.example.com"])
def test_a_remote_bind_needs_allow_remote(host):
    with pytest.raises(ConfigError) as exc:
        daemon_cfg(host=host)
    assert "daemon.host" in str(exc.value) and "daemon.allow_remote" in str(exc.value)
    assert daemon_cfg(host=host, allow_remote=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost", "LOCALHOST"])
def test_loopback_binds_need_nothing(host):
    assert daemon_cfg(host=host).allow_remote is False


def test_the_docker_config_allows_its_wildcard_bind():
    import yaml

    raw = yaml.safe_load((Path(__file__).parents[1] / "deploy/docker/config.yaml").read_text())
    cfg = config_from_dict(raw).daemon
    assert cfg.host == "0.0.0.0" and cfg.allow_remote


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("body_timeout_s", 0, "daemon.body_timeout_s: must be a positive"),
        ("body_timeout_s", float("inf"), "daemon.body_timeout_s: must be a positive"),
        ("max_image_pixels", 0, "daemon.max_image_pixels: must be in [1, "),
        ("max_image_pixels", 10**9, "daemon.max_image_pixels: must be in [1, "),
        ("max_image_aspect", 0.5, "daemon.max_image_aspect: must be a finite number"),
        ("allow_remote", "yes", "daemon.allow_remote: expected a boolean"),
    ],
)
def test_new_daemon_keys_are_validated(key, value, message):
    with pytest.raises(ConfigError) as exc:
        daemon_cfg(**{key: value})
    assert message in str(exc.value)


def test_new_daemon_key_defaults():
    cfg = daemon_cfg()
    assert (cfg.max_image_pixels, cfg.max_image_aspect) == (4096 * 4096, 16.0)
    assert (cfg.body_timeout_s, cfg.allow_remote) == (30.0, False)


def test_a_decompression_bomb_is_an_error_not_a_warning():
    """Over Pillow's bomb limit, ingest and ``eraserd predict`` refuse from the header too:
    Pillow would only warn (up to twice its limit), then decode 169 million pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping would fail the test, fast
        for bomb in (png(13000, 13000, 1), png(20000, 20000, 1)):
            with pytest.raises(ImageDecodeError, match="decompression-bomb|decompression bomb"):
                canonical_view(bomb, 32)
    assert not issubclass(ImageTooLarge, Warning)


def test_disk_full_errors_are_recognised():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("ch", UNPRINTABLE + ["\ufeff", "\u00a0"])
def test_id_files_refuse_unprintable_ids_naming_the_line(tmp_path, ch):
    path = tmp_path / "ids.txt"
    path.write_text(f"# ids\ns0001\nsample:ab{ch}cd\n", encoding="utf-8")
    with pytest.raises(EraserdError) as exc:
        read_ids(path)
    message = str(exc.value)
    assert f"{path} line 3:" in message and f"U+{ord(ch):04X}" in message
    assert ch not in message


def test_id_files_still_read_good_ids(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes("\ufeff# c\r\ns0001\r\nsample: s0002 \n\nsubject:subj003\n".encode())
    assert read_ids(path) == (["s0001", "s0002"], ["subj003"])
    path.write_bytes(b"s0001\n\xff\xfe\n")
    with pytest.raises(EraserdError, match="line 2: not UTF-8"):
        read_ids(path)
    path.write_text("subject:\n")
    with pytest.raises(EraserdError, match="line 1: the id must not be empty"):
        read_ids(path)


# ---- one real daemon for the rest ------------------------------------------------------------


@pytest.fixture(scope="module")
def disk_full_flag(tmp_path_factory) -> Path:
    """While this file exists, the daemon's ``submit`` fault point raises ENOSPC."""
    return tmp_path_factory.mktemp("hostile-fault") / "disk-full"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, digits_data, lite0_32, disk_full_flag):
    root = tmp_path_factory.mktemp("hostile")
    config = prebuilt_config(
        root,
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
        window=3600.0,  # nothing retunes: batches start on an explicit flush only
        port=0,  # the OS picks; the banner must say which
        max_body_bytes=BODY_LIMIT,
        body_timeout_s=BODY_TIMEOUT,
    )
    d = DaemonProc(config, ERASERD_FAULT="submit", ERASERD_FAULT_WHILE=str(disk_full_flag))
    try:
        found = d.wait_for(lambda: BANNER.search(d.log_text()), what="the banner")
        d.url = found.group(1)
        d.wait_ready()
    except BaseException:
        d.stop()
        raise
    yield d
    d.stop()


def queued(d: DaemonProc) -> dict:
    return d.call("GET", "/v1/status")[1]["queue"]["requests"]


def port_of(d: DaemonProc) -> int:
    return int(d.url.rsplit(":", 1)[1])


class Exchange:
    """One raw HTTP/1.1 connection: the request head, then body parts sent ``gap`` apart
    until the server answers; records the answer and whether the server closed."""

    def __init__(self, d: DaemonProc, head: str, parts: Iterator[bytes]):
        self.sock = socket.create_connection(("127.0.0.1", port_of(d)), timeout=10)
        self.opened = time.monotonic()
        """Just before the head was sent: the server's body clock cannot start earlier. (Read
        after ``sendall``, it could: the server may get the head and start its clock before
        this thread runs again.)"""
        self.sock.sendall(head.replace("{token}", d.token).encode())
        self.parts, self.received, self.closed = parts, b"", False
        self.closed_at: float | None = None

    def send_next(self) -> bool:
        """Send the next part; False once there is nothing more to send."""
        if self.received or self.closed:
            return False  # the server answered: stop sending
        part = next(self.parts, None)
        if part is None:
            return False
        try:
            self.sock.sendall(part)
        except OSError:  # closed by the server mid-body: read what it answered
            self.parts = iter(())
        return True

    def read(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        self.received += chunk
        self.closed = not chunk
        if self.closed:
            self.closed_at = time.monotonic()

    def response(self) -> tuple[int, dict[str, str], dict]:
        head, _, body = self.received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers, json.loads(body)


def run_exchanges(exchanges: list[Exchange], gap: float, give_up_s: float) -> float:
    """Drive every connection until each is closed by the server; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < give_up_s:
        open_ = [x for x in exchanges if not x.closed]
        if not open_:
            break
        sending = [x.send_next() for x in open_]
        until = time.monotonic() + (gap if any(sending) else 0.5)
        while socks := [x.sock for x in open_ if not x.closed]:
            ready, _, _ = select.select(socks, [], [], max(0.0, until - time.monotonic()))
            for x in open_:
                if x.sock in ready:
                    x.read()
            if not ready or time.monotonic() >= until:
                break
    for x in exchanges:
        x.sock.close()
    return time.monotonic() - start


def head(method: str, path: str, *extra: str, token: bool = True) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += ["Authorization: Bearer {token}"] if token else []
    return "\r\n".join([*lines, *extra]) + "\r\n\r\n"


@pytest.mark.slow
def test_the_banner_prints_the_bound_address(daemon):
    """Configured with port 0: only the bound socket knows the port (the test found the
    daemon through its banner); the old banner printed the configured ``:0``."""
    assert port_of(daemon) > 0
    assert daemon.url.startswith("http://127.0.0.1:")
    assert daemon.call("GET", "/healthz", token=None)[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/predict", "/v1/deletions"])
def test_a_chunked_body_over_the_limit_gets_413(daemon, path):
    before = queued(daemon)
    chunk = b"x" * 8192
    parts = itertools.repeat(b"%x\r\n%s\r\n" % (len(chunk), chunk), BODY_LIMIT // len(chunk) + 2)
    x = Exchange(
        daemon,
        head("POST", path, "Content-Type: application/octet-stream", "Transfer-Encoding: chunked"),
        itertools.chain(parts, [b"0\r\n\r\n"]),
    )
    run_exchanges([x], gap=0.0, give_up_s=BODY_TIMEOUT + SLACK)
    code, headers, body = x.response()
    assert code == 413, body
    assert body["error"]["status"] == 413
    assert f"request body exceeds {BODY_LIMIT} bytes" in body["error"]["message"]
    assert x.closed and headers.get("connection") == "close"
    assert queued(daemon) == before


@pytest.mark.slow
def test_a_declared_length_over_the_limit_gets_413(daemon):
    code, r = daemon.call(
        "POST",
        "/v1/predict",
        data=b"\0" * (BODY_LIMIT + 1),
        headers={"Content-Type": "image/png"},
    )
    assert code == 413 and "daemon.max_body_bytes" in r["error"]["message"]


@pytest.mark.slow
def test_slow_and_stalled_bodies_get_408_and_are_closed(daemon):
    """Trickling clients (one byte per 0.2 s of a 10 KB body, plain and chunked) and one
    that sends its headers and then nothing: each gets 408 and a closed connection once
    ``body_timeout_s`` passes (they stayed open for as long as they kept sending), and the
    daemon keeps serving meanwhile."""
    deletions = head("POST", "/v1/deletions", "Content-Type: application/json")
    trickle = [
        Exchange(daemon, deletions.replace("\r\n\r\n", "\r\nContent-Length: 10000\r\n\r\n"), p)
        for p in (itertools.repeat(b" ", 10_000) for _ in range(30))
    ]
    chunked = [
        Exchange(
            daemon,
            head("POST", "/v1/predict", "Transfer-Encoding: chunked"),
            itertools.repeat(b"1\r\nx\r\n"),
        )
        for _ in range(5)
    ]
    stalled = Exchange(
        daemon, deletions.replace("\r\n\r\n", "\r\nContent-Length: 50\r\n\r\n"), iter(())
    )
    assert daemon.call("GET", "/v1/status")[0] == 200  # not blocked by the slow bodies
    took = run_exchanges([*trickle, *chunked, stalled], gap=0.2, give_up_s=BODY_TIMEOUT + SLACK)
    for x in [*trickle, *chunked, stalled]:
        assert x.closed and x.closed_at, f"connection still open after {took:.1f}s"
        code, headers, body = x.response()
        assert code == 408, body
        assert body["error"]["status"] == 408
        assert "daemon.body_timeout_s" in body["error"]["message"]
        assert headers.get("connection") == "close"
        # Each stayed open for the whole timeout after its head was sent.
        assert x.closed_at - x.opened >= BODY_TIMEOUT
    assert daemon.call("GET", "/healthz", token=None)[0] == 200


@pytest.mark.slow
def test_a_client_without_the_token_cannot_trickle_a_body_either(daemon):
    """Refused (401) before its body is read, the connection is closed at once: it was left
    open for as long as the client kept sending."""
    anonymous = [
        Exchange(
            daemon,
            head("POST", "/v1/deletions", "Content-Length: 10000", token=False),
            itertools.repeat(b" ", 10_000),
        )
        for _ in range(10)
    ]
    took = run_exchanges(anonymous, gap=0.2, give_up_s=BODY_TIMEOUT + SLACK)
    for x in anonymous:
        assert x.closed, f"connection still open after {took:.1f}s"
        code, headers, body = x.response()
        assert code == 401 and body["error"]["status"] == 401
        assert headers.get("connection") == "close"


def peak_rss_kb(d: DaemonProc) -> int:
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


@pytest.mark.slow
@pytest.mark.parametrize(
    "size, limit",
    [
        ((13000, 13000, 1), "daemon.max_image_pixels"),  # the red team's 20 KB PNG
        ((50000, 1, 8), "daemon.max_image_aspect"),  # the red team's 128-byte PNG
        ((4097, 4096, 1), "daemon.max_image_pixels"),  # one column over the default
        ((17, 1, 8), "daemon.max_image_aspect"),
        ((1, 17, 8), "daemon.max_image_aspect"),
    ],
)
def test_image_bombs_are_refused_from_the_header(daemon, size, limit):
    data = png(*size)
    peak = peak_rss_kb(daemon)
    started = time.monotonic()
    code, r = daemon.call("POST", "/v1/predict", data=data, headers={"Content-Type": "image/png"})
    took = time.monotonic() - started
    assert code == 413, r
    assert r["error"]["status"] == 413 and r["error"]["limit"] == limit
    assert limit in r["error"]["message"]
    assert took < 10, f"{took:.1f}s: the image was decoded"
    assert peak_rss_kb(daemon) - peak < 100_000, "the image was decoded (peak RSS grew)"


@pytest.mark.slow
def test_a_multipart_bomb_is_refused_too(daemon):
    boundary = "hostileboundary"
    data = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png(50000, 1)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    code, r = daemon.call(
        "POST",
        "/v1/predict",
        data=data,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert code == 413 and r["error"]["limit"] == "daemon.max_image_aspect", r


@pytest.mark.slow
def test_images_within_the_limits_are_predicted(daemon, digits_data):
    for data in (png(16, 1), png(1, 16), (digits_data / "img/0000.png").read_bytes()):
        code, r = daemon.call(
            "POST", "/v1/predict", data=data, headers={"Content-Type": "image/png"}
        )
        assert code == 200 and r["version"] == 1, r
    code, r = daemon.call(
        "POST", "/v1/predict", data=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    )
    assert code == 415 and "accepted: PNG, JPEG" in r["error"]["message"], r


@pytest.mark.slow
def test_an_empty_idempotency_key_is_refused(daemon):
    before = queued(daemon)
    for key, why in (("", "must not be empty"), ("k\u202e1", "U+202E"), ("k" * 201, "200")):
        code, r = daemon.call(
            "POST", "/v1/deletions", {"sample_ids": ["s0001"], "idempotency_key": key}
        )
        assert code == 422, r
        assert (
            r["error"]["message"].startswith("idempotency_key: ") and why in r["error"]["message"]
        )
    assert queued(daemon) == before


@pytest.mark.slow
def test_unprintable_ids_are_refused_and_never_echoed(daemon):
    before = queued(daemon)
    for field in ("sample_ids", "subject_ids"):
        for ch in UNPRINTABLE:
            code, r = daemon.call("POST", "/v1/deletions", {field: ["s0001", f"s00{ch}02"]})
            assert code == 422, (field, ch, r)
            message = r["error"]["message"]
            assert message.startswith(f"{field}.1: must be printable text")
            assert f"U+{ord(ch):04X}" in message
            assert ch not in json.dumps(r, ensure_ascii=False)
    # A lone surrogate (valid JSON, not valid text) is refused too, not a 500.
    code, r = daemon.call(
        "POST",
        "/v1/deletions",
        data=b'{"sample_ids": ["s\\ud800"]}',
        headers={"Content-Type": "application/json"},
    )
    assert code == 422 and "U+D800" in r["error"]["message"], r
    assert queued(daemon) == before


@pytest.mark.slow
def test_eraserctl_refuses_an_id_file_with_a_bidi_id(daemon, tmp_path):
    before = queued(daemon)
    ids = tmp_path / "ids.txt"
    ids.write_text("s0001\nsubject:subj\u202e001\n", encoding="utf-8")
    out = ctl(
        "submit-deletion",
        "--url",
        daemon.url,
        "--token",
        daemon.token,
        "--from-file",
        ids,
        check=False,
    )
    assert out.returncode != 0
    assert f"{ids} line 2: the id must be printable text: holds U+202E" in out.stderr
    assert queued(daemon) == before


def submit_raw(d: DaemonProc, body: dict) -> tuple[int, Message, dict]:
    req = urllib.request.Request(
        d.url + "/v1/deletions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


@pytest.mark.slow
def test_a_full_disk_is_a_503_and_the_same_submission_succeeds_after(daemon, disk_full_flag):
    body = {"sample_ids": ["s0031"], "subject_ids": ["subj040"], "idempotency_key": "disk-1"}
    before = queued(daemon)
    disk_full_flag.touch()
    try:
        for _ in range(2):
            code, headers, r = submit_raw(daemon, body)
            assert code == 503, r
            assert r["error"]["status"] == 503 and "disk is full" in r["error"]["message"]
            assert int(headers["Retry-After"]) > 0
            assert headers["Content-Type"] == "application/json"
        assert queued(daemon) == before  # nothing half-written
    finally:
        disk_full_flag.unlink()
    code, _, first = submit_raw(daemon, body)
    assert code == 202, first
    code, _, again = submit_raw(daemon, body)
    assert code == 200 and again["id"] == first["id"]
    assert daemon.call("GET", f"/v1/deletions/{first['id']}")[1]["state"] == "queued"


EXPECTED_CODES = {
    ("get", "/healthz"): {200, 408, 413, 500},
    ("post", "/v1/deletions"): {200, 202, 400, 401, 408, 409, 413, 422, 500, 503},
    ("get", "/v1/deletions/{request_id}"): {200, 401, 404, 408, 413, 422, 500},
    ("get", "/v1/deletions/{request_id}/certificate"): {200, 401, 404, 408, 413, 422, 500},
    ("get", "/v1/status"): {200, 401, 408, 413, 500},
    ("post", "/v1/flush"): {202, 401, 408, 413, 500},
    ("post", "/v1/predict"): {200, 400, 401, 408, 413, 415, 422, 500, 503},
}
PUBLIC_ROUTES = {"/healthz"}


@pytest.mark.slow
def test_openapi_lists_every_status_code_and_the_predict_body(daemon):
    code, schema = daemon.call("GET", "/openapi.json", token=None)
    assert code == 200
    routes = {(m, p): op for p, ops in schema["paths"].items() for m, op in ops.items()}
    assert set(EXPECTED_CODES) <= set(routes)
    for route, op in routes.items():
        listed = {int(c) for c in op["responses"]}
        # A route not listed above: at least what every route can answer.
        baseline = {408, 413, 500} | (set() if route[1] in PUBLIC_ROUTES else {401})
        codes = EXPECTED_CODES.get(route, baseline)
        if route in EXPECTED_CODES:
            assert listed == codes, (route, sorted(listed ^ codes))
        else:
            assert codes <= listed, (route, sorted(codes - listed))
        for c in listed - {200, 202}:
            content = op["responses"][str(c)]["content"]["application/json"]
            assert content["schema"]["$ref"].endswith("/ErrorOut"), (route, c)
    assert "Retry-After" in routes[("post", "/v1/deletions")]["responses"]["503"]["headers"]
    body = routes[("post", "/v1/predict")]["requestBody"]
    assert body["required"] and {"image/png", "image/jpeg"} <= set(body["content"])


@pytest.mark.slow
def test_the_log_holds_no_traceback_and_no_hostile_id(daemon):
    """Runs last: everything above refused cleanly, and logged no raw id."""
    log = daemon.log_text()
    assert "Traceback" not in log
    for ch in UNPRINTABLE:
        if ch not in "\x00\x1b\x7f\u0085":
            assert f"s00{ch}02" not in log
    assert "subj\u202e001" not in log
