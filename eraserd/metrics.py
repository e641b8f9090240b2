"""Prometheus metrics of the daemon, on a registry of its own (never the global one).

Counters and histograms are updated where events happen (a submission, a batch outcome).
Gauges are computed at scrape time by ``StateCollector`` from a ``DaemonState`` snapshot: cheap
reads of the queue (its read model, ``queue/view.py``), the serving version's manifest facts and
the executor, with no batch work or lock of the batch runner involved. The batch model's
formulas come from ``poisson.py`` and ``window_plan.py`` (per-cluster costs, shared with
``eraserd plan``); the helpers here only estimate its inputs (the deletion rate, ``T_c``, the
retune throughput) from what was observed.

Labels never carry request, sample, subject or cluster ids: only ``outcome``, ``split``,
``device`` and the build's ``version``/``backbone``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from . import window_plan
from .config import Config
from .manifest import Manifest
from .queue import QueueFacts

# ``*_created`` series double every counter and histogram for no use here. This is
# process-wide, and the daemon owns its process.
disable_created_metrics()

OUTCOMES = ("published", "retried", "failed")
"""Batch attempts: published; retried (the attempt raised or an earlier one ended the daemon;
the same batch is tried again after a backoff); failed (requests ended unpublished: an invalid
batch, or deadlines that passed)."""
FAILURE_CAUSES = ("deadline", "invalid")
"""Why a request failed (closed): its deadline passed unpublished, or it cannot be carried out."""

LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 172800, 259200)
AFFECTED_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
RETUNE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
RECENT_JOBS = 256
"""Retune jobs kept for the ``T_c`` and throughput estimates."""


# ---- pure helpers -------------------------------------------------------------------------


def estimate_rate(samples: float, observed_s: float, horizon_s: float, window_s: float) -> float:
    """The deletion rate estimate in samples per second.

    ``samples`` were submitted within the last ``horizon_s``. Until the daemon has a
    horizon's worth of history (``observed_s``, since the first submission or start) the
    divisor is that history, but never less than one window ``T``, so one early request does
    not read as a burst.
    """
    span = min(horizon_s, max(observed_s, window_s))
    return samples / span if span > 0 else 0.0


@dataclass(frozen=True)
class ModelFacts:
    """What the metrics need from one version's manifest."""

    version: int
    sizes: tuple[int, ...]
    train: int
    test: int
    created_at: float
    jobs: tuple[tuple[float, float], ...]
    """(seconds, image-steps) of each cluster this version retuned."""
    plan: window_plan.PlanInputs
    """Per-cluster retune seconds and recluster cost, exactly as ``eraserd plan`` reads them."""
    retrain_share: float | None
    largest_share: float | None

    @classmethod
    def from_manifest(cls, m: Manifest) -> ModelFacts:
        sizes = m.sizes
        steps = window_plan.image_steps(m)
        cost = m.cost or {}
        return cls(
            version=m.version,
            sizes=tuple(sizes.values()),
            train=int(m.samples["train"]),
            test=int(m.samples["test"]),
            created_at=datetime.fromisoformat(m.created_at).timestamp(),
            jobs=tuple(
                (j.seconds, steps[k]) for k, j in sorted(m.change.jobs.items()) if k in sizes
            ),
            plan=window_plan.plan_inputs(m),
            retrain_share=cost.get("expected_retrain_share"),
            largest_share=cost.get("largest_share"),
        )


@dataclass(frozen=True)
class RetuneCost:
    cluster_s: float | None
    """``T_c``: mean seconds of one cluster's retune job (observed, recent jobs)."""
    throughput: float | None
    """Image-steps (cluster size x epochs) per second of retune job."""


def retune_cost(jobs: Iterable[tuple[float, float]]) -> RetuneCost:
    jobs = list(jobs)
    if not jobs:
        return RetuneCost(None, None)
    seconds = sum(s for s, _ in jobs)
    steps = sum(n for _, n in jobs)
    return RetuneCost(seconds / len(jobs), steps / seconds if seconds > 0 else None)


@dataclass(frozen=True)
class Forecast:
    """The batch model at the estimated rate and the window, on the serving version.

    Costs are per cluster and size-aware, from the same ``window_plan.plan_row`` that
    ``eraserd plan`` prints, so the two always agree on the same inputs.
    """

    rate: float
    expected_k: float
    variance_k: float
    p_any: float
    batch_single_s: float
    """Expected batch seconds per window on one device (empty windows count 0)."""
    batch_parallel_s: float
    """The same on ``devices`` devices."""
    single_prompt_s: float
    """``T_s``: one prompt over every private sample, at its own epochs."""
    gain: float
    """Device-seconds of a single prompt over LMEraser's on the same deletions."""


def forecast(
    inputs: window_plan.PlanInputs, rate: float, window_s: float, devices: int
) -> Forecast:
    sizes, seconds = inputs.sizes, inputs.times.seconds

    def row(d: int) -> window_plan.PlanRow:
        full = window_plan.full_retrain_seconds(seconds, d)
        return window_plan.plan_row(
            sizes,
            seconds,
            rate,
            window_s,
            math.inf,
            d,
            full,
            inputs.sample_counts,
            inputs.recluster_share,
            inputs.single_prompt_s,
        )

    one, many = row(1), row(max(1, devices))
    return Forecast(
        rate,
        one.expected_affected,
        one.variance_affected,
        one.p_any,
        one.batch_s,
        many.batch_s,
        float(sum(seconds)) if inputs.single_prompt_s is None else inputs.single_prompt_s,
        window_plan.efficiency_gain(one, inputs),
    )


# ---- scrape-time gauges -------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonState:
    """A snapshot the daemon hands to each scrape."""

    now: float
    started_at: float
    queue: QueueFacts
    model: ModelFacts
    current_version: int | None
    """The version ``CURRENT`` names on disk (the serving one may lag after a failed swap)."""
    workers: dict[str, int]
    predicted_batch_s: float
    withdrawn_clusters: int = 0
    """Clusters of the serving version withdrawn from serving (a deletion failed closed)."""


GAUGES: dict[str, str] = {
    "eraserd_queue_pending_requests": "Requests not yet published or failed.",
    "eraserd_queue_pending_samples": "Distinct samples named by pending requests (each once).",
    "eraserd_queue_oldest_pending_age_seconds": "Age of the oldest pending request, else 0.",
    "eraserd_queue_overdue_requests": "Pending requests already past their deadline.",
    "eraserd_last_publish_timestamp_seconds": "Last published batch or serving version.",
    "eraserd_deadline_default_seconds": "Deadline of a request that names none.",
    "eraserd_batch_window_seconds": "The batch window T.",
    "eraserd_batch_predicted_seconds": "Moving average of batch durations (deadline rule).",
    "eraserd_poisson_rate_samples_per_second": "Estimated deletion rate (lambda hat).",
    "eraserd_poisson_expected_affected_clusters": "E[K] per window (Eq. 9).",
    "eraserd_poisson_affected_clusters_variance": "Var[K] per window (Eq. 17).",
    "eraserd_poisson_any_affected_probability": "P(K >= 1) per window (Eq. 21).",
    "eraserd_poisson_expected_batch_single_device_seconds": "Expected batch s/window, 1 device.",
    "eraserd_poisson_expected_batch_seconds": "Expected batch s/window, d workers up.",
    "eraserd_retune_cluster_mean_seconds": "T_c: mean seconds of recent retune jobs.",
    "eraserd_retune_throughput_image_steps_per_second": "Cluster size x epochs per job second.",
    "eraserd_retune_single_prompt_seconds": "T_s: one prompt retrained on all samples.",
    "eraserd_efficiency_gain_ratio": "Single-prompt over LMEraser device-seconds (Eq. 24).",
    "eraserd_expected_retrain_share": "Share of training data a random deletion retrains.",
    "eraserd_largest_cluster_share": "Largest cluster's share of the training data.",
    "eraserd_registry_version": "Version being served.",
    "eraserd_registry_current_version": "Version CURRENT names on disk.",
    "eraserd_clusters": "Clusters in the serving version.",
    "eraserd_clusters_withdrawn": "Clusters withdrawn from serving: they hold samples whose "
    "deletion missed its deadline.",
    "eraserd_private_samples": "Live private samples in the serving version.",
    "eraserd_workers_up": "Live retune workers.",
    "eraserd_build_info": "Always 1; the build's version and backbone.",
}
"""Every scrape-time gauge and its help text; docs/metrics.md has the full meanings."""
GAUGE_LABELS = {
    "eraserd_private_samples": ("split",),
    "eraserd_workers_up": ("device",),
    "eraserd_build_info": ("version", "backbone"),
}


class StateCollector:
    """Computes every gauge from one ``DaemonState`` per scrape."""

    def __init__(
        self,
        cfg: Config,
        read_state: Callable[[], DaemonState],
        jobs: Callable[[], list[tuple[float, float]]],
        version: str,
    ):
        self.cfg, self.read_state, self.jobs, self.version = cfg, read_state, jobs, version

    def describe(self) -> Iterator[Metric]:
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc, labels=GAUGE_LABELS.get(name, ()))

    def collect(self) -> Iterator[Metric]:
        values = self.values(self.read_state(), retune_cost(self.jobs()))
        for name, doc in GAUGES.items():
            fam = GaugeMetricFamily(name, doc, labels=GAUGE_LABELS.get(name, ()))
            for label_values, value in values.get(name, {}).items():
                if value is not None and math.isfinite(value):
                    fam.add_metric(list(label_values), value)
            yield fam

    def values(self, s: DaemonState, cost: RetuneCost) -> dict[str, dict[tuple, float | None]]:
        """Every gauge's samples, keyed by label values; ``None`` while unknown."""
        d, q, m = self.cfg.daemon, s.queue, s.model
        since = min(s.started_at, q.first_submitted or s.started_at)
        rate = estimate_rate(q.recent_samples, s.now - since, d.rate_horizon_s, d.batch_window_s)
        f = forecast(m.plan, rate, d.batch_window_s, sum(s.workers.values()))
        oldest = 0.0 if q.oldest_pending is None else max(0.0, s.now - q.oldest_pending)
        last = max(q.last_published or m.created_at, m.created_at)
        one = {
            "eraserd_queue_pending_requests": q.pending_requests,
            "eraserd_queue_pending_samples": q.pending_samples,
            "eraserd_queue_oldest_pending_age_seconds": oldest,
            "eraserd_queue_overdue_requests": q.overdue,
            "eraserd_last_publish_timestamp_seconds": last,
            "eraserd_deadline_default_seconds": d.default_deadline_s,
            "eraserd_batch_window_seconds": d.batch_window_s,
            "eraserd_batch_predicted_seconds": s.predicted_batch_s,
            "eraserd_poisson_rate_samples_per_second": f.rate,
            "eraserd_poisson_expected_affected_clusters": f.expected_k,
            "eraserd_poisson_affected_clusters_variance": f.variance_k,
            "eraserd_poisson_any_affected_probability": f.p_any,
            "eraserd_poisson_expected_batch_single_device_seconds": f.batch_single_s,
            "eraserd_poisson_expected_batch_seconds": f.batch_parallel_s,
            "eraserd_retune_cluster_mean_seconds": cost.cluster_s,
            "eraserd_retune_throughput_image_steps_per_second": cost.throughput,
            "eraserd_retune_single_prompt_seconds": f.single_prompt_s,
            "eraserd_efficiency_gain_ratio": f.gain,
            "eraserd_expected_retrain_share": m.retrain_share,
            "eraserd_largest_cluster_share": m.largest_share,
            "eraserd_registry_version": m.version,
            "eraserd_registry_current_version": s.current_version,
            "eraserd_clusters": len(m.sizes),
            "eraserd_clusters_withdrawn": s.withdrawn_clusters,
        }
        out: dict[str, dict[tuple, float | None]] = {
            k: {(): None if v is None else float(v)} for k, v in one.items()
        }
        out["eraserd_private_samples"] = {("train",): m.train, ("test",): m.test}
        out["eraserd_workers_up"] = {(dev,): n for dev, n in sorted(s.workers.items())}
        out["eraserd_build_info"] = {(self.version, self.cfg.backbone.name): 1.0}
        return out


# ---- the daemon's metrics -----------------------------------------------------------------


class DaemonMetrics:
    """Owns the registry behind ``GET /metrics``; the daemon reports events here."""

    def __init__(
        self, cfg: Config, read_state: Callable[[], DaemonState], version: str, model: ModelFacts
    ):
        self.registry = CollectorRegistry()
        reg = self.registry
        self._jobs: deque[tuple[float, float]] = deque(model.jobs, maxlen=RECENT_JOBS)
        self._jobs_lock = threading.Lock()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=reg)

        self.requests = counter("eraserd_deletion_requests", "Deletion requests accepted.")
        self.samples = counter("eraserd_deletion_samples", "Samples named by accepted requests.")
        self.batches = counter("eraserd_batches", "Batch attempts by outcome.", ("outcome",))
        for outcome in OUTCOMES:
            self.batches.labels(outcome)
        self.failed = counter(
            "eraserd_deletion_requests_failed",
            "Requests that ended unpublished (failed closed), by cause.",
            ("cause",),
        )
        for cause in FAILURE_CAUSES:
            self.failed.labels(cause)
        self.misses = counter(
            "eraserd_deadline_misses", "Requests published after their deadline, or failed at it."
        )
        self.reclusters = counter("eraserd_reclusters", "Published batches that reclustered.")
        self.swaps = counter("eraserd_registry_swaps", "Serving snapshot swaps.")
        self.latency = histogram(
            "eraserd_deletion_latency_seconds", "Submission to publication.", LATENCY_BUCKETS
        )
        self.affected = histogram(
            "eraserd_batch_affected_clusters", "Observed K per batch.", AFFECTED_BUCKETS
        )
        self.retune = histogram(
            "eraserd_retune_cluster_seconds", "Each cluster retune job.", RETUNE_BUCKETS
        )
        self.duration = histogram(
            "eraserd_batch_duration_seconds", "Each published batch.", RETUNE_BUCKETS
        )
        reg.register(StateCollector(cfg, read_state, self.recent_jobs, version))

    def recent_jobs(self) -> list[tuple[float, float]]:
        with self._jobs_lock:
            return list(self._jobs)

    def submitted(self, samples: int) -> None:
        self.requests.inc()
        self.samples.inc(samples)

    def batch_retried(self) -> None:
        self.batches.labels("retried").inc()

    def requests_failed(self, cause: str, count: int) -> None:
        """``count`` requests failed closed; a failed batch attempt is counted once."""
        self.batches.labels("failed").inc()
        self.failed.labels(cause).inc(count)
        if cause == "deadline":
            self.misses.inc(count)

    def batch_published(
        self,
        affected: int,
        reclustered: bool,
        seconds: float,
        jobs: Iterable[tuple[float, float]],
        swapped: bool,
        requests: Iterable[tuple[float, float, float]],
    ) -> None:
        """``jobs``: (seconds, image-steps) retuned by this batch; ``requests``:
        (submitted, deadline, published) of each request it published."""
        self.batches.labels("published").inc()
        self.affected.observe(affected)
        self.duration.observe(seconds)
        if reclustered:
            self.reclusters.inc()
        if swapped:
            self.swaps.inc()
        jobs = list(jobs)
        for job_s, _ in jobs:
            self.retune.observe(job_s)
        with self._jobs_lock:
            self._jobs.extend(jobs)
        for created, deadline, published in requests:
            self.latency.observe(max(0.0, published - created))
            if published > deadline:
                self.misses.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
