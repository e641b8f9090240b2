"""The held-out routing table: its routes are ``clustering.vote``'s, and updating it through
removals and additions gives what building it again on the new points gives."""

from __future__ import annotations

import numpy as np
import pytest

from eraserd import routetable
from eraserd.clustering import sq_distances, vote

pytestmark = pytest.mark.pure


def make_points(rng, n: int, clusters: int, dim: int = 6) -> tuple[np.ndarray, np.ndarray, list]:
    """Integer-valued features, so that exact distance ties are common."""
    feats = rng.integers(0, 3, size=(n, dim)).astype(np.float32)
    pos = np.sort(rng.integers(0, clusters, size=n))
    keys = [rng.bytes(20).hex() for _ in range(n)]
    return feats, pos, keys


def points_of(feats, pos, keys) -> routetable.Points:
    return routetable.Points(
        feats.astype(np.float64), np.asarray(pos, dtype=np.int64), routetable.key_bytes(keys)
    )


@pytest.mark.parametrize("seed", range(6))
def test_routes_are_the_vote(seed):
    rng = np.random.default_rng(seed)
    feats, pos, keys = make_points(rng, 60, 5)
    rows = rng.integers(0, 3, size=(25, 6)).astype(np.float32)
    for k in (1, 3, 5):
        table = routetable.build(
            routetable.key_bytes(sorted(rng.bytes(20).hex() for _ in range(25))),
            rows,
            points_of(feats, pos, keys),
            k,
            routetable.depth_for(k),
        )
        assert table.route.tolist() == vote(rows, feats, pos, k).tolist()


@pytest.mark.parametrize("seed", range(8))
def test_updates_match_a_rebuild(seed):
    """Random removals (of points and of rows) and additions, many rounds: after each, the
    routes equal a rebuild's and each list is a prefix of the rebuild's list."""
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(1, 4))
    depth = routetable.depth_for(k)
    feats, pos, keys = make_points(rng, 80, 4)
    live = np.ones(80, dtype=bool)
    live[60:] = False  # points that later rounds add
    row_keys = sorted(rng.bytes(20).hex() for _ in range(30))
    row_feats = {key: rng.integers(0, 3, size=6).astype(np.float32) for key in row_keys}

    def rebuilt(keys_now):
        idx = np.flatnonzero(live)
        return routetable.build(
            routetable.key_bytes(keys_now),
            np.stack([row_feats[x] for x in keys_now]),
            points_of(feats[idx], pos[idx], [keys[i] for i in idx]),
            k,
            depth,
        )

    table = rebuilt(row_keys)
    recomputed = 0
    for _ in range(12):
        on = np.flatnonzero(live)
        gone = rng.choice(on, size=min(len(on) - k - 1, int(rng.integers(1, 6))), replace=False)
        off = np.flatnonzero(~live)
        new = rng.choice(off, size=min(len(off), int(rng.integers(0, 3))), replace=False)
        drop = list(rng.choice(row_keys, size=int(rng.integers(0, 2)), replace=False))
        live[gone] = False
        live[new] = True
        row_keys = [x for x in row_keys if x not in drop]

        def added(table_keys, new=new):
            names = routetable.key_strings(table_keys)
            x = np.stack([row_feats[n] for n in names]).astype(np.float64)
            order = sorted(new, key=lambda i: (pos[i], keys[i]))
            return routetable.Added(
                pos[order].astype(np.int64),
                routetable.key_bytes(keys[i] for i in order),
                np.stack([sq_distances(x, feats[i].astype(np.float64)) for i in order]),
            )

        def recompute(table_keys):
            nonlocal recomputed
            idx = np.flatnonzero(live)
            pts = points_of(feats[idx], pos[idx], [keys[i] for i in idx])
            recomputed += len(table_keys)
            return [
                routetable.nearest_entries(row_feats[n].astype(np.float64), pts, depth)
                for n in routetable.key_strings(table_keys)
            ]

        table, _ = routetable.update(
            table,
            k,
            drop,
            [keys[i] for i in gone],
            added if len(new) else None,
            int(live.sum()),
            recompute,
        )
        fresh = rebuilt(row_keys)
        assert routetable.key_strings(table.keys) == row_keys
        assert table.route.tolist() == fresh.route.tolist()
        assert routetable.lists_are_prefixes(table, fresh)
        assert (table.count >= min(k, int(live.sum()))).all()
    assert recomputed > 0, "the rounds should have emptied some list below k"


def test_tables_round_trip_through_their_arrays():
    rng = np.random.default_rng(3)
    feats, pos, keys = make_points(rng, 20, 3)
    rows = rng.integers(0, 3, size=(7, 6)).astype(np.float32)
    keys_t = routetable.key_bytes(sorted(rng.bytes(20).hex() for _ in range(7)))
    t = routetable.build(keys_t, rows, points_of(feats, pos, keys), 2, 4)
    back = routetable.Table.from_arrays(t.routes(), t.lists())
    for name in ("keys", "route", "dist", "pos", "point", "count"):
        assert np.array_equal(getattr(back, name), getattr(t, name)), name
    assert routetable.key_strings(back.keys) == routetable.key_strings(keys_t)
