"""Chaos: SIGKILL a real daemon and its workers again and again while deletion requests and
predictions keep coming, then check that nothing acknowledged was lost (issue 11).

``tests/test_chaos.py`` runs a short round in ``make test``; ``benchmarks/chaos.py`` a long
one. A round:

- a submitter thread sends single-sample and whole-subject deletion requests, each with an
  idempotency key, resending one until it is acknowledged (202, or 200 for a resend the
  daemon had already taken before it died); once all are sent, it goes on resending them,
  and each must come back as the same request;
- a predictor thread posts the same image over and over;
- the main thread SIGKILLs, at seeded random moments, the daemon (then restarts it) or one of
  its workers, and sometimes the worker that replaces it before it has started;
- then a daemon that is left alone finishes every request, is stopped, and ``eraserd verify``
  and ``eraserd audit verify`` run on its state.

Invariants (``Tally.problems``): every acknowledged request is published, with exactly one
certificate in the audit log; none failed (no deadline passes); the state holds no raw id of
any deleted sample or subject; every prediction of one version is the same answer (a torn
read, a prompt of one version with the head of another, would differ); no 5xx but a
documented 503; verify finds the model identical to a from-scratch rebuild; the audit chain
holds.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from daemon_util import BIN, DaemonProc
from patience import children, run_patiently

from eraserd.config import config_from_dict
from eraserd.eraser import Eraser

TERMINAL = ("published", "failed")


def workers(pid: int) -> list[int]:
    """The daemon's worker processes: its ``spawn`` children, not the resource tracker."""
    out = []
    for child in children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            out.append(child)
    return out


def plan_requests(samples: list[dict], count: int, seed: int) -> list[dict]:
    """``count`` deletion bodies over disjoint ids: about one in six names a whole subject,
    the rest one training sample each (no id is named twice, so none is unknown when sent)."""
    rng = random.Random(seed)
    subjects = sorted({r["subject_id"] for r in samples if r["subject_id"]})
    rng.shuffle(subjects)
    whole = subjects[: max(1, count // 6)]
    gone = set(whole)
    train = sorted(
        r["sample_id"] for r in samples if r["split"] == "train" and r["subject_id"] not in gone
    )
    rng.shuffle(train)
    bodies = [{"subject_ids": [s]} for s in whole]
    bodies += [{"sample_ids": [s]} for s in train[: count - len(bodies)]]
    rng.shuffle(bodies)
    for n, body in enumerate(bodies):
        body["idempotency_key"] = f"chaos-{n}"
    return bodies


class Client:
    """Loopback HTTP for the threads: ``None`` when the daemon is not there (killed,
    restarting, or died mid-answer)."""

    def __init__(self, url: str, token_file: Path):
        self.url = url
        self.token_file = token_file

    def call(self, method: str, path: str, body=None, data=None, ctype=None):
        headers = {}
        try:
            headers["Authorization"] = "Bearer " + self.token_file.read_text().strip()
        except OSError:
            return None
        if body is not None:
            data, ctype = json.dumps(body).encode(), "application/json"
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except (OSError, ValueError):
                return None  # the daemon died while answering
        except (urllib.error.URLError, OSError, ValueError):
            return None


@dataclass
class Tally:
    kills: Counter = field(default_factory=Counter)
    sent: int = 0
    resent: int = 0
    """Acknowledged requests sent again under their idempotency keys."""
    acked: dict[str, str] = field(default_factory=dict)
    """Idempotency key -> request id, for every acknowledged request."""
    states: dict[str, str] = field(default_factory=dict)
    """Request id -> its final state."""
    certificates: Counter = field(default_factory=Counter)
    predictions: int = 0
    unavailable: int = 0
    answers: dict[tuple[int, str], set] = field(default_factory=dict)
    """(version, cluster) -> the distinct answers given for the chaos image. The cluster is
    part of the key: while a deletion is overdue, its clusters are withdrawn and the image is
    answered by the nearest served one (``fallback``) within the same version."""
    errors: list[str] = field(default_factory=list)
    deleted_left: list[str] = field(default_factory=list)
    verify: dict | None = None
    audit: tuple[int, str] | None = None
    seconds: float = 0.0

    @property
    def published(self) -> int:
        return sum(1 for s in self.states.values() if s == "published")

    @property
    def failed(self) -> int:
        return sum(1 for s in self.states.values() if s == "failed")

    @property
    def lost(self) -> int:
        return sum(1 for rid in self.acked.values() if self.states.get(rid) not in TERMINAL)

    @property
    def duplicated(self) -> int:
        return sum(1 for rid in self.acked.values() if self.certificates[rid] > 1)

    @property
    def uncertified(self) -> int:
        return sum(
            1
            for rid in self.acked.values()
            if self.states.get(rid) == "published" and self.certificates[rid] == 0
        )

    @property
    def torn(self) -> int:
        return sum(len(a) - 1 for a in self.answers.values())

    def summary(self) -> str:
        k = self.kills
        identical = self.verify is not None and self.verify.get("identical")
        return (
            f"chaos: {sum(k.values())} kills ({k['daemon']} daemon, {k['worker']} worker, "
            f"{k['starting worker']} starting worker) · {self.sent} sent ({self.resent} resent) · "
            f"{len(self.acked)} acked · {self.published} published · {self.failed} failed · "
            f"{self.lost} lost · {self.duplicated} duplicated · {self.uncertified} uncertified"
            f" · {self.predictions} predictions ({self.unavailable} while down), "
            f"{self.torn} torn · {len(self.deleted_left)} deleted ids left on disk · verify "
            f"{'identical' if identical else 'NOT identical'} · audit "
            f"{'OK' if self.audit and self.audit[0] == 0 else 'FAILED'} · {self.seconds:.0f}s"
        )

    def problems(self, min_kills: int) -> list[str]:
        out = list(self.errors)
        if sum(self.kills.values()) < min_kills:
            out.append(f"only {sum(self.kills.values())} kills, wanted {min_kills}")
        for name in ("lost", "failed", "duplicated", "uncertified", "torn"):
            if getattr(self, name):
                out.append(f"{getattr(self, name)} {name}")
        out += [
            f"version {v}, cluster {c}: {sorted(a)}"
            for (v, c), a in self.answers.items()
            if len(a) > 1
        ]
        if not self.acked:
            out.append("no request was acknowledged")
        out += [f"deleted id left on disk: {x}" for x in self.deleted_left[:10]]
        if not (self.verify and self.verify.get("identical")):
            out.append(f"verify: {self.verify}")
        if not (self.audit and self.audit[0] == 0):
            out.append(f"audit verify: {self.audit}")
        return out


class Chaos:
    """One round against the daemon of ``config`` (its state must hold a first version)."""

    def __init__(
        self,
        config: Path,
        image: bytes,
        requests: int,
        seed: int = 0,
        gap_s: tuple[float, float] = (0.3, 2.0),
        daemon_share: float = 0.4,
        log=print,
    ):
        self.config = config
        self.cfg = config_from_dict(yaml.safe_load(config.read_text()))
        self.image = image
        self.rng = random.Random(seed)
        self.gap_s = gap_s
        self.daemon_share = daemon_share
        self.log = log
        self.tally = Tally()
        self.stop = threading.Event()
        self.daemon: DaemonProc | None = None
        self.seen: set[int] = set()
        with Eraser(self.cfg) as er:
            self.plan = plan_requests(er.samples(), requests, seed)
        url = f"http://127.0.0.1:{self.cfg.daemon.port}"
        self.client = Client(url, self.cfg.state_dir / "api-token")

    # ---- the load -----------------------------------------------------------------------

    def _submitter(self) -> None:
        """Sends the plan, then keeps resending acknowledged requests under their keys: each
        must come back as the same request (200), so traffic goes on all round."""
        rng = random.Random(self.rng.random())
        for n in itertools.count():
            body = self.plan[n % len(self.plan)]
            key = body["idempotency_key"]
            first = n < len(self.plan)
            self.tally.sent += first
            self.tally.resent += not first
            while not self.stop.is_set():
                r = self.client.call("POST", "/v1/deletions", body)
                if r is not None and r[0] in (200, 202):
                    if first:
                        self.tally.acked[key] = r[1]["id"]
                    elif (r[0], r[1]["id"]) != (200, (acked := self.tally.acked.get(key))):
                        self.tally.errors.append(f"resent {key}: {r[0]} {r[1]['id']}, was {acked}")
                    break
                if r is not None and r[0] != 503:
                    self.tally.errors.append(f"submit {key}: {r[0]} {r[1]}")
                    break
                time.sleep(0.2)  # down, or a documented 503: send it again
            if self.stop.wait(rng.uniform(*self.gap_s) / 2):
                return

    def _predictor(self) -> None:
        while not self.stop.is_set():
            r = self.client.call("POST", "/v1/predict", data=self.image, ctype="image/png")
            if r is None:
                self.tally.unavailable += 1
            elif r[0] == 200:
                self.tally.predictions += 1
                a = r[1]
                key = (a["version"], a["cluster"])
                self.tally.answers.setdefault(key, set()).add((a["label"], a["probability"]))
            elif r[0] == 503:
                self.tally.unavailable += 1  # documented: every cluster withdrawn
            else:
                self.tally.errors.append(f"predict: {r[0]} {r[1]}")
            time.sleep(0.1)

    # ---- the kills ----------------------------------------------------------------------

    def _start(self) -> None:
        self.daemon = DaemonProc(self.config)
        self.daemon.wait_ready()

    def _kill_starting_worker(self, wait_s: float) -> None:
        """SIGKILL the next worker the daemon spawns, as soon as it appears (it is still
        importing, long before it takes a job). Gives up after ``wait_s``."""
        end = time.monotonic() + wait_s
        while time.monotonic() < end and self.daemon.proc.poll() is None:
            fresh = [p for p in workers(self.daemon.proc.pid) if p not in self.seen]
            if fresh:
                self._sigkill(fresh[0], "starting worker")
                return
            time.sleep(0.02)

    def _sigkill(self, pid: int, what: str) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.seen.add(pid)
        self.tally.kills[what] += 1

    def _one_kill(self) -> None:
        d = self.daemon
        live = workers(d.proc.pid)
        self.seen.update(live)
        if live and self.rng.random() >= self.daemon_share:
            self._sigkill(self.rng.choice(live), "worker")
        else:
            d.kill()
            self.tally.kills["daemon"] += 1
            self.daemon = DaemonProc(self.config)
        if self.rng.random() < 0.5:
            self._kill_starting_worker(wait_s=15.0)
        self.daemon.wait_ready()

    # ---- a round ------------------------------------------------------------------------

    def run(self, kills: int) -> Tally:
        start = time.monotonic()
        self._start()
        threads = [
            threading.Thread(target=f, daemon=True) for f in (self._submitter, self._predictor)
        ]
        for t in threads:
            t.start()
        try:
            while sum(self.tally.kills.values()) < kills:
                time.sleep(self.rng.uniform(*self.gap_s))
                self._one_kill()
                if sum(self.tally.kills.values()) % 5 == 0:
                    self.log(
                        f"  {sum(self.tally.kills.values())} kills, {len(self.tally.acked)} acked"
                    )
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=120)
        self._settle()
        self._check()
        self.tally.seconds = time.monotonic() - start
        return self.tally

    def _settle(self) -> None:
        """A daemon left alone finishes every request; then it is stopped cleanly."""
        d = self.daemon
        if d.proc.poll() is not None:
            self._start()
            d = self.daemon
        ids = list(self.tally.acked.values())

        def state(rid: str) -> str:
            code, r = d.call("GET", f"/v1/deletions/{rid}")
            return "missing" if code == 404 else r.get("state", f"HTTP {code}")

        def finished() -> dict[str, str] | None:
            d.call("POST", "/v1/flush")
            out = {rid: state(rid) for rid in ids}
            return out if all(s in (*TERMINAL, "missing") for s in out.values()) else None

        try:
            self.tally.states = d.wait_for(finished, timeout=300, what="every request to finish")
        except AssertionError as exc:
            self.tally.errors.append(str(exc)[:500])
            self.tally.states = {rid: state(rid) for rid in ids}
        code = d.stop()
        if code != 0:
            self.tally.errors.append(f"the daemon exited {code} on SIGTERM")

    def _check(self) -> None:
        state = self.cfg.state_dir
        for line in (state / "audit.jsonl").read_text().splitlines():
            self.tally.certificates[json.loads(line)["certificate"]["request"]] += 1
        raw = [
            i.encode()
            for body in self.plan
            if body["idempotency_key"] in self.tally.acked
            for i in body.get("sample_ids", []) + body.get("subject_ids", [])
        ]
        files = [Path(d) / n for d, _, names in os.walk(state) for n in names]
        for path in [*files, self.config.parent / "daemon.log"]:
            data = path.read_bytes()
            self.tally.deleted_left += [f"{i.decode()} in {path.name}" for i in raw if i in data]
        out = run_patiently(
            [str(BIN / "eraserd"), "verify", "--config", str(self.config), "--json"]
        )
        self.tally.verify = json.loads(out.stdout) if out.stdout.strip() else {"stderr": out.stderr}
        audit = run_patiently(
            [str(BIN / "eraserd"), "audit", "verify", "--config", str(self.config)]
        )
        self.tally.audit = (audit.returncode, (audit.stdout + audit.stderr).strip()[-500:])
