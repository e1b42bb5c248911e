"""The aws backend's resources: a boto3 session (region, profile, endpoint, retries in one place),
the S3 ObjectStore and the SageMaker client. Only ``definitions.py`` imports this module, and only
for ``MLOPS_BACKEND=aws``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from dagster import ConfigurableResource, MetadataValue
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr, field_validator

from .. import botocore_loader
from .object_store import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    key_prefix,
    object_key,
    sha256_file,
    split_uri,
)
from .sagemaker import SageMaker

RETRY_MODES = ("standard", "adaptive")
MiB = 1024 * 1024
_MISSING = ("404", "NoSuchKey", "NotFound")
LOG_GROUPS = {"training": "/aws/sagemaker/TrainingJobs", "processing": "/aws/sagemaker/ProcessingJobs"}


def new_boto3_session(core: botocore.session.Session | None = None, **kwargs: Any) -> boto3.Session:
    """``boto3.Session(botocore_session=core, **kwargs)`` on this process's shared loaders
    (``botocore_loader.py``: each service's JSON model is parsed once per process, not per session)."""
    botocore_loader.share()
    return boto3.Session(botocore_session=core or botocore.session.get_session(), **kwargs)


def endpoint_override(endpoint_url: str) -> Callable[..., None]:
    """A ``before-endpoint-resolution`` handler that sends every request to ``endpoint_url``.

    botocore resolves each request's URL from its endpoint ruleset; ``SDK::Endpoint`` is the
    built-in that ``create_client(endpoint_url=...)`` sets. Setting it per request also covers
    clients created without an endpoint (the SageMaker SDK's S3 client and resource) and ones
    created with an explicit AWS endpoint (the SDK pins STS to its regional AWS endpoint).
    """

    def handler(builtins: dict, **_: Any) -> None:
        builtins["SDK::Endpoint"] = endpoint_url
        # What create_client(endpoint_url=...) implies as well: path-style S3 addressing (a
        # bucket subdomain of 127.0.0.1 does not resolve), and no FIPS or dual-stack variant
        # (the rulesets refuse those together with a custom endpoint).
        builtins["AWS::S3::ForcePathStyle"] = True
        builtins["AWS::UseFIPS"] = False
        builtins["AWS::UseDualStack"] = False

    return handler


def expected_bucket_owner(bucket: str, account: Callable[[], str]) -> Callable[..., None]:
    """A ``before-parameter-build.s3`` handler: every call on ``bucket`` that takes
    ``ExpectedBucketOwner`` gets this account's id.

    After a teardown anyone may claim the bucket's name; with the owner stated, a bucket of that
    name in another account answers 403 instead of receiving our uploads or serving us its
    objects. Only the project's own bucket: a data source may well be another account's.
    ``account`` is called on the first such call (no STS call at load time) and cached.
    """
    cached: list[str] = []

    def handler(params: dict, model: Any, **_: Any) -> None:
        if params.get("Bucket") != bucket or "ExpectedBucketOwner" not in model.input_shape.members:
            return
        if not cached:
            cached.append(account())
        params.setdefault("ExpectedBucketOwner", cached[0])

    return handler


class AwsSession(ConfigurableResource):
    """boto3 sessions and clients for the aws backend.

    Credentials come from the normal AWS chain (environment, profile, SSO, container or instance
    role), never from this project's configuration. Every client made from ``boto_session()``,
    including those the SageMaker SDK makes, gets the retry settings and, when set, the endpoint.
    """

    region: str = Field(description="AWS region, e.g. us-east-1")
    profile: str | None = Field(
        default=None, description="named profile from ~/.aws/config; default: the credential chain"
    )
    endpoint_url: str | None = Field(
        default=None, description="send every AWS call to this S3/SageMaker-compatible endpoint (tests: moto)"
    )
    retry_mode: str = Field(default="standard", description="botocore retry mode: standard or adaptive")
    max_attempts: int = Field(default=8, ge=1, le=20, description="botocore attempts per call, first try included")
    owned_bucket: str | None = Field(
        default=None, description="the project's bucket: calls on it pass ExpectedBucketOwner (this account)"
    )

    _account: str | None = PrivateAttr(default=None)

    @field_validator("retry_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in RETRY_MODES:
            raise ValueError(f"retry_mode {value!r} is not one of {RETRY_MODES}")
        return value

    def boto_session(self) -> boto3.Session:
        """A new session; its clients retry as configured and go to ``endpoint_url`` when set."""
        core = botocore.session.get_session()
        # Session-level settings are the defaults of every client, including the SDK's clients,
        # which pass their own Config (without retries) and so would not see botocore_config().
        core.set_config_variable("retry_mode", self.retry_mode)
        core.set_config_variable("max_attempts", self.max_attempts)
        session = new_boto3_session(core, profile_name=self.profile, region_name=self.region)
        if self.endpoint_url:
            session.events.register("before-endpoint-resolution", endpoint_override(self.endpoint_url))
        if self.owned_bucket:
            session.events.register("before-parameter-build.s3", expected_bucket_owner(self.owned_bucket, self.account_id))
        return session

    def account_id(self) -> str:
        """This identity's account (sts:GetCallerIdentity, once per resource)."""
        if self._account is None:
            self._account = self.client("sts", self._plain_session()).get_caller_identity()["Account"]
        return self._account

    def _plain_session(self) -> boto3.Session:
        session = new_boto3_session(profile_name=self.profile, region_name=self.region)
        if self.endpoint_url:
            session.events.register("before-endpoint-resolution", endpoint_override(self.endpoint_url))
        return session

    def botocore_config(self) -> BotoConfig:
        # total_max_attempts counts the first try; botocore's `max_attempts` key would count retries only.
        return BotoConfig(retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts})

    def client(self, service: str, session: boto3.Session | None = None) -> Any:
        session = session or self.boto_session()
        return session.client(service, endpoint_url=self.endpoint_url, config=self.botocore_config())


class S3ObjectStore(ObjectStore):
    """Objects in Amazon S3 through ``dagster_aws.s3.S3Resource``.

    Uploads go through boto3's transfer manager: multipart above ``multipart_threshold`` (a failed
    multipart upload is aborted, so it leaves no object). The sha256 is stored as user metadata
    ``sha256``; on a versioned bucket the VersionId is returned.
    """

    s3: S3Resource
    owner: AwsSession | None = Field(
        default=None, description="when set, calls on its owned_bucket pass ExpectedBucketOwner (its account)"
    )
    multipart_threshold: int = Field(default=8 * MiB, ge=1, description="files larger than this upload in parts")
    multipart_chunksize: int = Field(default=8 * MiB, ge=5 * MiB, description="part size (S3's minimum is 5 MiB)")

    # One client per resource instance: building a client costs 0.15-0.4 s, and s3_dataset makes
    # several calls. boto3 clients are thread-safe.
    _cached_client: Any = PrivateAttr(default=None)

    def _client(self) -> Any:
        if self._cached_client is None:
            client = self.s3.get_client()
            if self.owner is not None and self.owner.owned_bucket:
                client.meta.events.register(
                    "before-parameter-build.s3", expected_bucket_owner(self.owner.owned_bucket, self.owner.account_id)
                )
            self._cached_client = client
        return self._cached_client

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_chunksize
        )

    def put_file(self, uri: str, path: str | os.PathLike) -> ObjectInfo:
        bucket, key = object_key(uri)  # the local store's key rules: both fail alike
        digest = sha256_file(path)
        client = self._client()
        try:
            client.upload_file(
                str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=self.transfer_config()
            )
            # upload_file returns nothing; the size and VersionId come from the object itself.
            head = client.head_object(Bucket=bucket, Key=key)
        except (S3UploadFailedError, ClientError) as err:
            raise ObjectStoreError(f"upload of {Path(path).name} to {uri} failed: {err}") from err
        return ObjectInfo(uri=uri, size=head["ContentLength"], sha256=digest, version_id=head.get("VersionId"))

    def download(self, uri: str, path: str | os.PathLike) -> Path:
        bucket, key = object_key(uri)  # the local store's key rules: both fail alike
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        try:
            self._client().download_file(bucket, key, tmp, Config=self.transfer_config())
            os.replace(tmp, dest)
        except ClientError as err:
            if _error_code(err) in _MISSING:
                raise ObjectNotFound(f"no object at {uri}") from err
            raise ObjectStoreError(f"download of {uri} failed: {err}") from err
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def head(self, uri: str) -> ObjectInfo | None:
        bucket, key = object_key(uri)  # the local store's key rules: both fail alike
        try:
            head = self._client().head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if _error_code(err) in _MISSING:
                return None
            raise ObjectStoreError(f"head of {uri} failed: {err}") from err
        return ObjectInfo(
            uri=uri,
            size=head["ContentLength"],
            sha256=head.get("Metadata", {}).get("sha256"),
            version_id=head.get("VersionId"),
        )

    def link(self, uri: str) -> MetadataValue:
        bucket, key = split_uri(uri)
        region = self.s3.region_name or "us-east-1"
        if not key or key.endswith("/"):
            return MetadataValue.url(f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?region={region}&prefix={key}")
        return MetadataValue.url(f"https://s3.console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={key}")

    def list(self, uri_prefix: str) -> list[str]:
        bucket, prefix = key_prefix(uri_prefix)
        paginator = self._client().get_paginator("list_objects_v2")
        try:
            return sorted(
                f"s3://{bucket}/{obj['Key']}"
                for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for obj in page.get("Contents", [])
            )
        except ClientError as err:
            raise ObjectStoreError(f"listing {uri_prefix} failed: {err}") from err


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class AwsSageMaker(SageMaker):
    """Amazon SageMaker through boto3, with botocore retries from the session resource."""

    session: AwsSession
    role_arn: str | None = None

    def get_client(self) -> Any:
        return self.session.client("sagemaker")

    def sdk_boto_session(self) -> boto3.Session:
        # The SDK makes its own S3, STS and SageMaker clients from this session: the session's
        # endpoint handler and retry defaults reach them too.
        return self.session.boto_session()

    def get_runtime_client(self) -> Any:
        return self.session.client("sagemaker-runtime")

    def console_link(self, kind: str, name: str) -> MetadataValue | None:
        region = self.session.region
        pages = {
            "training-job": f"jobs/{name}",
            "processing-job": f"processing-jobs/{name}",
            "endpoint": f"endpoints/{name}",
            "model-package": f"model-registry/{name}",
            "pipeline-execution": "pipelines",
        }
        return MetadataValue.url(f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{pages[kind]}")

    def curl_command(self, endpoint_name: str, csv_row: str) -> str:
        # InvokeEndpoint needs SigV4; curl signs with the caller's own credentials (never ours).
        host = self.session.endpoint_url or f"https://runtime.sagemaker.{self.session.region}.amazonaws.com"
        return (
            f"curl -s -X POST {host}/endpoints/{endpoint_name}/invocations "
            f'--aws-sigv4 "aws:amz:{self.session.region}:sagemaker" '
            '--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-security-token: $AWS_SESSION_TOKEN" '
            f"-H 'Content-Type: text/csv' --data-binary '{csv_row}'"
        )

    def execution_role_arn(self) -> str:
        if not self.role_arn:
            raise ValueError(
                "no SageMaker execution role: set MLOPS_ROLE_ARN, or run the setup_infrastructure job "
                "which creates the role and prints its ARN"
            )
        return self.role_arn

    def job_log_tail(self, job_name: str, kind: str, lines: int = 40) -> str:
        """The last ``lines`` CloudWatch Logs events of the job (all its instances' streams).

        Used inside a failure report: a log that cannot be read is reported there with the
        reason rather than raised, so it never hides the failure being reported.
        """
        group = LOG_GROUPS[kind]
        logs = self.session.client("logs")
        try:
            # SageMaker names a job's streams <job-name>/algo-<n>-<timestamp>.
            streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{job_name}/")["logStreams"]
            events: list[str] = []
            for stream in sorted(streams, key=lambda s: s["logStreamName"]):
                page = logs.get_log_events(
                    logGroupName=group, logStreamName=stream["logStreamName"], limit=lines, startFromHead=False
                )
                events += [e["message"].rstrip("\n") for e in page.get("events", [])]
        except ClientError as err:
            return f"(could not read the log of {job_name} from {group}: {_error_code(err)}: {err})"
        return "\n".join(events[-lines:]) or f"(no log events in {group} for {job_name})"
