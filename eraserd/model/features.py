"""Backbone features of stored samples, computed once per sample and cached in the store."""

from __future__ import annotations

import numpy as np

from ..data.images import canonical_view
from ..data.store import SampleRow, Store
from ..progress import bar
from .backbone import Backbone

_FLUSH_EVERY = 256


def ensure_features(
    store: Store, backbone: Backbone, rows: list[SampleRow], desc: str = "features"
) -> dict[str, np.ndarray]:
    """Features by sample id; missing ones are computed one sample at a time and cached."""
    fp = backbone.feature_key
    cached = store.cached_features([r.key for r in rows], fp)
    out = {r.sample_id: cached[r.key] for r in rows if r.key in cached}
    missing = [r for r in rows if r.key not in cached]
    pending: dict[str, np.ndarray] = {}
    with bar(total=len(missing), desc=desc, unit="img") as progress:
        for r in missing:
            vec = backbone.feature(canonical_view(store.read_object(r), backbone.image_size))
            out[r.sample_id] = vec
            pending[r.key] = vec
            progress.update(1)
            if len(pending) >= _FLUSH_EVERY:
                store.put_features(pending, fp)
                pending = {}
    if pending:
        store.put_features(pending, fp)
    return out
