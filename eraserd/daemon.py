"""``eraserd run``: the only module that wires queue, scheduler, batch runner and serving.

Threads: uvicorn serves the API; an APScheduler job ticks the flush policy; one batch-runner
thread turns batches into registry versions, one at a time and in order. Every state change
is committed to the queue before it is acted on, so a restart after any crash resumes where it
stopped.

An acknowledged request is never dropped. A failed attempt (an exception, a dead or
never-started worker, a full disk, or a crash of the daemon itself) is retried, the same
batch, after a doubling backoff; no newer batch runs before it, so a batch that already
published is always finished (purged) first. A request ends unpublished only when it is
invalid or its deadline passes first: it then fails closed, counted and alerted on.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from . import __version__
from .audit import AUDIT_FILE, AuditLog
from .config import Config
from .data.store import Store
from .eraser import Eraser
from .errors import DataError, EraserdError, UnknownIdError
from .faults import crashpoint
from .flush import FlushPolicy, retry_delay, update_estimate
from .fsutil import atomic_write
from .locking import StateLock
from .metrics import DaemonMetrics, DaemonState, ModelFacts
from .model.predictor import Predictor
from .pending import PlanCache
from .queue import PENDING, BatchState, Page, Position, Queue, QueueView
from .withdrawn import Withheld, withdrawn_clusters

log = logging.getLogger("eraserd.daemon")

MAX_IDS_PER_REQUEST = 10_000


def load_or_create_token(path: Path) -> str:
    """The API bearer token: created on first start, 0600, refused if others can read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
        log.info("created API token file", extra={"fields": {"path": str(path)}})
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise EraserdError(f"token file {path} is accessible by others ({oct(mode)}); chmod 600")
    token = path.read_text().strip()
    if len(token) < 16:
        raise EraserdError(f"token file {path} holds a token shorter than 16 characters")
    return token


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class Daemon:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self._lock = StateLock(cfg.state_dir, "eraserd run").acquire()
        try:
            self.eraser = Eraser(cfg)
            if not self.eraser.has_model():
                log.info("no model in state_dir yet: building one first")
                manifest = self.eraser.build()
                log.info(
                    "built initial model",
                    extra={
                        "fields": {
                            "version": manifest.version,
                            "clusters": len(manifest.clusters),
                        }
                    },
                )
            self.queue = Queue(cfg.state_dir / "queue.db", self.eraser.store.secret)
            self.queue_view = QueueView(cfg.state_dir / "queue.db")
            self.reader = Store(cfg.state_dir, readonly=True)
            self._reader_lock = threading.Lock()
            self.plans = PlanCache(self.eraser.registry)
            self.token = load_or_create_token(cfg.token_path)
            self.audit = AuditLog(cfg.state_dir / AUDIT_FILE, writer=True)
            # Purge what a published version dropped but a crash left in the store, and
            # versions a crash left unpublished.
            self.eraser.reconcile()
            current = self.eraser.registry.load()
            self.withheld = Withheld(cfg.state_dir)
            self.predictor = self._serving()
            self.predicted_s = current.change.seconds or 60.0
            self.model = ModelFacts.from_manifest(current)
            self.started_at = clock()
            """When the daemon is ready to serve: uptime leaves out a first build."""
            self.metrics = DaemonMetrics(cfg, self.metrics_state, __version__, self.model)
        except BaseException:
            self._lock.release()
            raise
        self.policy = FlushPolicy(cfg.daemon, clock())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reason: str | None = None
        self._runner: threading.Thread | None = None
        self._retry_at: dict[int, float] = {}
        """Batch id -> clock time of its next attempt, after a failed one."""
        self._failures: dict[int, int] = {}
        """Batch id -> failed attempts in a row in this process (the backoff's exponent)."""
        self._scheduler: BackgroundScheduler | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.eraser.executor.workers_up()  # start workers now: their liveness is a metric
        unfinished = self.queue.unfinished_batches()
        for bid in unfinished:  # a crash loop backs off too: resume after the earlier attempts
            batch = self.queue.batch(bid) or {}
            delay = retry_delay(
                int(batch.get("attempts") or 0) - 1,
                self.cfg.daemon.retry_backoff_s,
                self.cfg.daemon.retry_backoff_max_s,
            )
            if delay:
                self._retry_at[bid] = float(batch["updated_at"]) + delay
        self._runner = threading.Thread(target=self._run, name="batch-runner", daemon=True)
        self._runner.start()
        if unfinished:
            self.request_flush("recovery")
        tick = self.policy.tick_s
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        self._scheduler.add_job(
            self.tick, "interval", seconds=tick, id="flush-policy", max_instances=1, coalesce=True
        )
        self._scheduler.start()
        log.info(
            "daemon started",
            extra={
                "fields": {
                    "version": self.predictor.version,
                    "window_s": self.cfg.daemon.batch_window_s,
                }
            },
        )

    def stop(self) -> None:
        """Finish the batch in progress, then stop. Queued requests stay queued on disk."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        self._stop.set()
        self._wake.set()
        if self._runner is not None:
            self._runner.join()
        self.queue.close()
        self.queue_view.close()
        self.reader.close()
        self.eraser.close()
        self._lock.release()
        log.info("daemon stopped")

    # ---- scheduling -----------------------------------------------------------------------

    def tick(self) -> None:
        reason = self.policy.on_tick(self.queue.pending(), self.clock(), self.predicted_s).reason
        if reason is not None:
            self.request_flush(reason)

    def request_flush(self, reason: str) -> None:
        log.debug("flush requested", extra={"fields": {"reason": reason}})
        self._reason = self._reason or reason
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_retry_in())
            self._wake.clear()
            if self._stop.is_set():
                break
            reason, self._reason = self._reason or "retry", None
            try:
                self._drain(reason)
            except Exception:  # e.g. a full disk while opening a batch: the queue keeps the work
                log.exception("batch runner error")

    def _next_retry_in(self) -> float | None:
        """Seconds until the earliest scheduled retry; None when none is scheduled."""
        if not self._retry_at:
            return None
        return max(0.0, min(self._retry_at.values()) - self.clock())

    def _drain(self, reason: str) -> None:
        """Run unfinished batches oldest first, then a new one. Stops at a batch that is
        waiting for its retry: nothing newer may run before it."""
        for bid in self.queue.unfinished_batches():
            if self._stop.is_set() or self.clock() < self._retry_at.get(bid, 0.0):
                return
            if not self._attempt(bid):
                return
        if self._stop.is_set() or self._retry_at:
            return
        opened = self.queue.open_batch(reason, self.clock())
        if opened is not None:
            self._attempt(opened)
        self._compact()

    def _compact(self) -> None:
        """Delete finished requests past their retention (``Queue.compact``)."""
        gone = self.queue.compact(self.clock() - self.cfg.daemon.request_retention_s)
        if gone:
            log.info("finished requests compacted", extra={"fields": {"requests": gone}})

    def _attempt(self, bid: int) -> bool:
        """One attempt at a batch. True when it is done (published, or its requests failed
        closed); False when it will be retried: any error but an invalid batch is retried."""
        try:
            return self._run_batch(bid)
        except Exception as exc:
            self._retry_later(bid, exc)
            return False

    def _run_batch(self, bid: int) -> bool:
        name = f"batch-{bid}"
        published = self.eraser.published_batch() == name
        if not published:  # a published batch is always finished, whatever its deadlines
            now = self.clock()
            limit = self.cfg.daemon.withdraw_after_attempts
            tried = int((self.queue.batch(bid) or {}).get("attempts") or 0)
            struggling = limit is not None and tried >= limit
            # Fail closed: stop serving what holds the samples of requests past their
            # deadline (then fail them), or of a batch that keeps failing (it goes on).
            held = [
                (s, j)
                for r, s, j in self.queue.request_items(bid)
                if struggling or r.deadline < now
            ]
            if held:
                self._withhold(held, now, "attempts" if struggling else "deadline")
            expired = self.queue.fail(bid, self._deadline_reason(bid), now, expired_only=True)
            if expired:
                log.error(
                    "requests failed closed: deadline passed unpublished",
                    extra={"fields": {"batch": bid, "requests": expired}},
                )
                self.metrics.requests_failed("deadline", expired)
        batch = self.queue.batch(bid)
        if batch is None or batch["state"] == BatchState.FAILED.value:
            self._done(bid)
            return True
        if batch["state"] == BatchState.RETUNING.value and bid not in self._failures:
            # The previous attempt ended the process (a crash, a kill): it counts as failed.
            log.warning(
                "resuming a batch whose last attempt ended the daemon",
                extra={"fields": {"batch": bid, "attempts": batch["attempts"]}},
            )
            self.metrics.batch_retried()
        samples, subjects = self.queue.batch_items(bid)
        attempts = self.queue.mark_retuning(bid, self.clock())
        fields = {"batch": bid, "samples": len(samples), "subjects": len(subjects)}
        log.info("batch retuning", extra={"fields": {**fields, "attempt": attempts}})
        started = time.perf_counter()
        try:
            result = self.eraser.forget(
                samples, subjects, batch=name, lenient=True, events=crashpoint
            )
        except DataError as exc:  # the batch itself cannot be carried out: fail it closed
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            failed = self.queue.fail(bid, reason, self.clock())
            log.error(
                "batch failed: invalid", extra={"fields": {**fields, "failed_requests": failed}}
            )
            self.metrics.requests_failed("invalid", failed)
            self._done(bid)
            return True
        seconds = time.perf_counter() - started
        swapped = result.version != self.predictor.version
        if swapped:
            model = ModelFacts.from_manifest(result.manifest)
            self.predictor = self._serving()  # atomic swap of the serving snapshot
            self.model = model
        # Should this fail (a full disk), the retry finds the batch published and finishes it.
        self._certify(bid, result)
        self.queue.mark_published(
            bid, result.version, len(result.affected), len(result.retrained), seconds, self.clock()
        )
        self._done(bid)
        if self.withheld.record and not swapped:  # withheld samples may be purged now
            self.predictor = self._serving()
        self.predicted_s = update_estimate(self.predicted_s, seconds)
        self.metrics.batch_published(
            affected=len(result.affected),
            reclustered=result.reclustered,
            seconds=seconds,
            jobs=self.model.jobs if swapped else (),  # else this version's jobs were counted
            swapped=swapped,
            requests=self.queue_view.published_times(bid),
        )
        log.info(
            "batch published",
            extra={
                "fields": {
                    **fields,
                    "version": result.version,
                    "affected": len(result.affected),
                    "retrained": len(result.retrained),
                    "reclustered": result.reclustered,
                    "seconds": round(seconds, 3),
                }
            },
        )
        return True

    def _certify(self, bid: int, result) -> None:
        """Append a deletion certificate for each request of a published batch (before the
        batch is marked published; a retry does not certify a request twice)."""
        manifest = result.manifest
        pointer = self.eraser.registry.current()
        change = manifest.change
        mine = change.batch == f"batch-{bid}"  # else the batch changed nothing
        store = self.eraser.store
        now = self.clock()
        for req, samples, subjects in self.queue.request_items(bid):
            self.audit.append(
                {
                    "request": req.id,
                    "batch": bid,
                    "samples": sorted(store.tombstone("sample", s) for s in samples),
                    "subjects": sorted(store.tombstone("subject", s) for s in subjects),
                    "affected_clusters": list(result.affected),
                    "parent_version": manifest.parent if mine else None,
                    "parent_manifest": manifest.parent_manifest if mine else None,
                    "version": result.version,
                    "manifest": pointer[1] if pointer else None,
                    "purged_blobs": list(change.superseded or ()) if mine else [],
                    "submitted_at": _iso(req.created_at),
                    "published_at": _iso(now),
                }
            )

    def _serving(self) -> Predictor:
        """The current version's serving snapshot, without the clusters that hold withheld
        samples (``withdrawn.py``); forgets withheld samples deleted since."""
        if self.withheld.record:
            back = self.withheld.prune({r.key for r in self.eraser.store.rows()})
            if back:
                log.info("withheld samples deleted", extra={"fields": {"samples": back}})
        pred = self.eraser.predictor()
        if pred.withdrawn:
            log.error(
                "clusters withdrawn from serving: they hold samples of an overdue deletion",
                extra={"fields": {"clusters": len(pred.withdrawn), "version": pred.version}},
            )
        return pred

    def _withhold(self, held: list[tuple[list[str], list[str]]], now: float, why: str) -> None:
        samples = [i for ids, _ in held for i in ids]
        subjects = [i for _, ids in held for i in ids]
        rows, _, _ = self.eraser.store.classify(samples, subjects)
        if not self.withheld.add([r.key for r in rows], why, _iso(now)):
            return  # withheld already: the snapshot withdraws their clusters already
        # Withdraw from the snapshot in memory: a version whose blobs cannot be read (the
        # reason the deadline passed, perhaps) must not keep the data in service.
        pred = self.predictor
        try:
            members = self.eraser.member_keys(self.eraser.registry.load(pred.version))
            withdrawn = withdrawn_clusters(self.withheld.keys(), members)
        except Exception:
            log.exception("cannot tell which clusters hold withheld samples: withdrawing all")
            withdrawn = frozenset(pred.keys)
        self.predictor = pred.withdraw(withdrawn | pred.withdrawn)
        log.error(
            "clusters withdrawn from serving: they hold samples of an overdue deletion",
            extra={
                "fields": {
                    "clusters": len(self.predictor.withdrawn),
                    "version": pred.version,
                    "cause": why,
                }
            },
        )

    def certificate(self, rid: str) -> dict | None:
        """The audit entry certifying a published request, or None."""
        return self.audit.find(rid)

    def _deadline_reason(self, bid: int) -> str:
        batch = self.queue.batch(bid) or {}
        last = batch.get("error") or (
            "an earlier attempt ended the daemon" if batch.get("attempts") else "not attempted"
        )
        return f"deadline passed before the deletion was published (last error: {last})"[:300]

    def _retry_later(self, bid: int, exc: Exception) -> None:
        """Schedule the next attempt; record this one's error when the disk allows."""
        failures = self._failures.get(bid, 0) + 1
        self._failures[bid] = failures
        delay = retry_delay(
            failures, self.cfg.daemon.retry_backoff_s, self.cfg.daemon.retry_backoff_max_s
        )
        self._retry_at[bid] = self.clock() + delay
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.error(
            "batch attempt failed; retrying",
            extra={
                "fields": {
                    "batch": bid,
                    "error": type(exc).__name__,
                    "failures": failures,
                    "retry_in_s": delay,
                }
            },
        )
        self.metrics.batch_retried()
        try:
            crashpoint("record")
            self.queue.mark_retry(bid, reason, self.clock())
        except Exception:
            log.exception("could not record the failed attempt; the retry stays scheduled")

    def _done(self, bid: int) -> None:
        self._retry_at.pop(bid, None)
        self._failures.pop(bid, None)

    # ---- API operations -------------------------------------------------------------------

    def submit(
        self,
        sample_ids: list[str],
        subject_ids: list[str],
        idempotency_key: str | None,
        deadline: float | None,
    ) -> tuple[dict, bool]:
        if not sample_ids and not subject_ids:
            raise ValueError("name at least one sample_id or subject_id")
        if len(sample_ids) + len(subject_ids) > MAX_IDS_PER_REQUEST:
            raise ValueError(f"at most {MAX_IDS_PER_REQUEST} ids per request")
        with self._reader_lock:  # the store, read-only: it raises nothing into the queue
            rows, unknown, forgotten = self.reader.classify(sample_ids, subject_ids)
        if unknown:
            raise UnknownIdError(
                f"unknown id(s): {', '.join(unknown)}; nothing was queued", unknown
            )
        adm = self.queue.admit(
            sample_ids,
            subject_ids,
            matched=[r.sample_id for r in rows],
            forgotten=forgotten,
            deadline=deadline,
            default_deadline_s=self.cfg.daemon.default_deadline_s,
            now=self.clock(),
            idempotency_key=idempotency_key,
        )
        out = adm.request.to_dict()
        if not adm.created:
            return out, False
        out["already_forgotten_ids"] = forgotten
        out["already_pending_ids"] = list(adm.already_pending)
        req = adm.request
        self.metrics.submitted(req.samples)
        log.info("deletion queued", extra={"fields": {"request": req.id, "samples": req.samples}})
        assert adm.pending is not None  # a created request comes with the queue's totals
        reason = self.policy.on_submit(adm.pending)
        if reason is not None:
            self.request_flush(reason)
        return out, True

    def request(self, rid: str) -> dict | None:
        """A request's fields; a pending one's also its ``plan`` (``pending.py``)."""
        req = self.queue.get(rid)
        if req is None:
            return None
        out = req.to_dict()
        if req.state in {s.value for s in PENDING}:
            out["plan"] = self.plan(rid)
        return out

    def requests(self, state: str | None, limit: int, after: Position | None) -> Page:
        """A page of requests, newest first (``Queue.page``)."""
        return self.queue.page(state, limit, after)

    def plan(self, rid: str) -> dict | None:
        """What a pending request will retrain in the current version; None once its ids
        are erased (it was just published or failed) or the version cannot be read."""
        samples, subjects = self.queue.items(rid)
        if not samples and not subjects:
            return None
        with self._reader_lock:
            rows, _, _ = self.reader.classify(samples, subjects)
        try:
            return self.plans.plan(r.key for r in rows)
        except EraserdError as exc:  # e.g. a version collected while it was being read
            log.warning(
                "no plan for a pending request",
                extra={"fields": {"request": rid, "error": type(exc).__name__}},
            )
            return None

    def flush(self) -> dict:
        pending = self.queue.pending()
        self.request_flush("manual")
        return {
            "flushing": pending.requests > 0 or bool(self.queue.unfinished_batches()),
            "queued_requests": pending.requests,
            "queued_samples": pending.samples,
        }

    def status(self) -> dict:
        now = self.clock()
        p = self.queue.pending()
        pred = self.predictor
        return {
            "version": pred.version,
            "clusters": len(pred.keys),
            "uptime_s": round(now - self.started_at, 3),
            "queue": {
                "requests": self.queue.counts(),
                "queued_samples": p.samples,
                "oldest_queued_age_s": None
                if p.oldest_created is None
                else round(now - p.oldest_created, 3),
                "earliest_deadline": p.earliest_deadline,
            },
            "window_s": self.cfg.daemon.batch_window_s,
            "next_window_at": self.policy.next_window_at,
            "predicted_batch_s": round(self.predicted_s, 3),
            "last_batch": self.queue.last_batch(),
            "retries": self._retries(now),
            "pid": os.getpid(),
        }

    def _retries(self, now: float) -> list[dict]:
        """Batches waiting for their next attempt after a failed one, oldest first."""
        out = []
        for bid, at in sorted(dict(self._retry_at).items()):
            batch = self.queue.batch(bid) or {}
            out.append(
                {
                    "batch": bid,
                    "attempts": batch.get("attempts"),
                    "error": batch.get("error"),
                    "next_attempt_in_s": round(max(0.0, at - now), 3),
                }
            )
        return out

    def metrics_state(self) -> DaemonState:
        """What a ``/metrics`` scrape reads: counts and facts, no batch work, no batch lock."""
        now = self.clock()
        try:
            cur = self.eraser.registry.current()
        except EraserdError:  # a malformed CURRENT: reported by the batch runner, not here
            cur = None
        return DaemonState(
            now=now,
            started_at=self.started_at,
            queue=self.queue_view.facts(now, self.cfg.daemon.rate_horizon_s),
            model=self.model,
            current_version=cur[0] if cur else None,
            workers=self.eraser.executor.workers_up(),
            predicted_batch_s=self.predicted_s,
            withdrawn_clusters=len(self.predictor.withdrawn),
        )

    def predict(self, data: bytes) -> dict:
        pred = self.predictor  # one snapshot for the whole prediction
        p = pred.predict_bytes(data)
        return {
            "label": p.label,
            "cluster": p.cluster,
            "version": p.version,
            "probability": round(p.probability, 6),
            "fallback": p.fallback,
        }
