"""Reading a config: YAML in, a typed ``Config`` out, or a ``ConfigError`` naming the key path.
The only place that reads YAML."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from .sections import Config

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}


def _convert(tp: Any, raw: Any, path: str) -> Any:
    """Check ``raw`` against the annotation ``tp`` and return the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if raw is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(opt, raw, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: invalid value {raw!r}")
    if origin is Literal:
        if raw not in typing.get_args(tp):
            raise ConfigError(f"{path}: must be one of {list(typing.get_args(tp))}, got {raw!r}")
        return raw
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {raw!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(raw))
        if len(raw) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {len(raw)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, raw)))
    if dataclasses.is_dataclass(tp):
        # an annotation names the class; is_dataclass also admits instances
        return _build(typing.cast(type, tp), raw, path)
    if tp is Path:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{path}: expected a path string, got {raw!r}")
        return Path(raw)
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"{path}: expected a number, got {raw!r}")
        return float(raw)
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{path}: expected an integer, got {raw!r}")
        return raw
    if tp in (bool, str):
        if not isinstance(raw, tp):
            raise ConfigError(f"{path}: expected {_TYPE_WORDS[tp]}, got {raw!r}")
        return raw
    raise TypeError(f"unsupported config annotation {tp!r}")  # pragma: no cover


REMOVED = {
    "daemon.max_attempts": (
        "a failed batch is now retried with backoff until its requests' deadlines "
        "(daemon.retry_backoff_s, daemon.retry_backoff_max_s); delete the line"
    ),
}
"""Keys that older releases accepted, with what replaced them."""


def _build(cls: type, raw: Any, path: str) -> Any:
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names, key=str)
    for name in unknown:
        key = f"{path}.{name}" if path else str(name)
        if key in REMOVED:
            raise ConfigError(f"{key}: removed; {REMOVED[key]}")
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(f"{key}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        sub = f"{path}.{name}" if path else name
        kwargs[name] = _convert(hints[name], value, sub)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        explicit = re.match(r"^([\w.]+): (.*)$", str(exc))
        if explicit:
            raise ConfigError(str(exc)) from None
        bad, message = _blame(cls, kwargs, str(exc))
        key = f"{path}.{bad}" if path and bad else (bad or where)
        raise ConfigError(f"{key}: {message}") from None


def _blame(cls: type, kwargs: dict[str, Any], message: str) -> tuple[str, str]:
    """Name the field a ``__post_init__`` check failed on: checks start with the field name."""
    for f in dataclasses.fields(cls):
        if message.startswith(f.name + " "):
            return f.name, message[len(f.name) + 1 :]
    if len(kwargs) == 1:
        return next(iter(kwargs)), message
    return "", message


def config_from_dict(raw: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a plain mapping. Relative paths resolve against ``base_dir``."""
    cfg = _build(Config, raw, "")
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> Config:
    state = cfg.state_dir.expanduser()
    state = state if state.is_absolute() else base / state
    data = cfg.data
    if not data.source.startswith("builtin:"):
        src = Path(data.source).expanduser()
        data = dataclasses.replace(data, source=str(src if src.is_absolute() else base / src))
    bb = cfg.backbone
    if bb.weights is not None and not bb.weights.startswith("builtin:"):
        w = Path(bb.weights).expanduser()
        bb = dataclasses.replace(bb, weights=str(w if w.is_absolute() else base / w))
    daemon = cfg.daemon
    if daemon.token_file is not None:
        tf = daemon.token_file.expanduser()
        daemon = dataclasses.replace(daemon, token_file=tf if tf.is_absolute() else base / tf)
    return dataclasses.replace(
        cfg, state_dir=state.resolve(), data=data, backbone=bb, daemon=daemon
    )


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where (1-based line and column) and what, without PyYAML's source excerpt."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (f"{problem} ({context})" if context else problem)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML file; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return config_from_dict(raw, base_dir=path.resolve().parent)
