#!/usr/bin/env python3
"""Control-API benchmark: durable deletion submissions and status latency over loopback HTTP.

Runs the real ``eraserd run`` subprocess on the test suite's small config (240 real digits)
with a batch window so long that nothing retunes, and measures (a) POST /v1/deletions/s, one
distinct sample id each, acknowledged only after an fsync'd SQLite commit: sequential on one
keep-alive connection, then C threads with one keep-alive connection each (each phase on a
fresh daemon over an identical copy of the built state dir); (b) GET /v1/status and /healthz
latency on one keep-alive connection. Not a test: .venv/bin/python benchmarks/api_bench.py
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import N_DIGITS, digit_png  # noqa: E402
from daemon_util import BIN, DaemonProc, write_daemon_config  # noqa: E402


class BenchError(Exception):
    pass


def write_digits(root: Path) -> Path:
    """The digits_data fixture of tests/conftest.py: PNGs plus manifest.csv (3 per subject)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(N_DIGITS):
        rel = f"img/{i:04d}.png"
        (root / rel).write_bytes(digit_png(d.images[i]))
        rows.append((f"s{i:04d}", rel, str(int(d.target[i])), f"subj{i // 3:03d}"))
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("sample_id", "path", "label", "subject_id"), *rows])
    return root / "manifest.csv"


def fs_type(path: Path) -> str:
    """Filesystem type of the longest mount point holding ``path`` (fsync cost depends on it)."""
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    inside = [(m, t) for m, t in mounts if path == Path(m) or Path(m) in path.parents]
    return max(inside, key=lambda mt: len(mt[0]), default=("", "?"))[1]


@contextmanager
def daemon(config: Path, state: Path, pristine: Path):
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(pristine, state)
    d = DaemonProc(config)
    try:
        d.wait_ready(timeout=600)
        yield d
    finally:
        try:
            rc = d.stop()  # SIGTERM: graceful
        except Exception:
            d.kill()
            raise
        if rc != 0:
            raise BenchError(f"daemon exited with {rc} on SIGTERM:\n{d.log_text()[-2000:]}")


def connect(d: DaemonProc) -> http.client.HTTPConnection:
    host, port = d.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def call(conn, token: str, method: str, path: str, body=None, expect: int = 200):
    """One request; returns (seconds, parsed JSON body)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    t0 = time.perf_counter()
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status != expect or resp.getheader("connection", "").lower() == "close":
        raise BenchError(f"{method} {path}: HTTP {resp.status} {payload[:300]!r}")
    return elapsed, json.loads(payload)


def timed(conn, token: str, jobs: list[tuple]) -> list[float]:
    """Run requests on one connection; check the connection was kept alive throughout."""
    out = [call(conn, token, *jobs[0])[0]]
    sock = conn.sock
    out += [call(conn, token, *job)[0] for job in jobs[1:]]
    if conn.sock is not sock:
        raise BenchError("the server did not keep the connection alive")
    return out


def submissions(ids: list[str]) -> list[tuple]:
    return [("POST", "/v1/deletions", {"sample_ids": [s]}, 202) for s in ids]


def in_threads(work: Callable[[int], None], threads: int) -> float:
    """Run ``work(0)`` ... ``work(threads - 1)`` in threads released together; the wall
    seconds from their release to the last one's end. Re-raises the first error."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall


def concurrent(d: DaemonProc, ids: list[str], threads: int) -> tuple[float, list[float]]:
    conns = [connect(d) for _ in range(threads)]
    for c in conns:  # open every connection before the clock starts
        call(c, d.token, "GET", "/healthz")
    lat: list[list[float]] = [[] for _ in range(threads)]

    def work(i: int) -> None:
        lat[i] = timed(conns[i], d.token, submissions(ids[i::threads]))

    try:
        wall = in_threads(work, threads)
    finally:
        for c in conns:
            c.close()
    return wall, [x for part in lat for x in part]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help=f"submissions per phase (<= {N_DIGITS})")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads (phase 2)")
    ap.add_argument("--status-requests", type=int, default=500, help="GETs per endpoint")
    ap.add_argument("--dir", type=Path, help="parent of the temp dir (its fs decides fsync cost)")
    a = ap.parse_args()
    if not 1 <= a.n <= N_DIGITS or a.concurrency < 1 or a.status_requests < 1:
        ap.error(f"need 1 <= --n <= {N_DIGITS}, --concurrency >= 1, --status-requests >= 1")
    ids, threads = [f"s{i:04d}" for i in range(a.n)], min(a.concurrency, a.n)
    with tempfile.TemporaryDirectory(prefix="eraserd-bench-", dir=a.dir) as tmp:
        root = Path(tmp)
        config = write_daemon_config(
            root, write_digits(root / "data"), window=1e9, max_batch_samples=100_000
        )
        state, pristine = root / "state", root / "pristine"
        t0 = time.perf_counter()
        build = [BIN / "eraserd", "build", "--json", "--config", config]
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
        build_s = time.perf_counter() - t0
        shutil.copytree(state, pristine)
        rows = []
        with daemon(config, state, pristine) as d:
            conn = connect(d)
            call(conn, d.token, "GET", "/healthz")  # connect before the clock starts
            t0 = time.perf_counter()
            lat = timed(conn, d.token, submissions(ids))
            rows.append(("POST /v1/deletions, sequential", time.perf_counter() - t0, lat))
        with daemon(config, state, pristine) as d:
            wall, lat = concurrent(d, ids, threads)
            rows.append((f"POST /v1/deletions, {threads} threads", wall, lat))
            conn = connect(d)
            status = call(conn, d.token, "GET", "/v1/status")[1]
            queued, batch = status["queue"]["requests"]["queued"], status["last_batch"]
            if queued != a.n or batch is not None:
                raise BenchError(f"expected {a.n} queued and no batch, got {queued} and {batch}")
            for path in ("/v1/status", "/healthz"):
                timed(conn, d.token, [("GET", path)] * 20)  # warm-up
                t0 = time.perf_counter()
                lat = timed(conn, d.token, [("GET", path)] * a.status_requests)
                rows.append((f"GET {path} ({queued} queued)", time.perf_counter() - t0, lat))
        fs = fs_type(root)
    lines = [
        f"eraserd control API, loopback HTTP/1.1 keep-alive (http.client); state dir on {fs}; "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}; {platform.platform()}",
        f"daemon: small 240-digit config, model built beforehand ({build_s:.1f}s), batch window "
        "1e9 s (no retuning); each POST names 1 distinct sample id; 202 = committed + fsync'd",
        "",
        f"{'measurement':<40}{'requests':>9}{'wall s':>9}{'req/s':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for name, wall, lat in rows:
        lines.append(
            f"{name:<40}{len(lat):>9}{wall:>9.3f}{len(lat) / wall:>9.1f}"
            f"{pct(lat, 50):>9.2f}{pct(lat, 99):>9.2f}{max(lat) * 1000:>9.2f}"
        )
    (_, sw, sl), (_, cw, cl), (_, _, st), (_, _, hz) = rows
    ratio = (len(cl) / cw) / (len(sl) / sw)
    lines += [
        "",
        f"concurrent/sequential submission throughput ({threads} threads): {ratio:.2f}x",
        f"status p99/p50: {pct(st, 99) / pct(st, 50):.2f}; healthz p99/p50: "
        f"{pct(hz, 99) / pct(hz, 50):.2f}; status p50 / healthz p50: "
        f"{pct(st, 50) / pct(hz, 50):.2f}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
