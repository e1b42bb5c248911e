"""Object store edge cases (issue 9, item 8): links out of $MLOPS_HOME/s3, a key that is both an
object and a prefix, and keys that S3 keeps apart but one directory tree cannot ('a//b', '.', '..').
The key rules are the same on the S3 store (moto), so code fails the same way on both backends."""

from __future__ import annotations

import re
from pathlib import Path

import boto3
import pytest
from dagster_aws.s3 import S3Resource

from mlops_dagster.resources.aws import S3ObjectStore
from mlops_dagster.resources.object_store import LocalObjectStore, ObjectStoreError

OUTSIDE_MESSAGE = "outside the object store"


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


@pytest.fixture
def outside(mlops_home: Path) -> Path:
    """A folder beside the store, with a file the store must never read or write into."""
    folder = mlops_home / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("secret")
    return folder


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


# --- links ---------------------------------------------------------------------------------------


def test_a_linked_file_out_of_the_store_is_not_read(store: LocalObjectStore, mlops_home: Path, outside: Path):
    store.put_bytes("s3://bkt/data/real.csv", b"x")
    (mlops_home / "s3" / "bkt" / "data" / "leak.csv").symlink_to(outside / "secret.txt")
    uri = "s3://bkt/data/leak.csv"
    for call in (lambda: store.head(uri), lambda: store.get_bytes(uri), lambda: store.exists(uri)):
        with pytest.raises(ObjectStoreError, match=f"{uri}: .*leak.csv leads through a symbolic link") as caught:
            call()
        assert OUTSIDE_MESSAGE in str(caught.value) and "remove the link" in str(caught.value)
    with pytest.raises(ObjectStoreError, match=f"{uri}: .*{OUTSIDE_MESSAGE}"):
        store.list("s3://bkt/data/")
    # Overwriting the link's key is refused too: the link stays, the outside file is unchanged.
    with pytest.raises(ObjectStoreError, match=f"{uri}: .*{OUTSIDE_MESSAGE}"):
        store.put_bytes(uri, b"overwrite")
    assert (outside / "secret.txt").read_text() == "secret"


def test_a_linked_folder_out_of_the_store_is_not_written_read_or_listed(
    store: LocalObjectStore, mlops_home: Path, outside: Path
):
    (mlops_home / "s3" / "bkt").mkdir(parents=True)
    (mlops_home / "s3" / "bkt" / "linked").symlink_to(outside, target_is_directory=True)
    before = files_under(outside)
    with pytest.raises(ObjectStoreError, match=f"s3://bkt/linked/planted.txt: .*{OUTSIDE_MESSAGE}"):
        store.put_bytes("s3://bkt/linked/planted.txt", b"planted")
    with pytest.raises(ObjectStoreError, match=f"s3://bkt/linked/deeper/planted.txt: .*{OUTSIDE_MESSAGE}"):
        store.put_bytes("s3://bkt/linked/deeper/planted.txt", b"planted")
    assert files_under(outside) == before  # nothing written outside, not even a temporary part
    with pytest.raises(ObjectStoreError, match=f"s3://bkt/linked/secret.txt: .*{OUTSIDE_MESSAGE}"):
        store.head("s3://bkt/linked/secret.txt")
    with pytest.raises(ObjectStoreError, match=f"s3://bkt/linked/secret.txt: .*{OUTSIDE_MESSAGE}"):
        store.download("s3://bkt/linked/secret.txt", mlops_home / "copy.txt")
    assert not (mlops_home / "copy.txt").exists()
    with pytest.raises(ObjectStoreError, match=f"s3://bkt/linked/: .*{OUTSIDE_MESSAGE}"):
        store.list("s3://bkt/linked/")


def test_a_linked_bucket_out_of_the_store_is_refused(store: LocalObjectStore, mlops_home: Path, outside: Path):
    (mlops_home / "s3").mkdir()
    (mlops_home / "s3" / "elsewhere").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ObjectStoreError, match=f"s3://elsewhere/secret.txt: .*{OUTSIDE_MESSAGE}"):
        store.get_bytes("s3://elsewhere/secret.txt")
    with pytest.raises(ObjectStoreError, match=f"s3://elsewhere/: .*{OUTSIDE_MESSAGE}"):
        store.list("s3://elsewhere/")


def test_links_that_stay_inside_the_store_and_a_linked_root_still_work(tmp_path: Path):
    real_root = tmp_path / "disk" / "s3"
    real_root.mkdir(parents=True)
    (tmp_path / "s3").symlink_to(real_root, target_is_directory=True)  # e.g. the store on a bigger disk
    store = LocalObjectStore(root=str(tmp_path / "s3"))
    store.put_bytes("s3://bkt/a/x.csv", b"x")
    (real_root / "bkt" / "alias.csv").symlink_to(real_root / "bkt" / "a" / "x.csv")
    assert store.get_bytes("s3://bkt/alias.csv") == b"x"
    assert store.list("s3://bkt/") == ["s3://bkt/a/x.csv", "s3://bkt/alias.csv"]
    assert (real_root / "bkt" / "a" / "x.csv").read_bytes() == b"x"


# --- a key that is both an object and a prefix ---------------------------------------------------


def test_writing_below_an_object_names_both_keys(store: LocalObjectStore, mlops_home: Path):
    store.put_bytes("s3://bkt/k", b"object")
    for uri in ("s3://bkt/k/child", "s3://bkt/k/a/b"):
        with pytest.raises(ObjectStoreError) as caught:
            store.put_bytes(uri, b"child")
        message = str(caught.value)
        assert message.startswith(f"cannot write {uri}: s3://bkt/k is an object, and locally a key cannot be both")
        assert "an object and the prefix of another object's key (S3 allows it" in message
        assert not isinstance(caught.value, OSError)  # not a raw FileExistsError / NotADirectoryError
    assert store.get_bytes("s3://bkt/k") == b"object"
    assert files_under(mlops_home / "s3") == ["bkt/k"]


def test_writing_an_object_over_a_prefix_names_an_object_below_it(store: LocalObjectStore, mlops_home: Path):
    store.put_bytes("s3://bkt/k/child", b"child")
    with pytest.raises(ObjectStoreError) as caught:
        store.put_bytes("s3://bkt/k", b"object")
    assert str(caught.value).startswith(
        "cannot write s3://bkt/k: it is the prefix of other objects (s3://bkt/k/child), and locally a key "
        "cannot be both an object and the prefix of another object's key"
    )
    assert not isinstance(caught.value, OSError)  # not a raw IsADirectoryError
    assert store.list("s3://bkt/") == ["s3://bkt/k/child"]
    assert files_under(mlops_home / "s3") == ["bkt/k/child"]  # no temporary part left


# --- keys with empty, '.' or '..' segments, on both stores -----------------------------------------

EMPTY_SEGMENT = "has an empty segment (a leading '/' or '//')"
DOT_SEGMENT = "has a '.' or '..' segment"
BAD_KEYS = [
    ("s3://bkt/a//b.csv", EMPTY_SEGMENT),
    ("s3://bkt//b.csv", EMPTY_SEGMENT),
    ("s3://bkt/a/./b.csv", DOT_SEGMENT),
    ("s3://bkt/a/../b.csv", DOT_SEGMENT),
]


@pytest.mark.parametrize(("uri", "reason"), BAD_KEYS)
def test_the_local_store_refuses_keys_with_empty_or_dot_segments(
    store: LocalObjectStore, mlops_home: Path, tmp_path: Path, uri: str, reason: str
):
    key = uri.removeprefix("s3://bkt/")
    expected = f"{uri}: the key {key!r} {reason}"
    for call in (
        lambda: store.put_bytes(uri, b"x"),
        lambda: store.head(uri),
        lambda: store.download(uri, tmp_path / "dest"),
    ):
        with pytest.raises(ObjectStoreError, match=re.escape(expected)):
            call()
    assert not (mlops_home / "s3").exists() or files_under(mlops_home / "s3") == []


def test_a_double_slash_key_is_not_the_same_object_as_the_single_slash_one(store: LocalObjectStore):
    store.put_bytes("s3://bkt/a/b.csv", b"a/b")
    with pytest.raises(ObjectStoreError, match="s3://bkt/a//b.csv: the key 'a//b.csv' has an empty segment"):
        store.get_bytes("s3://bkt/a//b.csv")
    with pytest.raises(ObjectStoreError, match="s3://bkt/a//: the key 'a//' has an empty segment"):
        store.list("s3://bkt/a//")


@pytest.fixture
def s3_store(aws, local_only) -> S3ObjectStore:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
    return S3ObjectStore(s3=S3Resource(region_name="us-east-1"))


@pytest.mark.parametrize(("uri", "reason"), BAD_KEYS)
def test_the_s3_store_refuses_the_same_keys_with_the_same_error(
    s3_store: S3ObjectStore, store: LocalObjectStore, tmp_path: Path, uri: str, reason: str
):
    for each in (store, s3_store):
        with pytest.raises(ObjectStoreError) as caught:
            each.put_bytes(uri, b"x")
        assert str(caught.value).startswith(f"{uri}: the key {uri.removeprefix('s3://bkt/')!r} {reason}")
        with pytest.raises(ObjectStoreError, match=re.escape(reason)):
            each.head(uri)
        with pytest.raises(ObjectStoreError, match=re.escape(reason)):
            each.download(uri, tmp_path / "dest")
    assert boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="bkt").get("KeyCount") == 0
