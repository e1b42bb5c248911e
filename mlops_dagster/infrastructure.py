"""The recipe's one-off infrastructure as ops and jobs, for both backends.

- ``setup_infrastructure``: the S3 bucket (Preparation), the SageMaker execution role (step 1)
  and the code repository with the training code committed to it (step 2). Idempotent.
- ``verify_infrastructure``: the recipe's "Validation & Testing" list as a pass/fail report.
- ``teardown_infrastructure``: the recipe's "Cleanup" list, only when the run config repeats the
  bucket's name, and only of what the project created (see ``resources/infrastructure.py``:
  ownership): the endpoints, endpoint configs and models deployment made, the pipeline, and the
  bucket, repository and role setup made; in a bucket setup did not create, only ``MLOPS_PREFIX/``.

The ops never ask which backend they run on: the ``infrastructure`` resource (local or aws) does
the backend's work, the ``sagemaker`` resource speaks boto3 for both.
"""

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from dagster import Config, Failure, In, MetadataValue, Nothing, OpExecutionContext, Output, job, op
from pydantic import Field

from .resources.infrastructure import CommitResult, Ensured, Infrastructure, Probe, Removal, error_code
from .resources.local_git import CommitRequest, GitError
from .resources.sagemaker import SageMaker
from .sagemaker.training_code import TRAINING_DIR, code_version
from .settings import Settings

CODE_FOLDER = "training"  # where the scripts live in the repository, as in this project
CODE_COMMIT_FILE = "code_commit.json"
DATASET_FILES = ("train.csv", "validation.csv")
_CHECK_ERRORS = (Failure, ClientError, BotoCoreError, GitError, OSError)


# ---------------------------------------------------------------------------------------------
# setup_infrastructure


ADOPT_DESCRIPTION = (
    "use a {what} of the configured name that exists but was not created by setup_infrastructure (it has "
    "no managed-by=mlops-dagster tag). Without this, setup refuses it and changes nothing. An adopted {what} "
    "is marked mlops:adopted-by=<pipeline> and teardown_infrastructure never deletes it"
)


class BucketConfig(Config):
    adopt_existing: bool = Field(
        default=False,
        description=ADOPT_DESCRIPTION.format(what="bucket")
        + " (teardown deletes only the object versions under MLOPS_PREFIX/)",
    )


class RoleConfig(Config):
    adopt_existing: bool = Field(
        default=False,
        description=ADOPT_DESCRIPTION.format(what="role") + " (teardown deletes only setup's inline policy)",
    )


class CodeRepositoryConfig(Config):
    adopt_existing: bool = Field(default=False, description=ADOPT_DESCRIPTION.format(what="repository"))
    training_dir: str = Field(default=str(TRAINING_DIR), description="folder whose *.py files are committed")
    branch: str = Field(default="main", description="branch that holds the training code")
    author_name: str = Field(default="mlops-dagster", description="author and committer of the commit")
    author_email: str = Field(default="mlops-dagster@localhost", description="their email")


def _ensured_metadata(result: Ensured) -> dict:
    return {
        "resource": result.name,
        "status": result.status,
        "changes": MetadataValue.json(list(result.changes)),
        **{key: str(value) for key, value in result.details.items()},
    }


def _log_ensured(context: OpExecutionContext, result: Ensured) -> None:
    context.log.info(f"{result.kind} {result.name}: {result.status}")
    for change in result.changes:
        context.log.info(f"{result.kind} {result.name}: {change}")
    if result.hint:
        context.log.info(result.hint)


@op(
    description="Create S3 bucket for data and artifacts, with versioning for data lineage, encryption, public access block, TLS only (Preparation)."
)
def ensure_bucket(context: OpExecutionContext, config: BucketConfig, infrastructure: Infrastructure) -> Output[str]:
    result = infrastructure.ensure_bucket(adopt=config.adopt_existing)
    _log_ensured(context, result)
    return Output(result.name, metadata=_ensured_metadata(result))


@op(
    description="Create IAM execution role for SageMaker: trust policy, least-privilege policy; outputs its ARN (step 1)."
)
def ensure_execution_role(
    context: OpExecutionContext, config: RoleConfig, bucket: str, infrastructure: Infrastructure
) -> Output[str]:
    # `bucket` orders this after the bucket its policy is scoped to.
    result = infrastructure.ensure_execution_role(adopt=config.adopt_existing)
    _log_ensured(context, result)
    return Output(result.name, metadata={**_ensured_metadata(result), "bucket": bucket})


def training_files(training_dir: str | Path) -> dict[str, bytes]:
    """The scripts that are committed: ``*.py`` directly in the folder (no caches, no lint config),
    the same set ``code_version`` hashes."""
    files = {p.name: p.read_bytes() for p in sorted(Path(training_dir).glob("*.py"))}
    if not files:
        raise Failure(f"no *.py files in {training_dir}: nothing to commit to the code repository")
    return files


def write_code_commit(home: str | Path, record: dict) -> Path:
    """``$MLOPS_HOME/code_commit.json``, written whole or not at all."""
    target = Path(home) / CODE_COMMIT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{CODE_COMMIT_FILE}.", dir=target.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out, indent=2, sort_keys=True)
    os.replace(tmp, target)
    return target


def read_code_commit(home: str | Path) -> dict | None:
    """The repository and commit that setup_infrastructure last recorded, or None."""
    path = Path(home) / CODE_COMMIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@op(
    description="Create CodeCommit repository for ML code (step 2) and commit the training code to it.",
    # The recipe's order (bucket, role, repository): a failure earlier stops the rest.
    ins={"role_arn": In(Nothing)},
)
def ensure_code_repository(
    context: OpExecutionContext, config: CodeRepositoryConfig, infrastructure: Infrastructure, settings: Settings
) -> Output[dict]:
    files = training_files(config.training_dir)
    code_sha = code_version(config.training_dir)
    request = CommitRequest(
        branch=config.branch,
        author_name=config.author_name,
        author_email=config.author_email,
        message=f"Training code {code_sha[:12]} (mlops-dagster setup_infrastructure)",
    )
    try:
        result: CommitResult = infrastructure.ensure_code_repository(
            CODE_FOLDER, files, request, adopt=config.adopt_existing
        )
    except GitError as err:
        raise Failure(str(err)) from err
    context.log.info(f"code repository {result.repository}: {result.status} ({result.location})")
    if result.committed:
        context.log.info(f"committed {len(result.files)} files to {result.branch}: {result.commit_id}")
    else:
        context.log.info(f"training code unchanged: no new commit, {result.branch} stays at {result.commit_id}")
    record = {
        **dataclasses.asdict(result),
        "files": list(result.files),
        "code_sha256": code_sha,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": context.run_id,
    }
    path = write_code_commit(settings.home, record)
    return Output(
        record,
        metadata={
            "repository": result.repository,
            "location": result.location,
            "status": result.status,
            "branch": result.branch,
            "commit_id": result.commit_id,
            "new_commit": result.committed,
            "code_sha256": code_sha,
            "files": MetadataValue.json(list(result.files)),
            "recorded_in": MetadataValue.path(str(path)),
        },
    )


@op(description="Report what setup made: bucket, execution role ARN, repository and commit.")
def report_infrastructure(context: OpExecutionContext, bucket: str, role_arn: str, code: dict) -> Output[dict]:
    summary = {"bucket": bucket, "role_arn": role_arn, "repository": code["repository"], "commit_id": code["commit_id"]}
    table = _markdown_table(("resource", "value"), [(k, v) for k, v in summary.items()])
    context.log.info("infrastructure:\n" + table)
    return Output(summary, metadata={"summary": MetadataValue.md(table), "role_arn": role_arn})


@job(
    description="The recipe's Preparation and steps 1-2: S3 bucket, SageMaker execution role, code repository. Idempotent."
)
def setup_infrastructure():
    bucket = ensure_bucket()
    role_arn = ensure_execution_role(bucket)
    report_infrastructure(bucket, role_arn, ensure_code_repository(role_arn))


# ---------------------------------------------------------------------------------------------
# verify_infrastructure


def pipeline_missing(err: ClientError) -> bool:
    """SageMaker answers ResourceNotFound; moto a ValidationException "Could not find pipeline"."""
    message = str(err.response.get("Error", {}).get("Message", "")).lower()
    return error_code(err) == "ResourceNotFound" or (
        error_code(err) == "ValidationException" and ("could not find" in message or "does not exist" in message)
    )


def _check_pipeline(client, name: str) -> Probe:
    try:
        pipeline = client.describe_pipeline(PipelineName=name)
    except ClientError as err:
        if not pipeline_missing(err):
            raise
        return Probe(False, f"pipeline {name} does not exist: materialize pipeline_definition")
    status = pipeline.get("PipelineStatus", "unknown")
    return Probe(status == "Active", f"{pipeline['PipelineArn']} is {status}")


def _check_dataset(infrastructure: Infrastructure, settings: Settings) -> Probe:
    prefix = settings.uri("data") + "/"
    uris = infrastructure.list_objects(prefix)
    found = {name: [u for u in uris if u.rsplit("/", 1)[-1] == name] for name in DATASET_FILES}
    missing = [name for name, hits in found.items() if not hits]
    if missing:
        return Probe(False, f"no {' or '.join(missing)} under {prefix}: materialize s3_dataset")
    return Probe(True, "; ".join(f"{len(hits)} × {name}, e.g. {hits[-1]}" for name, hits in found.items()))


def _check_training_jobs(client) -> Probe:
    jobs = client.list_training_jobs(SortBy="CreationTime", SortOrder="Descending", MaxResults=5)[
        "TrainingJobSummaries"
    ]
    if not jobs:
        return Probe(True, "no training jobs yet (materialize pipeline_execution to run one)")
    listing = ", ".join(f"{j['TrainingJobName']}: {j['TrainingJobStatus']}" for j in jobs)
    latest = jobs[0]["TrainingJobStatus"]
    return Probe(latest not in ("Failed", "Stopped"), f"latest {latest}; {listing}")


def _run_check(name: str, check: Callable[[], Probe]) -> dict:
    """One check's outcome; an error (AccessDenied included) fails this check, not the report."""
    try:
        probe = check()
    except _CHECK_ERRORS as err:
        text = err.description if isinstance(err, Failure) else str(err)
        probe = Probe(False, f"error: {text}")
    return {"check": name, "passed": probe.passed, "detail": probe.detail}


def _markdown_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def checks_table(checks: list[dict]) -> str:
    return _markdown_table(
        ("check", "result", "detail"), [(c["check"], "pass" if c["passed"] else "FAIL", c["detail"]) for c in checks]
    )


@op(
    description="Validation & Testing: pipeline exists, S3 data structure, IAM role assumable, repository, recent training jobs."
)
def check_infrastructure(
    context: OpExecutionContext, infrastructure: Infrastructure, sagemaker: SageMaker, settings: Settings
) -> Output[list]:
    def sagemaker_client():
        return infrastructure.guard(sagemaker.get_client(), "sagemaker")

    checks = [
        _run_check("pipeline exists", lambda: _check_pipeline(sagemaker_client(), settings.pipeline_name)),
        _run_check("dataset in the bucket", lambda: _check_dataset(infrastructure, settings)),
        _run_check("role can be assumed", infrastructure.probe_role),
        _run_check("repository exists", infrastructure.probe_repository),
        _run_check("recent training jobs", lambda: _check_training_jobs(sagemaker_client())),
    ]
    table = checks_table(checks)
    passed = sum(c["passed"] for c in checks)
    context.log.info(f"{passed} of {len(checks)} checks passed:\n{table}")
    return Output(
        checks,
        metadata={"report": MetadataValue.md(table), "passed": passed, "failed": len(checks) - passed},
    )


@op(description="Fail the run if any Validation & Testing check failed (after all were reported).")
def require_all_checks_passed(context: OpExecutionContext, checks: list) -> None:
    failed = [c for c in checks if not c["passed"]]
    if failed:
        raise Failure(
            description=f"{len(failed)} of {len(checks)} infrastructure checks failed: "
            + "; ".join(f"{c['check']}: {c['detail']}" for c in failed),
            metadata={"report": MetadataValue.md(checks_table(checks))},
        )
    context.log.info(f"all {len(checks)} infrastructure checks passed")


@job(description="The recipe's Validation & Testing list as checks with a pass/fail report; fails if any check fails.")
def verify_infrastructure():
    require_all_checks_passed(check_infrastructure())


# ---------------------------------------------------------------------------------------------
# teardown_infrastructure


class TeardownConfig(Config):
    confirm_bucket: str = Field(
        default="",
        description="type the bucket's name (MLOPS_BUCKET) to confirm deleting what the project created: the "
        "endpoints, endpoint configs and models, the pipeline, the bucket with every object version (in a bucket "
        "setup did not create: only the versions under MLOPS_PREFIX/), the repository and the role",
    )


def _status(removal: Removal) -> str:
    if removal.kept:
        return removal.note  # "kept ...: not created by setup_infrastructure"
    return "deleted" if removal.deleted else (removal.note or "nothing to delete")


def _removal_output(context: OpExecutionContext, removals: list[dict], removal: Removal) -> Output[list]:
    what = ", ".join(removal.deleted) if removal.deleted else "nothing"
    context.log.info(f"{removal.kind} {removal.name}: deleted {what}" + (f" ({removal.note})" if removal.note else ""))
    return Output(
        [*removals, dataclasses.asdict(removal)],
        metadata={
            "resource": removal.name,
            "deleted": MetadataValue.json(list(removal.deleted)),
            "status": _status(removal),
        },
    )


@op(description="Confirm cleanup: the run config must repeat the bucket's name exactly.")
def confirm_teardown(config: TeardownConfig, infrastructure: Infrastructure) -> list:
    if config.confirm_bucket != infrastructure.bucket:
        given = repr(config.confirm_bucket) if config.confirm_bucket else "nothing"
        raise Failure(
            f"teardown refused, nothing was deleted: to delete the endpoints, endpoint configs and models "
            f"deployment created, the pipeline, bucket {infrastructure.bucket} (every object version; only those "
            f"under {infrastructure.prefix}/ if setup did not create the bucket), repository and role, set "
            f"ops.confirm_teardown.config.confirm_bucket to {infrastructure.bucket!r} (got {given})"
        )
    return []


@op(
    description="Delete the endpoints (they bill by the hour), endpoint configs and models deployment created for "
    "this pipeline (tagged managed-by=mlops-dagster and mlops:pipeline)."
)
def delete_endpoints_and_models(
    context: OpExecutionContext, removals: list, infrastructure: Infrastructure, sagemaker: SageMaker
) -> Output[list]:
    client = infrastructure.guard(sagemaker.get_client(), "sagemaker")
    return _removal_output(context, removals, infrastructure.delete_hosting(client))


@op(description="Delete SageMaker pipeline (Cleanup 1).")
def delete_pipeline(
    context: OpExecutionContext,
    removals: list,
    infrastructure: Infrastructure,
    sagemaker: SageMaker,
    settings: Settings,
) -> Output[list]:
    client = infrastructure.guard(sagemaker.get_client(), "sagemaker")
    name = settings.pipeline_name
    try:
        arn = client.delete_pipeline(PipelineName=name)["PipelineArn"]
        removal = Removal("pipeline", name, (f"pipeline {arn}",))
    except ClientError as err:
        if not pipeline_missing(err):
            raise
        removal = Removal("pipeline", name, note="already gone")
    return _removal_output(context, removals, removal)


@op(
    description="Remove S3 bucket and contents (Cleanup 2): every object version and delete marker, then the "
    "bucket; in a bucket setup did not create, only the versions under MLOPS_PREFIX/."
)
def delete_bucket(context: OpExecutionContext, removals: list, infrastructure: Infrastructure) -> Output[list]:
    return _removal_output(context, removals, infrastructure.delete_bucket())


@op(description="Delete CodeCommit repository (Cleanup 3), if setup created it.")
def delete_code_repository(
    context: OpExecutionContext, removals: list, infrastructure: Infrastructure, settings: Settings
) -> Output[list]:
    removal = infrastructure.delete_repository()
    # The recorded commit names a repository that no longer exists (a kept one still holds it).
    record = Path(settings.home) / CODE_COMMIT_FILE
    if record.is_file() and not removal.kept:
        record.unlink()
        removal = dataclasses.replace(removal, deleted=(*removal.deleted, f"record {record}"))
    return _removal_output(context, removals, removal)


@op(
    description="Remove IAM role and policies (Cleanup 4): inline and attached policies, then the role, if setup "
    "created it; of an adopted role only setup's inline policy."
)
def delete_execution_role(context: OpExecutionContext, removals: list, infrastructure: Infrastructure) -> Output[list]:
    return _removal_output(context, removals, infrastructure.delete_role())


def _removed(removal: dict) -> str:
    deleted = ", ".join(removal["deleted"])
    if deleted and removal["note"]:
        return f"{deleted} ({removal['note']})"
    return deleted or removal["note"] or "nothing"


@op(description="Report what the cleanup deleted, what it kept and what was already gone.")
def report_teardown(context: OpExecutionContext, removals: list) -> Output[list]:
    table = _markdown_table(
        ("resource", "deleted"),
        [(f"{r['kind']} {r['name']}", _removed(r)) for r in removals],
    )
    context.log.info("teardown:\n" + table)
    return Output(removals, metadata={"report": MetadataValue.md(table)})


@job(
    description="The recipe's Cleanup list, of what the project created: endpoints, endpoint configs and models, "
    "pipeline, bucket (all versions), repository, role. Needs confirm_bucket."
)
def teardown_infrastructure():
    removed = delete_pipeline(delete_endpoints_and_models(confirm_teardown()))
    report_teardown(delete_execution_role(delete_code_repository(delete_bucket(removed))))


INFRASTRUCTURE_JOBS = [setup_infrastructure, verify_infrastructure, teardown_infrastructure]
