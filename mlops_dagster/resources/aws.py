"""The aws backend's resources: a boto3 session (region, profile, endpoint, retries in one place),
the S3 ObjectStore and the SageMaker client. Only ``definitions.py`` imports this module, and only
for ``MLOPS_BACKEND=aws``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from .object_store import ObjectInfo, ObjectNotFound, ObjectStore, sha256_file, split_uri
from .sagemaker import SageMaker


class AwsSession(ConfigurableResource):
    """The normal AWS credential chain (env, profile, SSO, instance role); never keys in config."""

    region: str
    profile: str | None = Field(default=None, description="named profile from ~/.aws/config")
    endpoint_url: str | None = Field(default=None, description="an S3/SageMaker-compatible endpoint (tests: moto)")
    retry_mode: str = Field(default="standard", description="botocore retry mode: standard or adaptive")
    max_attempts: int = Field(default=8, ge=1, description="botocore attempts per call, first try included")

    def boto_session(self) -> boto3.Session:
        return boto3.Session(profile_name=self.profile, region_name=self.region)

    def botocore_config(self) -> BotoConfig:
        return BotoConfig(retries={"mode": self.retry_mode, "max_attempts": self.max_attempts})

    def client(self, service: str, session: boto3.Session | None = None) -> Any:
        session = session or self.boto_session()
        kwargs: dict[str, Any] = {"config": self.botocore_config()}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return session.client(service, **kwargs)


class S3ObjectStore(ObjectStore):
    """Objects in Amazon S3 through ``dagster_aws.s3.S3Resource``.

    Uploads go through boto3's transfer manager (multipart above its threshold, so a failed
    upload leaves no object); the sha256 is stored as user metadata ``sha256``.
    """

    s3: S3Resource

    def _client(self):
        return self.s3.get_client()

    def put_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        bucket, key = split_uri(uri)
        digest = sha256_file(path)
        client = self._client()
        client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
        head = client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(uri=uri, size=head["ContentLength"], sha256=digest, version_id=head.get("VersionId"))

    def download(self, uri: str, path: str | os.PathLike) -> Path:
        bucket, key = split_uri(uri)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        try:
            self._client().download_file(bucket, key, tmp)
            os.replace(tmp, dest)
        except ClientError as err:
            if _error_code(err) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(f"no object at {uri}") from err
            raise
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def head(self, uri: str) -> ObjectInfo | None:
        bucket, key = split_uri(uri)
        try:
            head = self._client().head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if _error_code(err) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(
            uri=uri,
            size=head["ContentLength"],
            sha256=head.get("Metadata", {}).get("sha256"),
            version_id=head.get("VersionId"),
        )

    def list(self, uri_prefix: str) -> list[str]:
        bucket, prefix = split_uri(uri_prefix)
        paginator = self._client().get_paginator("list_objects_v2")
        return sorted(
            f"s3://{bucket}/{obj['Key']}"
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        )


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class AwsSageMaker(SageMaker):
    """Amazon SageMaker through boto3, with botocore retries from the session resource."""

    session: AwsSession
    role_arn: str | None = None

    def get_client(self):
        return self.session.client("sagemaker")

    def sdk_boto_session(self) -> boto3.Session:
        return self.session.boto_session()

    def execution_role_arn(self) -> str:
        if not self.role_arn:
            raise ValueError(
                "no SageMaker execution role: set MLOPS_ROLE_ARN, or run the setup_infrastructure job "
                "which creates the role and prints its ARN"
            )
        return self.role_arn

    def job_log_tail(self, job_name: str, kind: str, lines: int = 40) -> str:
        group = {"training": "/aws/sagemaker/TrainingJobs", "processing": "/aws/sagemaker/ProcessingJobs"}[kind]
        logs = self.session.client("logs")
        streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=job_name).get("logStreams", [])
        events: list[str] = []
        for stream in streams:
            page = logs.get_log_events(
                logGroupName=group, logStreamName=stream["logStreamName"], limit=lines, startFromHead=False
            )
            events += [e["message"] for e in page.get("events", [])]
        return "\n".join(events[-lines:]) or f"(no log events in {group} for {job_name})"
