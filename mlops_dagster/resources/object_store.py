"""The ObjectStore seam: ``s3://bucket/key`` objects on S3 (aws) or under ``$MLOPS_HOME/s3`` (local).

Asset code only ever sees ``ObjectStore``; ``definitions.py`` picks the implementation. The URI
rules, errors and local files live in ``mlops_dagster/objects.py`` (no Dagster there, for the
processes that start without it); they are re-exported here.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from dagster import ConfigurableResource, MetadataValue

from ..objects import (  # noqa: F401 (re-exported: the names asset code imports from here)
    InvalidKey,
    LocalFiles,
    LocalObjects,
    ObjectInfo,
    ObjectNotFound,
    ObjectOps,
    ObjectStoreError,
    key_prefix,
    object_key,
    sha256_file,
    split_uri,
)


class ObjectStore(ObjectOps, ConfigurableResource):
    """put/get/list/head of ``s3://bucket/key`` objects, as a Dagster resource."""

    @abstractmethod
    def link(self, uri: str) -> MetadataValue:
        """Where a person looks at the object: a local path, or the S3 console page."""


class LocalObjectStore(LocalFiles, ObjectStore):
    """Objects as files under ``<root>/<bucket>/<key>`` (the rules: ``objects.LocalFiles``)."""

    root: str

    def link(self, uri: str) -> MetadataValue:
        bucket, key = split_uri(uri)
        return MetadataValue.path(str(Path(self.root, bucket, *[p for p in key.split("/") if p])))
