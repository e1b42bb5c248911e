"""The aws backend's Infrastructure: the S3 bucket, the IAM execution role and the CodeCommit
repository of the recipe, made idempotently with boto3.

Every client comes from the ``AwsSession`` resource (region, profile, endpoint_url, retries) and
is wrapped in ``GuardedClient`` so an AccessDenied names the action, the resource and the missing
permission. Only ``definitions.py`` imports this module, and only for ``MLOPS_BACKEND=aws``.

An existing resource is read and compared first; a setting is written only when it differs, so a
second run makes no changes and says "already exists".
"""

from __future__ import annotations

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
    AccessDeniedFailure,
    CommitResult,
    Ensured,
    GuardedClient,
    Infrastructure,
    Probe,
    Removal,
    error_code,
    git_blob_id,
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
    """What the pipeline's jobs need, and no more: the bucket's prefix, the framework image,
    their own log groups and metrics, the pipeline's SageMaker jobs and model package group,
    and passing this role (only) to SageMaker."""
    bucket_arn = f"arn:{partition}:s3:::{bucket}"
    sm = f"arn:{partition}:sagemaker:{region}:{account}"
    group = model_package_group.lower()  # SageMaker lower-cases names in ARNs
    list_bucket: dict = {"Sid": "ListDataPrefix", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn}
    if prefix:
        list_bucket["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            list_bucket,
            {
                "Sid": "ReadWriteDataPrefix",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": f"{bucket_arn}/{prefix}/*" if prefix else f"{bucket_arn}/*",
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
                "Resource": [f"{sm}:processing-job/*", f"{sm}:training-job/*"],
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

    def ensure_bucket(self) -> Ensured:
        identity = self._identity()
        s3 = self._client("s3", identity)
        status = self._create_bucket_if_missing(s3, identity)
        changes = [
            change
            for change in (
                self._ensure_versioning(s3),
                self._ensure_encryption(s3),
                self._ensure_public_access_block(s3),
                self._ensure_tls_policy(s3, identity),
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
                "versioning": "Enabled",
                "default encryption": self._encryption_algorithm(s3),
                "public access block": "all four settings on",
                "bucket policy": f"{TLS_STATEMENT_ID}: denies s3:* when aws:SecureTransport is false",
            },
        )

    def _create_bucket_if_missing(self, s3: GuardedClient, identity: Identity) -> str:
        try:
            # ExpectedBucketOwner: a bucket of the same name in another account answers 403, not 200.
            head = s3.head_bucket(Bucket=self.bucket, ExpectedBucketOwner=identity.account)
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

    def _ensure_versioning(self, s3: GuardedClient) -> str | None:
        if s3.get_bucket_versioning(Bucket=self.bucket).get("Status") == "Enabled":
            return None
        s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        return "versioning enabled"

    def _encryption_algorithm(self, s3: GuardedClient) -> str:
        try:
            rules = s3.get_bucket_encryption(Bucket=self.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as err:
            if error_code(err) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
            return "none"
        algorithms = [r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules]
        return next((a for a in algorithms if a in _ENCRYPTED), "none")

    def _ensure_encryption(self, s3: GuardedClient) -> str | None:
        if self._encryption_algorithm(s3) != "none":
            return None  # SSE-S3 already, or a KMS key someone chose: never downgrade it
        s3.put_bucket_encryption(Bucket=self.bucket, ServerSideEncryptionConfiguration=SSE_S3)
        return "default encryption set to SSE-S3 (AES256)"

    def _ensure_public_access_block(self, s3: GuardedClient) -> str | None:
        try:
            current = s3.get_public_access_block(Bucket=self.bucket)["PublicAccessBlockConfiguration"]
        except ClientError as err:
            if error_code(err) != "NoSuchPublicAccessBlockConfiguration":
                raise
            current = {}
        if all(current.get(k) is True for k in PUBLIC_ACCESS_BLOCK):
            return None
        s3.put_public_access_block(Bucket=self.bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
        return "public access block turned on (all four settings)"

    def _ensure_tls_policy(self, s3: GuardedClient, identity: Identity) -> str | None:
        statement = tls_only_statement(identity.partition, self.bucket)
        try:
            policy = json.loads(s3.get_bucket_policy(Bucket=self.bucket)["Policy"])
        except ClientError as err:
            if error_code(err) != "NoSuchBucketPolicy":
                raise
            policy = {"Version": "2012-10-17", "Statement": []}
        statements = policy.get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else list(statements)
        if any(_canonical(s) == _canonical(statement) for s in statements):
            return None
        # Keep statements someone else added; replace only ours.
        policy["Statement"] = [s for s in statements if s.get("Sid") != TLS_STATEMENT_ID] + [statement]
        s3.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(policy))
        return "bucket policy denies requests without TLS"

    # execution role

    def ensure_execution_role(self) -> Ensured:
        identity = self._identity()
        iam = self._client("iam", identity)
        trust = trust_policy(identity.account)
        changes: list[str] = []
        try:
            role = iam.get_role(RoleName=self.role_name)["Role"]
            status = "already exists"
            if _canonical(role["AssumeRolePolicyDocument"]) != _canonical(trust):
                iam.update_assume_role_policy(RoleName=self.role_name, PolicyDocument=json.dumps(trust))
                changes.append("trust policy updated")
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise
            role = iam.create_role(
                RoleName=self.role_name,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description=f"SageMaker execution role of the {self.pipeline_name} pipeline (mlops-dagster)",
                Tags=[{"Key": "managed-by", "Value": "mlops-dagster"}],
            )["Role"]
            status = "created"
        arn = role["Arn"]
        changes += filter(
            None, [self._ensure_inline_policy(iam, identity, arn), self._ensure_full_access(iam, identity)]
        )
        return Ensured(
            "execution role",
            arn,
            status,
            tuple(changes),
            details={
                "trust": f"sagemaker.amazonaws.com, aws:SourceAccount = {identity.account}",
                "inline policy": INLINE_POLICY_NAME,
                FULL_ACCESS_POLICY: "attached"
                if self.sagemaker_full_access
                else "not attached (opt in: MLOPS_SAGEMAKER_FULL_ACCESS=true)",
            },
            hint=f"set MLOPS_ROLE_ARN={arn}",
        )

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

    def _ensure_full_access(self, iam: GuardedClient, identity: Identity) -> str | None:
        policy_arn = f"arn:{identity.partition}:iam::aws:policy/{FULL_ACCESS_POLICY}"
        attached = {
            p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=self.role_name)["AttachedPolicies"]
        }
        if self.sagemaker_full_access and policy_arn not in attached:
            iam.attach_role_policy(RoleName=self.role_name, PolicyArn=policy_arn)
            return f"{FULL_ACCESS_POLICY} attached (MLOPS_SAGEMAKER_FULL_ACCESS=true)"
        if not self.sagemaker_full_access and policy_arn in attached:
            # The setting is the declaration: a role that should be least-privilege loses the broad grant.
            iam.detach_role_policy(RoleName=self.role_name, PolicyArn=policy_arn)
            return f"{FULL_ACCESS_POLICY} detached (MLOPS_SAGEMAKER_FULL_ACCESS is false)"
        return None

    # code repository

    def ensure_code_repository(self, folder: str, files: Mapping[str, bytes], request: CommitRequest) -> CommitResult:
        identity = self._identity()
        cc = self._client("codecommit", identity)
        try:
            metadata = cc.get_repository(repositoryName=self.repository_name)["repositoryMetadata"]
            status = "already exists"
        except ClientError as err:
            if error_code(err) != "RepositoryDoesNotExistException":
                raise
            metadata = cc.create_repository(
                repositoryName=self.repository_name,
                repositoryDescription=REPOSITORY_DESCRIPTION,
                tags={"managed-by": "mlops-dagster"},
            )["repositoryMetadata"]
            status = "created"
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
        s3 = self._client("s3", self._identity())
        uris: list[str] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
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
        the role is then usable when that policy still trusts sagemaker.amazonaws.com."""
        document = self._client("iam", identity).get_role(RoleName=self.role_name)["Role"]["AssumeRolePolicyDocument"]
        if _canonical(document) == _canonical(trust_policy(identity.account)):
            return Probe(
                True,
                f"sts:AssumeRole on {arn} was refused to this caller, as its trust policy intends; that "
                f"policy lets sagemaker.amazonaws.com assume it for account {identity.account}",
            )
        return Probe(False, f"sts:AssumeRole on {arn} was refused and its trust policy is not the one setup writes")

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

    # teardown_infrastructure

    def delete_bucket(self) -> Removal:
        s3 = self._client("s3", self._identity())
        name = f"s3://{self.bucket}"
        try:
            versions, markers = self._delete_all_versions(s3)
            s3.delete_bucket(Bucket=self.bucket)
        except ClientError as err:
            if error_code(err) in ("NoSuchBucket", "404", "NotFound"):
                return Removal("bucket", name, note="already gone")
            raise
        return Removal("bucket", name, (f"{versions} object versions", f"{markers} delete markers", f"bucket {name}"))

    def _delete_all_versions(self, s3: GuardedClient) -> tuple[int, int]:
        """Delete every object version and delete marker, a page (at most 1000) at a time."""
        versions = markers = 0
        while True:
            # Always from the start: each page deleted leaves the next one first.
            page = s3.list_object_versions(Bucket=self.bucket)
            batch = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
            marker_batch = [{"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])]
            if not batch and not marker_batch:
                return versions, markers
            response = s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch + marker_batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise Failure(
                    f"could not delete {len(response['Errors'])} object versions from s3://{self.bucket}, e.g. "
                    f"{first.get('Key')} version {first.get('VersionId')}: {first.get('Code')} {first.get('Message')}"
                )
            versions, markers = versions + len(batch), markers + len(marker_batch)

    def delete_repository(self) -> Removal:
        cc = self._client("codecommit", self._identity())
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
