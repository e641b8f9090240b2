"""Failing closed: which clusters withheld samples keep out of service, on a real file."""

from __future__ import annotations

import json

import pytest

from eraserd.errors import EraserdError
from eraserd.withdrawn import Withheld, withdrawn_clusters

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


def test_the_rule_follows_the_samples_not_the_cluster_keys():
    members = {"c1": {"a", "b"}, "c2": {"c"}, "c3": {"d", "e"}}
    assert withdrawn_clusters([], members) == frozenset()
    assert withdrawn_clusters(["b"], members) == {"c1"}
    assert withdrawn_clusters(["b", "e", "zz"], members) == {"c1", "c3"}
    # A recluster moved "b" into c2: c2 is withdrawn, c1 is back.
    moved = {"c1": {"a"}, "c2": {"b", "c"}, "c3": {"d", "e"}}
    assert withdrawn_clusters(["b"], moved) == {"c2"}


def test_withheld_samples_persist_until_deleted(tmp_path):
    w = Withheld(tmp_path)
    assert w.add(["k1", "k2"], "deadline", "2026-11-29T00:00:00+00:00") == 2
    assert w.add(["k2", "k3"], "deadline", "2026-11-29T00:01:00+00:00") == 1
    again = Withheld(tmp_path)  # a restart
    assert again.keys() == {"k1", "k2", "k3"}
    assert again.record["k2"]["since"] == "2026-11-29T00:00:00+00:00"
    assert again.prune({"k1", "k3", "other"}) == 1  # k2 was deleted after all
    assert set(json.loads((tmp_path / "withheld.json").read_text())) == {"k1", "k3"}
    assert again.prune({"k1", "k3"}) == 0


def test_a_torn_record_is_a_clear_error_not_an_empty_one(tmp_path):
    (tmp_path / "withheld.json").write_text('{"k1": {"since": ')
    with pytest.raises(EraserdError, match="withheld.json: unreadable .*restore it"):
        Withheld(tmp_path)
