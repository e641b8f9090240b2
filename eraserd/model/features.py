"""Backbone features of stored samples, computed once per sample and cached in the store."""

from __future__ import annotations

import numpy as np
import torch

from ..data.images import canonical_view
from ..data.store import SampleRow, Store
from ..progress import bar
from .backbone import Backbone

CHUNK = 256
"""Images decoded, passed through the backbone and committed to the cache together: what a
crash can cost, and the bound on the views held in memory at once."""


def ensure_features(
    store: Store, backbone: Backbone, rows: list[SampleRow], desc: str = "features"
) -> dict[str, np.ndarray]:
    """Features by sample id; missing ones are computed in batches and cached per chunk, so a
    run that dies resumes where its last chunk was committed."""
    fp = backbone.feature_key
    cached = store.cached_features([r.key for r in rows], fp)
    out = {r.sample_id: cached[r.key] for r in rows if r.key in cached}
    missing = [r for r in rows if r.key not in cached]
    # A whole number of backbone passes per chunk: only the run's last pass is padded.
    chunk = max(CHUNK // backbone.feature_batch, 1) * backbone.feature_batch
    with bar(total=len(missing), desc=desc, unit="img") as progress:
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            views = torch.stack(
                [canonical_view(store.read_object(r), backbone.image_size) for r in part]
            )
            vecs = backbone.features(views)
            store.put_features({r.key: vecs[i] for i, r in enumerate(part)}, fp)
            for i, r in enumerate(part):
                out[r.sample_id] = vecs[i]
            progress.update(len(part))
    return out
