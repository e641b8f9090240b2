"""Listing deletion requests (``GET /v1/deletions``, ``eraserctl list``) and the plan of a
pending request: cursors and the queue's keyset pages on real SQLite, the pure plan, then one
real daemon with a small prebuilt model."""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass

import pytest
import yaml
from daemon_util import DaemonProc, built_state, ctl, prebuilt_config

from eraserd.config import config_from_dict
from eraserd.ctl import age
from eraserd.eraser import Eraser
from eraserd.pending import VersionIndex, plan
from eraserd.queue import Queue, RequestState, decode_cursor, encode_cursor
from eraserd.registry import Registry

# ---- cursors, pages and plans, without a daemon ---------------------------------------------


def test_a_cursor_round_trips_and_anything_else_is_refused():
    for position in [(1712345678.123456, "del_00ff"), (0.1 + 0.2, "x"), (5.0, "")]:
        assert decode_cursor(encode_cursor(position)) == position
    assert "=" not in encode_cursor((1.5, "del_ab"))  # URL-safe, unpadded

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    for bad in ["", "abc", "!!!!", b64("{}"), b64("[1]"), b64('["x", "y"]'), b64("[1, 2]")]:
        with pytest.raises(ValueError, match="not a cursor this API returned"):
            decode_cursor(bad)
    for bad in [b64('[true, "x"]'), b64('[NaN, "x"]'), b64('[1, "x", 3]'), b64('"[1,\\"x\\"]"')]:
        with pytest.raises(ValueError, match="not a cursor this API returned"):
            decode_cursor(bad)


def _submit(q: Queue, sample: str, now: float) -> str:
    adm = q.admit(
        [sample],
        [],
        matched=[sample],
        forgotten=[],
        deadline=now + 100,
        default_deadline_s=0,
        now=now,
    )
    return adm.request.id


def _pages(q: Queue, state: str | None, limit: int, between=None) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = q.page(state, limit, after)
        pages.append([r.id for r in page.requests])
        if page.after is None:
            return pages
        if between is not None:
            between()
        after = decode_cursor(encode_cursor(page.after))


def test_queue_pages_newest_first_once_each_on_an_index(tmp_path):
    q = Queue(tmp_path / "queue.db", secret=b"k" * 32)
    try:
        # Three requests share a submission time: the id breaks the tie.
        times = [10.0, 11.0, 12.0, 12.0, 12.0, 13.0, 14.0]
        ids = [_submit(q, f"s{i}", t) for i, t in enumerate(times)]
        q.open_batch("test", 20.0)  # all batched...
        late = _submit(q, "s-late", 21.0)  # ...but this one
        newest_first = [late] + sorted(ids, key=lambda i: (times[ids.index(i)], i), reverse=True)
        pages = _pages(q, None, 3)
        assert [len(p) for p in pages] == [3, 3, 2]
        assert sum(pages, []) == newest_first
        assert _pages(q, None, 8) == [newest_first]  # exactly full: no empty last page
        assert _pages(q, RequestState.QUEUED.value, 3) == [[late]]
        assert sum(_pages(q, RequestState.BATCHED.value, 2), []) == newest_first[1:]
        assert _pages(q, RequestState.FAILED.value, 5) == [[]]
        # Requests submitted between pages land before the cursor: no page shifts.
        more = iter(range(100, 110))
        pages = _pages(q, None, 2, between=lambda: _submit(q, f"n{next(more)}", 30.0))
        assert sum(pages, []) == newest_first
        db = q._db
        for where, index in [("", "requests_listing"), ("state = ? AND", "requests_state_listing")]:
            args = ("queued",) if where else ()
            detail = " ".join(
                row[3]
                for row in db.execute(
                    f"EXPLAIN QUERY PLAN SELECT * FROM requests WHERE {where} "
                    "(created_at, id) < (?, ?) ORDER BY created_at DESC, id DESC LIMIT 3",
                    (*args, 12.0, "z"),
                )
            )
            assert f"USING INDEX {index}" in detail and "TEMP B-TREE" not in detail, detail
    finally:
        q.close()


INDEX = VersionIndex(
    version=3,
    keys=("ca", "cb", "cc"),
    sizes=(4, 3, 3),
    cluster_of={"a1": 0, "a2": 0, "a3": 0, "a4": 0, "b1": 1, "b2": 1, "b3": 1, "c1": 2, "c2": 2},
    sample=frozenset({"a1", "b1", "c1"}),
    recluster_share=0.75,
)


def test_a_plan_names_the_clusters_and_estimates_a_recluster():
    assert plan(INDEX, ["a2", "held-out"]) == {
        "version": 3,
        "clusters": ["ca"],
        "samples_retrained": 3,
        "share_retrained": round(3 / 9, 6),
        "recluster": False,
        "estimated": False,
    }
    two = plan(INDEX, ["b2", "a3", "a2", "a2"])
    assert two["clusters"] == ["ca", "cb"] and two["samples_retrained"] == 2 + 2
    assert two["share_retrained"] == round(4 / 7, 6)
    assert plan(INDEX, ["held-out"])["clusters"] == []
    assert plan(INDEX, [])["samples_retrained"] == 0
    hit = plan(INDEX, ["c1", "a2"])
    assert hit["recluster"] and hit["estimated"] and hit["clusters"] == ["ca", "cc"]
    assert hit["share_retrained"] == 0.75 and hit["samples_retrained"] == round(0.75 * 8)


def test_ages_are_short():
    assert [age(s) for s in (-3, 0, 45.4, 119, 120, 7199, 7200, 86400 * 3 + 5)] == [
        "0s",
        "0s",
        "45s",
        "119s",
        "2m",
        "119m",
        "2h",
        "3d",
    ]


# ---- one real daemon --------------------------------------------------------------------------


@dataclass
class Listing:
    d: DaemonProc
    samples: dict[str, dict]
    """``eraserd samples`` rows of version 1, by sample id."""
    published: str
    """A request published in version 2 (before the others were submitted)."""
    direct: str
    direct_sample: str
    subject: str
    subject_id: str


def _get(d: DaemonProc, path: str, **params) -> tuple[int, dict]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return d.call("GET", path + (f"?{query}" if query else ""))


def _state(d: DaemonProc, rid: str) -> str:
    return d.call("GET", f"/v1/deletions/{rid}")[1]["state"]


@pytest.fixture(scope="module")
def listing(tmp_path_factory, digits_data, lite0_32):
    root = tmp_path_factory.mktemp("list")
    # A long window: what is submitted stays queued until a flush.
    config = prebuilt_config(
        root,
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
        window=3600.0,
    )
    with Eraser(config_from_dict(yaml.safe_load(config.read_text())), lite0_32) as e:
        samples = {r["sample_id"]: r for r in e.samples()}
    train = [r for r in samples.values() if r["split"] == "train"]
    direct = [r for r in train if not r["in_clustering_sample"]]
    sizes: dict[str, int] = {}
    for r in train:
        sizes[r["cluster"]] = sizes.get(r["cluster"], 0) + 1
    first = min(direct, key=lambda r: (sizes[r["cluster"]], r["sample_id"]))  # least to retrain
    second = next(r for r in direct if r["cluster"] != first["cluster"])
    subject = next(
        s
        for s in sorted({r["subject_id"] for r in train if r["subject_id"]})
        if s not in (first["subject_id"], second["subject_id"])
    )
    d = DaemonProc(config)
    try:
        d.wait_ready()
        code, a = d.call("POST", "/v1/deletions", {"sample_ids": [first["sample_id"]]})
        assert code == 202, a
        assert d.call("POST", "/v1/flush")[0] == 202
        d.wait_for(lambda: _state(d, a["id"]) == "published", what="the first batch")
        code, b = d.call("POST", "/v1/deletions", {"sample_ids": [second["sample_id"]]})
        assert code == 202, b
        code, s = d.call("POST", "/v1/deletions", {"subject_ids": [subject]})
        assert code == 202, s
        yield Listing(d, samples, a["id"], b["id"], second["sample_id"], s["id"], subject)
    finally:
        d.stop()  # SIGTERM, then SIGKILL if it hangs


def _everything(d: DaemonProc) -> list[dict]:
    code, out = _get(d, "/v1/deletions", limit=500)
    assert code == 200 and out["next_cursor"] is None, out
    return out["requests"]


@pytest.mark.slow
def test_pages_hold_each_request_once_while_more_arrive(listing):
    d = listing.d
    for _ in range(3):  # enough for several pages of 2
        assert d.call("POST", "/v1/deletions", {"sample_ids": [listing.direct_sample]})[0] == 202
    before = _everything(d)
    assert len(before) >= 6
    keys = [(r["created_at"], r["id"]) for r in before]
    assert keys == sorted(keys, reverse=True), "newest first"
    code, one = d.call("GET", f"/v1/deletions/{before[0]['id']}")
    assert code == 200 and set(before[0]) == set(one) - {"plan"}, "the same fields"
    seen, cursor, arrived = [], None, []
    while True:
        code, page = _get(d, "/v1/deletions", limit=2, cursor=cursor)
        assert code == 200, page
        assert len(page["requests"]) <= 2
        seen += [r["id"] for r in page["requests"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        code, r = d.call("POST", "/v1/deletions", {"sample_ids": [listing.direct_sample]})
        assert code == 202
        arrived.append(r["id"])
    assert seen == [r["id"] for r in before], "each request once, in order; none shifted"
    assert arrived and not set(arrived) & set(seen)
    top = _get(d, "/v1/deletions", limit=len(arrived))[1]["requests"]
    assert [r["id"] for r in top] == arrived[::-1], "the newcomers lead the next listing"


@pytest.mark.slow
def test_a_state_filter_lists_only_that_state(listing):
    d = listing.d
    code, out = _get(d, "/v1/deletions", state="published")
    assert code == 200 and out["next_cursor"] is None
    assert [(r["id"], r["version"]) for r in out["requests"]] == [(listing.published, 2)]
    code, out = _get(d, "/v1/deletions", state="queued", limit=500)
    queued = [r["id"] for r in out["requests"]]
    assert {listing.direct, listing.subject} <= set(queued) and listing.published not in queued
    assert all(r["state"] == "queued" for r in out["requests"])
    everything = _everything(d)
    assert queued == [r["id"] for r in everything if r["state"] == "queued"]
    assert _get(d, "/v1/deletions", state="failed")[1] == {"requests": [], "next_cursor": None}


@pytest.mark.slow
@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"state": "done"},
            "state: Input should be 'received', 'queued', 'batched', 'retuning', "
            "'published' or 'failed'",
        ),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"limit": 501}, "limit: Input should be less than or equal to 500"),
        ({"limit": "ten"}, "limit: Input should be a valid integer"),
        ({"cursor": "garbage"}, "cursor: not a cursor this API returned"),
        ({"cursor": "x" * 201}, "cursor: String should have at most 200 characters"),
    ],
)
def test_bad_list_queries_are_422_with_a_clear_message(listing, params, message):
    code, r = _get(listing.d, "/v1/deletions", **params)
    assert code == 422 and r["error"]["message"].startswith(message), r


@pytest.mark.slow
def test_the_list_needs_the_token(listing):
    code, r = listing.d.call("GET", "/v1/deletions", token=None)
    assert code == 401 and "missing bearer token" in r["error"]["message"]


def _expected_plan(listing: Listing, sample_ids: list[str]) -> dict:
    manifest = Registry(listing.d.state).load()
    sizes = manifest.sizes
    train = [listing.samples[s] for s in sample_ids if listing.samples[s]["split"] == "train"]
    clusters = sorted({r["cluster"] for r in train})
    left = manifest.samples["train"] - len(train)
    if any(r["in_clustering_sample"] for r in train):
        share = manifest.cost["recluster_share"]
        return {
            "version": manifest.version,
            "clusters": clusters,
            "samples_retrained": round(share * left),
            "share_retrained": share,
            "recluster": True,
            "estimated": True,
        }
    retrained = sum(sizes[c] for c in clusters) - len(train)
    return {
        "version": manifest.version,
        "clusters": clusters,
        "samples_retrained": retrained,
        "share_retrained": round(retrained / left, 6),
        "recluster": False,
        "estimated": False,
    }


@pytest.mark.slow
def test_a_pending_request_shows_the_clusters_it_will_retrain(listing):
    d = listing.d
    r = d.call("GET", f"/v1/deletions/{listing.direct}")[1]
    assert r["state"] == "queued"
    assert r["plan"] == _expected_plan(listing, [listing.direct_sample])
    assert r["plan"]["version"] == 2 and len(r["plan"]["clusters"]) == 1
    assert r["plan"]["clusters"] == [listing.samples[listing.direct_sample]["cluster"]]
    of_subject = [
        s for s, row in listing.samples.items() if row["subject_id"] == listing.subject_id
    ]
    r = d.call("GET", f"/v1/deletions/{listing.subject}")[1]
    assert r["plan"] == _expected_plan(listing, of_subject)
    # A clustering-sample point reclusters: the plan says so and estimates the share.
    point = next(s for s, row in sorted(listing.samples.items()) if row["in_clustering_sample"])
    code, rec = d.call("POST", "/v1/deletions", {"sample_ids": [point]})
    assert code == 202
    r = d.call("GET", f"/v1/deletions/{rec['id']}")[1]
    assert r["plan"] == _expected_plan(listing, [point]) and r["plan"]["recluster"]
    published = d.call("GET", f"/v1/deletions/{listing.published}")[1]
    assert published["state"] == "published" and "plan" not in published
    log = d.log_text()
    for raw in (listing.direct_sample, point, listing.subject_id):
        assert raw not in log, "raw ids must not be logged"


@pytest.mark.slow
def test_eraserctl_lists_requests(listing):
    d, cfg = listing.d, listing.d.config
    everything = _everything(d)
    out = ctl("list", "--config", cfg, "--limit", 500)
    lines = out.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [r["id"] for r in everything]
    by_id = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert by_id[listing.published][1:3] == ["published", "1 sample(s)"]
    assert by_id[listing.published][-1] == "version 2"
    assert by_id[listing.direct][1] == "queued" and by_id[listing.direct][3].startswith(
        "submitted "
    )
    assert len(by_id[listing.direct]) == 4, "no version before it is published"
    assert out.stderr == ""
    # --all follows the cursors: every request, with the API's fields.
    listed = json.loads(ctl("list", "-c", cfg, "--limit", 2, "--all", "--json").stdout)
    assert listed == everything
    one = ctl("list", "-c", cfg, "--limit", 1)
    assert len(one.stdout.splitlines()) == 1 and "pass --all" in one.stderr
    state = json.loads(ctl("list", "-c", cfg, "--state", "published", "--json").stdout)
    assert [r["id"] for r in state] == [listing.published]
    assert ctl("list", "-c", cfg, "--state", "failed").stdout == "no failed requests\n"
    bad = ctl("list", "-c", cfg, "--limit", 501, check=False)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr == (
        "eraserctl: rejected (422): limit: Input should be less than or equal to 500\n"
    )
    bad = ctl("list", "-c", cfg, "--state", "done", "--json", check=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["exit_code"] == 2
    bad = ctl("list", "-c", cfg, "--token", "wrong", check=False)
    assert bad.returncode == 9 and bad.stderr.startswith("eraserctl: unauthorized (401)")
