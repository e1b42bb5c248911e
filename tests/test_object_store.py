"""LocalObjectStore: s3:// URIs as files under $MLOPS_HOME/s3, atomic writes, sha256, no escapes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlops_dagster import objects as object_store_module  # the local files live there
from mlops_dagster.definitions import build_definitions
from mlops_dagster.resources.object_store import LocalObjectStore, ObjectNotFound, split_uri


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_local_backend_store_lives_under_home_s3(settings, mlops_home: Path):
    store = build_definitions(settings).resources["store"]
    assert isinstance(store, LocalObjectStore)
    assert Path(store.root) == mlops_home / "s3"
    store.put_bytes("s3://mlops-local/mlops/data/x.csv", b"a,b\n1,2\n")
    assert (mlops_home / "s3" / "mlops-local" / "mlops" / "data" / "x.csv").read_bytes() == b"a,b\n1,2\n"


def test_put_maps_uri_to_path_and_records_sha256(store: LocalObjectStore, mlops_home: Path):
    data = b"crim,medv\n0.1,24\n"
    info = store.put_bytes("s3://bkt/a/b/c.csv", data)
    target = mlops_home / "s3" / "bkt" / "a" / "b" / "c.csv"
    assert store.path_for("s3://bkt/a/b/c.csv") == target
    assert target.read_bytes() == data
    assert info.uri == "s3://bkt/a/b/c.csv"
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    head = store.head("s3://bkt/a/b/c.csv")
    assert head is not None and head.sha256 == info.sha256 and head.size == len(data)


def test_put_file_get_bytes_and_download_round_trip(store: LocalObjectStore, tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))  # > one 1 MiB copy block
    info = store.put_file("s3://bkt/big.bin", src)
    assert info.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.get_bytes("s3://bkt/big.bin") == src.read_bytes()
    dest = store.download("s3://bkt/big.bin", tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]  # no temporary part left


def test_missing_object(store: LocalObjectStore, tmp_path: Path):
    assert store.head("s3://bkt/nope.csv") is None
    assert not store.exists("s3://bkt/nope.csv")
    with pytest.raises(ObjectNotFound, match="no object at s3://bkt/nope.csv"):
        store.download("s3://bkt/nope.csv", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError):  # ObjectNotFound is also a FileNotFoundError
        store.get_bytes("s3://bkt/nope.csv")


def test_list_filters_by_prefix_and_sorts(store: LocalObjectStore, mlops_home: Path):
    for key in ["p/b.csv", "p/a.csv", "p/sub/c.csv", "pq/d.csv", "other/e.csv"]:
        store.put_bytes(f"s3://bkt/{key}", b"x")
    # A temporary part of an interrupted write is not an object.
    (mlops_home / "s3" / "bkt" / "p" / ".z.csv.abc.part").write_bytes(b"half")
    assert store.list("s3://bkt/p/") == ["s3://bkt/p/a.csv", "s3://bkt/p/b.csv", "s3://bkt/p/sub/c.csv"]
    assert store.list("s3://bkt/p") == [
        "s3://bkt/p/a.csv", "s3://bkt/p/b.csv", "s3://bkt/p/sub/c.csv", "s3://bkt/pq/d.csv",
    ]  # fmt: skip
    assert store.list("s3://bkt/p/sub/c") == ["s3://bkt/p/sub/c.csv"]
    assert store.list("s3://bkt/missing/") == []
    assert store.list("s3://no-such-bucket/") == []


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bkt/../x.csv",
        "s3://bkt/a/../../x.csv",
        "s3://bkt/a/..",
        "s3://bkt/./x.csv",
        "s3://../x.csv",
        "s3://./x.csv",
        "s3://bkt/",
        "s3://bkt",
        "s3://bkt/folder/",
    ],
)
def test_dot_dot_and_non_object_keys_are_rejected(store: LocalObjectStore, tmp_path: Path, uri: str):
    src = tmp_path / "payload"
    src.write_bytes(b"payload")
    before = all_files(tmp_path)
    with pytest.raises(ValueError):
        store.put_file(uri, src)
    with pytest.raises(ValueError):
        store.put_bytes(uri, b"payload")
    with pytest.raises(ValueError):
        store.head(uri)
    with pytest.raises(ValueError):
        store.download(uri, tmp_path / "dest")
    assert all_files(tmp_path) == before  # nothing written inside or outside the store


@pytest.mark.parametrize("prefix", ["s3://bkt/../", "s3://bkt/a/../../", "s3://../", "s3://../outside/"])
def test_list_does_not_walk_outside_the_root(store: LocalObjectStore, mlops_home: Path, prefix: str):
    store.put_bytes("s3://bkt/a/x.csv", b"x")
    (mlops_home / "outside").mkdir()
    (mlops_home / "outside" / "secret.txt").write_text("secret")
    with pytest.raises(ValueError):
        store.list(prefix)


@pytest.mark.parametrize("uri", ["http://bkt/key", "bkt/key", "/bkt/key", "s3:///key", "S3://bkt/key"])
def test_non_s3_uris_are_rejected(store: LocalObjectStore, uri: str):
    with pytest.raises(ValueError, match="URI"):
        store.put_bytes(uri, b"x")
    with pytest.raises(ValueError):
        split_uri(uri)


def test_failed_write_from_missing_source_leaves_nothing(store: LocalObjectStore, mlops_home: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        store.put_file("s3://bkt/data/train.csv", tmp_path / "does-not-exist.csv")
    assert all_files(mlops_home / "s3") == []
    assert store.list("s3://bkt/") == []


def test_failure_during_write_leaves_nothing(store: LocalObjectStore, mlops_home: Path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(object_store_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.put_bytes("s3://bkt/data/train.csv", b"x" * 100_000)
    assert all_files(mlops_home / "s3") == []  # neither the object nor a temporary part
    assert store.head("s3://bkt/data/train.csv") is None


def test_failed_overwrite_keeps_the_old_object(store: LocalObjectStore, mlops_home: Path, monkeypatch):
    store.put_bytes("s3://bkt/model.tar.gz", b"version one")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(object_store_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.put_bytes("s3://bkt/model.tar.gz", b"version two, longer than one")
    assert store.get_bytes("s3://bkt/model.tar.gz") == b"version one"
    assert all_files(mlops_home / "s3") == ["bkt/model.tar.gz"]


def test_overwrite_replaces_the_file_instead_of_writing_into_it(store: LocalObjectStore):
    store.put_bytes("s3://bkt/data.csv", b"old content\n" * 1000)
    path = store.path_for("s3://bkt/data.csv")
    old_inode = path.stat().st_ino
    with open(path, "rb") as reader:  # a reader that opened the old object keeps reading it whole
        info = store.put_bytes("s3://bkt/data.csv", b"new")
        assert reader.read() == b"old content\n" * 1000
    assert path.stat().st_ino != old_inode
    assert store.get_bytes("s3://bkt/data.csv") == b"new"
    assert info.sha256 == hashlib.sha256(b"new").hexdigest() == store.head("s3://bkt/data.csv").sha256


def test_put_owned_file_moves_a_file_into_place(store: LocalObjectStore, tmp_path: Path, mlops_home: Path):
    """A temporary the caller gives up is renamed into the store (no copy of a large file)."""
    src = mlops_home / "work" / "train.csv"
    src.parent.mkdir()
    src.write_bytes(b"a,b\n1,2\n" * 1000)
    data, inode = src.read_bytes(), src.stat().st_ino
    info = store.put_owned_file("s3://bkt/data/train.csv", src)
    target = store.path_for("s3://bkt/data/train.csv")
    assert target.read_bytes() == data and target.stat().st_ino == inode  # moved, not copied
    assert not src.exists()
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert store.head("s3://bkt/data/train.csv").sha256 == info.sha256
    assert oct(target.stat().st_mode & 0o777) == oct(store.path_for(_put(store)).stat().st_mode & 0o777)
    # A link is not moved (that would move the link, not the data): it is copied and stays.
    linked = tmp_path / "link.csv"
    linked.symlink_to(mlops_home / "work" / "other.csv")
    (mlops_home / "work" / "other.csv").write_bytes(b"x,y\n")
    store.put_owned_file("s3://bkt/data/other.csv", linked)
    assert store.get_bytes("s3://bkt/data/other.csv") == b"x,y\n" and linked.is_symlink()


def _put(store: LocalObjectStore) -> str:
    store.put_bytes("s3://bkt/data/copied.csv", b"c\n")
    return "s3://bkt/data/copied.csv"
