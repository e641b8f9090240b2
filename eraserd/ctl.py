"""``eraserctl``: the operator's client for a running ``eraserd run`` daemon."""

from __future__ import annotations

import click

from . import __version__


@click.group()
@click.version_option(__version__, prog_name="eraserctl")
def main() -> None:
    """Talk to a running eraserd daemon (submit deletions, check status, predict)."""
