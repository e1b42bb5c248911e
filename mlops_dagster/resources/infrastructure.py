"""The Infrastructure seam: the recipe's one-off resources (S3 bucket, IAM execution role, code
repository), the probes its "Validation & Testing" list needs, and the pieces of its "Cleanup".

The ops in ``mlops_dagster/infrastructure.py`` call these methods and never ask which backend they
run on. ``LocalInfrastructure`` (here) keeps everything under ``$MLOPS_HOME``; ``AwsInfrastructure``
(``aws_infrastructure.py``, imported only for ``MLOPS_BACKEND=aws``) uses boto3.

Every AWS call of the infrastructure goes through ``guarded_call`` (via ``GuardedClient``), the one
place that turns an AccessDenied into a ``Failure`` naming the IAM action, the resource and the
permission to add.
"""

from __future__ import annotations

import hashlib
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from dagster import ConfigurableResource, Failure
from pydantic import Field

from .local_git import BareRepository, CommitRequest
from .object_store import LocalObjectStore
from .sagemaker import LOCAL_ACCOUNT_ID

# The placeholder LocalSageMaker.execution_role_arn() returns (a test keeps the two equal).
LOCAL_ROLE_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/mlops-local-execution-role"
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
NOT_APPLICABLE = "not applicable locally"

# API operation -> IAM action where the two differ (S3 mostly); every other action is
# "<service>:<Operation>". Source: the Service Authorization Reference for Amazon S3.
_IAM_ACTIONS = {
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "DeleteObjects"): "s3:DeleteObjectVersion",  # we always pass VersionIds
    ("s3", "GetBucketEncryption"): "s3:GetEncryptionConfiguration",
    ("s3", "PutBucketEncryption"): "s3:PutEncryptionConfiguration",
    ("s3", "GetPublicAccessBlock"): "s3:GetBucketPublicAccessBlock",
    ("s3", "PutPublicAccessBlock"): "s3:PutBucketPublicAccessBlock",
}


class AccessDeniedFailure(Failure):
    """An AWS call was refused for lack of permission; ``action`` and ``resource`` say which."""

    def __init__(self, action: str, resource: str, code: str, aws_message: str):
        self.action, self.resource = action, resource
        statement = f'{{"Effect": "Allow", "Action": "{action}", "Resource": "{resource}"}}'
        super().__init__(
            description=(
                f"AccessDenied: {action} on {resource} was refused. Grant the identity that runs Dagster "
                f"the permission {action} on {resource} (an IAM policy statement such as {statement}), "
                f"or run with a profile that has it (MLOPS_AWS_PROFILE). AWS said: {code}: {aws_message}"
            ),
            metadata={"action": action, "resource": resource, "error_code": code},
        )


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorizes an API operation, e.g. ("s3", "HeadBucket") -> "s3:ListBucket"."""
    return _IAM_ACTIONS.get((service, operation), f"{service}:{operation}")


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def guarded_call(client: Any, method: str, service: str, resource: str, *args: Any, **params: Any) -> Any:
    """Call ``client.<method>``; an AccessDenied becomes an ``AccessDeniedFailure``, anything else passes."""
    try:
        return getattr(client, method)(*args, **params)
    except ClientError as err:
        code = error_code(err)
        if code not in ACCESS_DENIED_CODES:
            raise
        operation = err.operation_name or "".join(p.capitalize() for p in method.split("_"))
        message = str(err.response.get("Error", {}).get("Message", ""))
        raise AccessDeniedFailure(iam_action(service, operation), resource, code, message) from err


class GuardedClient:
    """A boto3-shaped client whose every method goes through ``guarded_call``.

    The resource an error names is derived from the call's parameters (bucket, role, repository,
    pipeline), so no call site can forget the wrapper or name the wrong thing.
    """

    def __init__(self, client: Any, service: str, *, partition: str, account: str, region: str):
        self._client, self._service = client, service
        self._partition, self._account, self._region = partition, account, region

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr) or name in ("get_paginator", "get_waiter", "can_paginate"):
            return attr
        return lambda *args, **params: guarded_call(
            self._client, name, self._service, self.resource_of(params), *args, **params
        )

    def resource_of(self, params: Mapping[str, Any]) -> str:
        """The ARN a call acts on, as far as its parameters tell ("*" when they name nothing)."""
        p, account, region = self._partition, self._account, self._region
        if "Bucket" in params:
            return f"arn:{p}:s3:::{params['Bucket']}" + (f"/{params['Key']}" if params.get("Key") else "")
        if "RoleArn" in params:
            return str(params["RoleArn"])
        if "RoleName" in params:
            arn = f"arn:{p}:iam::{account}:role/{params['RoleName']}"
            if "PolicyName" in params:
                return f"{arn} (inline policy {params['PolicyName']})"
            return f"{arn} (policy {params['PolicyArn']})" if "PolicyArn" in params else arn
        if "repositoryName" in params:
            return f"arn:{p}:codecommit:{region}:{account}:{params['repositoryName']}"
        if "PipelineName" in params:
            # SageMaker lower-cases resource names in its ARNs.
            return f"arn:{p}:sagemaker:{region}:{account}:pipeline/{str(params['PipelineName']).lower()}"
        return "*"


@dataclass(frozen=True)
class Ensured:
    """What an ``ensure_*`` call found or did to one resource."""

    kind: str  # "bucket", "execution role"
    name: str  # s3://bucket, the role's ARN
    status: str  # "created", "already exists", or NOT_APPLICABLE
    changes: tuple[str, ...] = ()  # settings written or corrected, e.g. "versioning enabled"
    details: Mapping[str, str] = field(default_factory=dict)
    hint: str | None = None  # what the user should do next, e.g. "set MLOPS_ROLE_ARN=..."


@dataclass(frozen=True)
class CommitResult:
    """The code repository and the commit that holds the current training code."""

    repository: str
    location: str  # clone URL (aws) or path of the bare repository (local)
    status: str  # "created" or "already exists"
    branch: str
    commit_id: str
    committed: bool  # False: the code was unchanged and the branch head is reused
    files: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """One verification check's outcome."""

    passed: bool
    detail: str


@dataclass(frozen=True)
class Removal:
    """What a teardown piece deleted; ``deleted`` is empty when the resource was already gone."""

    kind: str
    name: str
    deleted: tuple[str, ...] = ()
    note: str = ""


def git_blob_id(data: bytes) -> str:
    """Git's object id of a file's bytes (CodeCommit reports the same blob ids)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class Infrastructure(ConfigurableResource, ABC):
    """The recipe's bucket, execution role and code repository for one backend."""

    bucket: str = Field(description="the S3 bucket for data and artifacts (MLOPS_BUCKET)")
    prefix: str = Field(default="mlops", description="key prefix inside the bucket (MLOPS_PREFIX)")
    region: str = Field(description="AWS region (MLOPS_REGION)")
    pipeline_name: str = Field(default="mlops-pipeline", description="the SageMaker pipeline (MLOPS_PIPELINE_NAME)")
    role_name: str = Field(description="the execution role to create (MLOPS_ROLE_NAME)")
    repository_name: str = Field(description="the code repository (MLOPS_REPOSITORY_NAME)")
    sagemaker_full_access: bool = Field(
        default=False, description="also attach AmazonSageMakerFullAccess (MLOPS_SAGEMAKER_FULL_ACCESS)"
    )

    # setup_infrastructure

    @abstractmethod
    def ensure_bucket(self) -> Ensured:
        """The bucket exists with versioning, default encryption, public access block, TLS-only policy."""

    @abstractmethod
    def ensure_execution_role(self) -> Ensured:
        """The SageMaker execution role exists with its trust and least-privilege policies."""

    @abstractmethod
    def ensure_code_repository(self, folder: str, files: Mapping[str, bytes], request: CommitRequest) -> CommitResult:
        """The repository exists and ``folder`` on ``request.branch`` holds exactly ``files`` (name -> bytes)."""

    # verify_infrastructure

    @abstractmethod
    def list_objects(self, uri_prefix: str) -> list[str]:
        """URIs of the objects under ``s3://bucket/prefix``."""

    @abstractmethod
    def probe_role(self) -> Probe:
        """Can the execution role be assumed?"""

    @abstractmethod
    def probe_repository(self) -> Probe:
        """Does the code repository exist?"""

    @abstractmethod
    def guard(self, client: Any, service: str) -> GuardedClient:
        """``client`` with AccessDenied errors turned into clear failures (for the sagemaker client)."""

    # teardown_infrastructure

    @abstractmethod
    def delete_bucket(self) -> Removal:
        """Every object version and delete marker, then the bucket."""

    @abstractmethod
    def delete_repository(self) -> Removal:
        """The code repository."""

    @abstractmethod
    def delete_role(self) -> Removal:
        """The role's inline and attached policies, then the role."""


def infrastructure_fields(settings: Any) -> dict[str, Any]:
    """The Infrastructure fields that come from Settings (definitions.py passes them to either class)."""
    return {
        "bucket": settings.bucket,
        "prefix": settings.prefix,
        "region": settings.region,
        "pipeline_name": settings.pipeline_name,
        "role_name": settings.role_name,
        "repository_name": settings.repository_name,
        "sagemaker_full_access": settings.sagemaker_full_access,
    }


class LocalInfrastructure(Infrastructure):
    """The recipe's resources on this machine.

    bucket: the directory ``$MLOPS_HOME/s3/<bucket>`` that the local object store writes to;
    role: the placeholder ARN the local SageMaker service runs jobs as (nothing to create);
    repository: a bare git repository ``$MLOPS_HOME/repositories/<name>.git``.
    """

    home: str = Field(description="MLOPS_HOME")

    @property
    def _bucket_dir(self) -> Path:
        return Path(self.home, "s3", self.bucket)

    @property
    def _repository(self) -> BareRepository:
        return BareRepository(Path(self.home, "repositories", f"{self.repository_name}.git"))

    def ensure_bucket(self) -> Ensured:
        status = "already exists" if self._bucket_dir.is_dir() else "created"
        self._bucket_dir.mkdir(parents=True, exist_ok=True)
        # The S3 bucket settings protect data on a network service; a directory has no such surface.
        return Ensured(
            "bucket",
            f"s3://{self.bucket}",
            status,
            details={
                "path": str(self._bucket_dir),
                "versioning, encryption, public access block, TLS-only policy": NOT_APPLICABLE,
            },
        )

    def ensure_execution_role(self) -> Ensured:
        return Ensured(
            "execution role",
            LOCAL_ROLE_ARN,
            NOT_APPLICABLE,
            details={"note": "the local SageMaker service runs every job as this placeholder role"},
            hint="nothing to set locally: MLOPS_ROLE_ARN is only needed with MLOPS_BACKEND=aws",
        )

    def ensure_code_repository(self, folder: str, files: Mapping[str, bytes], request: CommitRequest) -> CommitResult:
        repo = self._repository
        status = "already exists" if repo.exists() else "created"
        if status == "created":
            repo.init(request.branch)
        commit_id, committed = repo.commit_folder(folder, files, request)
        return CommitResult(
            repository=self.repository_name,
            location=str(repo.path),
            status=status,
            branch=request.branch,
            commit_id=commit_id,
            committed=committed,
            files=tuple(f"{folder}/{name}" for name in sorted(files)),
        )

    def list_objects(self, uri_prefix: str) -> list[str]:
        return LocalObjectStore(root=str(Path(self.home, "s3"))).list(uri_prefix)

    def probe_role(self) -> Probe:
        return Probe(True, f"{NOT_APPLICABLE}: local jobs run as the placeholder {LOCAL_ROLE_ARN}")

    def probe_repository(self) -> Probe:
        repo = self._repository
        if not repo.exists():
            return Probe(False, f"no repository at {repo.path}: run setup_infrastructure")
        heads = repo.branches()
        if not heads:
            return Probe(False, f"repository {repo.path} has no branch yet: run setup_infrastructure")
        return Probe(True, f"{repo.path}: " + ", ".join(f"{b} at {c[:12]}" for b, c in sorted(heads.items())))

    def guard(self, client: Any, service: str) -> GuardedClient:
        return GuardedClient(client, service, partition="aws", account=LOCAL_ACCOUNT_ID, region=self.region)

    def delete_bucket(self) -> Removal:
        path = self._bucket_dir
        if not path.is_dir():
            return Removal("bucket", f"s3://{self.bucket}", note=f"{path} was already gone")
        objects = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return Removal("bucket", f"s3://{self.bucket}", (f"{objects} objects", f"directory {path}"))

    def delete_repository(self) -> Removal:
        path = self._repository.path
        if not path.is_dir():
            return Removal("code repository", self.repository_name, note=f"{path} was already gone")
        shutil.rmtree(path)
        return Removal("code repository", self.repository_name, (f"bare repository {path}",))

    def delete_role(self) -> Removal:
        return Removal("execution role", LOCAL_ROLE_ARN, note=f"{NOT_APPLICABLE}: no role was created")
