"""The two checks an operator runs on a state dir.

``verify`` (``eraserd verify``): a rebuild from scratch on the live data, in a private temp
dir, equals the current version bit for bit; if not, ``compare.py`` says where it differs.
``audit_verify`` (``eraserd audit verify``): the certificates' hash chain holds, and nothing a
certificate names is live anywhere on disk.
"""

from __future__ import annotations

import dataclasses
import shutil

from .audit import AUDIT_FILE, AuditLog, check_chain
from .compare import compare_manifests, differences
from .eraser import Eraser
from .errors import ConfigError
from .scratchdirs import VERIFY, make_owned


def audit_verify(er: Eraser) -> dict:
    """Check the deletion certificates: the audit log's hash chain; that each certified
    version is the current one or was superseded; and that no certified sample or
    subject is live anywhere (store rows, objects, cached features, the current
    version's member lists) while each has its tombstone."""
    audit = AuditLog(er.cfg.state_dir / AUDIT_FILE)
    lines = audit.lines()
    problems = check_chain(lines)
    current = er.registry.load()
    pointer = er.registry.current()
    assert pointer is not None  # load() read CURRENT, which is replaced, never removed
    samples: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for e in audit.entries():
        c = e.get("certificate") or {}
        where = f"entry seq {e.get('seq')} (request {c.get('request')})"
        version = c.get("version")
        if not isinstance(version, int) or version > current.version:
            problems.append(
                f"{where}: certifies version {version}, but the current version is "
                f"{current.version}"
            )
        elif version == current.version and c.get("manifest") != pointer[1]:
            problems.append(f"{where}: version {version} is not the manifest CURRENT names")
        samples.update((d, where) for d in c.get("samples") or [])
        subjects.update((d, where) for d in c.get("subjects") or [])
    tombs = er.store.tombstones()
    for kind, named in (("sample", samples), ("subject", subjects)):
        for digest, where in sorted(named.items(), key=lambda kv: kv[1]):
            if (kind, digest) not in tombs:
                problems.append(f"{where}: a certified {kind} has no tombstone")
    rows = er.store.rows()
    live = {r.key for r in rows}
    for r in rows:
        certified_by = samples.get(er.store.tombstone("sample", r.sample_id)) or (
            r.subject_id is not None and subjects.get(er.store.tombstone("subject", r.subject_id))
        )
        if certified_by:
            problems.append(f"{certified_by}: a certified sample is still in the store")
    for key, members in er.member_keys(current).items():
        stray = members - live
        if stray:
            problems.append(
                f"cluster {key}: {len(stray)} member(s) of the current version are not live samples"
            )
    stray_features = er.store.feature_keys() - live
    if stray_features:
        problems.append(f"{len(stray_features)} cached feature(s) of samples no longer live")
    stray_objects = {
        p.name for p in er.store.objects.iterdir() if not p.name.startswith(".")
    } - live
    if stray_objects:
        problems.append(f"{len(stray_objects)} object file(s) of samples no longer live")
    return {
        "ok": not problems,
        "entries": len(lines),
        "certified_samples": len(samples),
        "certified_subjects": len(subjects),
        "version": current.version,
        "problems": problems,
    }


def verify(er: Eraser) -> dict:
    """Rebuild from scratch on the live data in a private temp dir and compare."""
    current = er.registry.load()
    er.check_blobs(current)
    if not (er.cfg.runtime.deterministic and current.deterministic):
        raise ConfigError(
            "runtime.deterministic: verify compares bit for bit, which needs a model trained "
            "and rebuilt in deterministic mode; packed mode (deterministic: false) matches a "
            "rebuild only up to float rounding"
        )
    tmp = make_owned(er.cfg.state_dir, VERIFY)  # swept if this process is killed
    try:
        shutil.copy2(er.cfg.state_dir / "secret", tmp / "secret")
        er.store.copy_live_to(tmp)
        fresh_cfg = dataclasses.replace(er.cfg, state_dir=tmp)
        with Eraser(fresh_cfg, backbone=er.backbone, executor=er.executor) as fresh:
            rebuilt = fresh.build()
            details = differences(current, rebuilt, er.registry, fresh.registry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return compare_manifests(current, rebuilt, details)
