"""The library's front door: build, forget, verify, inspect and predict on one state dir.

The CLI (and later the daemon) makes one call here per command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from . import delta
from .clustering import Partition, merge_heights
from .config import Config
from .cost import DEFAULT_EVALUATIONS, Replay, Rule, carried
from .data.sources import open_source
from .data.store import SampleRow, Store
from .errors import DataError, RegistryError
from .executor import Executor, create_executor
from .ids import unit_interval
from .manifest import ROUTING_BLOBS, Manifest
from .materialize import Change, cluster_fingerprint, config_hash, materialize, train_fingerprint
from .model.backbone import Backbone, load_backbone
from .model.features import ensure_features
from .model.predictor import Predictor
from .progress import bar
from .registry import Registry
from .scratchdirs import VERIFY, sweep_stale
from .training.engine import configure_torch
from .unlearning import Settings, decide
from .withdrawn import Withheld, withdrawn_clusters

HELD_OUT = "-"
"""The cluster column of a held-out sample, and ``samples(cluster=...)``'s name for them."""

log = logging.getLogger("eraserd.eraser")


@dataclass(frozen=True)
class ForgetResult:
    version: int
    forgotten: int
    affected: list[str]
    retrained: list[str]
    reclustered: bool
    manifest: Manifest
    """The version now current (the one a batch that changed nothing left current)."""


class Eraser:
    def __init__(
        self, cfg: Config, backbone: Backbone | None = None, executor: Executor | None = None
    ):
        self.cfg = cfg
        configure_torch(cfg.runtime)
        self.store = Store(cfg.state_dir)
        self.registry = Registry(cfg.state_dir)
        sweep_stale(cfg.state_dir, VERIFY)  # copies of private data a killed verify left
        self._backbone = backbone
        self._executor: Executor | None = executor
        self._owns_executor = executor is None

    def close(self) -> None:
        if self._executor is not None and self._owns_executor:
            self._executor.close()
        self._executor = None
        self.store.close()

    def __enter__(self) -> Eraser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.cfg.backbone, self.cfg.runtime)
        return self._backbone

    @property
    def executor(self) -> Executor:
        """Where retune jobs run; a worker pool is started once and kept."""
        if self._executor is None:
            self._executor = create_executor(self.cfg, self.backbone)
        return self._executor

    def has_model(self) -> bool:
        return self.registry.current() is not None

    # ---- build ----------------------------------------------------------------------------

    def ingest(self) -> int:
        """Copy the configured source into the private store (once)."""
        source = open_source(self.cfg.data)
        cfg = self.cfg

        def split_of(sample_id: str, subject_id: str | None) -> str:
            unit = unit_interval(cfg.seed, "test-split", subject_id or f"sample:{sample_id}")
            return "test" if unit < cfg.data.test_fraction else "train"

        with bar(total=None, desc="ingest", unit="img") as progress:
            return self.store.ingest(source, split_of, progress=progress.update)

    def build(self) -> Manifest:
        """Build a version from scratch on the live store (ingesting first if empty)."""
        if self.store.is_empty():
            self.ingest()
        train, test = self.store.rows("train"), self.store.rows("test")
        if not train:
            raise DataError("the store holds no training samples")
        feats = ensure_features(self.store, self.backbone, train + test)
        part = Settings.of(self.cfg).partition([r.sample_id for r in train], feats)
        change = Change("build", cost=self._cost(part, train, feats))
        manifest = self._materialize(part, feats, test, None, change)
        self._publish(manifest)
        return manifest

    def _rule(self) -> Rule:
        return Settings.of(self.cfg).rule

    def _steps(self, m: int) -> float:
        """Image-steps of training a cluster of ``m`` samples."""
        return float(m * self.cfg.training.epochs_for(m))

    def _cost(
        self,
        part: Partition,
        train: list[SampleRow],
        feats: dict[str, np.ndarray],
        evaluations: int = DEFAULT_EVALUATIONS,
        previous: Mapping | None = None,
    ) -> dict:
        """What a random single deletion from ``part`` retrains (see ``cost.py``). With the
        ``previous`` version's cost and an unchanged clustering, the replayed recluster terms
        are carried over instead of replayed."""
        if previous is not None:
            kept = carried(previous, part, self._steps)
            if kept is not None:
                return kept.to_dict()
        points = min(evaluations, len(part.sample))
        replay = Replay(
            [r.sample_id for r in train], feats, self.cfg.seed, self.cfg.clustering.sample_size
        )
        with bar(total=points, desc="deletion cost", unit="replay") as progress:
            cost = replay.cost(self._rule(), part, evaluations, progress.update, self._steps)
        return cost.to_dict()

    def _materialize(
        self,
        part: Partition,
        feats: dict,
        test: list[SampleRow],
        previous: Manifest | None,
        change: Change,
        reuse: Mapping[str, str] | None = None,
    ) -> Manifest:
        return materialize(
            self.cfg,
            self.store,
            self.registry,
            self.backbone,
            part,
            feats,
            test,
            previous,
            change,
            self.executor,
            reuse,
        )

    def _publish(self, manifest: Manifest) -> None:
        sha = self.registry.write_version(manifest)
        self.registry.swap(manifest.version, sha)

    # ---- forget ---------------------------------------------------------------------------

    def current_partition(self, manifest: Manifest) -> Partition:
        key_to_id = {r.key: r.sample_id for r in self.store.rows()}
        members: list[tuple[str, ...]] = []
        sample: set[str] = set()
        for c in manifest.clusters:
            blob = self.registry.get_json(c.members, f"cluster {c.key} members")
            try:
                members.append(tuple(sorted(key_to_id[k] for k in blob["members"])))
                sample.update(key_to_id[k] for k in blob["sample"])
            except KeyError:
                raise RegistryError(
                    f"cluster {c.key}: membership names samples the store "
                    "no longer holds; run `eraserd build --force`"
                ) from None
        protos = self.registry.get_tensors(manifest.prototypes, "prototypes")["prototypes"]
        return Partition(
            manifest.keys,
            protos.numpy(),
            tuple(members),
            frozenset(sample),
        )

    def forget(
        self,
        sample_ids=(),
        subject_ids=(),
        batch: str | None = None,
        lenient: bool = False,
        events: Callable[[str], None] | None = None,
    ) -> ForgetResult:
        """Exactly unlearn samples: retrain what they touched, then erase every trace.

        ``batch`` names the daemon batch; a batch whose version is already current is only
        finished (purged), never published twice. ``lenient`` skips ids that are no longer
        live instead of refusing. ``events`` is called at "retuning", "written", "swapped"
        and "purging" (fault points of the crash tests, ``faults.py``).
        """
        emit = events or (lambda name: None)
        # A killed verify's copy would keep the samples this forget erases: gone first.
        sweep_stale(self.cfg.state_dir, VERIFY)
        if lenient:
            rows, _, _ = self.store.classify(sample_ids, subject_ids)
        else:
            rows = self.store.resolve(sample_ids, subject_ids)  # unknown ids: raises
        manifest = self.registry.load()
        if batch is not None and manifest.change.batch == batch:
            emit("purging")
            return self._finish(manifest, rows, subject_ids)  # published before a crash
        if not rows:
            return ForgetResult(manifest.version, 0, [], [], False, manifest)
        self.check_blobs(manifest)  # never build a new version on top of a corrupt one
        fp_train = train_fingerprint(
            self.cfg, self.backbone, self.store.classes(), self.executor.device_kind()
        )
        parent = manifest
        fast = delta.plan(
            self.cfg,
            self.store,
            self.registry,
            self.backbone,
            manifest,
            rows,
            fp_train,
            self._steps,
        )
        if fast is not None:  # the clustering stays: touch only the clusters that change
            emit("retuning")
            change = Change("forget", len(rows), False, batch, fast.affected, fast.cost)
            manifest = fast.materialize(change, self.executor)
        else:
            manifest = self._forget_in_full(manifest, rows, batch, fp_train, emit)
        # What the purge will delete: the blobs only the parent used (named in certificates).
        manifest = manifest.with_change(superseded=tuple(sorted(parent.blobs() - manifest.blobs())))
        sha = self.registry.write_version(manifest)
        emit("written")
        self.registry.swap(manifest.version, sha)
        emit("swapped")
        emit("purging")
        return self._finish(manifest, rows, subject_ids)

    def _forget_in_full(
        self,
        manifest: Manifest,
        rows: list[SampleRow],
        batch: str | None,
        fp_train: str,
        emit: Callable[[str], None],
    ) -> Manifest:
        """Decide on the whole partition (``unlearning.decide``) and materialize it."""
        old = self.current_partition(manifest)
        gone = {r.sample_id for r in rows}
        live_train = [r for r in self.store.rows("train") if r.sample_id not in gone]
        live_test = [r for r in self.store.rows("test") if r.sample_id not in gone]
        if not live_train:
            raise DataError("refusing to forget every training sample; nothing was changed")
        feats = ensure_features(self.store, self.backbone, live_test + live_train)
        # A retry after a crash between swap and purge finds the ids already out of the model:
        # the decision ignores ids that are no training member.
        decision = decide(
            old,
            sorted(r.sample_id for r in rows if r.split == "train"),
            Settings.of(self.cfg),
            feats,
            clustering_changed=manifest.cluster_fingerprint
            != cluster_fingerprint(self.cfg, self.backbone),
            training_changed=manifest.train_fingerprint != fp_train,
        )
        part = decision.partition
        # Same clustering and same training settings: the replayed recluster terms still hold.
        same = not decision.recluster and manifest.config_hash == config_hash(self.cfg)
        cost = self._cost(part, live_train, feats, previous=manifest.cost if same else None)
        emit("retuning")
        change = Change("forget", len(rows), decision.recluster, batch, decision.affected, cost)
        return self._materialize(part, feats, live_test, manifest, change, decision.reuse)

    def _finish(self, manifest: Manifest, rows: list[SampleRow], subject_ids) -> ForgetResult:
        """Erase the forgotten samples and every superseded version (idempotent)."""
        self.store.purge(rows, subject_ids)
        self.registry.collect(manifest)
        change = manifest.change
        return ForgetResult(
            manifest.version,
            change.forgotten,
            list(change.affected),
            list(change.retrained),
            change.reclustered,
            manifest,
        )

    def member_keys(self, manifest: Manifest) -> dict[str, set[str]]:
        """Each cluster's members (store keys) in ``manifest``."""
        return {
            c.key: set(self.registry.get_json(c.members, f"cluster {c.key} members")["members"])
            for c in manifest.clusters
        }

    def published_batch(self) -> str | None:
        """The daemon batch that produced the current version (None for a build or a CLI
        forget): a batch named here is published and only needs finishing."""
        return self.registry.load().change.batch

    def reconcile(self) -> int:
        """Purge training samples that the current version dropped but the store still holds
        (a forget that published and then never finished), and superseded versions.

        Returns how many samples were purged. Idempotent.
        """
        manifest = self.registry.load()
        members: set[str] = set().union(*self.member_keys(manifest).values())
        dropped = [r for r in self.store.rows("train") if r.key not in members]
        if dropped:
            log.warning(
                "purging samples the current version dropped",
                extra={"fields": {"samples": len(dropped), "version": manifest.version}},
            )
            self.store.purge(dropped)
        self.registry.collect(manifest)
        return len(dropped)

    def check_blobs(self, manifest: Manifest) -> None:
        """Every blob of ``manifest`` is present and intact (``Registry.check_blob``)."""
        for digest in sorted(manifest.blobs()):
            self.registry.check_blob(digest)

    # ---- inspect --------------------------------------------------------------------------

    def info(self) -> dict:
        m = self.registry.load()
        cost = m.cost or self.current_cost(m)
        return {
            "version": m.version,
            "parent": m.parent,
            "created_at": m.created_at,
            "backbone": dict(m.backbone),
            "classes": list(m.classes),
            "samples": dict(m.samples),
            "clusters": len(m.clusters),
            "cluster_sizes": m.sizes,
            "accuracy": m.accuracy,
            "routing": {k: v for k, v in m.routing.items() if k not in ROUTING_BLOBS},
            "change": m.change.to_dict(),
            "expected_retrain_share": cost["expected_retrain_share"],
            "largest_cluster_share": cost["largest_share"],
            "cost": cost,
        }

    def current_cost(self, manifest: Manifest) -> Mapping:
        """The deletion cost of a version written before manifests carried it."""
        part = self.current_partition(manifest)
        train = [r for r in self.store.rows("train") if r.sample_id in part.cluster_of()]
        return self._cost(part, train, ensure_features(self.store, self.backbone, train))

    def samples(self, cluster: str | None = None) -> list[dict]:
        """Live samples, all or one cluster's; ``cluster="-"`` selects the held-out ones."""
        m = self.registry.load()
        if cluster is not None and cluster != HELD_OUT and cluster not in m.keys:
            raise RegistryError(
                f"no cluster {cluster!r} in version {m.version} "
                f"(use {HELD_OUT!r} for held-out samples)"
            )
        part = self.current_partition(m)
        where, out = part.cluster_of(), []
        for r in self.store.rows():
            key = part.keys[where[r.sample_id]] if r.sample_id in where else None
            if cluster is None or key == cluster or (cluster == HELD_OUT and key is None):
                out.append(
                    {
                        "sample_id": r.sample_id,
                        "subject_id": r.subject_id,
                        "split": r.split,
                        "cluster": key,
                        "in_clustering_sample": r.sample_id in part.sample,
                    }
                )
        return out

    def threshold_table(
        self,
        points: int = 8,
        caps: tuple[float | None, ...] = (None, 0.2, 0.1, 0.05, 0.02),
        evaluations: int = 16,
    ) -> list[dict]:
        """Candidate settings (distance threshold x cluster cap) and what each gives on the
        live training data: clusters, largest share, expected retrain share per deletion.
        ``over_cap`` marks a cap the partition cannot keep: a cluster with one clustering-
        sample point is never split, so caps much below 2/sample_size do not hold.

        Thresholds are picked between the sample's merge heights for log-spaced cluster
        counts; the configured setting is always included. Nothing is built.
        """
        if self.store.is_empty():
            self.ingest()
        c = self.cfg.clustering
        train = self.store.rows("train")
        if not train:
            raise DataError("the store holds no training samples")
        feats = ensure_features(self.store, self.backbone, train)
        replay = Replay([r.sample_id for r in train], feats, self.cfg.seed, c.sample_size)
        heights = merge_heights(np.stack([feats[i] for i in replay.sample]))
        n = len(replay.sample)
        thresholds = []
        for k in _cluster_counts(n, points):  # k clusters need k-1 heights above t
            if k >= n:
                thresholds.append(float(heights[0] / 2))
            elif k == 1:
                thresholds.append(float(heights[-1] * 1.05))
            else:
                thresholds.append(float((heights[n - 1 - k] + heights[n - k]) / 2))
        current = self._rule()
        rules = [current] + [
            Rule(t, None, cap, c.min_cluster_points)
            for cap in dict.fromkeys(caps)
            for t in sorted(set(thresholds))
            if Rule(t, None, cap, c.min_cluster_points) != current
        ]
        out = []
        with bar(total=len(rules), desc="settings", unit="setting") as progress:
            for rule in rules:
                cost = replay.cost(rule, evaluations=evaluations, steps=self._steps)
                out.append(
                    {
                        "method": rule.method,
                        "threshold": rule.distance_threshold,
                        "n_clusters": rule.n_clusters,
                        "max_cluster_share": rule.max_share,
                        "configured": rule == current,
                        "over_cap": rule.max_share is not None
                        and cost.largest_share > rule.max_share,
                        **cost.to_dict(),
                    }
                )
                progress.update(1)
        return out

    def predictor(self) -> Predictor:
        """The current version's serving snapshot, without the clusters that hold samples
        whose deletion failed closed (``withdrawn.py``)."""
        pred = Predictor.load(self.registry, self.backbone)
        withheld = Withheld(self.cfg.state_dir)
        if withheld.record:
            members = self.member_keys(self.registry.load(pred.version))
            pred = pred.withdraw(withdrawn_clusters(withheld.keys(), members))
        return pred


def _cluster_counts(n: int, points: int) -> list[int]:
    """Roughly log-spaced cluster counts from 1 to n."""
    counts = sorted({max(1, min(n, round(v))) for v in np.geomspace(1, n, points)})
    return counts
