"""Run ``eraserd`` commands in the test process: the same click commands the console script
runs, without a new interpreter importing torch for each call."""

from __future__ import annotations

import subprocess


def eraserd(*args, check: bool = True) -> subprocess.CompletedProcess:
    """``eraserd ARGS`` in this process, as a ``CompletedProcess`` (exit code, stdout, stderr).
    An exception other than the command's own exit is raised as it is."""
    from click.testing import CliRunner

    from eraserd.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    proc = subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"eraserd {args} failed ({proc.returncode}): {proc.stderr}")
    return proc
