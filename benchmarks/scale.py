#!/usr/bin/env python3
"""How eraserd's costs grow with the data and with the queue.

Queue section (``--queue``): the real ``eraserd run`` subprocess on the test suite's small
config (240 real digits) with a batch window so long that nothing retunes. Before each level
the daemon is stopped and the queue is filled to K pending requests, each naming one
distinct sample (written through ``Queue.admit``, the daemon's own path, with fsync off for
the fill only). At each level it measures, over loopback HTTP keep-alive:

- ``POST /v1/deletions``: sequential, then 4 threads, each 202 acknowledged only after an
  fsync'd commit (``synchronous=FULL``);
- ``GET /v1/status`` and ``GET /metrics``: p50 and p99 latency.

It prints one row per level and the growth from the first level to the last.

    .venv/bin/python benchmarks/scale.py --queue [--pending 0 50000 100000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from api_bench import (  # noqa: E402  (the same HTTP helpers as the control-API benchmark)
    BenchError,
    call,
    concurrent,
    connect,
    fs_type,
    pct,
    timed,
    write_digits,
)
from daemon_util import BIN, DaemonProc, write_daemon_config  # noqa: E402


def scrape(conn, token: str, n: int) -> list[float]:
    """GET /metrics ``n`` times on one connection (text, not JSON); seconds each."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        out.append(time.perf_counter() - t0)
        if resp.status != 200 or b"eraserd_" not in body:
            raise BenchError(f"GET /metrics: HTTP {resp.status} {body[:200]!r}")
    return out


def fill(state: Path, upto: int) -> int:
    """Admit pending requests into the stopped daemon's queue until it holds ``upto``."""
    from eraserd.data.store import Store
    from eraserd.queue import Queue

    with Store(state, readonly=True) as store:
        secret = store.secret
    q = Queue(state / "queue.db", secret)
    try:
        q._db.execute("PRAGMA synchronous=OFF")  # the fill only: the measured path is FULL
        have = q.counts()["queued"]
        now = time.time()
        for i in range(have, upto):
            sid = f"fill{i:07d}"  # ids the store does not hold: nothing will retune them
            q.admit(
                [sid],
                [],
                matched=[sid],
                forgotten=[],
                deadline=None,
                default_deadline_s=30 * 86400.0,
                now=now + i * 1e-6,
            )
        return q.counts()["queued"]
    finally:
        q.close()


def queue_section(levels: list[int], n: int, gets: int, root: Path) -> list[str]:
    config = write_daemon_config(
        root, write_digits(root / "data"), window=1e9, max_batch_samples=10**9
    )
    state = root / "state"
    subprocess.run(
        [BIN / "eraserd", "build", "--json", "--config", config],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows = []
    for k, level in enumerate(levels):
        t0 = time.perf_counter()
        held = fill(state, level)
        fill_s = time.perf_counter() - t0
        d = DaemonProc(config)
        try:
            d.wait_ready(timeout=600)
            conn = connect(d)
            call(conn, d.token, "GET", "/healthz")
            ids = [f"s{(k * 2 * n + i) % 240:04d}" for i in range(2 * n)]
            t0 = time.perf_counter()
            seq = timed(
                conn,
                d.token,
                [("POST", "/v1/deletions", {"sample_ids": [s]}, 202) for s in ids[:n]],
            )
            seq_rate = n / (time.perf_counter() - t0)
            wall, _ = concurrent(d, ids[n:], 4)
            par_rate = n / wall
            timed(conn, d.token, [("GET", "/v1/status")] * 10)  # warm-up
            scrape(conn, d.token, 10)
            lat = {
                "/v1/status": timed(conn, d.token, [("GET", "/v1/status")] * gets),
                "/metrics": scrape(conn, d.token, gets),
            }
            status = call(conn, d.token, "GET", "/v1/status")[1]
            queued = status["queue"]["requests"]["queued"]
            if queued != held + 2 * n:
                raise BenchError(f"expected {held + 2 * n} queued requests, found {queued}")
            conn.close()
        finally:
            rc = d.stop()
        if rc != 0:
            raise BenchError(f"daemon exited with {rc}:\n{d.log_text()[-2000:]}")
        rows.append((held, queued, fill_s, seq_rate, par_rate, lat, seq))
    lines = [
        f"queue: state dir on {fs_type(root)}; {n} submissions per phase, {gets} GETs each",
        f"{'pending':>9}{'fill s':>8}{'POST/s seq':>12}{'POST/s 4thr':>13}"
        f"{'status p50':>12}{'p99 ms':>8}{'metrics p50':>13}{'p99 ms':>8}",
    ]
    for held, _queued, fill_s, seq_rate, par_rate, lat, _ in rows:
        st, me = lat["/v1/status"], lat["/metrics"]
        lines.append(
            f"{held:>9}{fill_s:>8.1f}{seq_rate:>12.1f}{par_rate:>13.1f}"
            f"{pct(st, 50):>12.2f}{pct(st, 99):>8.2f}{pct(me, 50):>13.2f}{pct(me, 99):>8.2f}"
        )
    first, last = rows[0], rows[-1]
    lines.append(
        f"from {first[0]} to {last[0]} pending: POST/s seq x{last[3] / first[3]:.2f}, "
        f"status p99 x{pct(last[5]['/v1/status'], 99) / pct(first[5]['/v1/status'], 99):.2f}, "
        f"metrics p99 x{pct(last[5]['/metrics'], 99) / pct(first[5]['/metrics'], 99):.2f}"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queue", action="store_true", help="run the queue section")
    ap.add_argument("--pending", type=int, nargs="+", default=[0, 50_000, 100_000])
    ap.add_argument("--n", type=int, default=300, help="submissions per phase")
    ap.add_argument("--gets", type=int, default=300, help="GETs per endpoint and level")
    ap.add_argument("--dir", type=Path, help="parent of the temp dir (its fs decides fsync cost)")
    a = ap.parse_args()
    if not a.queue:
        ap.error("choose a section: --queue")
    if sorted(a.pending) != a.pending:
        ap.error("--pending levels must grow (the queue is filled, never emptied)")
    with tempfile.TemporaryDirectory(prefix="eraserd-scale-", dir=a.dir) as tmp:
        lines = queue_section(a.pending, a.n, a.gets, Path(tmp))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
