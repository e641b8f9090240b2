"""Why two versions differ: what ``eraserd verify`` reports when a rebuild does not match.

``compare_manifests`` is pure (two manifests in, a verdict out); ``differences`` reads the
blobs of both versions to say what exactly differs inside each: the largest absolute
difference of each tensor and how many values differ, or how many members each side lacks.
"""

from __future__ import annotations

import torch

from .manifest import Manifest
from .registry import Registry


def _tensor_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, str]:
    out = {}
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            out[name] = "only in " + ("rebuild" if x is None else "current")
        elif x.shape != y.shape or x.dtype != y.dtype:
            out[name] = f"{x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        elif not torch.equal(x, y):
            delta = (x.double() - y.double()).abs()
            out[name] = (
                f"max |diff| {delta.max().item():.3g}, "
                f"{int((x != y).sum())} of {x.numel()} values differ"
            )
    return out


def differences(current: Manifest, rebuilt: Manifest, mine: Registry, theirs: Registry) -> dict:
    """What exactly differs where two versions disagree: per tensor, the largest absolute
    difference and how many values differ; per member list, how many samples each side has
    that the other lacks. Keys are ``prototypes``, ``routing`` and ``<cluster>.<field>``."""
    out: dict[str, dict[str, str] | str] = {}
    if current.prototypes != rebuilt.prototypes:
        out["prototypes"] = _tensor_diffs(
            mine.get_tensors(current.prototypes), theirs.get_tensors(rebuilt.prototypes)
        )
    for blob in ("points", "routes"):  # every cluster's points (older manifests); test routes
        a_h, b_h = (m.routing.get(blob) for m in (current, rebuilt))
        if a_h and b_h and a_h != b_h:
            out["routing"] = _tensor_diffs(mine.get_tensors(a_h), theirs.get_tensors(b_h))
    new = {c.key: c for c in rebuilt.clusters}
    for a in current.clusters:
        b = new.get(a.key)
        if b is None:
            continue
        for field in ("prompt", "head", "points"):
            if getattr(a, field) and getattr(b, field) and getattr(a, field) != getattr(b, field):
                out[f"{a.key}.{field}"] = _tensor_diffs(
                    mine.get_tensors(getattr(a, field)), theirs.get_tensors(getattr(b, field))
                )
        if a.members != b.members:
            x = set(mine.get_json(a.members)["members"])
            y = set(theirs.get_json(b.members)["members"])
            out[f"{a.key}.members"] = f"{len(x - y)} only in current, {len(y - x)} only in rebuild"
    return out


def _defining(m: Manifest, field: str):
    """A manifest field as far as it defines the model: the nearest-point lists of routing
    are an index whose length depends on past deletions (``routetable.Table.lists``)."""
    value = getattr(m, field)
    if field == "routing":
        return {k: v for k, v in value.items() if k != "lists"}
    return value


def compare_manifests(current: Manifest, rebuilt: Manifest, details: dict | None = None) -> dict:
    """Per-cluster differences between two versions; ``identical`` is the verdict.
    ``details`` (from ``differences``) says what differs inside each differing blob."""
    details = details or {}

    def explain(key: str, field: str) -> str:
        what = details.get(f"{key}.{field}" if key else field)
        if not what:
            return field
        if isinstance(what, str):
            return f"{field} ({what})"
        return f"{field} (" + "; ".join(f"{n}: {d}" for n, d in what.items()) + ")"

    problems: list[str] = []
    for field in (
        "backbone",
        "classes",
        "train_fingerprint",
        "cluster_fingerprint",
        "clustering",
        "prototypes",
        "routing",
    ):
        if _defining(current, field) != _defining(rebuilt, field):
            problems.append(f"{explain('', field)} differs")
    cur = {c.key: c for c in current.clusters}
    new = {c.key: c for c in rebuilt.clusters}
    clusters = {}
    for key in sorted(set(cur) | set(new)):
        a, b = cur.get(key), new.get(key)
        if a is None or b is None:
            clusters[key] = "only in " + ("rebuild" if a is None else "current")
            continue
        diffs = [
            explain(key, f)
            for f in ("members", "prompt", "head", "size", "points")
            if getattr(a, f) != getattr(b, f)
        ]
        trained = (a.platform, b.platform)
        if not diffs:
            clusters[key] = "identical"
        elif a.members == b.members and trained[0] != trained[1]:
            # Same data, same seed, same config: the float results depend on the platform.
            clusters[key] = (
                f"built on a different numeric platform ({trained[0] or 'unrecorded'}; "
                f"rebuilt on {trained[1]}): " + ", ".join(diffs)
            )
        else:
            clusters[key] = "differs: " + ", ".join(diffs)
    if current.keys != rebuilt.keys:
        problems.append("cluster order differs")
    ok = not problems and all(v == "identical" for v in clusters.values())
    return {
        "identical": ok,
        "version": current.version,
        "problems": problems,
        "clusters": clusters,
        "accuracy": {"current": current.accuracy, "rebuilt": rebuilt.accuracy},
        "details": details,
    }
