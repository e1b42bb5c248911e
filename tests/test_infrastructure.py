"""setup/verify/teardown_infrastructure on the local backend, end to end from an empty $MLOPS_HOME,
and the pieces both backends share: the AccessDenied wrapper and the bare git repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from dagster import materialize
from helpers import failures_text, op_output_metadata, run_job

from mlops_dagster.infrastructure import read_code_commit
from mlops_dagster.resources.infrastructure import (
    LOCAL_ROLE_ARN,
    AccessDeniedFailure,
    GuardedClient,
    git_blob_id,
    iam_action,
)
from mlops_dagster.resources.local_git import BareRepository, CommitRequest
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.resources.sagemaker import LocalSageMaker
from mlops_dagster.sagemaker.training_code import TRAINING_DIR

BUCKET = "mlops-local"
CONFIRM = {"ops": {"confirm_teardown": {"config": {"confirm_bucket": BUCKET}}}}


run = run_job
failure = failures_text
meta = op_output_metadata


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={repo}", *args], capture_output=True, text=True, check=True).stdout


def repository(home: Path) -> Path:
    return home / "repositories" / "mlops-pipeline-code.git"


# --- local end to end ----------------------------------------------------------------------------


def test_setup_twice_creates_then_reports_already_exists_without_a_new_commit(defs, instance, mlops_home):
    author = {"author_name": "Data Team", "author_email": "data-team@example.com"}
    config = {"ops": {"ensure_code_repository": {"config": author}}}
    first = run(defs, instance, "setup_infrastructure", config)
    assert first.success, failure(first)
    assert meta(first, "ensure_bucket")["status"] == "created"
    assert (mlops_home / "s3" / BUCKET).is_dir()
    assert first.output_for_node("ensure_execution_role") == LOCAL_ROLE_ARN
    assert meta(first, "ensure_execution_role")["status"] == "not applicable locally"
    code = meta(first, "ensure_code_repository")
    assert code["status"] == "created" and code["new_commit"] is True

    repo = repository(mlops_home)
    commit = git(repo, "rev-parse", "main").strip()
    assert code["commit_id"] == commit == read_code_commit(mlops_home)["commit_id"]
    assert git(repo, "log", "--format=%an <%ae>|%cn <%ce>", "main").splitlines() == [
        "Data Team <data-team@example.com>|Data Team <data-team@example.com>"
    ]
    committed = git(repo, "ls-tree", "-r", "main").splitlines()
    expected = sorted(p.name for p in TRAINING_DIR.glob("*.py"))
    assert [line.split("\t")[1] for line in committed] == [f"training/{name}" for name in expected]
    # the blob ids the aws backend compares with CodeCommit's are git's own
    for line in committed:
        blob, path = line.split()[2], line.split("\t")[1]
        assert git_blob_id((TRAINING_DIR / Path(path).name).read_bytes()) == blob

    again = run(defs, instance, "setup_infrastructure", config)
    assert again.success, failure(again)
    assert meta(again, "ensure_bucket")["status"] == "already exists"
    code = meta(again, "ensure_code_repository")
    assert code["status"] == "already exists" and code["new_commit"] is False and code["commit_id"] == commit
    assert git(repo, "rev-list", "--count", "main").strip() == "1"
    assert f"bucket s3://{BUCKET}: already exists" in again.log_text
    assert "code repository mlops-pipeline-code: already exists" in again.log_text
    assert f"training code unchanged: no new commit, main stays at {commit}" in again.log_text


def test_verify_fails_naming_what_is_missing_then_passes_and_teardown_needs_the_bucket_name(defs, instance, mlops_home):
    assert run(defs, instance, "setup_infrastructure").success
    missing = run(defs, instance, "verify_infrastructure")
    assert not missing.success
    report = meta(missing, "check_infrastructure")["report"]
    assert (
        "| pipeline exists | FAIL | pipeline mlops-pipeline does not exist: materialize pipeline_definition |" in report
    )
    assert f"| dataset in the bucket | FAIL | no train.csv or validation.csv under s3://{BUCKET}/mlops/data/" in report
    assert "| role can be assumed | pass | not applicable locally" in report
    assert "| repository exists | pass |" in report
    assert "2 of 5 infrastructure checks failed" in failure(missing)

    assets = [defs.get_assets_def(k) for k in ("raw_data", "s3_dataset", "pipeline_definition")]
    made = materialize(
        assets, resources=defs.resources, instance=instance, run_config={"ops": {"raw_data": {"config": {"rows": 60}}}}
    )
    assert made.success
    verified = run(defs, instance, "verify_infrastructure")
    assert verified.success, failure(verified)
    assert (
        "| pipeline exists | pass | arn:aws:sagemaker:us-east-1:000000000000:pipeline/mlops-pipeline is Active |"
        in (meta(verified, "check_infrastructure")["report"])
    )
    assert "all 5 infrastructure checks passed" in verified.log_text

    # A wrong or missing confirmation deletes nothing.
    before = sorted(p.relative_to(mlops_home) for p in mlops_home.rglob("*") if "dagster" not in p.parts)
    for config in ({}, {"ops": {"confirm_teardown": {"config": {"confirm_bucket": "mlops-locaI"}}}}):
        refused = run(defs, instance, "teardown_infrastructure", config)
        assert not refused.success
        assert "teardown refused, nothing was deleted" in failure(refused)
        assert f"set ops.confirm_teardown.config.confirm_bucket to '{BUCKET}'" in failure(refused)
    after = sorted(p.relative_to(mlops_home) for p in mlops_home.rglob("*") if "dagster" not in p.parts)
    assert after == before

    removed = run(defs, instance, "teardown_infrastructure", CONFIRM)
    assert removed.success, failure(removed)
    assert not (mlops_home / "s3" / BUCKET).exists()
    assert not repository(mlops_home).exists()
    assert read_code_commit(mlops_home) is None
    client = defs.resources["sagemaker"].get_client()
    with pytest.raises(ClientError, match="ResourceNotFound"):
        client.describe_pipeline(PipelineName="mlops-pipeline")
    notes = {r["kind"]: (r["deleted"], r["note"]) for r in removed.output_for_node("report_teardown")}
    assert notes["pipeline"][0] == ("pipeline arn:aws:sagemaker:us-east-1:000000000000:pipeline/mlops-pipeline",)
    assert notes["execution role"] == ((), "not applicable locally: no role was created")

    # What is already gone is tolerated.
    again = run(defs, instance, "teardown_infrastructure", CONFIRM)
    assert again.success, failure(again)
    assert [r["deleted"] for r in again.output_for_node("report_teardown")] == [()] * 5


def test_local_teardown_deletes_only_the_prefix_of_a_bucket_setup_did_not_create_and_the_deployed_models(
    defs, instance, mlops_home
):
    # make run (not setup) made the bucket directory; the user keeps their own data beside the prefix.
    bucket = mlops_home / "s3" / BUCKET
    (bucket / "mlops" / "data").mkdir(parents=True)
    (bucket / "mlops" / "data" / "train.csv").write_text("medv\n1\n")
    (bucket / "raw").mkdir()
    (bucket / "raw" / "mine.csv").write_text("theirs\n")
    setup = run(defs, instance, "setup_infrastructure")
    assert setup.success, failure(setup)
    assert meta(setup, "ensure_bucket")["status"] == "already exists"
    assert meta(setup, "ensure_bucket")["owner"] == f"not created by setup_infrastructure: teardown deletes only {bucket / 'mlops'}"

    # what a deployment leaves in the local service besides the endpoint: its model and endpoint config
    client = defs.resources["sagemaker"].get_client()
    container = {"Image": "sklearn", "ModelDataUrl": f"s3://{BUCKET}/mlops/model.tar.gz"}
    for model in ("mlops-pipeline-dev-v1-20260101000000", "another-pipeline-dev-v1-20260101000000"):
        client.create_model(
            ModelName=model, PrimaryContainer=container, ExecutionRoleArn=LOCAL_ROLE_ARN,
            Tags=[{"Key": "mlops:model_sha256", "Value": "0" * 64}],  # never loaded: no endpoint serves it
        )  # fmt: skip
    client.create_endpoint_config(
        EndpointConfigName="mlops-pipeline-dev-v1-20260101000000",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "mlops-pipeline-dev-v1-20260101000000",
                             "InitialInstanceCount": 1, "InstanceType": "ml.t2.medium"}],
    )  # fmt: skip

    removed = run(defs, instance, "teardown_infrastructure", CONFIRM)
    assert removed.success, failure(removed)
    assert (bucket / "raw" / "mine.csv").read_text() == "theirs\n" and not (bucket / "mlops").exists()
    notes = {r["kind"]: (r["deleted"], r["note"]) for r in removed.output_for_node("report_teardown")}
    assert notes["bucket"] == ((f"1 objects under s3://{BUCKET}/mlops/",), f"kept {bucket}: not created by setup_infrastructure")
    assert notes["code repository"][0][0] == f"bare repository {repository(mlops_home)}"  # setup created it
    assert notes["endpoints, endpoint configs and models"][0] == (
        "endpoint config mlops-pipeline-dev-v1-20260101000000", "model mlops-pipeline-dev-v1-20260101000000"
    )  # fmt: skip
    assert [m["ModelName"] for m in client.list_models()["Models"]] == ["another-pipeline-dev-v1-20260101000000"]
    assert client.list_endpoint_configs()["EndpointConfigs"] == []


def test_a_repository_setup_did_not_create_is_refused_then_adopted_and_kept_by_teardown(defs, instance, mlops_home):
    repo = BareRepository(repository(mlops_home))
    repo.init("main")
    refused = run(defs, instance, "setup_infrastructure")
    assert not refused.success
    text = failure(refused)
    assert f"code repository {repo.path} already exists and was not created by setup_infrastructure" in text
    assert "ops.ensure_code_repository.config.adopt_existing: true" in text
    assert repo.branches() == {}  # nothing committed

    adopt = {"ops": {"ensure_code_repository": {"config": {"adopt_existing": True}}}}
    adopted = run(defs, instance, "setup_infrastructure", adopt)
    assert adopted.success, failure(adopted)
    assert meta(adopted, "ensure_code_repository")["status"] == "adopted" and "main" in repo.branches()
    assert run(defs, instance, "setup_infrastructure").success  # adopted once: no opt-in needed again

    removed = run(defs, instance, "teardown_infrastructure", CONFIRM)
    assert removed.success, failure(removed)
    notes = {r["kind"]: (r["deleted"], r["note"]) for r in removed.output_for_node("report_teardown")}
    assert notes["code repository"] == ((), f"kept {repo.path}: adopted")
    assert repo.exists() and read_code_commit(mlops_home)["repository"] == "mlops-pipeline-code"  # still holds it
    assert not (mlops_home / "s3" / BUCKET).exists()  # setup created the bucket directory


def test_changed_code_makes_one_commit_on_top_and_keeps_other_files(tmp_path):
    repo = BareRepository(tmp_path / "code.git")
    repo.init("main")
    request = CommitRequest()
    first, made = repo.commit_folder("training", {"train.py": b"v1\n", "old.py": b"x\n"}, request)
    assert made
    # a file outside the folder, committed by someone else, survives the next commit
    readme = repo._hash_object(b"readme\n")
    tree = repo._mktree([*git(repo.path, "ls-tree", first).splitlines(), f"100644 blob {readme}\tREAD ME \u00e9.md"])
    other = subprocess.run(
        ["git", f"--git-dir={repo.path}", "commit-tree", tree, "-p", first, "-m", "docs"],
        capture_output=True, text=True, check=True,
        env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b", "HOME": str(tmp_path)},
    ).stdout.strip()  # fmt: skip
    git(repo.path, "update-ref", "refs/heads/main", other)

    second, made = repo.commit_folder("training", {"train.py": b"v2\n"}, request)
    assert made and git(repo.path, "rev-parse", f"{second}^").strip() == other
    # (a name git would quote without -z)
    assert git(repo.path, "ls-tree", "-r", "-z", "--name-only", second).split("\0")[:2] == [
        "READ ME \u00e9.md",
        "training/train.py",
    ]
    assert repo.commit_folder("training", {"train.py": b"v2\n"}, request) == (second, False)


def test_git_ignores_the_users_config_and_environment(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Someone Else\n[commit]\n\tgpgsign = true\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Intruder")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    repo = BareRepository(tmp_path / "code.git")
    repo.init("main")
    commit, _ = repo.commit_folder("training", {"train.py": b"x\n"}, CommitRequest(author_name="Config Author"))
    monkeypatch.delenv("GIT_DIR")
    assert git(repo.path, "log", "-1", "--format=%an|%cn|%G?", commit).strip() == "Config Author|Config Author|N"
    assert not (tmp_path / "elsewhere.git").exists()


# --- the AccessDenied wrapper --------------------------------------------------------------------


class _Denying:
    """A client whose calls fail as boto3's do."""

    def __init__(self, code: str):
        self.code = code

    def put_role_policy(self, **_):
        raise ClientError(
            {"Error": {"Code": self.code, "Message": "User: arn:aws:iam::1:user/dev is not authorized"}},
            "PutRolePolicy",
        )

    def head_bucket(self, **_):
        raise ClientError({"Error": {"Code": self.code, "Message": "denied"}}, "HeadBucket")


@pytest.mark.parametrize("code", ["AccessDenied", "AccessDeniedException", "UnauthorizedOperation"])
def test_access_denied_becomes_a_failure_naming_action_resource_and_permission(code):
    client = GuardedClient(_Denying(code), "iam", partition="aws", account="123456789012", region="eu-west-1")
    with pytest.raises(AccessDeniedFailure) as err:
        client.put_role_policy(RoleName="r", PolicyName="p", PolicyDocument="{}")
    text = err.value.description
    resource = "arn:aws:iam::123456789012:role/r (inline policy p)"
    assert f"AccessDenied: iam:PutRolePolicy on {resource} was refused" in text
    assert f"Grant the identity that runs Dagster the permission iam:PutRolePolicy on {resource}" in text
    assert f"AWS said: {code}: User: arn:aws:iam::1:user/dev is not authorized" in text


def test_other_errors_pass_through_and_s3_actions_use_iam_names():
    client = GuardedClient(_Denying("NoSuchEntity"), "iam", partition="aws", account="1", region="r")
    with pytest.raises(ClientError, match="NoSuchEntity"):
        client.put_role_policy(RoleName="r", PolicyName="p", PolicyDocument="{}")
    assert iam_action("s3", "HeadBucket") == "s3:ListBucket"
    assert iam_action("s3", "PutBucketEncryption") == "s3:PutEncryptionConfiguration"
    assert iam_action("codecommit", "CreateCommit") == "codecommit:CreateCommit"
    guarded = GuardedClient(_Denying("AccessDenied"), "s3", partition="aws-cn", account="1", region="r")
    with pytest.raises(AccessDeniedFailure, match=r"s3:ListBucket on arn:aws-cn:s3:::b was refused"):
        guarded.head_bucket(Bucket="b")


def test_the_local_role_is_the_one_the_local_sagemaker_service_uses(mlops_home):
    store = LocalObjectStore(root=str(mlops_home / "s3"))
    service = LocalSageMaker(home=str(mlops_home), region="us-east-1", bucket=BUCKET, store=store)
    assert service.execution_role_arn() == LOCAL_ROLE_ARN


def test_code_commit_record_is_json_with_the_code_version(defs, instance, mlops_home):
    from mlops_dagster.sagemaker.training_code import code_version

    assert run(defs, instance, "setup_infrastructure").success
    record = json.loads((mlops_home / "code_commit.json").read_text())
    assert record["code_sha256"] == code_version(TRAINING_DIR)
    assert record["repository"] == "mlops-pipeline-code" and record["branch"] == "main"
