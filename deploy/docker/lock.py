"""Write deploy/docker/requirements.lock: the image's Python packages, pinned to the versions
installed in a virtual environment (the one the tests ran in), with PyPI's sha256 hashes.

    .venv/bin/python deploy/docker/lock.py            # rewrites requirements.lock
    .venv/bin/python deploy/docker/lock.py --check    # exit 1 if the lock's pins differ

What is pinned: every package eraserd needs at run time (``[project] dependencies`` with the
extras in ``IMAGE_EXTRAS``), followed through their own requirements as installed, plus the
build backend (setuptools, for ``pip install --no-build-isolation --no-deps .``). Not pinned:
torch and torchvision, which the CUDA base image provides, nor anything reached only through
them (triton, nvidia-*, sympy...); the image keeps the base image's copies. Every hash of a
pinned release is listed (wheels for every platform and the sdist), so pip can pick the file
for the image's Python. Run it with the venv's interpreter: it reads that venv's metadata.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

PROJECT = "eraserd"
IMAGE_EXTRAS: tuple[str, ...] = ()
"""Extras installed in the image (none: it runs the inline and local executors)."""
FROM_BASE_IMAGE = frozenset({"torch", "torchvision"})
BUILD = ("setuptools",)
LOCK = Path(__file__).with_name("requirements.lock")
INDEX = "https://pypi.org/simple"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")


def _wanted(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def pins(project: str = PROJECT, extras=IMAGE_EXTRAS) -> dict[str, str]:
    """{canonical name: installed version} for everything ``project[extras]`` needs in this
    interpreter's environment, minus FROM_BASE_IMAGE and what only they need, plus BUILD."""
    out: dict[str, str] = {}
    todo = [(canonicalize_name(project), frozenset(extras))]
    seen = set()
    while todo:
        name, ext = todo.pop()
        if (name, ext) in seen:
            continue
        seen.add((name, ext))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"lock: {name} is required but not installed here") from None
        if name != canonicalize_name(project):
            out[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            dep = canonicalize_name(req.name)
            if dep in FROM_BASE_IMAGE or not _wanted(req, ext):
                continue
            todo.append((dep, frozenset(canonicalize_name(e) for e in req.extras)))
    for name in BUILD:
        out[canonicalize_name(name)] = metadata.version(name)
    return dict(sorted(out.items()))


def _file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def hashes(name: str, version: str, index: str = INDEX) -> list[str]:
    """The sha256 of every file of ``name`` ``version`` on the index (PEP 691 JSON API)."""
    req = urllib.request.Request(
        f"{index.rstrip('/')}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    want = Version(version)
    found = sorted(
        f["hashes"]["sha256"]
        for f in files
        if _file_version(f["filename"]) == want and not f.get("yanked") and "sha256" in f["hashes"]
    )
    if not found:
        raise SystemExit(f"lock: {index} has no files for {name}=={version}")
    return found


def read_lock(path: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256, ...])} from a lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if m:
            name = canonicalize_name(m[1])
            out[name] = (m[2], [])
        elif line.startswith("--hash=sha256:") and name is not None:
            out[name][1].append(line.removeprefix("--hash=sha256:").rstrip(" \\"))
        else:
            raise ValueError(f"{path}: unexpected line: {line}")
    return out


def render(pinned: dict[str, str], index: str = INDEX) -> str:
    py = ".".join(map(str, sys.version_info[:2]))
    lines = [
        "# Generated by deploy/docker/lock.py from the venv the tests ran in (CPython "
        f"{py}). Do not edit;",
        "# regenerate with: .venv/bin/python deploy/docker/lock.py",
        "# Installed by deploy/docker/Dockerfile with pip install --require-hashes -r.",
        "# torch and torchvision come from the CUDA base image and are not listed.",
    ]
    for name, version in pinned.items():
        digests = hashes(name, version, index)
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{h} \\" for h in digests[:-1]]
        lines.append(f"    --hash=sha256:{digests[-1]}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=LOCK)
    ap.add_argument("--index", default=INDEX, help="a PEP 691 simple index (default: PyPI)")
    ap.add_argument("--check", action="store_true", help="compare pins only; no network")
    args = ap.parse_args()
    pinned = pins()
    if args.check:
        locked = {n: v for n, (v, _) in read_lock(args.out).items()}
        if locked != pinned:
            diff = sorted(set(locked.items()) ^ set(pinned.items()))
            print(f"{args.out} differs from this venv: {diff}", file=sys.stderr)
            return 1
        return 0
    text = render(pinned, args.index)
    args.out.write_text(text)
    print(f"{args.out}: {len(pinned)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
