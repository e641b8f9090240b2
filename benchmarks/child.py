"""Run one measurement in a fresh Python process: what the benchmarks compare must not share
an allocator, a kernel cache or an OpenMP setting (libgomp reads it once, at load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

OPENMP_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def run_json(script: str, *args: object, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``python -c script args...`` with only ``env``'s OpenMP settings (on top of this
    process's other variables); its last stdout line is JSON, returned parsed."""
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
