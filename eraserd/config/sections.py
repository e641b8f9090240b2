"""The config's sections: frozen dataclasses, each checking its own values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BUILTIN_DIGITS = "builtin:digits"
BUILTIN_LFW = "builtin:lfw"
BUILTIN_LITE0 = "builtin:efficientnet_lite0"


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class DataConfig:
    source: str = BUILTIN_DIGITS
    """``builtin:digits``, ``builtin:lfw``, an image folder (one subfolder per class) or a
    manifest ``.csv``."""
    test_fraction: float = 0.2
    """Share of subjects held out for reporting accuracy; never trained on."""
    classes: tuple[str, ...] | None = None
    """Allowed labels. Default: the labels found at ingest (folder names for a folder)."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.test_fraction < 1.0, "test_fraction must be in [0, 1)")
        _check(bool(self.source.strip()), "source must not be empty")
        if self.classes is not None:
            _check(len(self.classes) >= 2, "classes needs at least two classes")
            _check(len(set(self.classes)) == len(self.classes), "classes holds duplicates")


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "efficientnet_lite0"
    """Any timm model name."""
    weights: str | None = BUILTIN_LITE0
    """``builtin:efficientnet_lite0``, a local ``.safetensors``/``.pth`` state dict, or null for
    random weights (tests only)."""
    image_size: int = 64
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name must not be empty")
        _check(8 <= self.image_size <= 1024, "image_size must be between 8 and 1024")
        _check(all(s > 0 for s in self.std), "std values must be positive")


@dataclass(frozen=True)
class ClusteringConfig:
    sample_size: int = 1000
    """Points that go through hierarchical clustering; the rest join the nearest prototype."""
    distance_threshold: float | None = 17.4
    """Average-linkage merge threshold in feature space (paper: 10 on ViT-B/16)."""
    n_clusters: int | None = None
    """Alternative to the threshold: cut the dendrogram into at most this many clusters."""
    max_cluster_share: float | None = None
    """Cap on a cluster's share of the data, estimated on the clustering sample: a cluster
    over it is split along its own sub-dendrogram. Smaller caps make deletions cheaper."""
    min_cluster_points: int = 1
    """Least clustering-sample points a cluster keeps: a smaller cluster (an outlier, or a
    sliver the cap cut off) is dissolved, its points joining the nearest cluster the cap
    allows. Tiny clusters train on a handful of images yet attract held-out inputs."""
    method: Literal["adaptive", "random"] = "adaptive"
    """``adaptive``: hierarchical clustering of the sample, the rest joining the nearest
    prototype (the paper's method). ``random``: each sample joins one of ``n_clusters``
    groups by a seeded hash of its own id (the paper's baseline, ``randomsplit.py``): a
    deletion retrains its own group only, but groups share no structure, which costs
    accuracy. Needs ``n_clusters`` (and ``distance_threshold: null``)."""
    shares: tuple[float, ...] | None = None
    """With ``method: random``: each group's expected share of the data (any positive
    weights, ``n_clusters`` of them); null: equal shares."""

    def __post_init__(self) -> None:
        _check(self.method in ("adaptive", "random"), "method must be adaptive or random")
        if self.method == "random":
            _check(
                self.n_clusters is not None and self.distance_threshold is None,
                "method random needs n_clusters (and distance_threshold: null)",
            )
            _check(
                self.max_cluster_share is None and self.min_cluster_points == 1,
                "method random takes no max_cluster_share or min_cluster_points: the shares "
                "set the groups' sizes",
            )
            assert self.n_clusters is not None
            if self.shares is not None:
                _check(
                    len(self.shares) == self.n_clusters
                    and all(math.isfinite(w) and w > 0 for w in self.shares),
                    f"shares must be {self.n_clusters} positive numbers (one per group)",
                )
        else:
            _check(self.shares is None, "shares applies to method random only")
        _check(self.sample_size >= 1, "sample_size must be at least 1")
        _check(
            1 <= self.min_cluster_points <= self.sample_size,
            f"min_cluster_points must be between 1 and sample_size ({self.sample_size})",
        )
        if self.max_cluster_share is not None:
            _check(0 < self.max_cluster_share <= 1, "max_cluster_share must be in (0, 1] or null")
            _check(
                self.max_cluster_share * self.sample_size >= 2,
                "max_cluster_share must allow at least 2 clustering-sample points per cluster "
                f"(max_cluster_share * sample_size >= 2; here {self.sample_size} points)",
            )
        _check(
            (self.distance_threshold is None) != (self.n_clusters is None),
            "set exactly one of distance_threshold and n_clusters",
        )
        if self.distance_threshold is not None:
            _check(self.distance_threshold > 0, "distance_threshold must be positive")
        if self.n_clusters is not None:
            _check(self.n_clusters >= 1, "n_clusters must be at least 1")


@dataclass(frozen=True)
class RoutingConfig:
    method: Literal["neighbors", "prototype"] = "neighbors"
    """How an input picks its cluster. ``neighbors``: its ``neighbors`` nearest training points
    vote, each for its own cluster. ``prototype``: the nearest prototype (the paper's rule,
    which is also how training points are assigned). Routing never changes what a cluster
    trains on, so switching it needs no retraining, only a new version."""
    neighbors: int = 5
    """Votes per input with ``method: neighbors``; ties go to the cluster of the nearest voter."""
    points_per_cluster: int | None = None
    """Cap on each cluster's routing points (its members of lowest seeded rank); null keeps
    every member. The model stores K x this many feature vectors (float32)."""

    def __post_init__(self) -> None:
        _check(self.neighbors >= 1, "neighbors must be at least 1")
        if self.points_per_cluster is not None:
            _check(self.points_per_cluster >= 1, "points_per_cluster must be at least 1 or null")


@dataclass(frozen=True)
class PromptConfig:
    width: int = 8
    """Border width in pixels at ``backbone.image_size`` (paper: 30 at 224)."""
    init_std: float = 0.01

    def __post_init__(self) -> None:
        _check(self.width >= 1, "width must be at least 1")
        _check(self.init_std >= 0, "init_std must not be negative")


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4
    """Random translation of up to this many pixels (zero padding, then crop)."""
    hflip: bool = False

    def __post_init__(self) -> None:
        _check(self.crop_padding >= 0, "crop_padding must not be negative")


def cluster_epochs(n: int, epochs: int, batch_size: int, min_steps: int) -> int:
    """Epochs a cluster of ``n`` samples trains: ``epochs``, or more when a cluster is so
    small that ``epochs`` would give it fewer than ``min_steps`` optimisation steps. A
    function of the cluster's own size only, so training stays exact."""
    per_epoch = max(1, math.ceil(n / batch_size))
    return max(epochs, math.ceil(min_steps / per_epoch))


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 12
    min_steps: int = 0
    """Each cluster trains at least this many optimisation steps: small clusters get more
    epochs. 0 turns it off."""
    batch_size: int = 32
    prompt_lr: float = 1.0
    head_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs must be at least 1")
        _check(self.min_steps >= 0, "min_steps must not be negative")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.prompt_lr >= 0, "prompt_lr must not be negative")
        _check(self.head_lr >= 0, "head_lr must not be negative")
        _check(0 <= self.momentum < 1, "momentum must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay must not be negative")
        _check(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs must be in [0, epochs]")

    def epochs_for(self, n: int) -> int:
        """Epochs of a cluster of ``n`` samples (see ``cluster_epochs``)."""
        return cluster_epochs(n, self.epochs, self.batch_size, self.min_steps)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "cpu"
    num_threads: int = 2
    """Fixed intra-op thread count: CPU results are bitwise reproducible only at a fixed count."""
    deterministic: bool = True
    """Bitwise reproducible retunes: each cluster's micro-batch goes through the backbone on
    its own, with deterministic kernels. ``false`` packs many clusters into one backbone pass
    (fast on GPUs); results then match solo training only up to float rounding."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Backbone passes of the retune engine; ``auto``: bf16 on CUDA when not deterministic."""
    compile: bool = False
    """``torch.compile`` the backbone once per worker (pays off on GPUs for long batches)."""
    feature_batch: int = 16
    """Images per backbone pass when computing routing features. Every pass has exactly this
    shape (a short batch is padded), so a feature never depends on which images share its
    pass. Larger builds faster and makes one prediction slower; changing it recomputes the
    cached features."""

    def __post_init__(self) -> None:
        _check(
            self.device == "cpu" or self.device.startswith("cuda"), "device must be cpu or cuda[:N]"
        )
        _check(self.num_threads >= 1, "num_threads must be at least 1")
        _check(1 <= self.feature_batch <= 4096, "feature_batch must be between 1 and 4096")
        _check(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16")

    @property
    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.device.startswith("cuda") and not self.deterministic else "fp32"


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """``auto`` or ``ray://host:port`` joins an existing cluster; null starts a local one."""
    num_gpus_per_job: float = 1.0
    """GPUs reserved per retune job (paper: one cluster job per device)."""
    num_cpus_per_job: float = 1.0
    device: str = "auto"
    """Device inside a Ray worker: ``auto`` means its assigned GPU if it sees one, else CPU."""
    local_num_gpus: int | None = None
    """For a local Ray only: GPUs to advertise (tests advertise fake ones)."""

    def __post_init__(self) -> None:
        _check(self.num_gpus_per_job >= 0, "num_gpus_per_job must not be negative")
        _check(self.num_cpus_per_job > 0, "num_cpus_per_job must be positive")
        _check(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            "device must be auto, cpu or cuda[:N]",
        )


@dataclass(frozen=True)
class ExecutorConfig:
    backend: Literal["inline", "local", "ray"] = "local"
    """``local``: one worker process per device; ``ray``: Ray tasks; ``inline``: in-process."""
    devices: str | tuple[str, ...] = "auto"
    """``auto`` (every visible CUDA device, else the CPU) or a list like [cuda:0, cuda:1]."""
    max_retries: int = 2
    """A failed job is retried this many times, on any device, before the batch fails."""
    job_timeout_s: float = 3600.0
    pack_clusters: int | None = None
    """Clusters trained together in one job on one device. null: 1 on CPU, where packing
    brings no speed, and up to 64 on CUDA."""
    pack_images: int = 1024
    """Upper bound on the images of one packed step (sum of the clusters' micro-batches)."""
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if isinstance(self.devices, str):
            _check(self.devices == "auto", "devices must be auto or a list of devices")
        else:
            _check(len(self.devices) >= 1, "devices must not be empty")
            for d in self.devices:
                _check(d == "cpu" or d.startswith("cuda"), f"devices holds an unknown device {d!r}")
        _check(self.max_retries >= 0, "max_retries must not be negative")
        _check(self.job_timeout_s > 0, "job_timeout_s must be positive")
        _check(
            self.pack_clusters is None or self.pack_clusters >= 1,
            "pack_clusters must be null or at least 1",
        )
        _check(self.pack_images >= 1, "pack_images must be at least 1")


@dataclass(frozen=True)
class DaemonConfig:
    host: str = "127.0.0.1"
    """Control API bind address; loopback by default."""
    port: int = 8477
    batch_window_s: float = 60.0
    """The batch window T: queued deletions are forgotten together at least this often."""
    max_batch_samples: int = 256
    """Flush early when this many samples are pending."""
    default_deadline_s: float = 72 * 3600.0
    """Deadline of a request that names none (GDPR-style 72 h)."""
    deadline_margin_s: float = 60.0
    """Flush when the earliest deadline minus the predicted batch time is this close."""
    retry_backoff_s: float = 5.0
    """Wait before retrying a batch whose attempt failed (a crash, a dead worker, a full
    disk); doubles after each failed attempt."""
    retry_backoff_max_s: float = 300.0
    """The longest wait between two attempts. A batch is retried until its requests'
    deadlines pass; only then, or for an invalid request, does a request fail (closed)."""
    withdraw_after_attempts: int | None = 10
    """Fail closed before the deadline too: once a batch has started this many attempts
    without publishing, the clusters holding its samples stop serving until it publishes.
    ``null``: only a passed deadline withdraws."""
    allow_remote: bool = False
    """Allow a ``host`` that is not loopback (``127.0.0.0/8``, ``::1``, ``localhost``). The API
    speaks plain HTTP: put a TLS proxy in front of a remote bind."""
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float = 30.0
    """A request body must arrive whole within this many seconds, else 408 and the
    connection is closed (a slow or stalled client cannot hold a connection open)."""
    max_image_pixels: int = 4096 * 4096
    """``/v1/predict`` refuses (413) an image with more pixels, read from its header before
    any pixel is decoded."""
    max_image_aspect: float = 16.0
    """``/v1/predict`` refuses (413) an image whose longer side exceeds this many times its
    shorter side (a 50000x1 image would be resized to a huge one)."""
    token_file: Path | None = None
    """Bearer token file (0600), created on first start. Default: ``state_dir/api-token``."""
    log_json: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severity logged; ``debug`` adds uvicorn's access log. ``eraserd run --log-level``
    overrides it."""
    rate_horizon_s: float = 3600.0
    """Look-back of the deletion-rate estimate (the Poisson model's rate) in ``/metrics``."""
    request_retention_s: float = 30 * 86400.0
    """Published and failed requests are deleted from the queue this long after their last
    change (their raw ids went at publication; certificates stay in the audit log)."""

    def __post_init__(self) -> None:
        _check(bool(self.host), "host must not be empty")
        _check(0 <= self.port <= 65535, "port must be in [0, 65535]")
        _check(self.batch_window_s > 0, "batch_window_s must be positive")
        _check(self.max_batch_samples >= 1, "max_batch_samples must be at least 1")
        _check(self.default_deadline_s > 0, "default_deadline_s must be positive")
        _check(self.deadline_margin_s >= 0, "deadline_margin_s must not be negative")
        _check(self.retry_backoff_s > 0, "retry_backoff_s must be positive")
        _check(
            self.retry_backoff_max_s >= self.retry_backoff_s,
            "retry_backoff_max_s must be at least retry_backoff_s",
        )
        _check(
            self.allow_remote or self.is_loopback(self.host),
            f"host {self.host!r} is not a loopback address (127.0.0.0/8, ::1, localhost); "
            "to serve other hosts set daemon.allow_remote: true (the API is plain HTTP: put "
            "TLS in front)",
        )
        _check(
            self.withdraw_after_attempts is None or self.withdraw_after_attempts >= 1,
            "withdraw_after_attempts must be null or at least 1",
        )
        _check(self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024")
        _check(
            0 < self.body_timeout_s and math.isfinite(self.body_timeout_s),
            "body_timeout_s must be a positive number of seconds",
        )
        _check(
            1 <= self.max_image_pixels <= self.MAX_IMAGE_PIXELS_CAP,
            f"max_image_pixels must be in [1, {self.MAX_IMAGE_PIXELS_CAP}] (Pillow refuses "
            "larger images as decompression bombs)",
        )
        _check(
            1 <= self.max_image_aspect and math.isfinite(self.max_image_aspect),
            "max_image_aspect must be a finite number of at least 1",
        )
        _check(self.rate_horizon_s > 0, "rate_horizon_s must be positive")
        _check(
            self.request_retention_s >= self.rate_horizon_s,
            "request_retention_s must be at least rate_horizon_s (the rate estimate reads "
            "that much history)",
        )

    MAX_IMAGE_PIXELS_CAP: typing.ClassVar[int] = 64 * 1024 * 1024
    """The largest ``max_image_pixels``: below Pillow's decompression-bomb threshold."""

    @staticmethod
    def is_loopback(host: str) -> bool:
        """``localhost``, ``127.0.0.0/8`` or ``::1`` (also IPv4-mapped)."""
        import ipaddress

        if host.lower().rstrip(".") == "localhost":
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path("state")
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        _check(
            2 * self.prompt.width < self.backbone.image_size,
            "prompt.width: must leave an interior: 2 * width < backbone.image_size",
        )

    @property
    def token_path(self) -> Path:
        return self.daemon.token_file or self.state_dir / "api-token"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def section_hash(self, *names: str) -> str:
        """Hash of the named sections, used to decide whether a stored result is reusable."""
        plain = self.to_dict()
        return hashlib.sha256(
            json.dumps({n: plain[n] for n in names}, sort_keys=True).encode()
        ).hexdigest()


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
