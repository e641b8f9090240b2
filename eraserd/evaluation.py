"""``eraserd evaluate``: LMEraser against its baselines on the configured data and backbone,
each built by the production engine (``Eraser.build``) in a scratch state of its own.

Methods (``METHODS``, in this order):

- ``lmeraser``: the configured partition.
- ``single``: one prompt and one head on all the data (``n_clusters: 1``).
- ``random``: as many groups as LMEraser's partition at the same seed, with its cluster
  sizes as the expected shares (``clustering.method: random``, ``randomsplit.py``); an
  input is routed to one group as configured.
- ``shared``: LMEraser's clusters, routing and prompts with one head shared by all of them,
  trained after the prompts on all the data (``sharedhead.py``): every deletion retrains that
  head on every training sample.
- ``sisa``: SISA-style shards over the same trainable parts: as many equal random groups,
  each with its own prompt and head, and every input answered by all of them together (the
  mean of their softmax outputs), not routed. A deletion retrains its own shard.

The configured data is ingested and its features computed once, in ``work/base``; each run
builds on a copy of that store, so every method and seed sees the same held-out split (the
configured seed's) and the seeds vary the clustering sample and training only. The copies
hold the private images: each is deleted as soon as its run ends, and ``work`` with them;
the ``work`` of an evaluation that was killed is deleted by the next one (``scratchdirs``).

Per run: held-out accuracy, build seconds, and what a random single deletion retrains (the
manifest's cost: samples, clusters, and prompt and head parameters). Per method, on its first
seed, the wall time of ``forgets`` real single deletions of training samples drawn by seeded
rank. ``evalreport.py`` turns these into the summary, the orderings and the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from .config import Config, config_from_dict
from .eraser import Eraser
from .evalreport import Run, orderings, render, summarize
from .executor import Executor, create_executor
from .ids import rank
from .manifest import Manifest
from .materialize import load_views
from .model.backbone import Backbone
from .model.features import ensure_features
from .scratchdirs import EVALUATE, make_owned, sweep_stale
from .sharedhead import shared_head_run
from .training.engine import logits_batch

log = logging.getLogger("eraserd.evaluate")

METHODS = ("lmeraser", "single", "random", "shared", "sisa")


def method_config(
    cfg: Config, method: str, seed: int, state_dir: Path, sizes: Sequence[int] | None = None
) -> Config:
    """``cfg`` with its clustering set for ``method`` (``sizes``: LMEraser's cluster sizes,
    which ``random`` copies), its seed and its state dir."""
    raw = cfg.to_dict()
    raw["state_dir"] = str(state_dir)
    raw["seed"] = seed
    c = raw["clustering"]
    free = {"distance_threshold": None, "max_cluster_share": None, "min_cluster_points": 1}
    if method == "single":
        c.update(free, n_clusters=1, method="adaptive", shares=None)
    elif method in ("random", "sisa"):
        if not sizes:
            raise ValueError(f"the {method} baseline copies LMEraser's clusters: build it first")
        shares = list(sizes) if method == "random" else None
        c.update(free, n_clusters=len(sizes), method="random", shares=shares)
    elif method.startswith("prompts="):
        c.update(free, n_clusters=int(method.split("=")[1]), method="adaptive", shares=None)
    elif method != "lmeraser":
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    return config_from_dict(raw)


QUICK_TRAINING = {"epochs": 2, "min_steps": 30}
"""What ``--quick`` trains (each at most): on the embedded default, about 2 minutes for the
four methods on 2 cores, and the orderings show (LMEraser 81.7% against random's 67.3%)."""


def quick_config(cfg: Config) -> Config:
    """``cfg`` with short training (``QUICK_TRAINING``, never longer than configured)."""
    t = cfg.training
    return with_training(
        cfg,
        min(t.epochs, QUICK_TRAINING["epochs"]),
        min(t.min_steps, QUICK_TRAINING["min_steps"]),
    )


def with_training(cfg: Config, epochs: int | None, min_steps: int | None) -> Config:
    """``cfg`` with these ``training.epochs`` and ``min_steps`` (None keeps it); the warmup
    is shortened to fit."""
    raw = cfg.to_dict()
    t = raw["training"]
    t["epochs"] = t["epochs"] if epochs is None else epochs
    t["min_steps"] = t["min_steps"] if min_steps is None else min_steps
    t["warmup_epochs"] = min(t["warmup_epochs"], t["epochs"])
    return config_from_dict(raw)


def prompt_params(cfg: Config) -> int:
    """Trainable parameters of one border prompt: its pixels, 3 channels."""
    s, w = cfg.backbone.image_size, cfg.prompt.width
    return 3 * (s * s - (s - 2 * w) ** 2)


def head_params(num_features: int, num_classes: int) -> int:
    """Trainable parameters of one linear head: weights and biases."""
    return (num_features + 1) * num_classes


def cluster_params(cfg: Config, num_features: int, num_classes: int) -> int:
    """Trainable parameters of one cluster: its border prompt and its linear head."""
    return prompt_params(cfg) + head_params(num_features, num_classes)


def _run(method: str, seed: int, m: Manifest, build_s: float, params: int) -> Run:
    cost = m.cost or {}
    p = cost.get("p_recluster", 0.0)
    return Run(
        method=method,
        seed=seed,
        accuracy=float(m.accuracy or 0.0),
        clusters=len(m.clusters),
        train=int(m.samples["train"]),
        build_s=build_s,
        retrain_share=float(cost["expected_retrain_share"]),
        retrain_clusters=(1 - p) + p * float(cost.get("recluster_clusters", 1.0)),
        retrain_compute=float(cost["expected_compute_share"]),
        cluster_params=params,
    )


def ensemble_accuracy(er: Eraser) -> float:
    """Held-out accuracy of every cluster's prompt and head answering together, by the mean
    of their softmax outputs (SISA's aggregation), instead of one routed cluster's."""
    m = er.registry.load()
    test = er.store.rows("test")
    views = load_views(er.store, test, er.backbone.image_size)
    votes = torch.zeros(len(test), len(m.classes))
    for c in m.clusters:
        prompt = er.registry.get_tensors(c.prompt, f"cluster {c.key} prompt")["prompt"]
        head = er.registry.get_tensors(c.head, f"cluster {c.key} head")
        logits = logits_batch(er.backbone, prompt, head["weight"], head["bias"], views)
        votes += logits.softmax(1)
    labels = torch.tensor([r.label for r in test])
    return float((votes.argmax(1) == labels).double().mean()) if test else 0.0


RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Shares of the training subjects forgotten, cumulatively, for the unlearning curve."""
PROMPTS = (1, 2, 4, 8, 16, 32)
"""Cluster counts (dendrogram cuts, no cap) for the accuracy-against-prompts sweep."""


def unlearning_curve(er: Eraser, ratios: Sequence[float], seed: int) -> list[dict]:
    """Held-out accuracy as training subjects are forgotten (paper, Fig. 6 left): at each
    ratio, that share of the training subjects (in seeded rank order; a sample without a
    subject is its own) is gone, each step one real ``Eraser.forget`` of the next ones."""
    rows = er.store.rows("train")
    subjects = sorted(
        {r.subject_id or f"sample:{r.sample_id}" for r in rows},
        key=lambda s: rank(seed, "evaluate unlearn", s),
    )
    m = er.registry.load()
    out = [_point(0.0, 0, m, 0.0)]
    done = 0
    for ratio in ratios:
        upto = round(ratio * len(subjects))
        if ratio <= 0 or upto <= done:
            continue
        batch = subjects[done:upto]
        t0 = time.perf_counter()
        m = er.forget(
            sample_ids=[s.removeprefix("sample:") for s in batch if s.startswith("sample:")],
            subject_ids=[s for s in batch if not s.startswith("sample:")],
        ).manifest
        out.append(_point(ratio, upto, m, time.perf_counter() - t0))
        done = upto
    return out


def _point(ratio: float, subjects: int, m: Manifest, seconds: float) -> dict:
    return {
        "ratio": ratio,
        "subjects_forgotten": subjects,
        "train": int(m.samples["train"]),
        "accuracy": float(m.accuracy or 0.0),
        "clusters": len(m.clusters),
        "retrained": len(m.change.retrained),
        "forget_s": seconds,
    }


def time_forgets(
    er: Eraser, n: int, seed: int, then: Callable[[], object] | None = None
) -> tuple[list[float], list[float]]:
    """Wall seconds of ``n`` single forgets, of the training samples of lowest seeded rank,
    and of ``then`` run after each (empty without it). For the shared head, ``then`` trains
    the head again and re-scores the held-out set, as a forget re-scores what it retrains."""
    train = [r.sample_id for r in er.store.rows("train")]
    victims = sorted(train, key=lambda i: rank(seed, "evaluate forget", i))[:n]
    out: list[float] = []
    after: list[float] = []
    for victim in victims:
        t0 = time.perf_counter()
        er.forget(sample_ids=[victim])
        out.append(time.perf_counter() - t0)
        if then is not None:
            t0 = time.perf_counter()
            then()
            after.append(time.perf_counter() - t0)
    return out, after


def shared_run(er: Eraser, lm: Run, seed: int, num_features: int, classes: int) -> Run:
    """The shared-head baseline on ``er``'s LMEraser build (``lm``, its run): the same
    clusters and prompts, one head trained on all the data. A deletion retrains its
    clusters' prompts as LMEraser's does and the head on every sample: one backbone pass
    each, counted as a full training step in the work share (an upper bound)."""
    accuracy, head_s = shared_head_run(er, seed)
    return dataclasses.replace(
        lm,
        method="shared",
        accuracy=accuracy,
        build_s=lm.build_s + head_s,
        retrain_share=1.0,
        retrain_compute=lm.retrain_compute + 1 / er.cfg.training.epochs_for(lm.train),
        cluster_params=prompt_params(er.cfg),
        shared_params=head_params(num_features, classes),
    )


@dataclasses.dataclass
class _Scratch:
    """The evaluation's scratch directory: the ingested base store, and what builds on it."""

    cfg: Config
    work: Path
    backbone: Backbone
    executor: Executor
    say: Callable[[str], object]

    @contextlib.contextmanager
    def built(
        self, method: str, seed: int, sizes: Sequence[int] | None = None, keep: str | None = None
    ) -> Iterator[tuple[Eraser, Manifest, float]]:
        """A fresh copy of the base store with ``method`` built on it at ``seed``: the
        Eraser, the manifest and the build's seconds. The copy is deleted afterwards; with
        ``keep``, a copy of the built state is kept under that name first (``opened``)."""
        with self._state(f"{method}-seed{seed}", self.work / "base", method, seed, sizes) as er:
            self.say(f"building {method}, seed {seed}")
            t0 = time.perf_counter()
            m = er.build()
            seconds = time.perf_counter() - t0
            self.say(
                f"{method}, seed {seed}: accuracy {(m.accuracy or 0):.2%}, "
                f"{len(m.clusters)} clusters, built in {seconds:.1f} s"
            )
            if keep is not None:  # nothing writes between the build's commit and the copy
                shutil.copytree(er.cfg.state_dir, self.work / keep)
            yield er, m, seconds

    @contextlib.contextmanager
    def opened(self, name: str, seed: int) -> Iterator[Eraser]:
        """The LMEraser state kept as ``name`` by ``built``, deleted afterwards."""
        with self._state(name, None, "lmeraser", seed, None) as er:
            yield er

    @contextlib.contextmanager
    def _state(
        self, name: str, source: Path | None, method: str, seed: int, sizes: Sequence[int] | None
    ) -> Iterator[Eraser]:
        state = self.work / name
        try:
            if source is not None:
                shutil.copytree(source, state)
            mcfg = method_config(self.cfg, method, seed, state, sizes)
            with Eraser(mcfg, backbone=self.backbone, executor=self.executor) as er:
                yield er
        finally:
            shutil.rmtree(state, ignore_errors=True)


def _measure(
    er: Eraser,
    run: Run,
    forgets: int,
    shared: bool,
    dim: int,
    classes: int,
) -> tuple[list[Run], dict[str, list[float]]]:
    """``run``'s method measured on its build ``er``: its accuracy (SISA's by its vote), the
    shared-head baseline on LMEraser's build when ``shared``, and ``forgets`` timed forgets
    (for the shared head, each forget's time plus its head's retraining)."""
    if run.method == "sisa":
        run = dataclasses.replace(run, accuracy=ensemble_accuracy(er))
    runs = [run]
    if shared:
        runs.append(shared_run(er, run, run.seed, dim, classes))
    if not forgets:
        return runs, {}
    head = functools.partial(shared_head_run, er, run.seed) if shared else None
    times, heads = time_forgets(er, forgets, run.seed, head)
    out = {run.method: times}
    if shared:
        out["shared"] = [a + b for a, b in zip(times, heads)]
    return runs, out


def evaluate(
    cfg: Config,
    seeds: Sequence[int],
    forgets: int,
    scratch: Path | None = None,
    methods: Sequence[str] = METHODS,
    ratios: Sequence[float] = (),
    prompts: Sequence[int] = (),
    say: Callable[[str], object] = log.info,
) -> dict:
    """Build every method with every seed in a new directory under ``scratch`` (the system's
    temp dir by default), deleted at the end, and report (``evalreport``). ``ratios``: the
    unlearning curve of LMEraser at the first seed; ``prompts``: its accuracy at each of
    these cluster counts."""
    if {"random", "shared", "sisa"} & set(methods) and "lmeraser" not in methods:
        raise ValueError(
            "the random, shared and sisa baselines copy LMEraser's clusters: add lmeraser"
        )
    order = [m for m in METHODS if m in methods]
    runs: list[Run] = []
    forget_s: dict[str, list[float]] = {}
    curve: list[dict] = []
    sweep: list[dict] = []
    root = scratch if scratch is not None else Path(tempfile.gettempdir())
    for stale in sweep_stale(root, EVALUATE):
        say(f"removed {stale}: the scratch states of an evaluation that was killed")
    work = make_owned(root, EVALUATE)  # private copies of the data: swept if this is killed
    try:
        base_cfg = method_config(cfg, "lmeraser", cfg.seed, work / "base")
        with Eraser(base_cfg) as er:
            say("ingesting the data and computing its features once")
            if er.store.is_empty():
                er.ingest()
            ensure_features(er.store, er.backbone, er.store.rows())
            backbone, classes = er.backbone, len(er.store.classes())
        dim = backbone.num_features
        params = cluster_params(cfg, dim, classes)
        executor = create_executor(base_cfg, backbone)  # jobs carry their clusters and seeds
        box = _Scratch(cfg, work, backbone, executor, say)
        try:
            for seed in seeds:
                first = seed == seeds[0]
                sizes: list[int] | None = None
                for method in order:
                    if method == "shared":  # measured on LMEraser's build
                        continue
                    keep = "curve" if method == "lmeraser" and first and ratios else None
                    with box.built(method, seed, sizes, keep) as (er, m, seconds):
                        if method == "lmeraser":
                            sizes = list(m.sizes.values())
                        new, times = _measure(
                            er,
                            _run(method, seed, m, seconds, params),
                            forgets if first else 0,
                            method == "lmeraser" and "shared" in order,
                            dim,
                            classes,
                        )
                        runs += new
                        forget_s.update(times)
            if ratios:  # from seed 0's LMEraser build, kept before its timed forgets
                with box.opened("curve", seeds[0]) as er:
                    curve = unlearning_curve(er, ratios, seeds[0])
            for k in prompts:
                one = [r for r in runs if k == 1 and r.method == "single" and r.seed == seeds[0]]
                if one:  # one prompt: the single baseline, already built
                    sweep.append({"n_clusters": 1, **one[0].to_dict()})
                    continue
                with box.built(f"prompts={k}", seeds[0]) as (er, m, seconds):
                    run = _run(f"prompts={k}", seeds[0], m, seconds, params)
                    sweep.append({"n_clusters": k, **run.to_dict()})
        finally:
            executor.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs, forget_s, order)
    checks = orderings(summary)
    return {
        "methods": summary,
        "runs": [r.to_dict() for r in runs],
        "orderings": checks,
        "unlearning": curve,
        "prompts": sweep,
        "table": render(summary, checks, curve, sweep),
    }
