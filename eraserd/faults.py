"""Crash points for the crash tests: ``ERASERD_CRASHPOINT=name`` makes the process SIGKILL
itself when it reaches that point. Unset (always, in production), this does nothing."""

from __future__ import annotations

import os
import signal

ENV = "ERASERD_CRASHPOINT"
POINTS = ("retuning", "written", "swapped")  # a kill after the ack needs no hook


def crashpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
