"""Typed, frozen configuration, read once.

Every section is a frozen dataclass (``sections.py``). ``load_config`` (``loading.py``, the
only reader of YAML) validates the whole file once and raises ``ConfigError`` naming the key
path (``training.epochs: expected an integer, got 'ten'``).
"""

from __future__ import annotations

from .loading import REMOVED, config_from_dict, load_config, yaml_problem
from .sections import (
    BUILTIN_DIGITS,
    BUILTIN_LFW,
    BUILTIN_LITE0,
    AugmentConfig,
    BackboneConfig,
    ClusteringConfig,
    Config,
    DaemonConfig,
    DataConfig,
    ExecutorConfig,
    PromptConfig,
    RayConfig,
    RoutingConfig,
    RuntimeConfig,
    TrainingConfig,
    cluster_epochs,
)

__all__ = [
    "BUILTIN_DIGITS",
    "BUILTIN_LFW",
    "BUILTIN_LITE0",
    "REMOVED",
    "AugmentConfig",
    "BackboneConfig",
    "ClusteringConfig",
    "Config",
    "DaemonConfig",
    "DataConfig",
    "ExecutorConfig",
    "PromptConfig",
    "RayConfig",
    "RoutingConfig",
    "RuntimeConfig",
    "TrainingConfig",
    "cluster_epochs",
    "config_from_dict",
    "load_config",
    "yaml_problem",
]
