"""Acceptance (issue 15): one exit-code table for ``eraserd`` and ``eraserctl``.

The README's table ("### Exit codes") must be ``eraserd.errors.EXIT_CODES``, and every row is
made to happen for real, for each command the row names: the real console scripts as
subprocesses, and one real daemon (started once for the module, killed even on failure) for
every ``eraserctl`` row. A row without a trigger here fails, and so does a trigger for a
command the row does not name. Each failure must be one line on stderr, or with ``--json`` one
JSON object ``{"error", "type", "exit_code"}`` on stdout and nothing on stderr.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import small_raw
from daemon_util import BIN, DaemonProc, built_state, free_port, prebuilt_config

from eraserd import ctl, errors, locking
from eraserd.errors import EXIT_CODES
from eraserd.locking import StateLock

README = Path(__file__).resolve().parents[1] / "README.md"
CLICK_USAGE = ("MissingParameter", "NoSuchOption", "BadParameter", "UsageError", "NoSuchCommand")
"""``type`` of click's own usage errors (exit 2)."""


@dataclass(frozen=True)
class Row:
    code: int
    name: str
    commands: tuple[str, ...]
    types: tuple[str, ...]


def readme_rows() -> dict[int, Row]:
    """The README's exit-code table: code, name, commands and ``type`` values, each cell's
    backticked words."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n### Exit codes\n")
    end = text.index("\n#", start + 1)
    lines = [ln for ln in text[start:end].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Code", "Name", "Commands", "`type`", "Meaning"], header
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        (name,) = re.findall(r"`([^`]+)`", cells[1])
        row = Row(
            int(cells[0]),
            name,
            tuple(re.findall(r"`([^`]+)`", cells[2])),
            tuple(re.findall(r"`([^`]+)`", cells[3])),
        )
        assert row.code not in rows, f"exit code {row.code} has two rows"
        rows[row.code] = row
    return rows


ROWS = readme_rows()


def test_the_readme_table_is_the_code_table():
    assert list(ROWS) == list(EXIT_CODES), "the same codes, in the same order"
    for code, e in EXIT_CODES.items():
        assert ROWS[code] == Row(e.code, e.name, e.commands, e.types), code
        assert set(e.commands) <= {"eraserd", "eraserctl"} and e.commands


def test_every_error_class_has_the_code_of_its_row():
    named = {t: code for code, e in EXIT_CODES.items() for t in e.types}
    classes = {
        c.__name__: c
        for module in (errors, locking)
        for c in vars(module).values()
        if inspect.isclass(c) and issubclass(c, errors.EraserdError)
    }
    assert set(named) <= set(classes), "a row names a class that does not exist"
    for name, cls in classes.items():
        if cls.__module__ == "eraserd.errors" or name in named:
            assert name in named, f"{name} is in no row of the table"
            assert cls.exit_code == named[name], name
    assert ctl.WAIT_TIMEOUT == errors.WAIT_TIMEOUT == 7


@dataclass(frozen=True)
class Case:
    args: tuple
    json: bool = False
    """With ``--json``: the error is a JSON object on stdout."""
    says: str = ""
    """Without ``--json``: a substring of the one line on stderr."""
    holds: dict | None = None
    """With ``--json``: fields the object must have."""


@pytest.fixture(scope="module")
def offline(tmp_path_factory, digits_data, lite0_32) -> dict[str, Path]:
    """Paths for ``eraserd``: a config whose state has a first version (a copy of the
    session's), one with an empty state, one with a missing data source, an invalid one, and
    a file that does not exist."""
    root = tmp_path_factory.mktemp("exit-offline")
    built = prebuilt_config(
        root, digits_data / "manifest.csv", lite0_32, built_state(tmp_path_factory)
    )
    paths = {"built": built, "state": Path(yaml.safe_load(built.read_text())["state_dir"])}
    for name, raw in (
        ("empty", small_raw(root / "empty-state", digits_data / "manifest.csv")),
        ("nodata", small_raw(root / "nodata-state", root / "no-such-folder")),
        ("invalid", {**small_raw(root / "state", "builtin:digits"), "seeed": 1}),
    ):
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))
    paths["missing"] = root / "no-such-file.txt"
    return paths


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, digits_data, lite0_32):
    """One real daemon for every ``eraserctl`` row. Its batch window is an hour, so nothing
    submitted here is ever trained on."""
    root = tmp_path_factory.mktemp("exit-daemon")
    config = prebuilt_config(
        root,
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
        window=3600.0,
    )
    d = DaemonProc(config)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


ERASERD = {
    0: lambda p: [Case(("info", "-c", p["built"], "--json"), json=True, holds={"version": 1})],
    1: lambda p: [
        Case(("forget", "-c", p["built"]), says="name at least one"),
        Case(("forget", "-c", p["built"], "--from-file", p["missing"], "--json"), json=True),
    ],
    2: lambda p: [
        Case(("info", "-c", p["invalid"]), says="seeed: unknown key"),
        Case(("info", "--json"), json=True, holds={"type": "MissingParameter"}),
    ],
    3: lambda p: [Case(("build", "-c", p["nodata"], "--json"), json=True)],
    4: lambda p: [
        Case(
            ("forget", "-c", p["built"], "--sample-id", "nobody", "--json"),
            json=True,
            holds={"unknown": ["sample nobody"]},
        )
    ],
    5: lambda p: [
        Case(("info", "-c", p["empty"]), says="no model"),
        Case(("info", "-c", p["empty"], "--json"), json=True, holds={"type": "RegistryError"}),
    ],
    6: lambda p: [  # the test holds the state dir's lock
        Case(("forget", "-c", p["built"], "--sample-id", "s0001"), says="in use by"),
        Case(("forget", "-c", p["built"], "--sample-id", "s0001", "--json"), json=True),
    ],
}
"""Per exit code, what makes ``eraserd`` exit with it, given the ``offline`` paths."""


def _submit(d: DaemonProc, *args) -> tuple:
    return ("submit-deletion", "-c", d.config, *args)


def _nowhere() -> tuple:
    return ("--url", f"http://127.0.0.1:{free_port()}", "--token", "x")


ERASERCTL = {
    0: lambda d, p: [Case(("status", "-c", d.config, "--json"), json=True)],
    1: lambda d, p: [
        Case(_submit(d, "--from-file", p["missing"]), says="cannot read"),
        Case(("predict", "-c", d.config, p["missing"], "--json"), json=True),
    ],
    2: lambda d, p: [
        Case(_submit(d), says="name at least one"),
        Case(_submit(d, "--sample-id", "s0002", "--deadline", "2001-01-01"), says="rejected (422)"),
        Case(
            _submit(d, "--sample-id", "s0002", "--deadline", "2001-01-01", "--json"),
            json=True,
            holds={"status": 422},
        ),
        Case(_submit(d, "--sample-id", "s1", "--deadline", "soon", "--json"), json=True),
        Case(("status", "--json", "--bogus"), json=True, holds={"type": "NoSuchOption"}),
    ],
    4: lambda d, p: [
        Case(("status", "del_missing", "-c", d.config), says="not found (404)"),
        Case(
            _submit(d, "--sample-id", "nobody", "--json"),
            json=True,
            holds={"unknown": ["sample nobody"], "status": 422},
        ),
    ],
    7: lambda d, p: [
        Case(_submit(d, "--sample-id", "s0100", "--wait", "--timeout", "0"), says="after 0s"),
        Case(
            _submit(d, "--sample-id", "s0101", "--wait", "--timeout", "0", "--json"),
            json=True,
            holds={"state": "queued"},
        ),
    ],
    8: lambda d, p: [
        Case(("status", *_nowhere()), says="cannot reach eraserd"),
        Case(("flush", *_nowhere(), "--json"), json=True),
    ],
    9: lambda d, p: [
        Case(("status", "-c", d.config, "--token", "wrong"), says="unauthorized (401)"),
        Case(("flush", "-c", d.config, "--token", "wrong", "--json"), json=True),
    ],
}
"""Per exit code, what makes ``eraserctl`` exit with it, given the daemon and the paths."""

PAIRS = [(code, cmd) for code, row in ROWS.items() for cmd in row.commands]


def rows_of(command: str) -> list[int]:
    """The codes whose README row names ``command``."""
    return [code for code, cmd in PAIRS if cmd == command]


@pytest.mark.parametrize(("command", "cases"), [("eraserd", ERASERD), ("eraserctl", ERASERCTL)])
def test_every_row_has_a_trigger_and_no_more(command, cases):
    """A README row naming a command with no trigger here, or a trigger for a command that
    its row does not name, fails."""
    assert sorted(cases) == rows_of(command)


@pytest.mark.slow
@pytest.mark.parametrize("code", rows_of("eraserd"))
def test_every_eraserd_row_exits_with_its_code(code, offline):
    check("eraserd", code, ERASERD, offline)


@pytest.mark.slow
@pytest.mark.parametrize("code", rows_of("eraserctl"))
def test_every_eraserctl_row_exits_with_its_code(code, daemon, offline):
    check("eraserctl", code, ERASERCTL, offline, daemon)


def check(command: str, code: int, triggers: dict, paths: dict, *daemon: DaemonProc) -> None:
    if code not in triggers:
        pytest.fail(f"README row {code} names {command}, but nothing here makes it exit {code}")
    cases = triggers[code](*daemon, paths)
    assert any(case.json for case in cases), "check --json for every row"
    row = ROWS[code]
    lock = StateLock(paths["state"], "the exit-code test").acquire() if code == 6 else None
    try:
        for case in cases:
            out = subprocess.run(
                [str(BIN / command), *map(str, case.args)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            what = f"{command} {' '.join(map(str, case.args))}"
            assert out.returncode == code, f"{what}: {out.returncode}\n{out.stdout}{out.stderr}"
            if case.json:
                assert out.stderr == "", (what, out.stderr)
                obj = json.loads(out.stdout)
                assert {k: obj.get(k) for k in case.holds or {}} == (case.holds or {}), obj
                if code == 0:
                    assert "error" not in obj, (what, obj)
                    continue
                assert obj["exit_code"] == code and obj["error"], (what, obj)
                types = row.types + (CLICK_USAGE if code == 2 else ())
                assert obj["type"] in types, (what, obj)
            else:
                prefix = "eraserd: error: " if command == "eraserd" else "eraserctl: "
                lines = out.stderr.splitlines()
                assert len(lines) == 1 and lines[0].startswith(prefix), (what, out.stderr)
                assert case.says in lines[0], (what, out.stderr)
    finally:
        if lock is not None:
            lock.release()
