"""The ObjectStore seam: ``s3://bucket/key`` objects on S3 (aws) or under ``$MLOPS_HOME/s3`` (local).

Asset code only ever sees ``ObjectStore``; ``definitions.py`` picks the implementation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from dagster import ConfigurableResource, MetadataValue


class ObjectStoreError(RuntimeError):
    """An object store operation failed; the message names the URI."""


class ObjectNotFound(ObjectStoreError, FileNotFoundError):
    """No object at the URI."""


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ObjectStore(ConfigurableResource, ABC):
    """put/get/list/head of ``s3://bucket/key`` objects."""

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

    @abstractmethod
    def link(self, uri: str) -> MetadataValue:
        """Where a person looks at the object: a local path, or the S3 console page."""


class LocalObjectStore(ObjectStore):
    """Objects as files under ``<root>/<bucket>/<key>``.

    Writes go to a temporary file in the target's directory and are renamed into place, so a
    reader never sees half an object and a failed write leaves nothing behind.
    """

    root: str

    def _bucket_dir(self, uri: str, bucket: str) -> Path:
        # split_uri leaves no '/' in the bucket, but '.' or '..' would still step out of the root.
        if bucket in (".", ".."):
            raise ValueError(f"not a bucket name: {bucket!r} in {uri!r}")
        return Path(self.root, bucket)

    def link(self, uri: str) -> MetadataValue:
        bucket, key = split_uri(uri)
        return MetadataValue.path(str(Path(self.root, bucket, *[p for p in key.split("/") if p])))

    def path_for(self, uri: str) -> Path:
        bucket, key = split_uri(uri)
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or key.endswith("/"):
            raise ValueError(f"not an object key (empty, a folder, or with '.'/'..' parts): {uri!r}")
        return self._bucket_dir(uri, bucket).joinpath(*parts)

    def put_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        target = self.path_for(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
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
        return ObjectInfo(uri=uri, size=target.stat().st_size, sha256=digest.hexdigest())

    def download(self, uri: str, path: str | os.PathLike) -> Path:
        source = self.path_for(uri)
        if not source.is_file():
            raise ObjectNotFound(f"no object at {uri} (looked for {source})")
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
        source = self.path_for(uri)
        if not source.is_file():
            return None
        return ObjectInfo(uri=uri, size=source.stat().st_size, sha256=sha256_file(source))

    def list(self, uri_prefix: str) -> list[str]:
        bucket, key_prefix = split_uri(uri_prefix)
        base = self._bucket_dir(uri_prefix, bucket)
        if any(p in (".", "..") for p in key_prefix.split("/")[:-1]):
            raise ValueError(f"not a key prefix (with '.'/'..' parts): {uri_prefix!r}")
        if not base.is_dir():
            return []
        # Walk only the deepest directory the prefix names, then filter by the full prefix.
        start = base.joinpath(*key_prefix.split("/")[:-1]) if "/" in key_prefix else base
        uris = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".") and name.endswith(".part"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(key_prefix):
                    uris.append(f"s3://{bucket}/{key}")
        return sorted(uris)
