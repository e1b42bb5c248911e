"""Objects named ``s3://bucket/key`` without Dagster: URI rules, errors, and the local files.

``resources/object_store.py`` makes these the ``ObjectStore`` resources assets receive. The
processes that must start fast and never build the code location (the local SageMaker worker,
the endpoint server's data capture) use ``LocalObjects`` from here: importing Dagster costs them
about a second each.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ObjectStoreError(RuntimeError):
    """An object store operation failed; the message names the URI."""


class ObjectNotFound(ObjectStoreError, FileNotFoundError):
    """No object at the URI."""


class InvalidKey(ObjectStoreError, ValueError):
    """The URI cannot name an object (or a key prefix) on both backends; the message says why."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    sha256: str | None = None
    version_id: str | None = None


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; raises ValueError for anything else."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def _check_bucket(uri: str, bucket: str) -> None:
    # split_uri leaves no '/' in the bucket, but '.' or '..' would still step out of the local root.
    if bucket in (".", ".."):
        raise InvalidKey(f"{uri}: {bucket!r} is not a bucket name")


def _check_segments(uri: str, key: str, segments: list[str]) -> None:
    """Refuse keys that S3 would keep apart but one directory tree cannot (the same rule on both
    backends, so code that works locally works on S3 and fails the same way on both)."""
    if "" in segments:
        raise InvalidKey(
            f"{uri}: the key {key!r} has an empty segment (a leading '/' or '//'); S3 would store "
            "'a//b' and 'a/b' as two objects but the local store as one, so neither backend accepts it: "
            "remove the extra '/'"
        )
    if any(part in (".", "..") for part in segments):
        raise InvalidKey(
            f"{uri}: the key {key!r} has a '.' or '..' segment, which the local store would resolve "
            "to another folder (S3 would not), so neither backend accepts it: spell the key out"
        )


def object_key(uri: str) -> tuple[str, str]:
    """``split_uri`` for a URI that names one object; raises InvalidKey (a ValueError) naming it."""
    bucket, key = split_uri(uri)
    _check_bucket(uri, bucket)
    if not key or key.endswith("/"):
        raise InvalidKey(f"{uri} names no object: the key is empty or ends with '/' (a folder)")
    _check_segments(uri, key, key.split("/"))
    return bucket, key


def key_prefix(uri_prefix: str) -> tuple[str, str]:
    """``split_uri`` for a listing prefix: its last segment may be empty or part of a name."""
    bucket, prefix = split_uri(uri_prefix)
    _check_bucket(uri_prefix, bucket)
    _check_segments(uri_prefix, prefix, prefix.split("/")[:-1])
    return bucket, prefix


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ObjectOps(ABC):
    """put/get/list/head of ``s3://bucket/key`` objects (what every store does, Dagster or not)."""

    @abstractmethod
    def put_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        """Upload a file; the object appears whole or not at all."""

    @abstractmethod
    def download(self, uri: str, path: str | os.PathLike) -> Path:
        """Download an object to ``path`` (written atomically); raises ObjectNotFound."""

    @abstractmethod
    def head(self, uri: str) -> ObjectInfo | None:
        """Size, sha256 and version of an object, or None when it does not exist."""

    @abstractmethod
    def list(self, uri_prefix: str) -> list[str]:
        """URIs of all objects whose key starts with the prefix, sorted."""

    def put_owned_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        """Upload a file the caller gives up (a temporary it wrote and deletes after): a store may
        move it into place rather than copy it. By default, ``put_file``."""
        return self.put_file(uri, path)

    def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        with tempfile.TemporaryDirectory(prefix="mlops-put-") as tmp:
            path = Path(tmp) / "object"
            path.write_bytes(data)
            return self.put_file(uri, path)

    def get_bytes(self, uri: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="mlops-get-") as tmp:
            return self.download(uri, Path(tmp) / "object").read_bytes()

    def exists(self, uri: str) -> bool:
        return self.head(uri) is not None


class LocalFiles:
    """Objects as files under ``<root>/<bucket>/<key>``.

    Writes go to a temporary file in the target's directory and are renamed into place, so a
    reader never sees half an object and a failed write leaves nothing behind. A symbolic link
    is followed only while it stays under the root (the root itself may be a link). A key is a
    file and a prefix is a folder, so unlike S3 a key cannot be both an object and the prefix of
    another object's key: such a write raises ObjectStoreError naming both keys.
    """

    # ``self.root`` (the folder of the buckets) comes from the class that mixes this in.

    def path_for(self, uri: str) -> Path:
        bucket, key = object_key(uri)
        return Path(self.root, bucket, *key.split("/"))

    def _inside(self, uri: str, path: Path) -> Path:
        """``path`` with its links resolved, refused if that leaves the root."""
        root = Path(self.root).resolve()
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise ObjectStoreError(
                f"{uri}: {path} leads through a symbolic link to {resolved}, outside the object store {root}; "
                "the local store does not follow links out of it: remove the link, or copy the file in"
            )
        return resolved

    def put_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        return self._put(uri, lambda target: self._write(target, path))

    def put_owned_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        """Moves ``path`` into place (fsynced, then renamed) when it is on the store's file system;
        otherwise copies it. Saves copying a large file the caller would delete anyway."""
        return self._put(uri, lambda target: self._move(target, path))

    def _put(self, uri: str, write: Callable[[Path], str]) -> ObjectInfo:
        target = self.path_for(uri)
        self._inside(uri, target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # The folders exist now: write into the resolved one, and replace `target` itself (a
            # link in the last place is replaced, not written through).
            target = self._inside(uri, target.parent) / target.name
            digest = write(target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._key_conflict(uri, exc) from exc
        return ObjectInfo(uri=uri, size=target.stat().st_size, sha256=digest)

    @classmethod
    def _move(cls, target: Path, path: str | os.PathLike) -> str:
        source = Path(path)
        if source.is_symlink() or os.stat(source).st_dev != os.stat(target.parent).st_dev:
            return cls._write(target, source)
        with source.open("rb") as handle:
            os.fsync(handle.fileno())  # durable before it appears under its key, as _write makes it
        digest = sha256_file(source)
        os.chmod(source, 0o600)  # as a copied object's temporary file (mkstemp) has
        os.replace(source, target)
        return digest

    @staticmethod
    def _write(target: Path, path: str | os.PathLike) -> str:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def _key_conflict(self, uri: str, exc: OSError) -> OSError | ObjectStoreError:
        """The ObjectStoreError for a write that met a file where a folder goes, or the reverse."""
        bucket, key = object_key(uri)
        parts = key.split("/")
        base = Path(self.root, bucket)
        rule = (
            "locally a key cannot be both an object and the prefix of another object's key (S3 allows "
            "it; the local store keeps an object as a file and a prefix as a folder)"
        )
        for depth in range(1, len(parts)):
            if base.joinpath(*parts[:depth]).is_file():
                other = f"s3://{bucket}/{'/'.join(parts[:depth])}"
                return ObjectStoreError(f"cannot write {uri}: {other} is an object, and {rule}: use another key")
        folder = base.joinpath(*parts)
        if folder.is_dir():
            inside = sorted(p.relative_to(base).as_posix() for p in folder.rglob("*") if p.is_file())
            example = f"s3://{bucket}/{inside[0]}" if inside else f"no object, only the empty folder {folder}"
            return ObjectStoreError(
                f"cannot write {uri}: it is the prefix of other objects ({example}), and {rule}: use another key"
            )
        return exc  # neither: not a key conflict, the original error stands

    def download(self, uri: str, path: str | os.PathLike) -> Path:
        source = self._inside(uri, self.path_for(uri))
        if not source.is_file():
            raise ObjectNotFound(f"no object at {uri} (looked for {self.path_for(uri)})")
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while block := src.read(1 << 20):
                    out.write(block)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def head(self, uri: str) -> ObjectInfo | None:
        source = self._inside(uri, self.path_for(uri))
        if not source.is_file():
            return None
        return ObjectInfo(uri=uri, size=source.stat().st_size, sha256=sha256_file(source))

    def list(self, uri_prefix: str) -> list[str]:
        bucket, prefix = key_prefix(uri_prefix)
        base = Path(self.root, bucket)
        # Walk only the deepest folder the prefix names, then filter by the full prefix.
        start = base.joinpath(*prefix.split("/")[:-1])
        if not start.is_dir():
            return []
        self._inside(uri_prefix, start)
        uris = []
        # os.walk does not descend into linked folders; linked files are checked one by one.
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".") and name.endswith(".part"):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    if path.is_symlink():
                        self._inside(f"s3://{bucket}/{key}", path)
                    uris.append(f"s3://{bucket}/{key}")
        return sorted(uris)


class LocalObjects(LocalFiles, ObjectOps):
    """``LocalObjectStore`` for processes without Dagster: the same files, the same rules."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root)

    def __repr__(self) -> str:
        return f"LocalObjects(root={self.root!r})"
