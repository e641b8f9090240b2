"""The README's example session runs as written (issue 15, acceptance b): every command of the
``A session with eraserctl`` block runs, in order, against a real daemon, and every output line
must match the README's line with only its numbers, hashes and request ids left free. A change
to a command's options or output that the README does not follow fails here.

The session runs on the test suite's small prebuilt model (the embedded default takes minutes
to build), from a directory holding that model's config as ``config.example.yaml`` and the
shipped ``examples/digit.png``. Its data names samples ``s0000`` and subjects ``subj000`` where
the built-in digits say ``digits-0000`` and ``subject-000``: :data:`NAMES` renames them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from daemon_util import BIN, DaemonProc

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SESSION = "### A session with `eraserctl`"
NAMES = {r"\bdigits-(?=\d)": "s", r"\bsubject-(?=\d)": "subj"}
FREE = re.compile(r"del_[0-9a-f]+|\b[0-9a-f]{16}\b|\d+(?:\.\d+)?")
"""What may differ from the README's text: request ids, 16-digit hashes, and numbers."""


def session(text: str) -> list[tuple[str, list[str]]]:
    """The first code block after the session heading, as ``(command, output lines)``:
    a command starts with ``$ `` and a trailing backslash continues it on the next line."""
    block = text.split(SESSION, 1)[1].split("```", 2)[1]
    steps: list[tuple[str, list[str]]] = []
    lines = iter(block.strip("\n").splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            steps.append((" ".join(command.split()), []))
        else:
            assert steps, f"README session: output before the first command: {line!r}"
            steps[-1][1].append(line)
    return steps


def pattern(line: str) -> re.Pattern:
    """A README output line as a regex that leaves ids, hashes and numbers free."""
    out, pos = [], 0
    for m in FREE.finditer(line):
        out.append(re.escape(line[pos : m.start()]))
        token = m.group()
        if token.startswith("del_"):
            out.append(r"del_[0-9a-f]+")
        elif len(token) == 16 and not token.isdigit():
            out.append(r"[0-9a-f]{16}")
        else:
            out.append(r"\d+(?:\.\d+)?")
        pos = m.end()
    out.append(re.escape(line[pos:]))
    return re.compile("".join(out))


def renamed(text: str) -> str:
    for readme, ours in NAMES.items():
        text = re.sub(readme, ours, text)
    return text


def test_the_session_parser_and_patterns():
    steps = session(f"{SESSION}\n\n```\n$ a --x \\\n      --y\none 12\n$ b\n```\n")
    assert steps == [("a --x --y", ["one 12"]), ("b", [])]
    p = pattern("del_4d30: published, 3 sample(s), c379dedd845163df p=0.999")
    assert p.fullmatch("del_99aa: published, 12 sample(s), 0123456789abcdef p=1.0")
    assert not p.fullmatch("del_99aa: failed, 12 sample(s), 0123456789abcdef p=1.0")
    assert not pattern("version 2 (17 clusters)").fullmatch("version 2 (17 prompts)")
    assert renamed("--subject-id subject-000 digits-0001") == "--subject-id subj000 s0001"


@pytest.mark.slow
def test_the_readme_session_runs_as_written(prebuilt, tmp_path):
    steps = session(README.read_text())
    commands = [c.split()[0] for c, _ in steps]
    assert len(steps) >= 5 and set(commands) <= {"eraserctl", "eraserd"}, commands
    cwd = tmp_path / "session"
    cwd.mkdir()
    config = prebuilt()
    shutil.copy(config, cwd / "config.example.yaml")
    for command, _ in steps:  # the files the session names ship with the repository
        for word in command.split():
            if "/" in word and not word.startswith("-"):
                assert (ROOT / word).is_file(), f"the README session uses {word}: not shipped"
                (cwd / word).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / word, cwd / word)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    daemon = DaemonProc(cwd / "config.example.yaml")
    try:
        daemon.wait_ready()
        for command, expected in steps:
            run = subprocess.run(
                ["bash", "-o", "pipefail", "-c", renamed(command)],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert run.returncode == 0, f"$ {command}\nexit {run.returncode}: {run.stderr}"
            got = run.stdout.splitlines()
            want = [renamed(line) for line in expected]
            assert len(got) == len(want), f"$ {command}\nREADME: {want}\ngot:    {got}"
            for w, g in zip(want, got):
                assert pattern(w).fullmatch(g), f"$ {command}\nREADME: {w!r}\ngot:    {g!r}"
    finally:
        daemon.stop()
