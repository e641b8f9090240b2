#!/usr/bin/env python3
"""How eraserd's costs grow with the data and with the queue.

Queue section (``--queue``): the real ``eraserd run`` subprocess on the test suite's small
config (240 real digits) with a batch window so long that nothing retunes. Before each level
the daemon is stopped and the queue is filled to K pending requests, each naming one
distinct sample (written through ``Queue.admit``, the daemon's own path, with fsync off for
the fill only). At each level it measures, over loopback HTTP keep-alive:

- ``POST /v1/deletions``: sequential, then 4 threads, each 202 acknowledged only after an
  fsync'd commit (``synchronous=FULL``); the median of ``--rounds`` rounds;
- ``GET /v1/status`` and ``GET /metrics``: p50 and p99 latency;

and, side by side in this process on a copy of the filled queue.db, ``Queue.admit`` from 4
threads with group commit on and off (``Queue(group_commit=...)``), alternated round by round:
the rates and their ratio. It prints one row per level and the growth from the first level
to the last.

Retrain section (``--retrain``): peak RSS of one cluster's retrain (EfficientNet-Lite0 at
64 px, one epoch of batch 32), each in a fresh process, for clusters of N generated
real-looking digits (``synthetic_digits.py``), two ways side by side: streamed (the worker
reads the store's object files into the one padded buffer, ``training/streaming.py``) and
in memory (decoded views stacked, then concatenated and padded: what the parent and its
worker held before). It prints the peak RSS over the process's RSS before reading any
image, per image, against the uint8 images' own size.

Data section (``--data``): for each N (2k and 20k; 100k with ``--full``) a folder of N
generated real-looking digits, each level in a fresh process with the local worker pool, and
bounded clusters (``max_cluster_share`` = CAP / N: the cheap-forgetting settings; the cap
holds on the clustering sample's estimate, so assigned points can overshoot it). It times
ingest, features, clustering, build, the forget of one training point outside the
clustering sample (the median of three, each from one of the clusters whose size is nearest
half the cap, split into the retrain job and the rest), and verify (up to 20k), and reports the
store's size and peak RSS (the process, and its largest worker), then the peak RSS of one
more forget in a fresh process (the process, and its worker: one retrain alone), then the
growth exponent of each from the first N to the last (t ~ N^k).

    .venv/bin/python benchmarks/scale.py --queue [--pending 0 50000 100000] [--n 1000] [--rounds 3]
    .venv/bin/python benchmarks/scale.py --retrain [--clusters 500 2000 8000]
    .venv/bin/python benchmarks/scale.py --data [--full] [--cap 100] [--verify-upto 20000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
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
    in_threads,
    pct,
    submissions,
    timed,
    write_digits,
)
from child import run_json  # noqa: E402
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


def admit_rate(queue_db: Path, grouped: bool, threads: int, n: int, scratch: Path) -> float:
    """Admissions per second of ``threads`` threads calling ``Queue.admit`` on a copy of
    ``queue_db`` (``synchronous=FULL``), with group commit on or off; ``n`` in all."""
    from eraserd.queue import Queue

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copyfile(queue_db, scratch / "queue.db")
    q = Queue(scratch / "queue.db", b"scale-bench-secret-0123456789abc", group_commit=grouped)

    def work(k: int) -> None:
        for i in range(k, n, threads):
            sid = f"s{i % 240:04d}"
            q.admit(
                [sid],
                [],
                matched=[sid],
                forgotten=[],
                deadline=None,
                default_deadline_s=86400.0,
                now=time.time(),
            )

    try:
        wall = in_threads(work, threads)
    finally:
        q.close()
    shutil.rmtree(scratch)
    return n / wall


def queue_section(levels: list[int], n: int, rounds: int, gets: int, root: Path) -> list[str]:
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
    sent = 0
    for level in levels:
        t0 = time.perf_counter()
        held = fill(state, level)
        fill_s = time.perf_counter() - t0
        inproc: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):  # alternated, so a drift in the machine's speed hits both
            for grouped in (True, False):
                rate = admit_rate(state / "queue.db", grouped, 4, n, root / "scratch")
                inproc[grouped].append(rate)
        d = DaemonProc(config)
        try:
            d.wait_ready(timeout=600)
            conn = connect(d)
            call(conn, d.token, "GET", "/healthz")
            seq_rates, par_rates = [], []
            for _ in range(rounds):
                ids = [f"s{(sent + i) % 240:04d}" for i in range(2 * n)]
                sent += 2 * n
                t0 = time.perf_counter()
                timed(conn, d.token, submissions(ids[:n]))
                seq_rates.append(n / (time.perf_counter() - t0))
                wall, _ = concurrent(d, ids[n:], 4)
                par_rates.append(n / wall)
            timed(conn, d.token, [("GET", "/v1/status")] * 10)  # warm-up
            scrape(conn, d.token, 10)
            lat = {
                "/v1/status": timed(conn, d.token, [("GET", "/v1/status")] * gets),
                "/metrics": scrape(conn, d.token, gets),
            }
            status = call(conn, d.token, "GET", "/v1/status")[1]
            queued = status["queue"]["requests"]["queued"]
            if queued != held + 2 * n * rounds:
                raise BenchError(f"expected {held + 2 * n * rounds} queued, found {queued}")
            conn.close()
        finally:
            rc = d.stop()
        if rc != 0:
            raise BenchError(f"daemon exited with {rc}:\n{d.log_text()[-2000:]}")
        rows.append(
            (
                held,
                fill_s,
                statistics.median(seq_rates),
                statistics.median(par_rates),
                lat,
                statistics.median(inproc[True]),
                statistics.median(inproc[False]),
            )
        )
    lines = [
        f"queue: state dir on {fs_type(root)}; HTTP: {n} submissions per phase, median of "
        f"{rounds} rounds; {gets} GETs each; in process: Queue.admit from 4 threads, {n} per "
        f"round, group commit on and off alternated, median of {rounds} rounds",
        f"{'pending':>9}{'fill s':>8}{'POST/s seq':>12}{'POST/s 4thr':>13}"
        f"{'status p50':>12}{'p99 ms':>8}{'metrics p50':>13}{'p99 ms':>8}"
        f"{'admit/s grouped':>17}{'single':>8}{'ratio':>7}",
    ]
    for held, fill_s, seq_rate, par_rate, lat, grouped, single in rows:
        st, me = lat["/v1/status"], lat["/metrics"]
        lines.append(
            f"{held:>9}{fill_s:>8.1f}{seq_rate:>12.1f}{par_rate:>13.1f}"
            f"{pct(st, 50):>12.2f}{pct(st, 99):>8.2f}{pct(me, 50):>13.2f}{pct(me, 99):>8.2f}"
            f"{grouped:>17.0f}{single:>8.0f}{grouped / single:>7.2f}"
        )
    first, last = rows[0], rows[-1]
    lines.append(
        f"from {first[0]} to {last[0]} pending: POST/s seq x{last[2] / first[2]:.2f}, "
        f"4thr x{last[3] / first[3]:.2f}, "
        f"status p99 x{pct(last[4]['/v1/status'], 99) / pct(first[4]['/v1/status'], 99):.2f}, "
        f"metrics p99 x{pct(last[4]['/metrics'], 99) / pct(first[4]['/metrics'], 99):.2f}"
    )
    return lines


RETRAIN_CHILD = r"""
import json, resource, sys
import torch
from eraserd.config import BackboneConfig, PromptConfig, RuntimeConfig, TrainingConfig
from eraserd.model.backbone import load_backbone
from eraserd.training.engine import PackImages, configure_torch, train_pack
from eraserd.training.streaming import ClusterSource, read_pack

way, objects, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
runtime = RuntimeConfig(device="cpu", num_threads=2)
configure_torch(runtime)
bb = load_backbone(BackboneConfig(image_size=64), runtime)
tcfg = TrainingConfig(epochs=1, batch_size=32, min_steps=1)
pcfg = PromptConfig(width=8)
keys = tuple(f"k{i:06d}" for i in range(n))
src = ClusterSource(objects, keys, tuple(i % 10 for i in range(n)), 1, 64)
small = ClusterSource(objects, keys[:32], tuple(i % 10 for i in range(32)), 1, 64)
pad = tcfg.augment.crop_padding
train_pack(bb, read_pack([small], pad), tcfg, pcfg, 10)  # warm-up: allocator, kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if way == "streamed":
    images = read_pack([src], pad)
else:
    images = PackImages.of([src.load()], pad)
out = train_pack(bb, images, tcfg, pcfg, 10)[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "steps": out.steps, "pad": pad,
                  "prompt_sum": float(out.prompt.double().sum())}))
"""


def retrain_section(clusters: list[int], root: Path) -> list[str]:

    from synthetic_digits import make_folder

    folder = make_folder(root / "folder", max(clusters))
    objects = root / "objects"
    objects.mkdir()
    for i, path in enumerate(sorted(folder.glob("*/img-*.png"), key=lambda p: p.name)):
        (objects / f"k{i:06d}").write_bytes(path.read_bytes())
    image = 3 * 64 * 64
    lines = [
        "retrain: Lite0 at 64 px, the default crop padding, 1 epoch of batch 32; peak RSS "
        f"over the RSS before any image is read; a uint8 view is {image} B",
        f"{'images':>8}{'way':>10}{'peak - base MB':>16}{'KB/image':>10}{'steps':>7}",
    ]
    growth = {}
    for n in clusters:
        for way in ("streamed", "in memory"):
            r = run_json(RETRAIN_CHILD, way.split()[0], objects, n)
            extra = (r["peak_kb"] - r["base_kb"]) / 1024
            growth.setdefault(way, []).append((n, extra))
            lines.append(f"{n:>8}{way:>10}{extra:>16.1f}{extra * 1024 / n:>10.1f}{r['steps']:>7}")
    for way, pts in growth.items():
        (n0, m0), (n1, m1) = pts[0], pts[-1]
        lines.append(
            f"{way}: from {n0} to {n1} images ({n1 / n0:.0f}x) the peak grew by "
            f"{(m1 - m0) * 1024 / (n1 - n0):.1f} KB per added image"
        )
    return lines


FORGET_RSS = r"""
import json, resource, sys
from eraserd.config import config_from_dict
from eraserd.eraser import Eraser

def peak_mb(pid="self"):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would
    # report its parent's peak.
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


with Eraser(config_from_dict(json.loads(sys.argv[1]))) as er:
    res = er.forget(sample_ids=[sys.argv[2]])
    workers = [pid for pids in er.executor.worker_pids().values() for pid in pids]
    out = {"rss_mb": peak_mb(), "worker_rss_mb": max(peak_mb(p) for p in workers)}
print(json.dumps(out))
"""

DATA_CHILD = r"""
import json, resource, statistics, subprocess, sys, time
FORGET_RSS = FORGET_RSS_SOURCE
from pathlib import Path
from eraserd.checks import verify
from eraserd.config import config_from_dict
from eraserd.eraser import Eraser
from eraserd.model.features import ensure_features
from eraserd.unlearning import Settings

from eraserd import delta

FORGETS = 3
took = []  # whether each forget took the delta path
real_plan = delta.plan


def plan(*args, **kwargs):
    out = real_plan(*args, **kwargs)
    took.append(out is not None)
    return out


delta.plan = plan
folder, state = sys.argv[1], sys.argv[2]
n, cap, do_verify = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
raw = {
    "state_dir": state, "seed": 0,
    "data": {"source": folder, "test_fraction": 0.1},
    "backbone": {"image_size": 64},
    "clustering": {"sample_size": max(1000, 4 * n // cap), "distance_threshold": 17.4,
                   "max_cluster_share": cap / n},
    "training": {"epochs": 1, "min_steps": 20, "batch_size": 32},
    "executor": {"backend": "local", "devices": ["cpu"]},
}
cfg = config_from_dict(raw)
out = {}
with Eraser(cfg) as er:
    t = time.perf_counter(); er.ingest(); out["ingest_s"] = time.perf_counter() - t
    rows = er.store.rows()
    t = time.perf_counter(); feats = ensure_features(er.store, er.backbone, rows)
    out["features_s"] = time.perf_counter() - t
    train = [r.sample_id for r in rows if r.split == "train"]
    t = time.perf_counter(); part = Settings.of(cfg).partition(train, feats)
    out["clustering_s"] = time.perf_counter() - t
    out["clusters"], out["largest"] = len(part.keys), max(len(m) for m in part.members)
    t = time.perf_counter(); er.build(); out["build_s"] = time.perf_counter() - t
    # Victims: one point outside the clustering sample from each of the FORGETS clusters
    # whose size is nearest half the cap, so that the retrain is alike at every N (at 2k no
    # cluster reaches the cap).
    members, outside = {}, {}
    for s in er.samples():
        if s["cluster"] is not None:
            members[s["cluster"]] = members.get(s["cluster"], 0) + 1
            if not s["in_clustering_sample"]:
                outside.setdefault(s["cluster"], []).append(s["sample_id"])
    near = sorted((abs(m - cap // 2), k) for k, m in members.items() if outside.get(k))
    near, spare = near[:FORGETS], near[FORGETS]
    total, retrain, sizes = [], [], []
    for _, k in near:
        t = time.perf_counter(); res = er.forget(sample_ids=[min(outside[k])])
        total.append(time.perf_counter() - t)
        jobs = res.manifest.change.jobs
        retrain.append(sum(j.seconds for j in jobs.values()))
        sizes.append(members[k])
    out["forget_s"] = statistics.median(total)
    out["forget_train_s"] = statistics.median(retrain)
    out["forget_rest_s"] = statistics.median(t - r for t, r in zip(total, retrain))
    out["forget_sizes"] = sizes
    out["forget_retrained"] = len(res.retrained)
    out["forget_delta"] = sum(took)
    if do_verify:
        t = time.perf_counter(); v = verify(er); out["verify_s"] = time.perf_counter() - t
        out["verify_identical"] = bool(v.get("identical"))
# One more forget in a fresh process, with a fresh worker: the peak RSS of a forget and of
# its retrain alone (the pool's worker above also ran the build and the verify).
rss = subprocess.run(
    [sys.executable, "-c", FORGET_RSS, json.dumps(raw), min(outside[spare[1]])],
    capture_output=True, text=True, check=True,
)
once = json.loads(rss.stdout.strip().splitlines()[-1])
out["forget_rss_mb"], out["retrain_rss_mb"] = once["rss_mb"], once["worker_rss_mb"]
out["store_mb"] = sum(p.stat().st_size for p in Path(state).rglob("*") if p.is_file()) / 1e6
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(out))
"""

DATA_CHILD = DATA_CHILD.replace("FORGET_RSS_SOURCE", repr(FORGET_RSS))

DATA_COLUMNS = [
    ("ingest_s", "ingest s"),
    ("features_s", "features s"),
    ("clustering_s", "cluster s"),
    ("build_s", "build s"),
    ("forget_s", "forget s"),
    ("forget_train_s", "its train s"),
    ("forget_rest_s", "the rest s"),
    ("verify_s", "verify s"),
    ("store_mb", "store MB"),
    ("rss_mb", "RSS MB"),
    ("worker_rss_mb", "worker MB"),
    ("forget_rss_mb", "forget MB"),
    ("retrain_rss_mb", "retrain MB"),
]


def data_section(sizes: list[int], cap: int, verify_upto: int, root: Path) -> list[str]:
    import math

    from synthetic_digits import make_folder

    folder = root / "folder"
    results = []
    for n in sizes:
        make_folder(folder / str(n), n)
        verify_it = "1" if n <= verify_upto else "0"
        r = run_json(
            DATA_CHILD, folder / str(n), root / f"state-{n}", n, cap, verify_it, timeout=6 * 3600
        )
        results.append((n, r))
    lines = [
        f"data: generated digits, Lite0 at 64 px, clusters capped at {cap} images, 1 epoch "
        "(min 20 steps) per cluster, local pool of 1 CPU worker",
        f"{'N':>7}{'clusters':>9}{'largest':>8}"
        + "".join(f"{title:>11}" for _, title in DATA_COLUMNS),
    ]
    for n, r in results:
        lines.append(
            f"{n:>7}{r['clusters']:>9}{r['largest']:>8}"
            + "".join(f"{r[k]:>11.2f}" if k in r else f"{'-':>11}" for k, _ in DATA_COLUMNS)
        )
    (n0, r0), (n1, r1) = results[0], results[-1]
    if n1 > n0:
        exps = [
            f"{title.split()[0]} {math.log(r1[k] / r0[k]) / math.log(n1 / n0):.2f}"
            for k, title in DATA_COLUMNS
            if k in r0 and k in r1 and r0[k] > 0 and r1[k] > 0
        ]
        lines.append(f"growth exponents from N={n0} to N={n1}: " + ", ".join(exps))
        lines.append(
            f"forget {n1 // n0}x the data: x{r1['forget_s'] / r0['forget_s']:.2f} the time, "
            f"x{r1['forget_rest_s'] / r0['forget_rest_s']:.2f} outside the retrain job "
            f"(median of {len(r0['forget_sizes'])}; clusters of {r0['forget_sizes']} and "
            f"{r1['forget_sizes']} images; {r0['forget_delta']} and {r1['forget_delta']} "
            "took the delta path)"
        )
        lines.append(
            f"peak RSS of one forget's retrain (a fresh worker): "
            f"x{r1['retrain_rss_mb'] / r0['retrain_rss_mb']:.2f}; of the forgetting process: "
            f"x{r1['forget_rss_mb'] / r0['forget_rss_mb']:.2f}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queue", action="store_true", help="run the queue section")
    ap.add_argument("--retrain", action="store_true", help="run the retrain RSS section")
    ap.add_argument("--clusters", type=int, nargs="+", default=[500, 2000, 8000])
    ap.add_argument("--data", action="store_true", help="run the data section")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--full", action="store_true", help="add N=100000 to the data section")
    ap.add_argument("--cap", type=int, default=100, help="largest cluster, in images")
    ap.add_argument("--verify-upto", type=int, default=20_000, help="largest N to verify")
    ap.add_argument("--pending", type=int, nargs="+", default=[0, 50_000, 100_000])
    ap.add_argument("--n", type=int, default=1000, help="submissions per phase")
    ap.add_argument("--rounds", type=int, default=3, help="queue phases repeated (median)")
    ap.add_argument("--gets", type=int, default=300, help="GETs per endpoint and level")
    ap.add_argument("--dir", type=Path, help="parent of the temp dir (its fs decides fsync cost)")
    a = ap.parse_args()
    if not (a.queue or a.retrain or a.data):
        ap.error("choose sections: --data, --retrain and/or --queue")
    if sorted(a.pending) != a.pending:
        ap.error("--pending levels must grow (the queue is filled, never emptied)")
    lines: list[str] = []
    if a.data:
        sizes = sorted(set(a.sizes + ([100_000] if a.full else [])))
        with tempfile.TemporaryDirectory(prefix="eraserd-scale-", dir=a.dir) as tmp:
            lines += data_section(sizes, a.cap, a.verify_upto, Path(tmp))
    if a.retrain:
        with tempfile.TemporaryDirectory(prefix="eraserd-scale-", dir=a.dir) as tmp:
            lines += retrain_section(sorted(a.clusters), Path(tmp))
    if a.queue:
        with tempfile.TemporaryDirectory(prefix="eraserd-scale-", dir=a.dir) as tmp:
            lines += queue_section(a.pending, a.n, a.rounds, a.gets, Path(tmp))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
