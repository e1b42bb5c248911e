"""The aws backend's Infrastructure: the S3 bucket, the IAM execution role and the CodeCommit
repository of the recipe, made idempotently with boto3.

Every client comes from the ``AwsSession`` resource (region, profile, endpoint_url, retries) and
is wrapped in ``GuardedClient`` so an AccessDenied names the action, the resource and the missing
permission. Only ``definitions.py`` imports this module, and only for ``MLOPS_BACKEND=aws``.

An existing resource is read and compared first; a setting is written only when it differs, so a
second run makes no changes and says "already exists".

Ownership is tags (``managed_tags``): setup tags what it creates, refuses a bucket, role or
repository of the configured name that it did not create unless the user opts in with
``adopt_existing`` (then it marks it adopted and never deletes it), and teardown deletes only what
carries its tags; in a bucket it did not create, only the objects under ``MLOPS_PREFIX/``. Every S3
call names the bucket's expected owner (this account), so a bucket of the same name in another
account is refused rather than written to.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from dagster import Failure
from pydantic import PrivateAttr

from .aws import AwsSession
from .infrastructure import (
    ADOPTED,
    ADOPTED_TAG,
    CREATED,
    FOREIGN,
    AccessDeniedFailure,
    CommitResult,
    Ensured,
    GuardedClient,
    Infrastructure,
    Probe,
    Removal,
    error_code,
    git_blob_id,
    managed_tags,
    not_created_by_setup,
    ownership,
    tag_dict,
    tag_list,
)
from .local_git import CommitRequest

INLINE_POLICY_NAME = "mlops-dagster-least-privilege"
TLS_STATEMENT_ID = "DenyInsecureTransport"
FULL_ACCESS_POLICY = "AmazonSageMakerFullAccess"
REPOSITORY_DESCRIPTION = "MLOps pipeline code repository"  # the recipe's wording
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
# SSE-S3: S3 manages the keys, so there is no KMS key to create, pay for or grant the execution
# role (kms:Decrypt/GenerateDataKey) and no per-request KMS charge; S3 has encrypted new objects
# this way by default since January 2023, and writing it down makes the intent explicit and lets
# setup notice a bucket whose encryption was removed. A team that needs its own key can switch
# the bucket to SSE-KMS: setup keeps an existing KMS default (it never downgrades it).
SSE_S3 = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
_ENCRYPTED = ("AES256", "aws:kms", "aws:kms:dsse")
PIPELINE_JOB_PREFIX = "pipelines-"  # how SageMaker Pipelines names the jobs of a step


@dataclass(frozen=True)
class Identity:
    """Who runs the calls: the account owns what setup creates; the partition goes into ARNs."""

    account: str
    partition: str


def _canonical(document: Any) -> str:
    """IAM and S3 hand policies back as dicts or JSON strings; compare them key-order-blind."""
    if isinstance(document, str):
        document = json.loads(document)
    return json.dumps(document, sort_keys=True)


def _statements(policy: dict) -> list[dict]:
    """A policy's statements as a list (a single statement may be written as an object)."""
    statements = policy.get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def tls_only_statement(partition: str, bucket: str) -> dict:
    """Deny every S3 action on the bucket and its objects to requests made without TLS."""
    arn = f"arn:{partition}:s3:::{bucket}"
    return {
        "Sid": TLS_STATEMENT_ID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def trust_policy(account: str) -> dict:
    """SageMaker may assume the role, and only on behalf of this account (confused-deputy guard)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sagemaker.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": account}},
            }
        ],
    }


def execution_policy(
    *,
    partition: str,
    account: str,
    region: str,
    bucket: str,
    prefix: str,
    role_arn: str,
    model_package_group: str,
    image_repository_arns: list[str],
) -> dict:
    """What the pipeline's jobs need, and no more: the bucket's prefix (read and write, no delete; in
    this account only), the framework image, their own log groups and metrics, the jobs SageMaker
    Pipelines starts (``pipelines-*``) and the model package group, and passing this role (only) to
    SageMaker."""
    bucket_arn = f"arn:{partition}:s3:::{bucket}"
    sm = f"arn:{partition}:sagemaker:{region}:{account}"
    group = model_package_group.lower()  # SageMaker lower-cases names in ARNs
    # s3:ResourceAccount: if the bucket is deleted and its name claimed by another account, the
    # jobs' reads and writes are refused instead of landing in that account's bucket.
    this_account = {"StringEquals": {"s3:ResourceAccount": account}}
    list_bucket: dict = {
        "Sid": "ListDataPrefix", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
        "Condition": dict(this_account),
    }  # fmt: skip
    if prefix:
        list_bucket["Condition"]["StringLike"] = {"s3:prefix": [prefix, f"{prefix}/*"]}
    return {
        "Version": "2012-10-17",
        "Statement": [
            list_bucket,
            {
                # The jobs read their inputs and write outputs and model.tar.gz; nothing deletes objects.
                "Sid": "ReadWriteDataPrefix",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": f"{bucket_arn}/{prefix}/*" if prefix else f"{bucket_arn}/*",
                "Condition": this_account,
            },
            # GetAuthorizationToken has no resource-level permissions: "*" is the only form IAM accepts.
            {"Sid": "EcrAuthorization", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {
                "Sid": "EcrPullFrameworkImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": image_repository_arns,
            },
            {
                "Sid": "JobLogs",
                "Effect": "Allow",
                "Action": [
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                "Resource": f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/*",
            },
            # Training jobs publish their metrics; PutMetricData has no resources, so scope by namespace.
            {
                "Sid": "JobMetrics",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
            },
            {
                # SageMaker Pipelines names the jobs it starts pipelines-<execution id>-<step>-<suffix>
                # (the SDK leaves the job name out of the definition): those, not every job in the account.
                "Sid": "PipelineJobs",
                "Effect": "Allow",
                "Action": [
                    "sagemaker:CreateProcessingJob",
                    "sagemaker:DescribeProcessingJob",
                    "sagemaker:StopProcessingJob",
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                    "sagemaker:ListTags",
                ],
                "Resource": [
                    f"{sm}:processing-job/{PIPELINE_JOB_PREFIX}*",
                    f"{sm}:training-job/{PIPELINE_JOB_PREFIX}*",
                ],
            },
            {
                "Sid": "ModelRegistry",
                "Effect": "Allow",
                "Action": [
                    "sagemaker:CreateModelPackage",
                    "sagemaker:CreateModelPackageGroup",
                    "sagemaker:DescribeModelPackage",
                    "sagemaker:DescribeModelPackageGroup",
                    "sagemaker:AddTags",
                    "sagemaker:ListTags",
                ],
                "Resource": [f"{sm}:model-package-group/{group}", f"{sm}:model-package/{group}/*"],
            },
            {
                "Sid": "PassThisRoleToSageMaker",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": role_arn,
                "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            },
        ],
    }


@functools.cache  # the SDK reads its image table from a JSON file on every retrieve()
def framework_image_repository_arn(partition: str, region: str) -> str:
    """The ECR repository of the scikit-learn image the pipeline runs (the SDK knows it offline)."""
    # Imported here: the SDK takes seconds to import and only this setup step needs it.
    from ..sagemaker.pipeline_builder import FRAMEWORK_VERSION, image_uris

    try:
        uri = image_uris.retrieve("sklearn", region, FRAMEWORK_VERSION, instance_type="ml.m5.large")
    except ValueError as err:
        raise Failure(f"no scikit-learn {FRAMEWORK_VERSION} image for region {region}: {err}") from err
    registry, _, path = uri.partition("/")
    return f"arn:{partition}:ecr:{region}:{registry.split('.')[0]}:repository/{path.split(':')[0]}"


class AwsInfrastructure(Infrastructure):
    """The recipe's S3 bucket, IAM execution role and CodeCommit repository on AWS."""

    session: AwsSession

    # One boto session and one client per service for this resource instance: a client from a
    # fresh session costs 0.15-0.45 s (model loading), from a warm one a few ms. boto3 sessions are
    # not thread-safe, hence the lock around client creation (clients themselves are).
    _boto: Any = PrivateAttr(default=None)
    _clients: dict = PrivateAttr(default_factory=dict)
    _caller: Identity | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    # clients and identity

    def _raw_client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                if self._boto is None:
                    self._boto = self.session.boto_session()
                self._clients[service] = self.session.client(service, self._boto)
            return self._clients[service]

    def _identity(self) -> Identity:
        if self._caller is None:
            # Unguarded on purpose: GetCallerIdentity needs no permission and cannot be denied.
            caller = self._raw_client("sts").get_caller_identity()
            self._caller = Identity(account=caller["Account"], partition=caller["Arn"].split(":")[1])
        return self._caller

    def _client(self, service: str, identity: Identity) -> GuardedClient:
        return self.guard_for(self._raw_client(service), service, identity)

    def guard_for(self, client: Any, service: str, identity: Identity) -> GuardedClient:
        return GuardedClient(
            client, service, partition=identity.partition, account=identity.account, region=self.region
        )

    def guard(self, client: Any, service: str) -> GuardedClient:
        return self.guard_for(client, service, self._identity())

    def _role_arn(self, identity: Identity) -> str:
        return f"arn:{identity.partition}:iam::{identity.account}:role/{self.role_name}"

    # bucket

    def _bucket(self, identity: Identity) -> dict[str, str]:
        """The parameters of every call on the bucket: a bucket of this name that another account
        owns answers 403 (ExpectedBucketOwner) instead of receiving or serving our objects."""
        return {"Bucket": self.bucket, "ExpectedBucketOwner": identity.account}

    def ensure_bucket(self, adopt: bool = False) -> Ensured:
        identity = self._identity()
        s3 = self._client("s3", identity)
        bucket = self._bucket(identity)
        status, owner = self._claim_bucket(s3, bucket, self._create_bucket_if_missing(s3, identity), adopt)
        changes = [
            change
            for change in (
                self._ensure_versioning(s3, bucket),
                self._ensure_encryption(s3, bucket),
                self._ensure_public_access_block(s3, bucket),
                self._ensure_tls_policy(s3, bucket, identity),
            )
            if change
        ]
        return Ensured(
            "bucket",
            f"s3://{self.bucket}",
            status,
            tuple(changes),
            details={
                "region": self.region,
                "owner": owner if owner == CREATED else f"{owner}: teardown deletes only {self._share()}",
                "versioning": "Enabled",
                "default encryption": self._encryption_algorithm(s3, bucket),
                "public access block": "all four settings on",
                "bucket policy": f"{TLS_STATEMENT_ID}: denies s3:* when aws:SecureTransport is false",
            },
        )

    def _share(self) -> str:
        """What teardown deletes in a bucket setup did not create."""
        return (
            f"the objects under s3://{self.bucket}/{self.prefix}/" if self.prefix else "nothing (MLOPS_PREFIX is empty)"
        )

    def _claim_bucket(self, s3: GuardedClient, bucket: dict, status: str, adopt: bool) -> tuple[str, str]:
        """(status, owner): a bucket setup just created is tagged; an existing one is used only if
        setup created or adopted it, or the user opts in to adopting it now."""
        if status == "created":
            self._put_bucket_tags(s3, bucket, managed_tags(self.pipeline_name))
            return status, CREATED
        tags = self._bucket_tags(s3, bucket)
        owner = ownership(tags, self.pipeline_name)
        if owner != FOREIGN:
            return status, owner
        if not adopt:
            raise not_created_by_setup(
                "bucket", f"s3://{self.bucket}", "ensure_bucket", self.pipeline_name,
                adopting="turns on versioning, default encryption (if none), the public access block and a TLS-only "
                "bucket policy statement",
                teardown=f"deletes only {self._share()} and keeps the bucket",
                instead="set MLOPS_BUCKET to a bucket name that does not exist yet",
            )  # fmt: skip
        self._put_bucket_tags(s3, bucket, {**tags, ADOPTED_TAG: self.pipeline_name})
        return "adopted", ADOPTED

    def _bucket_tags(self, s3: GuardedClient, bucket: dict) -> dict[str, str]:
        try:
            return tag_dict(s3.get_bucket_tagging(**bucket)["TagSet"])
        except ClientError as err:
            if error_code(err) != "NoSuchTagSet":  # S3's answer for a bucket without tags
                raise
            return {}

    def _put_bucket_tags(self, s3: GuardedClient, bucket: dict, tags: Mapping[str, str]) -> None:
        """PutBucketTagging replaces the whole set: callers pass the tags to keep as well."""
        if tags:
            s3.put_bucket_tagging(**bucket, Tagging={"TagSet": tag_list(tags)})
        else:
            s3.delete_bucket_tagging(**bucket)

    def _create_bucket_if_missing(self, s3: GuardedClient, identity: Identity) -> str:
        try:
            # ExpectedBucketOwner: a bucket of the same name in another account answers 403, not 200.
            head = s3.head_bucket(**self._bucket(identity))
        except AccessDeniedFailure:
            # Someone else's bucket, or ours without s3:ListBucket: CreateBucket tells which.
            return self._create_bucket(s3, identity, head_denied=True)
        except ClientError as err:
            if error_code(err) in ("404", "NoSuchBucket", "NotFound"):
                return self._create_bucket(s3, identity)
            if error_code(err) in ("403", "Forbidden"):  # a HEAD response has no body, so no error code
                return self._create_bucket(s3, identity, head_denied=True)
            raise
        found = head.get("BucketRegion") or head["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
        if found and found != self.region:
            raise Failure(
                f"bucket s3://{self.bucket} exists in {found}, but MLOPS_REGION is {self.region}: SageMaker "
                f"jobs read their data from the region they run in. Set MLOPS_REGION={found} or choose "
                "another MLOPS_BUCKET"
            )
        return "already exists"

    def _create_bucket(self, s3: GuardedClient, identity: Identity, head_denied: bool = False) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "ObjectOwnership": "BucketOwnerEnforced"}
        if self.region != "us-east-1":  # us-east-1 refuses a LocationConstraint naming itself
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            s3.create_bucket(**params)
        except ClientError as err:
            if error_code(err) == "BucketAlreadyExists":
                raise Failure(
                    f"the S3 bucket name {self.bucket!r} is taken globally: another AWS account owns it "
                    "(bucket names are shared by all AWS accounts). Choose another MLOPS_BUCKET, e.g. "
                    f"{self.bucket}-<random suffix>"
                ) from err
            if error_code(err) != "BucketAlreadyOwnedByYou":
                raise
            if head_denied:
                raise AccessDeniedFailure(
                    "s3:ListBucket",
                    f"arn:{identity.partition}:s3:::{self.bucket}",
                    "403",
                    "HeadBucket refused on your own bucket",
                ) from err
            return "already exists"  # created by a concurrent run between head and create
        return "created"

    def _ensure_versioning(self, s3: GuardedClient, bucket: dict) -> str | None:
        if s3.get_bucket_versioning(**bucket).get("Status") == "Enabled":
            return None
        s3.put_bucket_versioning(**bucket, VersioningConfiguration={"Status": "Enabled"})
        return "versioning enabled"

    def _encryption_algorithm(self, s3: GuardedClient, bucket: dict) -> str:
        try:
            rules = s3.get_bucket_encryption(**bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as err:
            if error_code(err) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
            return "none"
        algorithms = [r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules]
        return next((a for a in algorithms if a in _ENCRYPTED), "none")

    def _ensure_encryption(self, s3: GuardedClient, bucket: dict) -> str | None:
        if self._encryption_algorithm(s3, bucket) != "none":
            return None  # SSE-S3 already, or a KMS key someone chose: never downgrade it
        s3.put_bucket_encryption(**bucket, ServerSideEncryptionConfiguration=SSE_S3)
        return "default encryption set to SSE-S3 (AES256)"

    def _ensure_public_access_block(self, s3: GuardedClient, bucket: dict) -> str | None:
        try:
            current = s3.get_public_access_block(**bucket)["PublicAccessBlockConfiguration"]
        except ClientError as err:
            if error_code(err) != "NoSuchPublicAccessBlockConfiguration":
                raise
            current = {}
        if all(current.get(k) is True for k in PUBLIC_ACCESS_BLOCK):
            return None
        s3.put_public_access_block(**bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
        return "public access block turned on (all four settings)"

    def _ensure_tls_policy(self, s3: GuardedClient, bucket: dict, identity: Identity) -> str | None:
        statement = tls_only_statement(identity.partition, self.bucket)
        try:
            policy = json.loads(s3.get_bucket_policy(**bucket)["Policy"])
        except ClientError as err:
            if error_code(err) != "NoSuchBucketPolicy":
                raise
            policy = {"Version": "2012-10-17", "Statement": []}
        statements = _statements(policy)
        if any(_canonical(s) == _canonical(statement) for s in statements):
            return None
        # Keep statements someone else added; replace only ours.
        policy["Statement"] = [s for s in statements if s.get("Sid") != TLS_STATEMENT_ID] + [statement]
        s3.put_bucket_policy(**bucket, Policy=json.dumps(policy))
        return "bucket policy denies requests without TLS"

    # execution role

    def ensure_execution_role(self, adopt: bool = False) -> Ensured:
        identity = self._identity()
        iam = self._client("iam", identity)
        status, owner, role = self._claim_role(iam, identity, adopt)
        arn = role["Arn"]
        changes = [
            change
            for change in (
                self._ensure_trust(iam, identity, role, owner),
                self._ensure_inline_policy(iam, identity, arn),
                self._ensure_full_access(iam, identity, owner),
            )
            if change
        ]
        return Ensured(
            "execution role",
            arn,
            status,
            tuple(changes),
            details={
                "owner": owner if owner == CREATED else f"{owner}: teardown deletes only {INLINE_POLICY_NAME}",
                "trust": f"sagemaker.amazonaws.com, aws:SourceAccount = {identity.account}",
                "inline policy": INLINE_POLICY_NAME,
                FULL_ACCESS_POLICY: "attached"
                if self.sagemaker_full_access
                else "not attached by setup (opt in: MLOPS_SAGEMAKER_FULL_ACCESS=true)",
            },
            hint=f"set MLOPS_ROLE_ARN={arn}",
        )

    def _claim_role(self, iam: GuardedClient, identity: Identity, adopt: bool) -> tuple[str, str, dict]:
        """(status, owner, role): created and tagged, or existing and created or adopted by setup."""
        try:
            role = iam.get_role(RoleName=self.role_name)["Role"]
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise
            role = iam.create_role(
                RoleName=self.role_name,
                AssumeRolePolicyDocument=json.dumps(trust_policy(identity.account)),
                Description=f"SageMaker execution role of the {self.pipeline_name} pipeline (mlops-dagster)",
                Tags=tag_list(managed_tags(self.pipeline_name)),
            )["Role"]
            return "created", CREATED, role
        owner = ownership(tag_dict(role.get("Tags")), self.pipeline_name)  # GetRole returns the tags
        if owner != FOREIGN:
            return "already exists", owner, role
        if not adopt:
            full = f", attaches {FULL_ACCESS_POLICY}" if self.sagemaker_full_access else ""
            raise not_created_by_setup(
                "execution role", role["Arn"], "ensure_execution_role", self.pipeline_name,
                adopting="adds a statement trusting sagemaker.amazonaws.com to its trust policy (keeping the "
                f"others), writes the inline policy {INLINE_POLICY_NAME}{full}, never detaches a policy",
                teardown=f"deletes only the inline policy {INLINE_POLICY_NAME} and keeps the role",
                instead="set MLOPS_ROLE_NAME to a role name that does not exist yet",
            )  # fmt: skip
        iam.tag_role(RoleName=self.role_name, Tags=tag_list({ADOPTED_TAG: self.pipeline_name}))
        return "adopted", ADOPTED, role

    def _ensure_trust(self, iam: GuardedClient, identity: Identity, role: dict, owner: str) -> str | None:
        wanted = trust_policy(identity.account)
        current = role["AssumeRolePolicyDocument"]
        if owner == CREATED:
            if _canonical(current) == _canonical(wanted):
                return None
            iam.update_assume_role_policy(RoleName=self.role_name, PolicyDocument=json.dumps(wanted))
            return "trust policy updated"
        # An adopted role keeps what its owner wrote; SageMaker's statement is added if it is missing.
        document = json.loads(current) if isinstance(current, str) else dict(current)
        statements, ours = _statements(document), wanted["Statement"][0]
        if any(_canonical(s) == _canonical(ours) for s in statements):
            return None
        document["Statement"] = [*statements, ours]
        iam.update_assume_role_policy(RoleName=self.role_name, PolicyDocument=json.dumps(document))
        return "trust policy: statement for sagemaker.amazonaws.com added, the role's other statements kept"

    def _ensure_inline_policy(self, iam: GuardedClient, identity: Identity, role_arn: str) -> str | None:
        wanted = execution_policy(
            partition=identity.partition,
            account=identity.account,
            region=self.region,
            bucket=self.bucket,
            prefix=self.prefix,
            role_arn=role_arn,
            model_package_group=f"{self.pipeline_name}-models",
            image_repository_arns=[framework_image_repository_arn(identity.partition, self.region)],
        )
        try:
            current = iam.get_role_policy(RoleName=self.role_name, PolicyName=INLINE_POLICY_NAME)["PolicyDocument"]
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise
            current = None
        if current is not None and _canonical(current) == _canonical(wanted):
            return None
        iam.put_role_policy(RoleName=self.role_name, PolicyName=INLINE_POLICY_NAME, PolicyDocument=json.dumps(wanted))
        return f"inline policy {INLINE_POLICY_NAME} {'written' if current is None else 'updated'}"

    def _ensure_full_access(self, iam: GuardedClient, identity: Identity, owner: str) -> str | None:
        policy_arn = f"arn:{identity.partition}:iam::aws:policy/{FULL_ACCESS_POLICY}"
        attached = {
            p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=self.role_name)["AttachedPolicies"]
        }
        if self.sagemaker_full_access and policy_arn not in attached:
            iam.attach_role_policy(RoleName=self.role_name, PolicyArn=policy_arn)
            return f"{FULL_ACCESS_POLICY} attached (MLOPS_SAGEMAKER_FULL_ACCESS=true)"
        if not self.sagemaker_full_access and policy_arn in attached and owner == CREATED:
            # The setting is the declaration for a role setup created: it loses the broad grant. An
            # adopted role keeps what its owner attached.
            iam.detach_role_policy(RoleName=self.role_name, PolicyArn=policy_arn)
            return f"{FULL_ACCESS_POLICY} detached (MLOPS_SAGEMAKER_FULL_ACCESS is false)"
        return None

    # code repository

    def ensure_code_repository(
        self, folder: str, files: Mapping[str, bytes], request: CommitRequest, adopt: bool = False
    ) -> CommitResult:
        identity = self._identity()
        cc = self._client("codecommit", identity)
        status, metadata = self._claim_repository(cc, request.branch, adopt)
        head = self._branch_head(cc, request.branch)
        remote = self._folder_blobs(cc, head, folder) if head else {}
        local = {f"{folder}/{name}": data for name, data in sorted(files.items())}
        puts = [path for path, data in local.items() if remote.get(path) != git_blob_id(data)]
        deletes = [path for path in remote if path not in local]
        commit_id, committed = head, False
        if head is None or puts or deletes:
            params: dict[str, Any] = {
                "repositoryName": self.repository_name,
                "branchName": request.branch,
                "authorName": request.author_name,
                "email": request.author_email,
                "commitMessage": request.message,
                "putFiles": [{"filePath": p, "fileContent": local[p], "fileMode": "NORMAL"} for p in puts],
                "deleteFiles": [{"filePath": p} for p in deletes],
            }
            if head:
                params["parentCommitId"] = head  # CodeCommit refuses the commit if the branch moved meanwhile
            commit_id, committed = cc.create_commit(**params)["commitId"], True
        return CommitResult(
            repository=self.repository_name,
            location=metadata.get("cloneUrlHttp", metadata.get("Arn", "")),
            status=status,
            branch=request.branch,
            commit_id=str(commit_id),
            committed=committed,
            files=tuple(local),
        )

    def _claim_repository(self, cc: GuardedClient, branch: str, adopt: bool) -> tuple[str, dict]:
        """(status, metadata): created and tagged, or existing and created or adopted by setup."""
        metadata = self._repository_metadata(cc)
        if metadata is None:
            metadata = cc.create_repository(
                repositoryName=self.repository_name,
                repositoryDescription=REPOSITORY_DESCRIPTION,
                tags=managed_tags(self.pipeline_name),
            )["repositoryMetadata"]
            return "created", metadata
        tags = self._repository_tags(cc, metadata["Arn"])
        if ownership(tags, self.pipeline_name) != FOREIGN:
            return "already exists", metadata
        if not adopt:
            raise not_created_by_setup(
                "code repository", metadata["Arn"], "ensure_code_repository", self.pipeline_name,
                adopting=f"commits the training code to its {branch} branch", teardown="keeps it",
                instead="set MLOPS_REPOSITORY_NAME to a repository that does not exist yet",
            )  # fmt: skip
        cc.tag_resource(resourceArn=metadata["Arn"], tags={ADOPTED_TAG: self.pipeline_name})
        return "adopted", metadata

    def _repository_metadata(self, cc: GuardedClient) -> dict | None:
        try:
            return cc.get_repository(repositoryName=self.repository_name)["repositoryMetadata"]
        except ClientError as err:
            if error_code(err) != "RepositoryDoesNotExistException":
                raise
            return None

    def _repository_tags(self, cc: GuardedClient, arn: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        params = {"resourceArn": arn}
        while True:  # GetRepository does not return tags
            page = cc.list_tags_for_resource(**params)
            tags.update(page.get("tags", {}))
            if not page.get("nextToken"):
                return tags
            params["nextToken"] = page["nextToken"]

    def _branch_head(self, cc: GuardedClient, branch: str) -> str | None:
        try:
            return cc.get_branch(repositoryName=self.repository_name, branchName=branch)["branch"]["commitId"]
        except ClientError as err:
            if error_code(err) == "BranchDoesNotExistException":
                return None  # a new repository has no branch until its first commit
            raise

    def _folder_blobs(self, cc: GuardedClient, commit: str, folder: str) -> dict[str, str]:
        """path -> blob id of the files directly in ``folder`` at ``commit``."""
        try:
            listing = cc.get_folder(repositoryName=self.repository_name, commitSpecifier=commit, folderPath=folder)
        except ClientError as err:
            if error_code(err) == "FolderDoesNotExistException":
                return {}
            raise
        return {f["absolutePath"]: f["blobId"] for f in listing.get("files", [])}

    # verify_infrastructure

    def list_objects(self, uri_prefix: str) -> list[str]:
        bucket, _, prefix = uri_prefix.removeprefix("s3://").partition("/")
        identity = self._identity()
        s3 = self._client("s3", identity)
        uris: list[str] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "ExpectedBucketOwner": identity.account}
        while True:  # paged by hand: paginators would bypass the AccessDenied wrapper
            page = s3.list_objects_v2(**params)
            uris += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(uris)
            params["ContinuationToken"] = page["NextContinuationToken"]

    def probe_role(self) -> Probe:
        identity = self._identity()
        arn = self._role_arn(identity)
        sts = self._client("sts", identity)
        try:
            response = sts.assume_role(RoleArn=arn, RoleSessionName="mlops-dagster-verify", DurationSeconds=900)
        except AccessDeniedFailure:
            return self._probe_trust(identity, arn)
        # The temporary credentials are dropped unread: only who we became is reported.
        return Probe(True, f"assumed {arn} for 900 s as {response['AssumedRoleUser']['Arn']}")

    def _probe_trust(self, identity: Identity, arn: str) -> Probe:
        """The trust policy admits only SageMaker, so a person's AssumeRole is refused by design;
        the role is then usable when its trust policy has the statement setup writes for SageMaker."""
        document = self._client("iam", identity).get_role(RoleName=self.role_name)["Role"]["AssumeRolePolicyDocument"]
        ours = trust_policy(identity.account)["Statement"][0]
        document = json.loads(document) if isinstance(document, str) else document
        if any(_canonical(s) == _canonical(ours) for s in _statements(document)):
            return Probe(
                True,
                f"sts:AssumeRole on {arn} was refused to this caller, as its trust policy intends; that "
                f"policy lets sagemaker.amazonaws.com assume it for account {identity.account}",
            )
        return Probe(
            False, f"sts:AssumeRole on {arn} was refused and its trust policy lacks the statement setup writes"
        )

    def probe_repository(self) -> Probe:
        cc = self._client("codecommit", self._identity())
        try:
            metadata = cc.get_repository(repositoryName=self.repository_name)["repositoryMetadata"]
        except ClientError as err:
            if error_code(err) != "RepositoryDoesNotExistException":
                raise
            return Probe(
                False, f"CodeCommit repository {self.repository_name} does not exist: run setup_infrastructure"
            )
        return Probe(True, f"{metadata.get('Arn', self.repository_name)} ({metadata.get('cloneUrlHttp', '')})")

    def head_commit(self, branch: str = "main") -> str | None:
        cc = self._client("codecommit", self._identity())
        try:
            return self._branch_head(cc, branch)
        except ClientError as err:
            if error_code(err) != "RepositoryDoesNotExistException":
                raise
            return None

    # teardown_infrastructure

    def delete_bucket(self) -> Removal:
        identity = self._identity()
        s3 = self._client("s3", identity)
        bucket, name = self._bucket(identity), f"s3://{self.bucket}"
        try:
            owner = ownership(self._bucket_tags(s3, bucket), self.pipeline_name)
            if owner != CREATED:
                return self._delete_prefix(s3, bucket, owner)
            versions, markers = self._delete_versions(s3, bucket)
            s3.delete_bucket(**bucket)
        except AccessDeniedFailure as err:
            raise Failure(
                f"teardown of s3://{self.bucket} stopped: {err.description} Or the bucket belongs to another "
                f"account than {identity.account} (every call names that owner, so S3 refuses it)."
            ) from err
        except ClientError as err:
            if error_code(err) in ("NoSuchBucket", "404", "NotFound"):
                return Removal("bucket", name, note="already gone")
            raise
        return Removal("bucket", name, (f"{versions} object versions", f"{markers} delete markers", f"bucket {name}"))

    def _delete_prefix(self, s3: GuardedClient, bucket: dict, owner: str) -> Removal:
        """In a bucket setup did not create: the versions under ``prefix/`` only; the bucket stays."""
        name, kept = f"s3://{self.bucket}", f"kept the bucket: {owner}"
        if not self.prefix:
            return Removal.bucket_kept_whole(name, kept)
        versions, markers = self._delete_versions(s3, bucket, f"{self.prefix}/")
        deleted = [f"{versions} object versions under {name}/{self.prefix}/", f"{markers} delete markers"]
        if owner == ADOPTED:
            tags = self._bucket_tags(s3, bucket)
            tags.pop(ADOPTED_TAG, None)
            self._put_bucket_tags(s3, bucket, tags)
            deleted.append(f"tag {ADOPTED_TAG}")
        return Removal("bucket", name, tuple(deleted), note=kept, kept=True)

    def _delete_versions(self, s3: GuardedClient, bucket: dict, prefix: str = "") -> tuple[int, int]:
        """Delete every object version and delete marker under ``prefix``, a page (at most 1000) at a time."""
        versions = markers = 0
        while True:
            # Always from the start: each page deleted leaves the next one first.
            page = s3.list_object_versions(**bucket, Prefix=prefix)
            batch = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
            marker_batch = [{"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])]
            if not batch and not marker_batch:
                return versions, markers
            response = s3.delete_objects(**bucket, Delete={"Objects": batch + marker_batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise Failure(
                    f"could not delete {len(response['Errors'])} object versions from s3://{self.bucket}, e.g. "
                    f"{first.get('Key')} version {first.get('VersionId')}: {first.get('Code')} {first.get('Message')}"
                )
            versions, markers = versions + len(batch), markers + len(marker_batch)

    def delete_repository(self) -> Removal:
        cc = self._client("codecommit", self._identity())
        metadata = self._repository_metadata(cc)
        if metadata is None:
            return Removal("code repository", self.repository_name, note="already gone")
        owner = ownership(self._repository_tags(cc, metadata["Arn"]), self.pipeline_name)
        if owner == ADOPTED:
            cc.untag_resource(resourceArn=metadata["Arn"], tagKeys=[ADOPTED_TAG])
            return Removal(
                "code repository", self.repository_name, (f"tag {ADOPTED_TAG}",), note=f"kept: {owner}", kept=True
            )
        if owner == FOREIGN:
            return Removal("code repository", self.repository_name, note=f"kept: {owner}", kept=True)
        # DeleteRepository answers without a repositoryId (and no error) when there was nothing to delete.
        deleted = cc.delete_repository(repositoryName=self.repository_name).get("repositoryId")
        if not deleted:
            return Removal("code repository", self.repository_name, note="already gone")
        return Removal("code repository", self.repository_name, (f"CodeCommit repository {deleted}",))

    def delete_role(self) -> Removal:
        identity = self._identity()
        iam = self._client("iam", identity)
        arn = self._role_arn(identity)
        deleted: list[str] = []
        try:
            owner = ownership(tag_dict(iam.get_role(RoleName=self.role_name)["Role"].get("Tags")), self.pipeline_name)
            if owner == FOREIGN:
                return Removal("execution role", arn, note=f"kept, policies untouched: {owner}", kept=True)
            if owner == ADOPTED:
                return self._release_role(iam, arn)
            for name in iam.list_role_policies(RoleName=self.role_name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=self.role_name, PolicyName=name)
                deleted.append(f"inline policy {name}")
            for policy in iam.list_attached_role_policies(RoleName=self.role_name)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=self.role_name, PolicyArn=policy["PolicyArn"])
                deleted.append(f"detached {policy['PolicyArn']}")
            iam.delete_role(RoleName=self.role_name)
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return Removal("execution role", arn, tuple(deleted), note="already gone")
            raise
        return Removal("execution role", arn, (*deleted, f"role {arn}"))

    def _release_role(self, iam: GuardedClient, arn: str) -> Removal:
        """An adopted role: setup's inline policy and adoption tag go; the role, its trust policy and
        its attached policies stay."""
        deleted = []
        if INLINE_POLICY_NAME in iam.list_role_policies(RoleName=self.role_name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=self.role_name, PolicyName=INLINE_POLICY_NAME)
            deleted.append(f"inline policy {INLINE_POLICY_NAME}")
        iam.untag_role(RoleName=self.role_name, TagKeys=[ADOPTED_TAG])
        return Removal(
            "execution role", arn, (*deleted, f"tag {ADOPTED_TAG}"), note=f"kept the role: {ADOPTED}", kept=True
        )

    def owns_hosting(self, client: Any, arn: str) -> bool:
        tags: list[dict] = []
        params = {"ResourceArn": arn}
        while True:
            page = client.list_tags(**params)
            tags += page.get("Tags", [])
            if not page.get("NextToken"):
                return ownership(tag_dict(tags), self.pipeline_name) == CREATED
            params["NextToken"] = page["NextToken"]
