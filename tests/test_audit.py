"""The hash-chained audit log of deletion certificates, on real files."""

from __future__ import annotations

import json

import pytest

from eraserd.audit import GENESIS, AuditLog, check_chain

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


def cert(i: int) -> dict:
    return {"request": f"del_{i}", "batch": i, "samples": [f"{i:040x}"], "version": i + 1}


@pytest.fixture
def log3(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", writer=True)
    for i in range(1, 4):
        log.append(cert(i))
    return log


def test_entries_chain_to_each_other(log3):
    entries = log3.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    assert check_chain(log3.lines()) == []
    assert log3.find("del_2")["certificate"] == cert(2)
    assert log3.find("del_9") is None


def test_a_request_is_certified_once(log3):
    again = log3.append({**cert(2), "batch": 99})  # a retried batch
    assert again["seq"] == 2 and again["certificate"]["batch"] == 2
    assert len(log3.lines()) == 3
    reopened = AuditLog(log3.path, writer=True)
    assert reopened.has("del_3") and not reopened.has("del_4")
    assert reopened.append(cert(4))["prev"] == log3.entries()[2]["hash"]


def rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def test_an_edited_entry_is_named(log3):
    lines = log3.lines()
    e = json.loads(lines[1])
    e["certificate"]["samples"] = []  # hide what was deleted
    rewrite(log3, [lines[0], json.dumps(e), lines[2]])
    assert check_chain(log3.lines()) == [
        "entry 2 (seq 2, request del_2): its content does not match its hash (edited)"
    ]


def test_a_rehashed_edit_breaks_the_next_link(log3):
    from eraserd.audit import entry_hash

    lines = log3.lines()
    e = json.loads(lines[1])
    e["certificate"]["version"] = 1
    e["hash"] = entry_hash(e["seq"], e["prev"], e["certificate"])  # a careful forger
    rewrite(log3, [lines[0], json.dumps(e), lines[2]])
    assert check_chain(log3.lines()) == [
        "entry 3 (seq 3, request del_3): does not commit to the entry before it"
    ]


def test_removed_and_garbled_entries_are_named(log3):
    lines = log3.lines()
    rewrite(log3, [lines[0], lines[2]])
    assert check_chain(log3.lines()) == [
        "entry 2 (seq 3, request del_3): sequence number 3, expected 2",
        "entry 2 (seq 3, request del_3): does not commit to the entry before it",
    ]
    rewrite(log3, [lines[0], "{not json", lines[2]])
    assert check_chain(log3.lines()) == ["entry 2: not a well-formed audit entry"]


def test_a_torn_last_line_is_ignored_by_readers_and_dropped_by_the_writer(log3):
    whole = log3.path.read_bytes()
    log3.path.write_bytes(whole + b'{"seq": 4, "prev": "ab')  # a crash mid-append
    reader = AuditLog(log3.path)
    assert len(reader.lines()) == 3 and check_chain(reader.lines()) == []
    assert log3.path.read_bytes().endswith(b'"ab')  # a reader never writes
    writer = AuditLog(log3.path, writer=True)
    assert log3.path.read_bytes() == whole
    assert writer.append(cert(4))["seq"] == 4
    assert check_chain(writer.lines()) == []
