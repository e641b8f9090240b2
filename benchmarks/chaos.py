"""A long chaos round: many SIGKILLs of a real daemon and its workers under continuous
deletion requests and predictions, then the invariants of ``tests/chaos.py``.

Usage::

    python benchmarks/chaos.py [--kills 200] [--requests 120] [--digits 720] [--seed 0] \\
        [--daemon-share 0.4] [--workdir DIR]

The round runs on real scikit-learn digits written as PNG files (three per subject), the
test suite's small config (EfficientNet-Lite0 at 32 px, 4 clusters, one CPU worker), built
in-process first. It prints the kills, the requests sent, acknowledged, published, failed and
lost, duplicated certificates, predictions and torn reads, deleted ids left on disk, and the
verify and audit results; it exits 1 if any invariant fails. ``make test`` runs the same
round with 20 kills (``tests/test_chaos.py``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402
from chaos import Chaos  # noqa: E402
from conftest import digit_png  # noqa: E402
from daemon_util import reap, write_daemon_config  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from eraserd.config import config_from_dict  # noqa: E402
from eraserd.eraser import Eraser  # noqa: E402


def write_digits(root: Path, n: int) -> Path:
    """``n`` real digits as PNG files and a ``manifest.csv`` with three samples per subject."""
    d = load_digits()
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rel = f"img/{i:05d}.png"
        (root / rel).write_bytes(digit_png(d.images[i % len(d.images)]))
        rows.append((f"s{i:05d}", rel, str(int(d.target[i % len(d.target)])), f"subj{i // 3:04d}"))
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "path", "label", "subject_id"])
        w.writerows(rows)
    return root / "manifest.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--digits", type=int, default=720)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--daemon-share", type=float, default=0.4)
    ap.add_argument("--workdir", default=None, help="Keep the state and logs here.")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="eraserd-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    source = write_digits(root / "digits", args.digits)
    config = write_daemon_config(
        root / "run", source, window=0.5, retry_backoff_s=0.2, retry_backoff_max_s=1.0
    )
    raw = yaml.safe_load(config.read_text())
    with Eraser(config_from_dict({**raw, "executor": {"backend": "inline"}})) as er:
        if er.registry.current() is None:
            print("building the first version ...", file=sys.stderr)
            er.build()
    image = (root / "digits/img/00001.png").read_bytes()
    try:
        chaos = Chaos(
            config,
            image,
            requests=args.requests,
            seed=args.seed,
            daemon_share=args.daemon_share,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        tally = chaos.run(kills=args.kills)
    finally:
        reap()
    print(tally.summary())
    problems = tally.problems(min_kills=args.kills)
    for p in problems:
        print("PROBLEM:", p)
    print(f"state and logs: {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
