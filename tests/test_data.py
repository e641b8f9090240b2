"""Private data sources and the store: all-or-nothing ingest with clear errors."""

from __future__ import annotations

import csv
import shutil

import pytest

from eraserd.config import DataConfig
from eraserd.data.sources import open_source
from eraserd.data.store import Store
from eraserd.errors import DataError, UnknownIdError


def all_train(sample_id, subject_id):
    return "train"


def assert_nothing_ingested(state) -> None:
    with Store(state) as store:
        assert store.is_empty()
        assert store.rows() == []
    assert list((state / "objects").iterdir()) == []
    assert not (state / "staging").exists()


def write_manifest(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "path", "label", "subject_id"])
        w.writerows(rows)


def test_builtin_digits_has_real_digits_and_subjects(tmp_path):
    src = open_source(DataConfig(source="builtin:digits"))
    samples = list(src.samples())
    assert len(samples) == 1797 and src.classes == tuple(str(i) for i in range(10))
    assert samples[0].sample_id == "digits-0000" and samples[0].subject_id == "subject-000"
    assert samples[3].subject_id == "subject-001"
    with Store(tmp_path / "s") as store:
        n = store.ingest(src, all_train)
        assert n == 1797 and len(store.rows()) == 1797
        row = store.rows()[0]
        assert store.read_object(row).startswith(b"\x89PNG")


def test_builtin_lfw_has_real_faces_and_non_faces(tmp_path):
    """scikit-image's real lfw_subset: 100 faces, then 100 non-faces, 25 x 25 grayscale."""
    import io

    import numpy as np
    from PIL import Image
    from skimage.data import lfw_subset

    src = open_source(DataConfig(source="builtin:lfw"))
    samples = list(src.samples())
    assert src.classes == ("face", "non-face") and len(samples) == 200
    assert [s.label for s in samples] == ["face"] * 100 + ["non-face"] * 100
    assert len({s.sample_id for s in samples}) == 200 and samples[0].subject_id is None
    pixels = np.asarray(Image.open(io.BytesIO(samples[7].read())))
    assert pixels.shape == (25, 25) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.rint(lfw_subset()[7] * 255).astype(np.uint8))
    with Store(tmp_path / "s") as store:
        assert store.ingest(src, all_train) == 200
    with pytest.raises(DataError, match="face and non-face only"):
        open_source(DataConfig(source="builtin:lfw", classes=("a", "b")))


def test_image_folder_ids_are_relative_paths(tmp_path, digits_data):
    root = tmp_path / "folder"
    for i, label in enumerate(["3", "3", "7"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(digits_data / f"img/{i:04d}.png", root / label / f"x{i}.png")
    (root / "7" / ".hidden").write_text("skip me")
    src = open_source(DataConfig(source=str(root)))
    assert src.classes == ("3", "7")
    with Store(tmp_path / "s") as store:
        store.ingest(src, all_train)
        assert [r.sample_id for r in store.rows()] == ["3/x0.png", "3/x1.png", "7/x2.png"]
        assert [r.label for r in store.rows()] == [0, 0, 1]


def test_folder_with_loose_files_is_refused(tmp_path, digits_data):
    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    shutil.copy(digits_data / "img/0000.png", root / "loose.png")
    with pytest.raises(DataError, match="loose.png"):
        open_source(DataConfig(source=str(root)))


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="path does not exist"):
        open_source(DataConfig(source=str(tmp_path / "nope")))


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("duplicate", "duplicate sample id 'a'"),
        ("missing", "file not found"),
        ("unreadable", "not a readable image"),
    ],
)
def test_bad_samples_refuse_the_whole_ingest(tmp_path, digits_data, problem, expected):
    good = str(digits_data / "img/0000.png")
    rows = [("a", good, "1", "u1"), ("b", good, "2", "u1")]
    if problem == "duplicate":
        rows.append(("a", good, "1", "u2"))
    elif problem == "missing":
        rows.append(("c", str(tmp_path / "gone.png"), "1", "u2"))
    else:
        (tmp_path / "bad.png").write_bytes(b"not an image at all")
        rows.append(("c", str(tmp_path / "bad.png"), "1", "u2"))
    write_manifest(tmp_path / "m.csv", rows)
    with Store(tmp_path / "s") as store, pytest.raises(DataError, match=expected) as err:
        store.ingest(open_source(DataConfig(source=str(tmp_path / "m.csv"))), all_train)
    assert "nothing was stored" in str(err.value)
    assert_nothing_ingested(tmp_path / "s")


def test_unknown_label_is_refused(tmp_path, digits_data):
    good = str(digits_data / "img/0000.png")
    write_manifest(tmp_path / "m.csv", [("a", good, "1", ""), ("b", good, "9", "")])
    with pytest.raises(DataError, match="unknown label '9'"):
        open_source(DataConfig(source=str(tmp_path / "m.csv"), classes=("1", "2")))


def test_manifest_header_is_checked(tmp_path):
    (tmp_path / "m.csv").write_text("id,file\nx,y\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['sample_id', 'path', 'label'\]"):
        open_source(DataConfig(source=str(tmp_path / "m.csv")))


def test_split_is_by_subject_and_deterministic(tmp_path, digits_data):
    from eraserd.eraser import Eraser

    def split_rows(state):
        from conftest import small_raw

        from eraserd.config import config_from_dict

        cfg = config_from_dict(small_raw(tmp_path / state, digits_data / "manifest.csv"))
        with Eraser(cfg) as er:
            er.ingest()
            return {r.sample_id: (r.subject_id, r.split) for r in er.store.rows()}

    a, b = split_rows("one"), split_rows("two")
    assert a == b
    test = [sid for sid, (_, split) in a.items() if split == "test"]
    assert 0.1 < len(test) / len(a) < 0.3
    by_subject: dict[str, set[str]] = {}
    for subj, split in a.values():
        by_subject.setdefault(subj, set()).add(split)
    assert all(len(s) == 1 for s in by_subject.values()), "a subject straddles the split"


def test_resolve_and_purge_and_tombstones(tmp_path, digits_data):
    src = open_source(DataConfig(source=str(digits_data / "manifest.csv")))
    state = tmp_path / "s"
    with Store(state) as store:
        store.ingest(src, all_train)
        with pytest.raises(UnknownIdError, match="unknown id\\(s\\): sample nope") as err:
            store.resolve(["s0000", "nope"])
        assert err.value.unknown == ["sample nope"]
        rows = store.resolve(["s0000"], ["subj001"])
        assert [r.sample_id for r in rows] == ["s0000", "s0003", "s0004", "s0005"]
        before = len(store.rows())
        store.purge(rows, ["subj001"])
        assert len(store.rows()) == before - 4
        forgotten = "already forgotten: sample s0000, subject subj001"
        with pytest.raises(UnknownIdError, match=forgotten):
            store.resolve(["s0000"], ["subj001"])
        assert not any((state / "objects" / r.key).exists() for r in rows)
    # Re-ingesting the same source into a store that remembers the tombstones is refused.
    shutil.rmtree(state / "objects")
    with Store(state) as store:
        store._db.execute("DELETE FROM samples")
        store._db.execute("DELETE FROM meta")
        with pytest.raises(DataError, match="was forgotten and cannot be ingested again"):
            store.ingest(src, all_train)
        assert store.is_empty()


def test_state_dir_is_private(tmp_path):
    import stat

    with Store(tmp_path / "s"):
        pass
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "s") == 0o700
    assert mode(tmp_path / "s" / "objects") == 0o700
    assert mode(tmp_path / "s" / "secret") == 0o600


@pytest.fixture
def digits_state(tmp_path, digits_data):
    """A store with the test digits ingested, closed; its state dir."""
    state = tmp_path / "s"
    with Store(state) as store:
        store.ingest(open_source(DataConfig(source=str(digits_data / "manifest.csv"))), all_train)
    return state


def test_a_purge_cut_short_before_its_unlinks_is_finished_on_the_next_open(
    digits_state, monkeypatch
):
    state = digits_state
    with Store(state) as store:
        rows = store.resolve(["s0000", "s0001"])

        def dies(self, keys):
            raise KeyboardInterrupt("killed between the commit and the unlinks")

        monkeypatch.setattr(Store, "_unlink", dies)
        with pytest.raises(KeyboardInterrupt):
            store.purge(rows)
        monkeypatch.undo()
        assert all((state / "objects" / r.key).exists() for r in rows)  # the crash's leftovers
        assert store.meta("unlinking") is not None
    with Store(state) as store:
        assert not any((state / "objects" / r.key).exists() for r in rows)
        assert store.meta("unlinking") is None
        assert len(list((state / "objects").iterdir())) == len(store.rows())


def test_a_clean_open_lists_no_directory_but_an_interrupted_ingest_is_cleaned(
    digits_state, monkeypatch
):
    from pathlib import Path

    state = digits_state
    with Store(state) as store:
        n = len(store.rows())
    listed = []
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda p: listed.append(p) or real_iterdir(p))
    with Store(state):
        pass
    assert listed == []  # O(1) open: no walk over objects/, however many samples
    # An ingest that died mid-way leaves its staging dir: the next open removes its files.
    (state / "staging").mkdir()
    (state / "objects" / "stray").write_bytes(b"half-ingested")
    with Store(state) as store:
        assert listed == [state / "objects"]
        assert not (state / "objects" / "stray").exists() and not (state / "staging").exists()
        assert len(store.rows()) == n


def test_purges_leave_no_copy_in_a_large_store_without_a_vacuum(tmp_path):
    """Purges rewrite no whole file: ``secure_delete`` must zero every freed cell, index
    entry and overflow page (features span several pages) across B-tree rebalancing."""
    import random

    import numpy as np

    from eraserd.data.store import SampleRow

    rng = random.Random(0)
    with Store(tmp_path / "s") as store:
        rows = []
        for i in range(3000):
            sid = f"sample-{i:05d}-{rng.getrandbits(64):016x}"
            rows.append(SampleRow(sid, f"subject-{i // 3:05d}", i % 10, "train", store.key_of(sid)))
        with store._tx() as db:
            db.executemany(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                [(r.sample_id, r.subject_id, r.label, r.split, r.key) for r in rows],
            )
        feats = {
            r.key: np.random.default_rng(i).standard_normal(1280).astype(np.float32)
            for i, r in enumerate(rows)
        }
        store.put_features(feats, "fp")
        for r in rows:
            (store.objects / r.key).write_bytes(b"x")
        size = (tmp_path / "s" / "store.db").stat().st_size
        for _ in range(3):
            victims = rng.sample(rows, 200)
            gone = {v.sample_id for v in victims}
            rows = [r for r in rows if r.sample_id not in gone]
            store.purge(victims)
            data = b"".join(
                p.read_bytes() for p in (tmp_path / "s").iterdir() if p.name.startswith("store.db")
            )
            for v in victims:
                assert v.sample_id.encode() not in data
                assert v.key.encode() not in data
                assert feats[v.key].tobytes()[:64] not in data
            assert sum(r.key.encode() in data for r in rows[:50]) == 50  # the search works
        # No VACUUM: the file was not rewritten smaller (its freed pages stay, zeroed).
        assert (tmp_path / "s" / "store.db").stat().st_size == size
