"""Click pieces shared by ``eraserd`` and ``eraserctl``."""

from __future__ import annotations

import json
import sys

import click

from .errors import ERROR, error_json


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
