"""setup/verify/teardown_infrastructure on the aws backend, against moto in-process (``mock_aws``).

What moto cannot do is answered by botocore handlers on the sessions the resources create, and
each test says which: CodeCommit GetBranch/GetFolder/CreateCommit (NotImplemented in moto 5.2.5)
by ``FakeCommits``; AccessDenied and BucketAlreadyExists by ``InjectedErrors``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_helpers import InjectedErrors, on_new_sessions
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from dagster import DagsterInstance
from helpers import failures_text, op_output_metadata, run_job
from moto import mock_aws

from mlops_dagster import build_definitions
from mlops_dagster.resources.aws_infrastructure import INLINE_POLICY_NAME
from mlops_dagster.settings import Settings, SettingsError

ACCOUNT = "123456789012"  # moto's default account
MANAGED = {"managed-by": "mlops-dagster", "mlops:pipeline": "mlops-pipeline"}  # what setup and deployment tag
ADOPTED = {"mlops:adopted-by": "mlops-pipeline"}
REGION = "eu-west-1"
BUCKET = "mlops-infra-test"
ROLE_NAME = "SageMakerExecutionRole-mlops-pipeline"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
REPOSITORY = "mlops-pipeline-code"
CONFIRM = {"ops": {"confirm_teardown": {"config": {"confirm_bucket": BUCKET}}}}
TRAINING_FILES = sorted(p.name for p in (Path(__file__).parents[1] / "training").glob("*.py"))


# --- fixtures and helpers --------------------------------------------------------------------------


class _Body:
    def stream(self, *_: Any, **__: Any):
        yield b""


def _answer(status: int, parsed: dict) -> tuple[AWSResponse, dict]:
    parsed["ResponseMetadata"] = {"HTTPStatusCode": status}
    return AWSResponse("http://codecommit.invalid/", status, {}, _Body()), parsed


def _error(code: str, message: str) -> tuple[AWSResponse, dict]:
    return _answer(400, {"Error": {"Code": code, "Message": message}})


class FakeCommits:
    """CodeCommit's GetBranch, GetFolder, CreateCommit and its tagging calls, which moto 5.2.5
    lacks (NotImplemented).

    ``before-call.codecommit.<Operation>`` handlers answer just these from this object's state
    without sending them; repositories themselves (create/get/delete) are moto's, and the tags
    a CreateRepository carries are recorded on the way to moto (which drops them).
    """

    OPERATIONS = ("GetBranch", "GetFolder", "CreateCommit", "ListTagsForResource", "TagResource", "UntagResource")
    OBSERVED = ("CreateRepository", "DeleteRepository")

    def __init__(self) -> None:
        self.heads: dict[tuple[str, str], str] = {}  # (repository, branch) -> commit id
        self.trees: dict[str, dict[str, str]] = {}  # commit id -> {path: blob id}
        self.commits: list[dict] = []  # every CreateCommit request, decoded
        self.tags: dict[str, dict[str, str]] = {}  # repository name -> its tags

    def install(self, session: boto3.Session) -> None:
        for operation in self.OPERATIONS + self.OBSERVED:
            session.events.register(f"before-call.codecommit.{operation}", self)

    def __call__(self, model: Any, params: dict, **_: Any) -> tuple[AWSResponse, dict] | None:
        return getattr(self, model.name)(json.loads(params["body"] or b"{}"))

    def CreateRepository(self, body: dict) -> None:
        self.tags[body["repositoryName"]] = dict(body.get("tags") or {})

    def DeleteRepository(self, body: dict) -> None:
        self.tags.pop(body["repositoryName"], None)

    def _named(self, arn: str) -> dict[str, str]:
        return self.tags.setdefault(arn.rsplit(":", 1)[-1], {})

    def ListTagsForResource(self, body: dict):
        return _answer(200, {"tags": dict(self._named(body["resourceArn"]))})

    def TagResource(self, body: dict):
        self._named(body["resourceArn"]).update(body["tags"])
        return _answer(200, {})

    def UntagResource(self, body: dict):
        for key in body["tagKeys"]:
            self._named(body["resourceArn"]).pop(key, None)
        return _answer(200, {})

    def GetBranch(self, body: dict):
        head = self.heads.get((body["repositoryName"], body["branchName"]))
        if head is None:
            return _error("BranchDoesNotExistException", f"branch {body['branchName']} does not exist")
        return _answer(200, {"branch": {"branchName": body["branchName"], "commitId": head}})

    def GetFolder(self, body: dict):
        tree = self.trees[body["commitSpecifier"]]
        folder = body["folderPath"].strip("/")
        files = [
            {"absolutePath": path, "relativePath": path.rsplit("/", 1)[-1], "blobId": blob, "fileMode": "NORMAL"}
            for path, blob in tree.items()
            if path.rsplit("/", 1)[0] == folder
        ]
        if not files:
            return _error("FolderDoesNotExistException", f"folder {folder} does not exist")
        return _answer(200, {"commitId": body["commitSpecifier"], "folderPath": folder, "files": files})

    def CreateCommit(self, body: dict):
        key = (body["repositoryName"], body["branchName"])
        if body.get("parentCommitId") != self.heads.get(key):
            return _error("ParentCommitIdOutdatedException", "the branch moved")
        tree = dict(self.trees.get(body.get("parentCommitId"), {}))
        for put in body.get("putFiles", []):
            content = base64.b64decode(put["fileContent"])
            # git's blob id, computed here independently of the code under test
            tree[put["filePath"]] = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        for delete in body.get("deleteFiles", []):
            tree.pop(delete["filePath"])
        commit = uuid.uuid4().hex + "00000000"
        self.trees[commit], self.heads[key] = tree, commit
        self.commits.append(body)
        return _answer(200, {"commitId": commit, "treeId": uuid.uuid4().hex, "filesAdded": [], "filesUpdated": []})


class CallLog:
    """Every operation name the resources' clients call (a before-call handler that answers nothing)."""

    def __init__(self) -> None:
        self.operations: list[str] = []

    def install(self, session: boto3.Session) -> None:
        session.events.register("before-call", self)

    def __call__(self, model: Any, **_: Any) -> None:
        self.operations.append(f"{model.service_model.service_name}:{model.name}")

    def mutations(self) -> list[str]:
        verbs = ("Create", "Put", "Update", "Attach", "Detach", "Delete", "Tag")
        return [op for op in self.operations if op.split(":")[1].startswith(verbs)]


pytestmark = pytest.mark.usefixtures("local_only")


@pytest.fixture
def commits(monkeypatch, aws) -> FakeCommits:
    fake = FakeCommits()
    on_new_sessions(monkeypatch, fake.install)
    return fake


def settings_for(home: Path, **env: str) -> Settings:
    values = {"MLOPS_BACKEND": "aws", "MLOPS_HOME": str(home), "MLOPS_BUCKET": BUCKET, "MLOPS_REGION": REGION}
    return Settings.from_env({**values, **env})


@pytest.fixture
def defs(mlops_home: Path, commits):
    return build_definitions(settings_for(mlops_home))


def run(defs, job: str, run_config: dict | None = None):
    with DagsterInstance.ephemeral() as instance:
        return run_job(defs, instance, job, run_config)


failure = failures_text
meta = op_output_metadata


def s3():
    return boto3.client("s3", region_name=REGION)


def iam():
    return boto3.client("iam", region_name=REGION)


def codecommit():
    # A new session, so that this test's FakeCommits (installed on new sessions) answers its tag calls.
    return boto3.session.Session().client("codecommit", region_name=REGION)


def bucket_tags() -> dict[str, str]:
    try:
        return {t["Key"]: t["Value"] for t in s3().get_bucket_tagging(Bucket=BUCKET)["TagSet"]}
    except ClientError as err:
        assert err.response["Error"]["Code"] == "NoSuchTagSet"
        return {}


def role_tags() -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in iam().get_role(RoleName=ROLE_NAME)["Role"].get("Tags", [])}


# --- setup_infrastructure ------------------------------------------------------------------------


def _assert_guarded_bucket_in_its_region() -> None:
    assert s3().get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION
    assert bucket_tags() == MANAGED
    assert s3().get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = s3().get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3().get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    [statement] = json.loads(s3().get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]
    assert statement == {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _assert_least_privilege_role() -> None:
    role = iam().get_role(RoleName=ROLE_NAME)["Role"]
    assert role_tags() == MANAGED
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}

    policy = iam().get_role_policy(RoleName=ROLE_NAME, PolicyName=INLINE_POLICY_NAME)["PolicyDocument"]
    statements = {s["Sid"]: s for s in policy["Statement"]}
    for s in policy["Statement"]:
        actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
        resources = [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]
        if any(a.startswith("s3:") for a in actions):
            assert "*" not in resources and all(BUCKET in r for r in resources), s
    assert statements["ListDataPrefix"]["Condition"] == {
        "StringLike": {"s3:prefix": ["mlops", "mlops/*"]},
        "StringEquals": {"s3:ResourceAccount": ACCOUNT},
    }
    assert statements["ReadWriteDataPrefix"]["Resource"] == f"arn:aws:s3:::{BUCKET}/mlops/*"
    assert statements["PassThisRoleToSageMaker"]["Resource"] == ROLE_ARN
    assert statements["PassThisRoleToSageMaker"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    assert statements["JobLogs"]["Resource"] == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/*"
    # the scikit-learn image's repository in this region, not every repository
    assert statements["EcrPullFrameworkImage"]["Resource"] == [
        f"arn:aws:ecr:{REGION}:141502667606:repository/sagemaker-scikit-learn"
    ]
    assert iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"] == []


def _assert_code_committed_and_recorded(commits: FakeCommits, home: Path, result) -> None:
    repo = codecommit().get_repository(repositoryName=REPOSITORY)
    assert repo["repositoryMetadata"]["repositoryDescription"] == "MLOps pipeline code repository"
    assert commits.tags[REPOSITORY] == MANAGED
    [commit] = commits.commits
    assert sorted(f["filePath"] for f in commit["putFiles"]) == [f"training/{n}" for n in TRAINING_FILES]
    assert (commit["authorName"], commit["email"]) == ("mlops-dagster", "mlops-dagster@localhost")
    assert "parentCommitId" not in commit  # the repository's first commit
    head = commits.heads[(REPOSITORY, "main")]
    recorded = json.loads((home / "code_commit.json").read_text())
    assert recorded["commit_id"] == head == meta(result, "ensure_code_repository")["commit_id"]
    assert recorded["location"].startswith("https://git-codecommit.")


def test_setup_creates_bucket_role_and_repository_and_a_second_run_changes_nothing(
    defs, commits, mlops_home, monkeypatch
):
    first = run(defs, "setup_infrastructure")
    assert first.success, failure(first)
    assert [meta(first, op)["status"] for op in ("ensure_bucket", "ensure_execution_role")] == ["created"] * 2
    _assert_guarded_bucket_in_its_region()
    _assert_least_privilege_role()
    assert first.output_for_node("ensure_execution_role") == ROLE_ARN
    assert f"set MLOPS_ROLE_ARN={ROLE_ARN}" in first.log_text
    _assert_code_committed_and_recorded(commits, mlops_home, first)

    calls = CallLog()
    on_new_sessions(monkeypatch, calls.install)  # on top of the FakeCommits the fixture installed
    again = run(defs, "setup_infrastructure")
    assert again.success, failure(again)
    for op in ("ensure_bucket", "ensure_execution_role"):
        assert meta(again, op)["status"] == "already exists" and meta(again, op)["changes"] == []
    code = meta(again, "ensure_code_repository")
    assert code["status"] == "already exists" and code["new_commit"] is False
    assert len(commits.commits) == 1
    assert "s3:GetBucketPolicy" in calls.operations and "iam:GetRolePolicy" in calls.operations  # reads only
    assert calls.mutations() == [], calls.mutations()
    assert f"bucket s3://{BUCKET}: already exists" in again.log_text
    assert f"execution role {ROLE_ARN}: already exists" in again.log_text
    assert "training code unchanged: no new commit" in again.log_text


def test_changed_code_makes_one_new_commit_on_top_of_the_last(defs, commits, tmp_path):
    code = tmp_path / "training"
    code.mkdir()
    (code / "train.py").write_text("print('v1')\n")
    (code / "old.py").write_text("print('gone soon')\n")
    config = {"ops": {"ensure_code_repository": {"config": {"training_dir": str(code)}}}}
    assert run(defs, "setup_infrastructure", config).success
    first = commits.heads[(REPOSITORY, "main")]
    (code / "train.py").write_text("print('v2')\n")
    (code / "old.py").unlink()
    result = run(defs, "setup_infrastructure", config)
    assert result.success, failure(result)
    second = commits.commits[-1]
    assert second["parentCommitId"] == first
    assert [f["filePath"] for f in second["putFiles"]] == ["training/train.py"]
    assert second["deleteFiles"] == [{"filePath": "training/old.py"}]


def test_us_east_1_bucket_has_no_location_constraint(mlops_home, commits):
    defs = build_definitions(settings_for(mlops_home, MLOPS_REGION="us-east-1"))
    result = run(defs, "setup_infrastructure")
    assert result.success, failure(result)
    assert boto3.client("s3", region_name="us-east-1").get_bucket_location(Bucket=BUCKET)["LocationConstraint"] is None


def test_full_access_is_attached_only_when_opted_in_and_detached_when_not(mlops_home, monkeypatch):
    # moto knows AWS-managed policies only when asked to load them (before the mock starts).
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    full = "arn:aws:iam::aws:policy/AmazonSageMakerFullAccess"
    with mock_aws():
        on_new_sessions(monkeypatch, FakeCommits().install)
        opted_in = run(
            build_definitions(settings_for(mlops_home, MLOPS_SAGEMAKER_FULL_ACCESS="true")), "setup_infrastructure"
        )
        assert opted_in.success, failure(opted_in)
        attached = iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]
        assert [p["PolicyArn"] for p in attached] == [full]
        opted_out = run(build_definitions(settings_for(mlops_home)), "setup_infrastructure")
        assert opted_out.success, failure(opted_out)
        assert iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"] == []
        assert "AmazonSageMakerFullAccess detached" in meta(opted_out, "ensure_execution_role")["changes"][0]


# --- what setup did not create (issue 9, item 11) --------------------------------------------------

THEIR_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
ADOPT_ALL = {
    "ops": {
        op: {"config": {"adopt_existing": True}}
        for op in ("ensure_bucket", "ensure_execution_role", "ensure_code_repository")
    }
}
THEIR_KEYS = ["mlopsx/keep.csv", "theirs/keep.csv"]  # outside s3://<bucket>/mlops/ ("mlopsx/" is not "mlops/")


def _their_role() -> str:
    """A role with the configured name that setup did not create: its own trust and a policy attached."""
    iam().create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(THEIR_TRUST))
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}],
    }
    arn = iam().create_policy(PolicyName="theirs", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    iam().attach_role_policy(RoleName=ROLE_NAME, PolicyArn=arn)
    return arn


def _their_bucket(versioned: bool = True) -> None:
    s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    if versioned:
        s3().put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for key in THEIR_KEYS:
        s3().put_object(Bucket=BUCKET, Key=key, Body=b"not the project's")


def _remaining_keys() -> list[str]:
    listing = s3().list_object_versions(Bucket=BUCKET)
    return sorted(v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []))


def _trust_principals() -> list[dict]:
    return [s["Principal"] for s in iam().get_role(RoleName=ROLE_NAME)["Role"]["AssumeRolePolicyDocument"]["Statement"]]


@pytest.mark.parametrize("resource", ["bucket", "role", "repository"])
def test_setup_refuses_what_it_did_not_create_naming_it_and_the_opt_in_and_changes_nothing(defs, commits, resource):
    if resource == "bucket":
        _their_bucket(versioned=False)
        name, op = f"bucket s3://{BUCKET}", "ensure_bucket"
    elif resource == "role":
        theirs = _their_role()
        name, op = f"execution role {ROLE_ARN}", "ensure_execution_role"
    else:
        codecommit().create_repository(repositoryName=REPOSITORY, tags={"team": "data"})
        name, op = f"code repository arn:aws:codecommit:{REGION}:{ACCOUNT}:{REPOSITORY}", "ensure_code_repository"

    result = run(defs, "setup_infrastructure")
    assert not result.success
    text = failure(result)
    assert f"{name} already exists and was not created by setup_infrastructure for pipeline mlops-pipeline" in text
    assert "setup changed nothing" in text and f"ops.{op}.config.adopt_existing: true" in text

    if resource == "bucket":  # not versioned, tagged, encrypted by setup or given a policy
        assert "Status" not in s3().get_bucket_versioning(Bucket=BUCKET) and bucket_tags() == {}
        with pytest.raises(ClientError, match="NoSuchBucketPolicy"):
            s3().get_bucket_policy(Bucket=BUCKET)
    elif resource == "role":  # trust policy, policies and tags as they were
        assert _trust_principals() == [{"Service": "ec2.amazonaws.com"}] and role_tags() == {}
        assert iam().list_role_policies(RoleName=ROLE_NAME)["PolicyNames"] == []
        assert [p["PolicyArn"] for p in iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]] == [
            theirs
        ]
    else:  # nothing committed, tags as they were
        assert commits.commits == [] and commits.tags[REPOSITORY] == {"team": "data"}


def test_adopted_resources_are_used_and_teardown_keeps_them_deleting_only_the_projects_share(
    defs, commits, mlops_home
):
    theirs = _their_role()
    _their_bucket()
    s3().put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [{"Key": "team", "Value": "data"}]})
    codecommit().create_repository(repositoryName=REPOSITORY, tags={"team": "data"})

    adopted = run(defs, "setup_infrastructure", ADOPT_ALL)
    assert adopted.success, failure(adopted)
    ops = ("ensure_bucket", "ensure_execution_role", "ensure_code_repository")
    assert [meta(adopted, op)["status"] for op in ops] == ["adopted"] * 3
    assert bucket_tags() == {"team": "data", **ADOPTED} and role_tags() == ADOPTED
    assert commits.tags[REPOSITORY] == {"team": "data", **ADOPTED} and len(commits.commits) == 1
    # the role keeps its own trust statement and attached policy; SageMaker's statement is added
    assert _trust_principals() == [{"Service": "ec2.amazonaws.com"}, {"Service": "sagemaker.amazonaws.com"}]
    attached = iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [theirs]
    assert iam().list_role_policies(RoleName=ROLE_NAME)["PolicyNames"] == [INLINE_POLICY_NAME]

    again = run(defs, "setup_infrastructure")  # adopted once: no opt-in needed, nothing changes
    assert again.success, failure(again)
    for op in ("ensure_bucket", "ensure_execution_role"):
        assert meta(again, op)["status"] == "already exists" and meta(again, op)["changes"] == []

    s3().delete_bucket_policy(Bucket=BUCKET)  # moto ignores the TLS Deny's condition (see _seed_pipeline_data_and_job)
    _versions_and_a_delete_marker()
    result = run(defs, "teardown_infrastructure", CONFIRM)
    assert result.success, failure(result)
    removed = {r["kind"]: r for r in result.output_for_node("report_teardown")}
    assert removed["bucket"]["deleted"] == (
        f"2 object versions under s3://{BUCKET}/mlops/", "1 delete markers", "tag mlops:adopted-by"
    )  # fmt: skip
    assert removed["bucket"]["note"] == "kept the bucket: adopted"
    assert _remaining_keys() == THEIR_KEYS and bucket_tags() == {"team": "data"}
    assert removed["execution role"]["deleted"] == (f"inline policy {INLINE_POLICY_NAME}", "tag mlops:adopted-by")
    assert iam().list_role_policies(RoleName=ROLE_NAME)["PolicyNames"] == [] and role_tags() == {}
    attached = iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [theirs]
    assert removed["code repository"]["note"] == "kept: adopted"
    assert codecommit().get_repository(repositoryName=REPOSITORY)["repositoryMetadata"]["repositoryName"] == REPOSITORY
    assert commits.tags[REPOSITORY] == {"team": "data"}
    assert (mlops_home / "code_commit.json").is_file()  # the kept repository still holds the recorded commit


def test_teardown_deletes_only_the_prefix_of_a_bucket_setup_did_not_create_and_keeps_what_it_did_not_create(
    defs, commits
):
    # MLOPS_BUCKET names the team's bucket and setup never ran: the project wrote only under mlops/.
    theirs = _their_role()
    _their_bucket()
    _versions_and_a_delete_marker()
    codecommit().create_repository(repositoryName=REPOSITORY)

    result = run(defs, "teardown_infrastructure", CONFIRM)
    assert result.success, failure(result)
    removed = {r["kind"]: r for r in result.output_for_node("report_teardown")}
    assert removed["bucket"]["deleted"] == (f"2 object versions under s3://{BUCKET}/mlops/", "1 delete markers")
    assert removed["bucket"]["note"] == "kept the bucket: not created by setup_infrastructure"
    assert _remaining_keys() == THEIR_KEYS
    assert (
        f"| bucket s3://{BUCKET} | 2 object versions under s3://{BUCKET}/mlops/, 1 delete markers "
        "(kept the bucket: not created by setup_infrastructure) |" in result.log_text
    )
    assert removed["execution role"] == {
        "kind": "execution role", "name": ROLE_ARN, "deleted": (),
        "note": "kept, policies untouched: not created by setup_infrastructure", "kept": True,
    }  # fmt: skip
    assert _trust_principals() == [{"Service": "ec2.amazonaws.com"}]
    attached = iam().list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [theirs]
    assert removed["code repository"]["note"] == "kept: not created by setup_infrastructure"
    codecommit().get_repository(repositoryName=REPOSITORY)


def _deploy_dev_endpoint(mlops_home: Path):
    """The dev_endpoint asset against moto, as test_deployment_aws.py runs it: one model package."""
    from dagster import build_asset_context
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    from mlops_dagster.assets.deployment import EndpointConfig, dev_endpoint
    from mlops_dagster.datasets import synthetic_boston, to_csv_bytes

    defs = build_definitions(settings_for(mlops_home, MLOPS_ROLE_ARN=ROLE_ARN))
    s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3().put_object(Bucket=BUCKET, Key="mlops/data/abc/validation.csv", Body=to_csv_bytes(synthetic_boston(20, 3)))
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model_package_group(ModelPackageGroupName="mlops-pipeline-models")
    image = f"141502667606.dkr.ecr.{REGION}.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    package = sm.create_model_package(
        ModelPackageGroupName="mlops-pipeline-models",
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": image, "ModelDataUrl": f"s3://{BUCKET}/mlops/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    body = json.dumps({"predictions": [21.5] * 5})  # moto's InvokeEndpoint answers from this queue
    sagemakerruntime_backends[ACCOUNT][REGION].results_queue.append((body, "application/json", "AllTraffic", ""))
    registered = {
        "model_package_arn": package, "model_package_group": "mlops-pipeline-models", "version": 1,
        "approval_status": "PendingManualApproval", "target": "medv",
        "lineage": {"dataset_uri": f"s3://{BUCKET}/mlops/data/abc/"},
    }  # fmt: skip
    resources = {k: defs.resources[k] for k in ("settings", "sagemaker", "store")}
    with build_asset_context(resources=resources) as context:
        config = EndpointConfig(wait_delay_seconds=1, wait_max_attempts=5)
        [output] = list(dev_endpoint(context, config=config, registered_model=registered))
    assert output.value["smoke_test"] == "passed"
    return defs, sm


def test_deployment_tags_what_it_creates_and_teardown_deletes_exactly_that(mlops_home, commits):
    defs, sm = _deploy_dev_endpoint(mlops_home)
    endpoint = sm.describe_endpoint(EndpointName="mlops-pipeline-dev")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])

    def tags(arn: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}

    assert tags(model["ModelArn"]) == MANAGED and tags(config["EndpointConfigArn"]) == MANAGED
    assert tags(endpoint["EndpointArn"]) == {**MANAGED, "mlops:environment": "dev"}
    # Not deployment's: an untagged model with the pipeline's prefix, one tagged for another pipeline.
    container = {"Image": "sklearn", "ModelDataUrl": f"s3://{BUCKET}/m.tar.gz"}
    sm.create_model(ModelName="mlops-pipeline-handmade", PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN)
    other = [{"Key": "managed-by", "Value": "mlops-dagster"}, {"Key": "mlops:pipeline", "Value": "mlops-pipeline-x"}]
    sm.create_model(
        ModelName="mlops-pipeline-x-dev-v1", PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN, Tags=other
    )

    result = run(defs, "teardown_infrastructure", CONFIRM)
    assert result.success, failure(result)
    [hosting] = [r for r in result.output_for_node("report_teardown") if r["kind"].startswith("endpoints")]
    assert hosting["deleted"] == (
        "endpoint mlops-pipeline-dev",
        f"endpoint config {config['EndpointConfigName']}",
        f"model {model['ModelName']}",
    )
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sorted(m["ModelName"] for m in sm.list_models()["Models"]) == [
        "mlops-pipeline-handmade",
        "mlops-pipeline-x-dev-v1",
    ]


# --- least privilege (issue 9, item 12) -----------------------------------------------------------


class S3Requests:
    """The parameters of every S3 call the resources' clients make (before botocore builds the request)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def install(self, session: boto3.Session) -> None:
        session.events.register("before-parameter-build.s3", self)

    def __call__(self, params: dict, model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))


def _actions(statement: dict) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]


def test_the_role_may_not_delete_runs_only_pipeline_jobs_and_reaches_only_this_accounts_bucket(defs, monkeypatch):
    requests = S3Requests()
    on_new_sessions(monkeypatch, requests.install)
    assert run(defs, "setup_infrastructure").success
    policy = iam().get_role_policy(RoleName=ROLE_NAME, PolicyName=INLINE_POLICY_NAME)["PolicyDocument"]
    statements = {s["Sid"]: s for s in policy["Statement"]}

    # no statement lets the jobs delete objects
    assert not [a for s in policy["Statement"] for a in _actions(s) if a.startswith("s3:Delete") or a == "s3:*"]
    assert statements["ReadWriteDataPrefix"] == {
        "Sid": "ReadWriteDataPrefix",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject"],
        "Resource": f"arn:aws:s3:::{BUCKET}/mlops/*",
        "Condition": {"StringEquals": {"s3:ResourceAccount": ACCOUNT}},
    }
    # every S3 grant holds only while the bucket belongs to this account
    for s in policy["Statement"]:
        if any(a.startswith("s3:") for a in _actions(s)):
            assert s["Condition"]["StringEquals"]["s3:ResourceAccount"] == ACCOUNT, s
    # processing and training jobs: the ones SageMaker Pipelines starts (pipelines-<execution>-<step>-...)
    sm = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    assert statements["PipelineJobs"]["Resource"] == [
        f"{sm}:processing-job/pipelines-*",
        f"{sm}:training-job/pipelines-*",
    ]
    for s in policy["Statement"]:
        if any(a.endswith(("ProcessingJob", "TrainingJob")) for a in _actions(s)):
            assert all(r.endswith("-job/pipelines-*") for r in s["Resource"]), s

    # every call on the bucket names its expected owner (CreateBucket has no such parameter)
    assert run(defs, "verify_infrastructure").output_for_node("check_infrastructure")
    assert run(defs, "teardown_infrastructure", CONFIRM).success
    on_bucket = [(op, p) for op, p in requests.calls if "Bucket" in p and op != "CreateBucket"]
    assert {op for op, _ in on_bucket} >= {"HeadBucket", "PutBucketTagging", "ListObjectsV2", "DeleteBucket"}
    assert [op for op, p in on_bucket if p.get("ExpectedBucketOwner") != ACCOUNT] == []


# --- bad input -----------------------------------------------------------------------------------


def test_missing_region_and_invalid_bucket_fail_in_settings(tmp_path, monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError, match="MLOPS_REGION is not set: the aws backend needs a region"):
        Settings.from_env({"MLOPS_BACKEND": "aws", "MLOPS_HOME": str(tmp_path), "MLOPS_BUCKET": BUCKET})
    with pytest.raises(SettingsError, match=r"MLOPS_BUCKET='Bad_Bucket' is not a valid S3 bucket name"):
        settings_for(tmp_path, MLOPS_BUCKET="Bad_Bucket")


def test_a_bucket_owned_by_another_account_is_named_taken(defs, monkeypatch):
    # The bucket really is another moto account's, and moto is told to keep accounts apart, so its
    # HeadBucket answers 403 as S3 does. Its CreateBucket then answers AccessDenied where S3 answers
    # 409 BucketAlreadyExists: that one answer is injected with a before-send handler.
    monkeypatch.setenv("MOTO_ACCOUNT_ID", "111111111111")
    s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    monkeypatch.delenv("MOTO_ACCOUNT_ID")
    monkeypatch.setenv("MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS", "false")
    taken = InjectedErrors(
        "before-send.s3.CreateBucket",
        409,
        b"<Error><Code>BucketAlreadyExists</Code><Message>taken</Message></Error>",
        1,
    )
    on_new_sessions(monkeypatch, taken.install)
    result = run(defs, "setup_infrastructure")
    assert not result.success and taken.hits == 1
    text = failure(result)
    assert f"the S3 bucket name '{BUCKET}' is taken globally" in text and "Choose another MLOPS_BUCKET" in text
    # nothing after the bucket ran
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam().get_role(RoleName=ROLE_NAME)


ACCESS_DENIED = {
    "s3": b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
    "iam": b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
    b"<Message>User: arn:aws:iam::123456789012:user/dev is not authorized to perform: iam:CreateRole</Message>"
    b"</Error></ErrorResponse>",
}


@pytest.mark.parametrize(
    ("event", "action", "resource"),
    [
        ("before-send.s3.PutBucketEncryption", "s3:PutEncryptionConfiguration", f"arn:aws:s3:::{BUCKET}"),
        ("before-send.iam.CreateRole", "iam:CreateRole", ROLE_ARN),
    ],
)
def test_access_denied_names_the_action_the_resource_and_the_permission(defs, monkeypatch, event, action, resource):
    # A before-send handler answers this one operation with AWS's 403 AccessDenied response.
    denied = InjectedErrors(event, 403, ACCESS_DENIED[event.split(".")[1]], 1)
    on_new_sessions(monkeypatch, denied.install)
    result = run(defs, "setup_infrastructure")
    assert not result.success and denied.hits == 1
    text = failure(result)
    assert f"AccessDenied: {action} on {resource} was refused" in text
    assert f"Grant the identity that runs Dagster the permission {action} on {resource}" in text
    assert "testing" not in text  # the (fake) access key id is never in a message


# --- verify_infrastructure -----------------------------------------------------------------------


def _seed_pipeline_data_and_job() -> None:
    # moto evaluates bucket policies without their Condition, so the TLS-only Deny would refuse
    # every object call here (S3 applies it only to plain-HTTP requests; boto3 uses HTTPS).
    s3().delete_bucket_policy(Bucket=BUCKET)
    for name in ("train.csv", "validation.csv"):
        s3().put_object(Bucket=BUCKET, Key=f"mlops/data/abc123/{name}", Body=b"medv\n1\n")
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_pipeline(
        PipelineName="mlops-pipeline", PipelineDefinition='{"Version": "2020-12-01", "Steps": []}', RoleArn=ROLE_ARN
    )
    sm.create_training_job(
        TrainingJobName="pipelines-abc-Train-1",
        AlgorithmSpecification={"TrainingImage": "sklearn", "TrainingInputMode": "File"},
        RoleArn=ROLE_ARN,
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/mlops/out"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )


def test_verify_reports_every_check_fails_on_what_is_missing_then_passes(defs):
    assert run(defs, "setup_infrastructure").success
    missing = run(defs, "verify_infrastructure")
    assert not missing.success
    report = meta(missing, "check_infrastructure")["report"]
    assert "| pipeline exists | FAIL | pipeline mlops-pipeline does not exist" in report
    assert (
        "| dataset in the bucket | FAIL | no train.csv or validation.csv under s3://mlops-infra-test/mlops/data/"
        in report
    )
    assert f"| role can be assumed | pass | assumed {ROLE_ARN} for 900 s" in report
    assert "| repository exists | pass |" in report
    assert "| recent training jobs | pass | no training jobs yet" in report
    assert "2 of 5 infrastructure checks failed" in failure(missing)
    assert "| pipeline exists | FAIL |" in missing.log_text  # the table is logged too

    _seed_pipeline_data_and_job()
    result = run(defs, "verify_infrastructure")
    assert result.success, failure(result)
    report = meta(result, "check_infrastructure")["report"]
    assert f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/mlops-pipeline is Active" in report
    assert "pipelines-abc-Train-1: Completed" in report
    assert "SecretAccessKey" not in report and "SessionToken" not in report


def test_a_refused_assume_role_passes_when_the_trust_policy_admits_only_sagemaker(defs, monkeypatch):
    # With the trust policy setup writes, AWS refuses a person's AssumeRole; moto does not, so the
    # refusal is injected (before-send) to exercise the fallback that reads the trust policy.
    assert run(defs, "setup_infrastructure").success
    body = b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized</Message></Error></ErrorResponse>"
    on_new_sessions(monkeypatch, InjectedErrors("before-send.sts.AssumeRole", 403, body, 1).install)
    report = meta(run(defs, "verify_infrastructure"), "check_infrastructure")["report"]
    assert (
        "| role can be assumed | pass | sts:AssumeRole on" in report
        and "lets sagemaker.amazonaws.com assume it" in report
    )


# --- teardown_infrastructure ---------------------------------------------------------------------


def _versions_and_a_delete_marker() -> None:
    s3().put_object(Bucket=BUCKET, Key="mlops/data/x.csv", Body=b"v1")
    s3().put_object(Bucket=BUCKET, Key="mlops/data/x.csv", Body=b"v2")
    s3().delete_object(Bucket=BUCKET, Key="mlops/data/x.csv")
    listing = s3().list_object_versions(Bucket=BUCKET, Prefix="mlops/data/x.csv")
    assert (len(listing["Versions"]), len(listing["DeleteMarkers"])) == (2, 1)


def test_teardown_refuses_a_wrong_name_then_deletes_every_version_policy_role_repository(defs, mlops_home):
    assert run(defs, "setup_infrastructure").success
    _seed_pipeline_data_and_job()
    _versions_and_a_delete_marker()
    # an attached managed policy as well as the inline one
    extra = iam().create_policy(PolicyName="extra", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]}
    ))["Policy"]["Arn"]  # fmt: skip
    iam().attach_role_policy(RoleName=ROLE_NAME, PolicyArn=extra)

    for config in ({}, {"ops": {"confirm_teardown": {"config": {"confirm_bucket": BUCKET.upper()}}}}):
        refused = run(defs, "teardown_infrastructure", config)
        assert not refused.success
        assert f"set ops.confirm_teardown.config.confirm_bucket to '{BUCKET}'" in failure(refused)
        assert "nothing was deleted" in failure(refused)
    assert len(s3().list_object_versions(Bucket=BUCKET)["Versions"]) == 4
    assert iam().list_role_policies(RoleName=ROLE_NAME)["PolicyNames"] == [INLINE_POLICY_NAME]
    boto3.client("codecommit", region_name=REGION).get_repository(repositoryName=REPOSITORY)
    boto3.client("sagemaker", region_name=REGION).describe_pipeline(PipelineName="mlops-pipeline")

    result = run(defs, "teardown_infrastructure", CONFIRM)
    assert result.success, failure(result)
    removed = {r["kind"]: r for r in result.output_for_node("report_teardown")}
    # x.csv's two versions and delete marker, and the one version each of train.csv and validation.csv
    assert removed["bucket"]["deleted"] == ("4 object versions", "1 delete markers", f"bucket s3://{BUCKET}")
    assert removed["execution role"]["deleted"] == (
        f"inline policy {INLINE_POLICY_NAME}", f"detached {extra}", f"role {ROLE_ARN}"
    )  # fmt: skip
    assert "| bucket s3://mlops-infra-test | 4 object versions, 1 delete markers" in result.log_text
    with pytest.raises(ClientError, match="404"):
        s3().head_bucket(Bucket=BUCKET)
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam().get_role(RoleName=ROLE_NAME)
    with pytest.raises(ClientError, match="RepositoryDoesNotExist"):
        boto3.client("codecommit", region_name=REGION).get_repository(repositoryName=REPOSITORY)
    with pytest.raises(ClientError, match="Could not find pipeline"):
        boto3.client("sagemaker", region_name=REGION).describe_pipeline(PipelineName="mlops-pipeline")
    assert not (mlops_home / "code_commit.json").exists()


def test_teardown_tolerates_what_is_already_gone(defs):
    result = run(defs, "teardown_infrastructure", CONFIRM)
    assert result.success, failure(result)
    assert [r["note"] for r in result.output_for_node("report_teardown")] == ["none deployed"] + ["already gone"] * 4
