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
    """CodeCommit's GetBranch, GetFolder and CreateCommit, which moto 5.2.5 lacks (NotImplemented).

    ``before-call.codecommit.<Operation>`` handlers answer just these three from this object's
    state without sending them; repositories themselves (create/get/delete) are moto's.
    """

    OPERATIONS = ("GetBranch", "GetFolder", "CreateCommit")

    def __init__(self) -> None:
        self.heads: dict[tuple[str, str], str] = {}  # (repository, branch) -> commit id
        self.trees: dict[str, dict[str, str]] = {}  # commit id -> {path: blob id}
        self.commits: list[dict] = []  # every CreateCommit request, decoded

    def install(self, session: boto3.Session) -> None:
        for operation in self.OPERATIONS:
            session.events.register(f"before-call.codecommit.{operation}", self)

    def __call__(self, model: Any, params: dict, **_: Any) -> tuple[AWSResponse, dict]:
        return getattr(self, model.name)(json.loads(params["body"] or b"{}"))

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


# --- setup_infrastructure ------------------------------------------------------------------------


def _assert_guarded_bucket_in_its_region() -> None:
    assert s3().get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION
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
    assert statements["ListDataPrefix"]["Condition"] == {"StringLike": {"s3:prefix": ["mlops", "mlops/*"]}}
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
    repo = boto3.client("codecommit", region_name=REGION).get_repository(repositoryName=REPOSITORY)
    assert repo["repositoryMetadata"]["repositoryDescription"] == "MLOps pipeline code repository"
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
    assert [r["note"] for r in result.output_for_node("report_teardown")] == ["already gone"] * 4
