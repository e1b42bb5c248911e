"""Keeps the SageMaker SDK on this machine in local mode.

While it builds a pipeline definition the SDK lists and creates the default bucket and uploads
code (``sourcedir.tar.gz``, processing scripts) through the boto session's S3 client and
resource. botocore lets a ``before-call`` handler answer a call without sending it; this module
registers one that serves those S3 calls from the local ObjectStore and refuses every other
call, so an SDK change that adds a request fails loudly instead of reaching AWS.
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody

from ..resources.object_store import ObjectStore

_STASH = "mlops_api_params"
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


class LocalModeCallError(RuntimeError):
    """The SDK tried an AWS call that the local backend does not serve."""


class _RawBody(io.BytesIO):
    def stream(self, *_args, **_kwargs):
        yield self.getvalue()


def _response(status: int, parsed: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = status
    return AWSResponse("http://local.invalid/", status, {}, _RawBody(b"")), parsed


def _error(status: int, code: str, message: str):
    return _response(status, {"Error": {"Code": code, "Message": message}})


def _read_body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return body.read()


class LocalS3ForSdk:
    """``before-call`` handlers that answer the SDK's S3 calls from an ObjectStore."""

    def __init__(self, store: ObjectStore, buckets: list[str]):
        self.store = store
        self.buckets = list(buckets)

    def install(self, session: boto3.Session) -> boto3.Session:
        session.events.register("before-parameter-build", self._stash_params)
        session.events.register("before-call", self._answer)
        return session

    @staticmethod
    def _stash_params(params: dict, context: dict, **_: Any) -> None:
        # before-call sees the serialized HTTP request; keep the API parameters for it.
        context[_STASH] = dict(params)

    def _answer(self, model, context: dict, **_: Any):
        service = model.service_model.service_name
        operation = model.name
        params = context.get(_STASH, {})
        handler = getattr(self, f"_s3_{operation}", None) if service == "s3" else None
        if handler is None:
            raise LocalModeCallError(
                f"the SageMaker SDK tried to call {service}:{operation} while building the pipeline in "
                "local mode; the local backend serves only the SDK's S3 uploads, so nothing leaves this "
                "machine. Use MLOPS_BACKEND=aws to talk to AWS."
            )
        return handler(params)

    def _s3_ListBuckets(self, _params: dict):
        return _response(200, {"Buckets": [{"Name": b, "CreationDate": _EPOCH} for b in self.buckets]})

    def _s3_HeadBucket(self, params: dict):
        if params.get("Bucket") in self.buckets:
            return _response(200, {})
        return _error(404, "NoSuchBucket", f"bucket {params.get('Bucket')!r} is not a local bucket")

    def _s3_CreateBucket(self, params: dict):
        if params.get("Bucket") not in self.buckets:
            self.buckets.append(params["Bucket"])
        return _response(200, {"Location": f"/{params['Bucket']}"})

    def _s3_PutObject(self, params: dict):
        data = _read_body(params.get("Body"))
        info = self.store.put_bytes(f"s3://{params['Bucket']}/{params['Key']}", data)
        return _response(200, {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "ChecksumSHA256": info.sha256})

    def _s3_HeadObject(self, params: dict):
        info = self.store.head(f"s3://{params['Bucket']}/{params['Key']}")
        if info is None:
            return _error(404, "404", "Not Found")
        return _response(200, {"ContentLength": info.size, "ETag": f'"{info.sha256}"'})

    def _s3_GetObject(self, params: dict):
        uri = f"s3://{params['Bucket']}/{params['Key']}"
        if self.store.head(uri) is None:
            return _error(404, "NoSuchKey", f"no object at {uri}")
        data = self.store.get_bytes(uri)
        return _response(200, {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentLength": len(data)})


def local_boto_session(store: ObjectStore, bucket: str, region: str) -> boto3.Session:
    """A boto3 session whose every call is answered here; static dummy credentials, so the
    credential chain (files, instance metadata) is never consulted."""
    session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=region)
    return LocalS3ForSdk(store, [bucket]).install(session)
