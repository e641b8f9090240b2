"""Registry: content-addressed blobs, verified manifests, atomic CURRENT, garbage collection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from eraserd.errors import CorruptBlobError, RegistryError
from eraserd.ids import sha256_hex
from eraserd.manifest import FORMAT, Manifest
from eraserd.registry import Registry


def blob_file(state: Path, digest: str) -> Path:
    return state / "registry" / "blobs" / digest[:2] / f"{digest}.bin"


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def manifest(reg: Registry, version: int, tag: str) -> Manifest:
    """A minimal manifest whose blobs are all distinct per ``tag``."""
    return Manifest.from_dict(
        {
            "format": FORMAT,
            "version": version,
            "created_at": "2026-11-30T00:00:00+00:00",
            "config_hash": tag,
            "config": {},
            "backbone": {"name": "none"},
            "classes": ["0"],
            "train_fingerprint": tag,
            "cluster_fingerprint": tag,
            "prototypes": reg.put_blob(f"{tag}-protos".encode()),
            "clusters": [
                {
                    "key": f"c{tag}",
                    "size": 1,
                    "members": reg.put_json({"ids": [f"{tag}-a"]}),
                    "prompt": reg.put_tensors({"p": torch.full((2, 2), float(version))}),
                    "head": reg.put_blob(f"{tag}-head".encode()),
                },
            ],
            "samples": {"train": 1, "test": 0},
        }
    )


def test_blob_round_trip_and_content_addressing(tmp_path):
    reg = Registry(tmp_path)
    data = b"hello eraserd\x00\xff"
    d1 = reg.put_blob(data)
    assert d1 == sha256_hex(data)
    assert reg.get_blob(d1) == data
    assert reg.put_blob(bytes(data)) == d1
    assert all_files(tmp_path) == [blob_file(tmp_path, d1)]
    d2 = reg.put_blob(b"other")
    assert d2 != d1
    assert len(all_files(tmp_path)) == 2
    assert reg.get_json(reg.put_json({"b": 1, "a": [1, 2]})) == {"a": [1, 2], "b": 1}
    assert reg.put_json({"a": 1, "b": 2}) == reg.put_json({"b": 2, "a": 1})


def test_tensors_round_trip_bit_exact(tmp_path):
    reg = Registry(tmp_path)
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(4, 5, generator=g),
        "d": torch.randn(3, generator=g, dtype=torch.float64),
        "i": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "t": torch.randn(6, 4, generator=g).t(),  # non-contiguous
        "h": torch.randn(7, generator=g).to(torch.bfloat16),
    }
    digest = reg.put_tensors(tensors)
    back = reg.get_tensors(digest)
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype
        assert back[name].shape == t.shape
        assert torch.equal(back[name], t)
        raw = t.contiguous().view(torch.uint8)
        assert torch.equal(back[name].contiguous().view(torch.uint8), raw)
    assert reg.put_tensors(tensors) == digest


def test_corrupt_blob_is_refused(tmp_path):
    reg = Registry(tmp_path)
    digest = reg.put_blob(b"0123456789" * 10)
    path = blob_file(tmp_path, digest)
    raw = bytearray(path.read_bytes())
    raw[17] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptBlobError) as info:
        reg.get_blob(digest, what="prompt")
    msg = str(info.value)
    assert digest[:12] in msg
    assert "corrupt" in msg
    assert msg.startswith("prompt: ")


def test_missing_blob_is_refused(tmp_path):
    reg = Registry(tmp_path)
    digest = reg.put_tensors({"x": torch.ones(3)})
    blob_file(tmp_path, digest).unlink()
    with pytest.raises(CorruptBlobError) as info:
        reg.get_tensors(digest)
    msg = str(info.value)
    assert digest[:12] in msg
    assert "missing" in msg
    assert isinstance(info.value, RegistryError)


def test_write_swap_load(tmp_path):
    reg = Registry(tmp_path)
    assert reg.current() is None
    assert reg.list_versions() == []
    assert reg.next_version() == 1
    m = manifest(reg, 1, "v1")
    sha = reg.write_version(m)
    assert sha == sha256_hex((tmp_path / "registry" / "versions" / "000001.json").read_bytes())
    assert reg.current() is None
    reg.swap(1, sha)
    assert reg.current() == (1, sha)
    assert reg.load() == m
    assert reg.load(1) == m
    on_disk = json.loads((tmp_path / "registry" / "versions" / "000001.json").read_text())
    assert on_disk == m.to_dict()  # the file's layout, field for field
    assert reg.list_versions() == [1]
    assert reg.next_version() == 2


def test_tampered_manifest_is_refused(tmp_path):
    reg = Registry(tmp_path)
    m = manifest(reg, 1, "v1")
    reg.swap(1, reg.write_version(m))
    path = tmp_path / "registry" / "versions" / "000001.json"
    text = path.read_text()
    assert '"version": 1' in text
    path.write_text(text.replace('"version": 1', '"version": 2'))
    with pytest.raises(CorruptBlobError, match="version 1 manifest is corrupt"):
        reg.load()


def test_malformed_current(tmp_path):
    reg = Registry(tmp_path)
    reg.swap(1, reg.write_version(manifest(reg, 1, "v1")))
    current = tmp_path / "registry" / "CURRENT"
    for bad in ["garbage\n", "x abc\n", "1\n", "1 abc extra\n", ""]:
        current.write_text(bad)
        with pytest.raises(RegistryError, match="malformed CURRENT"):
            reg.current()
        with pytest.raises(RegistryError, match="malformed CURRENT"):
            reg.load()


def test_load_without_current_says_build(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError) as info:
        reg.load()
    assert "eraserd build" in str(info.value)
    assert not isinstance(info.value, CorruptBlobError)


def test_wrong_format_and_missing_version(tmp_path):
    reg = Registry(tmp_path)
    path = tmp_path / "registry" / "versions" / "000001.json"
    reg.write_version(manifest(reg, 1, "v1"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "other/9"}))
    reg.swap(1, sha256_hex(path.read_bytes()))
    with pytest.raises(RegistryError, match="unknown manifest format"):
        reg.load()
    with pytest.raises(RegistryError, match="version 7 is missing"):
        reg.load(7)


def test_swap_leaves_no_temp_files_and_valid_pointer(tmp_path):
    reg = Registry(tmp_path)
    m1 = manifest(reg, 1, "v1")
    sha1 = reg.write_version(m1)
    reg.swap(1, sha1)
    root = tmp_path / "registry"
    valid = {f"1 {sha1}\n"}
    assert (root / "CURRENT").read_text() in valid
    m2 = manifest(reg, 2, "v2")
    sha2 = reg.write_version(m2)
    assert reg.current() == (1, sha1)
    assert reg.load() == m1
    assert reg.load(2) == m2
    valid.add(f"2 {sha2}\n")
    reg.swap(2, sha2)
    assert (root / "CURRENT").read_text() == f"2 {sha2}\n"
    assert reg.current() == (2, sha2)
    assert reg.load() == m2
    assert [p.name for p in all_files(root) if ".tmp" in p.name] == []
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["CURRENT"]
    assert reg.next_version() == 3


def test_collect_keeps_only_referenced(tmp_path):
    reg = Registry(tmp_path)
    m1 = manifest(reg, 1, "v1")
    reg.swap(1, reg.write_version(m1))
    m2 = manifest(reg, 2, "v2")
    shared = m1.clusters[0]
    m2 = dataclasses.replace(m2, clusters=m2.clusters + (dataclasses.replace(shared, key="cs"),))
    reg.swap(2, reg.write_version(m2))
    orphan = reg.put_blob(b"nobody refers to me")
    keep_refs = m2.blobs()
    assert len(keep_refs) == 7
    dropped = (m1.blobs() - keep_refs) | {orphan}
    assert dropped == {m1.prototypes, orphan}
    removed = reg.collect(m2)
    assert removed == 1 + len(dropped)
    assert reg.list_versions() == [2]
    assert reg.load() == m2
    for d in keep_refs:
        assert blob_file(tmp_path, d).exists()
        reg.get_blob(d)
    for d in dropped:
        assert not blob_file(tmp_path, d).exists()
    on_disk = {p.stem for p in (tmp_path / "registry" / "blobs").rglob("*.bin")}
    assert on_disk == keep_refs
    assert all(any(d.iterdir()) for d in (tmp_path / "registry" / "blobs").iterdir())
    assert reg.collect(m2) == 0
