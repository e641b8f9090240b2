"""Acceptance (b): after forget, no file under state_dir holds a deleted sample's bytes or ids."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tree_bytes

from eraserd.data.images import canonical_view
from eraserd.eraser import Eraser


@pytest.mark.slow
def test_forget_leaves_no_trace_on_disk(make_config, digits_data, lite0_32):
    cfg = make_config("f")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        rows = er.samples()
        # A subject whose samples include a clustering-sample point forces a recluster too,
        # so superseded prototypes and every retrained blob must be collected.
        subject = next(r["subject_id"] for r in rows if r["in_clustering_sample"])
        victims = [r for r in rows if r["subject_id"] == subject]
        assert len(victims) == 3
        store_rows = {r.sample_id: r for r in er.store.rows()}
        raw = {v["sample_id"]: er.store.read_object(store_rows[v["sample_id"]]) for v in victims}
        views = {sid: canonical_view(b, 32).numpy().tobytes() for sid, b in raw.items()}
        keys = [store_rows[sid].key for sid in raw]
        feats = er.store.cached_features(keys, lite0_32.feature_key)
        assert len(feats) == 3
        # Routing by neighbors stores training features in the model: the victims' too.
        feature_bytes = {k: np.asarray(f, dtype=np.float32).tobytes() for k, f in feats.items()}
        points = b"".join(
            er.registry.get_blob(c.points) for c in er.registry.load().clusters if c.points
        )
        assert all(b in points for b in feature_bytes.values())
        old_blobs = {p.name for p, _ in tree_bytes(cfg.state_dir / "registry" / "blobs")}
        # Sanity: before forgetting, the search does find the traces it looks for.
        everything = b"".join(data for _, data in tree_bytes(cfg.state_dir))
        for sid in raw:
            assert raw[sid] in everything and sid.encode() in everything
        assert subject.encode() in everything

        er.forget(subject_ids=[subject])

    needles = {f"bytes of {sid}": data for sid, data in raw.items()}
    needles.update({f"canonical view of {sid}": v for sid, v in views.items()})
    for sid in raw:
        needles[f"sample id {sid}"] = sid.encode()
        needles[f"sample id {sid} (utf-16)"] = sid.encode("utf-16-le")
    needles[f"subject id {subject}"] = subject.encode()
    needles.update({f"feature vector {k}": b for k, b in feature_bytes.items()})
    files = tree_bytes(cfg.state_dir)
    names = {p.name for p, _ in files}
    assert any(n == "store.db" for n in names)
    for path, data in files:
        for what, needle in needles.items():
            assert needle not in data, f"{what} found in {path}"
        assert subject not in str(path) and not any(sid in str(path) for sid in raw)
    # Blobs of the old version (trained on the deleted data) are gone, not merely unreferenced.
    now = {p.name for p, _ in tree_bytes(cfg.state_dir / "registry" / "blobs")}
    with Eraser(cfg, backbone=lite0_32) as er:
        m = er.registry.load()
        assert {f"{h}.bin" for h in m.blobs()} == now
        assert er.registry.list_versions() == [m.version]
        assert old_blobs - now, "retrained blobs should have replaced some old ones"
        # Cached features are rows (split over SQLite overflow pages), so check them by key.
        assert er.store.cached_features(keys, lite0_32.feature_key) == {}
        live = er.store.rows()
        assert len(er.store.cached_features([r.key for r in live], lite0_32.feature_key)) == len(
            live
        )
