"""Click pieces shared by ``eraserd``'s commands (``cli.py``, ``cli_planning.py``) and, for
``Group``, by ``eraserctl``."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import progress
from .config import load_config
from .errors import ERROR, EraserdError, RegistryError, error_json


class Group(click.Group):
    """A command group whose own errors honour ``--json``.

    Usage errors (a missing ``--config``, an unknown option or command, a bad value) are
    caught by click before any command runs. With ``--json`` anywhere on the command line,
    they are printed as ``{"error": ..., "type": ..., "exit_code": ...}`` on stdout, like
    every other error, with click's exit code (2, ``USAGE`` in ``eraserd.errors``, for usage
    errors); without it, click prints its usual text.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(json.dumps(error_json(exc)))
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo(json.dumps({"error": "aborted", "type": "Abort", "exit_code": ERROR}))
            sys.exit(ERROR)
        sys.exit(rv if isinstance(rv, int) else 0)


def emit(as_json: bool, payload, text: str) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True) if as_json else text)


def command(fn):
    """Shared options and error handling for every subcommand."""

    @click.option(
        "--config",
        "-c",
        "config_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML config file.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @functools.wraps(fn)
    def wrapper(config_path: Path, as_json: bool, **kwargs):
        progress.set_enabled(not as_json)
        try:
            cfg = load_config(config_path)
            return fn(cfg, as_json, **kwargs)
        except EraserdError as exc:
            if as_json:
                click.echo(json.dumps(error_json(exc)))
            else:
                click.echo(f"eraserd: error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def raise_error(message: str) -> None:
    raise EraserdError(message)


def require_model(cfg) -> None:
    """Commands that read a model fail before they create anything in a new ``state_dir``."""
    from .registry import Registry

    if Registry(cfg.state_dir).current() is None:
        raise RegistryError(f"no model yet in {cfg.state_dir}: run `eraserd build` first")


def eraser_for(cfg, need_model: bool = True):
    from .eraser import Eraser

    if need_model:
        require_model(cfg)
    return Eraser(cfg)
