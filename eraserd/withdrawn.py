"""Failing closed: samples whose deletion missed its deadline, and the clusters they keep out
of service.

When a deletion's deadline passes before its batch publishes, its samples are *withheld*:
every cluster of the serving version whose members include one stops answering predictions,
and an input routed to it is answered by the nearest cluster still served
(``Predictor.withdraw``). The rule follows the data, not a cluster key, so a recluster that
moves a withheld sample into a new cluster withdraws that cluster too. A cluster returns to
service once it holds no withheld sample: when the samples are deleted after all (the
request submitted again) and the cluster is retuned without them.

The record (``state_dir/withheld.json``) names samples by their store keys (keyed hashes,
never ids); it is written atomically before the request is marked failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import EraserdError
from .fsutil import atomic_write

WITHHELD_FILE = "withheld.json"


def withdrawn_clusters(withheld: Iterable[str], members: Mapping[str, set[str]]) -> frozenset:
    """The clusters whose members include a withheld sample. Pure."""
    held = set(withheld)
    return frozenset(k for k, keys in members.items() if held & keys)


class Withheld:
    """The persisted withheld samples; written by the daemon's batch runner only."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / WITHHELD_FILE
        self.record: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.record = dict(json.loads(self.path.read_text()))
            except (ValueError, TypeError) as exc:
                raise EraserdError(
                    f"{self.path}: unreadable ({exc}); it lists samples whose deletion failed "
                    "closed, so eraserd will not serve without it: restore it from a backup"
                ) from None

    def keys(self) -> set[str]:
        return set(self.record)

    def add(self, keys: Iterable[str], reason: str, since: str) -> int:
        """Withhold samples (by store key); returns how many were new."""
        new = sorted(set(keys) - set(self.record))
        if new:
            for k in new:
                self.record[k] = {"since": since, "reason": reason}
            self._save()
        return len(new)

    def prune(self, live: set[str]) -> int:
        """Forget samples the store no longer holds (deleted after all); returns how many."""
        gone = [k for k in self.record if k not in live]
        if gone:
            for k in gone:
                del self.record[k]
            self._save()
        return len(gone)

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self.record, indent=2, sort_keys=True).encode())
