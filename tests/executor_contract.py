"""The executor contract as scenarios, the same for every backend. ``run_contract`` runs them
all on one executor and returns what it saw as plain data, so that a backend run in another
process (Ray, inside a private network namespace) is judged by the very same assertions.

Scenarios, in order: results; a worker killed mid-job; a job over its timeout; a job that
keeps failing; close.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import traceback

import torch

from eraserd.executor import ExecutorError, RetuneJob
from eraserd.training.engine import ClusterData

LONG_BATCHES = 40
"""Micro-batches per epoch of the kill and timeout scenarios' job: long enough to be caught
running on a fast CPU."""


def data(n: int, seed: int, size: int = 32) -> ClusterData:
    g = torch.Generator().manual_seed(1000 + seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ClusterData(images, torch.arange(n) % 10, seed)


def long_data() -> ClusterData:
    return data(16 * LONG_BATCHES, 9)


def slow_data() -> ClusterData:
    """Ten times the long job: well past the timeout scenario's 1 s on any CPU."""
    return data(160 * LONG_BATCHES, 8)


def empty_data() -> ClusterData:
    return ClusterData(
        torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), 1
    )


def small_jobs() -> list[RetuneJob]:
    return [
        RetuneJob(key, float(n), 10, lambda n=n, s=s: data(n, s))
        for key, n, s in [("ca", 40, 1), ("cb", 24, 2), ("cc", 8, 3)]
    ]


def long_job(key: str = "clong") -> RetuneJob:
    return RetuneJob(key, 1000.0, 10, long_data)


def digest(prompt, weight, bias) -> str:
    h = hashlib.sha256()
    for t in (prompt, weight, bias):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def reference(backbone, cfg) -> dict[str, str]:
    """The digests of the contract's jobs, trained directly (no executor)."""
    from eraserd.training.engine import train_pack

    out = {}
    for job in small_jobs() + [long_job()]:
        (r,) = train_pack(backbone, [job.load()], cfg.training, cfg.prompt, job.num_classes)
        out[job.key] = digest(r.prompt, r.weight, r.bias)
    return out


def _guard(fn):
    try:
        return fn()
    except Exception:  # what the scenario hit is the test's failure message
        return {"crashed": traceback.format_exc()[-3000:]}


def _results(ex) -> dict:
    done: list[str] = []
    out = ex.run(small_jobs(), on_done=lambda job, res: done.append(job.key))
    return {
        "digests": {k: digest(r.prompt, r.weight, r.bias) for k, r in out.items()},
        "attempts": {k: r.attempts for k, r in out.items()},
        "on_done": sorted(done),
    }


def _kill(ex) -> dict:
    if not hasattr(ex, "busy_pids"):
        return {"skip": "inline runs jobs in the calling process: no worker to kill"}
    killed: list[int] = []

    def killer() -> None:
        end = time.monotonic() + 600
        while time.monotonic() < end and not killed:
            busy = ex.busy_pids()
            if busy:
                time.sleep(0.3)  # let the job get going
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.02)

    restarts = ex.restarts
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = ex.run([long_job()])
    t.join()
    res = out["clong"]
    return {
        "killed": len(killed),
        "attempts": res.attempts,
        "digest": digest(res.prompt, res.weight, res.bias),
        "restarts": ex.restarts - restarts,
        "killed_is_gone": not _alive(killed[0]) if killed else None,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: only its parent has not reaped it yet
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _workers(ex) -> list[int]:
    if hasattr(ex, "worker_pids"):
        return sorted(p for ps in ex.worker_pids().values() for p in ps)
    if hasattr(ex, "actor_pids"):
        return sorted(ex.actor_pids())
    return []


def _timeout(ex) -> dict:
    ex.run(small_jobs()[2:])  # every worker is up before the clock starts
    before = _workers(ex)
    saved, ex.job_timeout_s = ex.job_timeout_s, 1.0
    error = None
    try:
        ex.run([RetuneJob("cslow", 1e4, 10, slow_data)])
    except ExecutorError as exc:
        error = str(exc)
    finally:
        ex.job_timeout_s = saved
    after_run = ex.run(small_jobs()[2:])["cc"]
    return {
        "error": error,
        "replaced": [p for p in before if p not in _workers(ex)] != [] if before else None,
        "then": digest(after_run.prompt, after_run.weight, after_run.bias),
    }


def _failing(ex) -> dict:
    error = None
    try:
        ex.run([RetuneJob("cbad", 1.0, 10, empty_data)])
    except ExecutorError as exc:
        error = str(exc)
    then = ex.run(small_jobs()[2:])["cc"]
    return {"error": error, "then": digest(then.prompt, then.weight, then.bias)}


def _close(ex) -> dict:
    workers = _workers(ex)
    ex.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    error = None
    try:
        ex.run(small_jobs()[2:])
    except ExecutorError as exc:
        error = str(exc)
    return {
        "workers": len(workers),
        "alive_after_close": [p for p in workers if _alive(p)],
        "run_after_close": error,
        "workers_up": sum(ex.workers_up().values()),
    }


def run_contract(ex) -> dict:
    """Every scenario on ``ex``, in order; ``close`` last. Plain data only."""
    out = {}
    for name, scenario in [
        ("results", _results),
        ("kill", _kill),
        ("timeout", _timeout),
        ("failing", _failing),
        ("close", _close),
    ]:
        out[name] = _guard(lambda scenario=scenario: scenario(ex))
    return out
