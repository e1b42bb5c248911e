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
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from dagster import ConfigurableResource, Failure
from pydantic import Field

from .local_git import BareRepository, CommitRequest
from .object_store import LocalObjectStore
from .sagemaker import LOCAL_ACCOUNT_ID

# Ownership. What setup (or deployment) creates carries MANAGED_TAGS; what exists already is
# used only with the user's opt-in (``adopt_existing``) and is then marked ADOPTED_TAG. Teardown
# deletes only what carries the managed tags; it never deletes an adopted or foreign resource.
PROJECT = "mlops-dagster"
MANAGED_BY_TAG = "managed-by"
PIPELINE_TAG = "mlops:pipeline"
ADOPTED_TAG = "mlops:adopted-by"  # value: the pipeline whose setup adopted the resource
CREATED, ADOPTED, FOREIGN = "created by setup_infrastructure", "adopted", "not created by setup_infrastructure"

# The placeholder LocalSageMaker.execution_role_arn() returns (a test keeps the two equal).
LOCAL_ROLE_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/mlops-local-execution-role"
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
NOT_APPLICABLE = "not applicable locally"
OWNERSHIP_FILE = "infrastructure.json"  # the local backend's stand-in for tags (LocalInfrastructure)

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
    ("s3", "DeleteBucketTagging"): "s3:PutBucketTagging",
}


# Request member -> SageMaker resource type in its ARN (pipeline, and what deployment creates).
_SAGEMAKER_NAMES = {
    "PipelineName": "pipeline",
    "EndpointName": "endpoint",
    "EndpointConfigName": "endpoint-config",
    "ModelName": "model",
}
# What deployment creates, in the order teardown deletes it: list call, its result key, the
# name and ARN members of a summary, and the delete call (whose argument is the name member).
_HOSTING = (
    ("endpoint", "list_endpoints", "Endpoints", "EndpointName", "EndpointArn", "delete_endpoint"),
    ("endpoint config", "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", "EndpointConfigArn",
     "delete_endpoint_config"),
    ("model", "list_models", "Models", "ModelName", "ModelArn", "delete_model"),
)  # fmt: skip


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


def managed_tags(pipeline_name: str) -> dict[str, str]:
    """The tags on everything the project creates for ``pipeline_name``: teardown deletes only those."""
    return {MANAGED_BY_TAG: PROJECT, PIPELINE_TAG: pipeline_name}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """``{"k": "v"}`` as the ``[{"Key": "k", "Value": "v"}]`` list S3, IAM and SageMaker take."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_dict(tags: list[dict] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def ownership(tags: Mapping[str, str], pipeline_name: str) -> str:
    """CREATED (managed tags of this pipeline), ADOPTED (this pipeline's setup adopted it) or FOREIGN.

    A resource tagged managed-by=mlops-dagster without a pipeline tag was created by an earlier
    version of setup (which tagged only managed-by), so it counts as created."""
    if tags.get(MANAGED_BY_TAG) == PROJECT and tags.get(PIPELINE_TAG, pipeline_name) == pipeline_name:
        return CREATED
    if tags.get(ADOPTED_TAG) == pipeline_name:
        return ADOPTED
    return FOREIGN


def not_created_by_setup(
    kind: str, name: str, op_name: str, pipeline_name: str, *, adopting: str, teardown: str, instead: str
) -> Failure:
    """Setup met an existing resource it did not create: it changes nothing unless the user opts in."""
    return Failure(
        f"{kind} {name} already exists and was not created by setup_infrastructure for pipeline "
        f"{pipeline_name} (it has no {MANAGED_BY_TAG}={PROJECT} tag): setup changed nothing. To let setup use "
        f"it, run setup_infrastructure with ops.{op_name}.config.adopt_existing: true; setup then {adopting} "
        f"and marks it {ADOPTED_TAG}={pipeline_name}, and teardown_infrastructure {teardown}. Or {instead}."
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
        if "resourceArn" in params or "ResourceArn" in params:
            return str(params.get("resourceArn") or params["ResourceArn"])
        # SageMaker lower-cases resource names in its ARNs.
        for member, kind in _SAGEMAKER_NAMES.items():
            if member in params:
                return f"arn:{p}:sagemaker:{region}:{account}:{kind}/{str(params[member]).lower()}"
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
    """What a teardown piece deleted; ``deleted`` is empty when the resource was already gone.
    ``kept``: the resource itself stays (setup did not create it), ``note`` says why."""

    kind: str
    name: str
    deleted: tuple[str, ...] = ()
    note: str = ""
    kept: bool = False

    @classmethod
    def bucket_kept_whole(cls, name: str, kept: str) -> Removal:
        """A bucket setup did not create, with an empty MLOPS_PREFIX: nothing in it is only ours."""
        return cls(
            "bucket", name, note=f"{kept}; with an empty MLOPS_PREFIX no object in it is only the project's", kept=True
        )


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

    # setup_infrastructure. ``adopt``: the user opted in to using a resource of that name that
    # setup did not create (ops.<op>.config.adopt_existing); without it such a resource is refused.

    @abstractmethod
    def ensure_bucket(self, adopt: bool = False) -> Ensured:
        """The bucket exists with versioning, default encryption, public access block, TLS-only policy."""

    @abstractmethod
    def ensure_execution_role(self, adopt: bool = False) -> Ensured:
        """The SageMaker execution role exists with its trust and least-privilege policies."""

    @abstractmethod
    def ensure_code_repository(
        self, folder: str, files: Mapping[str, bytes], request: CommitRequest, adopt: bool = False
    ) -> CommitResult:
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
    def head_commit(self, branch: str = "main") -> str | None:
        """The commit id at the head of ``branch``; None while the repository or the branch does not exist."""

    @abstractmethod
    def guard(self, client: Any, service: str) -> GuardedClient:
        """``client`` with AccessDenied errors turned into clear failures (for the sagemaker client)."""

    # teardown_infrastructure: only what setup (or deployment) created is deleted

    @abstractmethod
    def delete_bucket(self) -> Removal:
        """A bucket setup created: every object version and delete marker, then the bucket. Any other
        bucket: only the versions under ``prefix/``; the bucket stays."""

    @abstractmethod
    def delete_repository(self) -> Removal:
        """The code repository, if setup created it."""

    @abstractmethod
    def delete_role(self) -> Removal:
        """The role's inline and attached policies, then the role, if setup created it."""

    @abstractmethod
    def owns_hosting(self, client: Any, arn: str) -> bool:
        """Did deployment create this endpoint, endpoint config or model for this pipeline?"""

    def delete_hosting(self, client: Any) -> Removal:
        """The endpoints (they bill by the hour), endpoint configs and models deployment created for
        this pipeline: names start with ``<pipeline>-`` and ``owns_hosting`` says they are ours."""
        deleted: list[str] = []
        for kind, lister, key, name_member, arn_member, delete in _HOSTING:
            # Listed whole before deleting, so a deletion cannot shift the pages under the listing.
            for summary in list(_listed(client, lister, key, NameContains=self.pipeline_name[:63])):
                name = summary[name_member]
                if not name.startswith(f"{self.pipeline_name}-") or summary.get("EndpointStatus") == "Deleting":
                    continue
                if self.owns_hosting(client, summary[arn_member]):
                    getattr(client, delete)(**{name_member: name})
                    deleted.append(f"{kind} {name}")
        return Removal(
            "endpoints, endpoint configs and models", f"{self.pipeline_name}-*", tuple(deleted),
            note="" if deleted else "none deployed",
        )  # fmt: skip


def _listed(client: Any, method: str, key: str, **params: Any) -> Iterator[dict]:
    """Every summary of a paged SageMaker List* call (paged by hand: ``client`` may be guarded)."""
    while True:
        page = getattr(client, method)(**params)
        yield from page.get(key, [])
        if not page.get("NextToken"):
            return
        params["NextToken"] = page["NextToken"]


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

    A directory has no tags: what setup created or adopted is recorded in
    ``$MLOPS_HOME/infrastructure.json`` instead, and teardown reads it the way the aws backend reads tags.
    """

    home: str = Field(description="MLOPS_HOME")

    @property
    def _bucket_dir(self) -> Path:
        return Path(self.home, "s3", self.bucket)

    @property
    def _repository(self) -> BareRepository:
        return BareRepository(Path(self.home, "repositories", f"{self.repository_name}.git"))

    # the ownership record

    @property
    def _record_path(self) -> Path:
        return Path(self.home, OWNERSHIP_FILE)

    def _owner(self, kind: str, name: str) -> str:
        record = json.loads(self._record_path.read_text()) if self._record_path.is_file() else {}
        return record.get(kind, {}).get(name, FOREIGN)

    def _record(self, kind: str, name: str, owner: str | None) -> None:
        """Record (or with None forget) who owns ``kind`` ``name``, written whole or not at all."""
        record = json.loads(self._record_path.read_text()) if self._record_path.is_file() else {}
        entries = record.setdefault(kind, {})
        if owner is None:
            entries.pop(name, None)
        else:
            entries[name] = owner
        fd, tmp = tempfile.mkstemp(prefix=f".{OWNERSHIP_FILE}.", dir=self.home)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out, indent=2, sort_keys=True)
        os.replace(tmp, self._record_path)

    # setup

    def ensure_bucket(self, adopt: bool = False) -> Ensured:
        if self._bucket_dir.is_dir():
            status, owner = "already exists", self._owner("bucket", self.bucket)
            if owner == FOREIGN and adopt:
                self._record("bucket", self.bucket, ADOPTED)
                status, owner = "adopted", ADOPTED
        else:
            self._bucket_dir.mkdir(parents=True, exist_ok=True)
            self._record("bucket", self.bucket, CREATED)
            status, owner = "created", CREATED
        # The S3 bucket settings protect data on a network service; a directory has no such surface,
        # so setup writes nothing into a directory it did not create and needs no opt-in to use it.
        return Ensured(
            "bucket",
            f"s3://{self.bucket}",
            status,
            details={
                "path": str(self._bucket_dir),
                "owner": owner if owner == CREATED else f"{owner}: teardown deletes only {self._prefix_dir()}",
                "versioning, encryption, public access block, TLS-only policy": NOT_APPLICABLE,
            },
        )

    def ensure_execution_role(self, adopt: bool = False) -> Ensured:
        return Ensured(
            "execution role",
            LOCAL_ROLE_ARN,
            NOT_APPLICABLE,
            details={"note": "the local SageMaker service runs every job as this placeholder role"},
            hint="nothing to set locally: MLOPS_ROLE_ARN is only needed with MLOPS_BACKEND=aws",
        )

    def ensure_code_repository(
        self, folder: str, files: Mapping[str, bytes], request: CommitRequest, adopt: bool = False
    ) -> CommitResult:
        repo = self._repository
        if not repo.exists():
            repo.init(request.branch)
            self._record("repository", self.repository_name, CREATED)
            status = "created"
        elif self._owner("repository", self.repository_name) == FOREIGN:
            if not adopt:
                raise not_created_by_setup(
                    "code repository", str(repo.path), "ensure_code_repository", self.pipeline_name,
                    adopting=f"commits the training code to its {request.branch} branch",
                    teardown="keeps it", instead="set MLOPS_REPOSITORY_NAME to a repository that does not exist yet",
                )  # fmt: skip
            self._record("repository", self.repository_name, ADOPTED)
            status = "adopted"
        else:
            status = "already exists"
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

    # verify

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

    def head_commit(self, branch: str = "main") -> str | None:
        repo = self._repository
        return repo.head(branch) if repo.exists() else None

    def guard(self, client: Any, service: str) -> GuardedClient:
        return GuardedClient(client, service, partition="aws", account=LOCAL_ACCOUNT_ID, region=self.region)

    # teardown

    def _prefix_dir(self) -> Path:
        return self._bucket_dir.joinpath(*self.prefix.split("/")) if self.prefix else self._bucket_dir

    def delete_bucket(self) -> Removal:
        path, name = self._bucket_dir, f"s3://{self.bucket}"
        if not path.is_dir():
            self._record("bucket", self.bucket, None)
            return Removal("bucket", name, note=f"{path} was already gone")
        if self._owner("bucket", self.bucket) == CREATED:
            objects = sum(1 for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
            self._record("bucket", self.bucket, None)
            return Removal("bucket", name, (f"{objects} objects", f"directory {path}"))
        kept = f"kept {path}: {FOREIGN}"
        self._record("bucket", self.bucket, None)
        if not self.prefix:
            return Removal.bucket_kept_whole(name, kept)
        target = self._prefix_dir()
        objects = sum(1 for p in target.rglob("*") if p.is_file()) if target.is_dir() else 0
        if target.is_dir():
            shutil.rmtree(target)
        return Removal("bucket", name, (f"{objects} objects under {name}/{self.prefix}/",), note=kept, kept=True)

    def delete_repository(self) -> Removal:
        path = self._repository.path
        owner = self._owner("repository", self.repository_name)
        if not path.is_dir():
            self._record("repository", self.repository_name, None)
            return Removal("code repository", self.repository_name, note=f"{path} was already gone")
        if owner != CREATED:
            self._record("repository", self.repository_name, None)
            return Removal("code repository", self.repository_name, note=f"kept {path}: {owner}", kept=True)
        shutil.rmtree(path)
        self._record("repository", self.repository_name, None)
        return Removal("code repository", self.repository_name, (f"bare repository {path}",))

    def delete_role(self) -> Removal:
        return Removal("execution role", LOCAL_ROLE_ARN, note=f"{NOT_APPLICABLE}: no role was created")

    def owns_hosting(self, client: Any, arn: str) -> bool:
        # The local service's state lives in $MLOPS_HOME and only this project writes it: every
        # endpoint, config and model named <pipeline>-... in it was created by deployment.
        return True
