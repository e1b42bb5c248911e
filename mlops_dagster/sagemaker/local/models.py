"""State and semantics of the local SageMaker service (moto's "models" half).

Everything lives in SQLite at ``<home>/sagemaker/state.db`` (WAL, busy timeout, a fresh connection
per operation), so the API process, any number of readers and one worker per execution can share
it. Records are small dataclasses whose ``describe``/``summary`` methods give boto3's response
shapes; ``LocalSageMakerBackend`` holds the operations and their rules (names, ARNs, statuses,
idempotency, the model registry) and detects executions whose worker died.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import signal
import sqlite3
import string
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import psutil

from .interpreter import DefinitionError, ExpressionError, Plan, parameter_string, resolve_parameters

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

HEARTBEAT_SECONDS = 2.0
# A worker whose heartbeat is older than this is hung (or gone) even if its pid still exists; also
# the grace an execution whose worker pid was never recorded gets before it is reaped.
STALE_AFTER_SECONDS = 60.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
BUSY_TIMEOUT_SECONDS = 30.0

ACTIVE_EXECUTION = ("Executing", "Stopping")
TERMINAL_EXECUTION = ("Succeeded", "Failed", "Stopped")
ACTIVE_STEP = ("Starting", "Executing", "Stopping")
ACTIVE_JOB = ("InProgress", "Stopping")
APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
PIPELINE_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}$")
PACKAGE_GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
# CustomerMetadataProperties key of a package's artifact hash: hosting refuses to unpickle without it.
SHA256_PROPERTY = "mlops:model_sha256"
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# CreateModelPackage fields kept as given and returned by DescribeModelPackage.
PACKAGE_FIELDS = (
    "InferenceSpecification",
    "ModelMetrics",
    "MetadataProperties",
    "CustomerMetadataProperties",
    "DriftCheckBaselines",
    "Domain",
    "Task",
    "SamplePayloadUrl",
    "SkipModelValidation",
    "SourceUri",
    "AdditionalInferenceSpecifications",
    "ValidationSpecification",
    "SourceAlgorithmSpecification",
    "CertifyForMarketplace",
    "ModelCard",
    "SecurityConfig",
)
# Fields of CreateModelPackage whose sources a RegisterModel step resolves from expressions
# (Std:Join on the execution id, step properties): checked as CreateModelPackage checks them.
METRIC_FIELDS = ("ModelMetrics", "DriftCheckBaselines")
METRIC_SOURCE_URI = re.compile(r"(https|s3)://([^/]+)/?(.*)")  # MetricsSource/FileSource S3Uri in botocore's model
MAX_METRIC_SOURCE_URI = 1024
# Request fields that DescribeTrainingJob / DescribeProcessingJob echo back.
TRAINING_FIELDS = (
    "HyperParameters",
    "AlgorithmSpecification",
    "RoleArn",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "VpcConfig",
    "StoppingCondition",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "DebugHookConfig",
    "DebugRuleConfigurations",
    "TensorBoardOutputConfig",
    "ProfilerConfig",
    "Environment",
    "RetryStrategy",
    "ExperimentConfig",
)
PROCESSING_FIELDS = (
    "ProcessingInputs",
    "ProcessingOutputConfig",
    "ProcessingResources",
    "StoppingCondition",
    "AppSpecification",
    "Environment",
    "NetworkConfig",
    "RoleArn",
    "ExperimentConfig",
)


# --- errors (the service turns them into botocore ClientErrors) -------------------------------


class SageMakerError(Exception):
    code: ClassVar[str] = "ValidationException"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValidationError(SageMakerError):
    code = "ValidationException"


class ResourceNotFound(SageMakerError):
    code = "ResourceNotFound"


class ConflictError(SageMakerError):
    code = "ConflictException"


# --- helpers ---------------------------------------------------------------------------------


def utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def iso(ts: float | None) -> str:
    return "never" if ts is None else utc(ts).isoformat(timespec="seconds").replace("+00:00", "Z")


def random_id(length: int = 12) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def job_name_for(execution_id: str, step_name: str) -> str:
    """SageMaker's pipeline job names: pipelines-<execution id>-<step, 20 chars>-<6 random>."""
    step = re.sub(r"[^a-z0-9-]", "-", step_name.lower())[:20].strip("-") or "step"
    return f"pipelines-{execution_id}-{step}-{random_id(6)}"[:63]


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


# --- records ---------------------------------------------------------------------------------


class Record:
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_row(cls, row: sqlite3.Row):
        values = {f.name: row[f.name] for f in fields(cls)}
        for name in cls.JSON_FIELDS:
            values[name] = json.loads(values[name]) if values[name] is not None else None
        return cls(**values)


RecordT = TypeVar("RecordT", bound=Record)


@dataclass
class Pipeline(Record):
    JSON_FIELDS = ("parallelism",)
    name: str
    arn: str
    display_name: str
    description: str | None
    definition: str
    role_arn: str | None
    created: float
    modified: float
    last_run: float | None
    # ParallelismConfiguration as given (recorded and answered; the local worker runs one step at a time).
    parallelism: dict | None = None

    def describe(self) -> dict:
        return _drop_none(
            {
                "PipelineArn": self.arn,
                "PipelineName": self.name,
                "PipelineDisplayName": self.display_name,
                "PipelineDefinition": self.definition,
                "PipelineDescription": self.description,
                "RoleArn": self.role_arn,
                "PipelineStatus": "Active",
                "CreationTime": utc(self.created),
                "LastModifiedTime": utc(self.modified),
                "LastRunTime": utc(self.last_run),
                "CreatedBy": {},
                "LastModifiedBy": {},
                "ParallelismConfiguration": self.parallelism,
            }
        )

    def summary(self) -> dict:
        return _drop_none(
            {
                "PipelineArn": self.arn,
                "PipelineName": self.name,
                "PipelineDisplayName": self.display_name,
                "PipelineDescription": self.description,
                "RoleArn": self.role_arn,
                "CreationTime": utc(self.created),
                "LastModifiedTime": utc(self.modified),
                "LastExecutionTime": utc(self.last_run),
            }
        )


@dataclass
class Execution(Record):
    JSON_FIELDS = ("parameters",)
    arn: str
    id: str
    pipeline_name: str
    pipeline_arn: str
    display_name: str
    description: str | None
    status: str
    failure_reason: str | None
    parameters: list
    definition: str
    client_token: str | None
    created: float
    modified: float
    worker_pid: int | None
    worker_created: float | None
    heartbeat: float
    heartbeat_clock: float
    heartbeat_boot: str | None  # boot_id() when heartbeat_clock was read (None: a row from before it was kept)

    def describe(self) -> dict:
        return _drop_none(
            {
                "PipelineArn": self.pipeline_arn,
                "PipelineExecutionArn": self.arn,
                "PipelineExecutionDisplayName": self.display_name,
                "PipelineExecutionStatus": self.status,
                "PipelineExecutionDescription": self.description,
                "FailureReason": self.failure_reason,
                "CreationTime": utc(self.created),
                "LastModifiedTime": utc(self.modified),
                "CreatedBy": {},
                "LastModifiedBy": {},
            }
        )

    def summary(self) -> dict:
        return _drop_none(
            {
                "PipelineExecutionArn": self.arn,
                "StartTime": utc(self.created),
                "PipelineExecutionStatus": self.status,
                "PipelineExecutionDescription": self.description,
                "PipelineExecutionDisplayName": self.display_name,
                "PipelineExecutionFailureReason": self.failure_reason,
            }
        )

    def variables(self) -> dict[str, Any]:
        """The definition language's execution variables (Execution.*)."""
        return {
            "PipelineExecutionId": self.id,
            "PipelineExecutionArn": self.arn,
            "PipelineName": self.pipeline_name,
            "PipelineArn": self.pipeline_arn,
            "StartDateTime": iso(self.created),
        }


@dataclass
class Step(Record):
    JSON_FIELDS = ("metadata",)
    execution_arn: str
    name: str
    type: str
    status: str
    started: float
    ended: float | None
    failure_reason: str | None
    metadata: dict
    cache_source: str | None  # the execution whose job this step reused (SageMaker's step cache)

    def describe(self) -> dict:
        return _drop_none(
            {
                "StepName": self.name,
                "StartTime": utc(self.started),
                "EndTime": utc(self.ended),
                "StepStatus": self.status,
                "AttemptCount": 1,
                "FailureReason": self.failure_reason,
                "Metadata": self.metadata,
                "CacheHitResult": {"SourcePipelineExecutionArn": self.cache_source} if self.cache_source else None,
            }
        )


@dataclass
class Job(Record):
    JSON_FIELDS = ("request", "outputs")
    name: str
    kind: str
    arn: str
    execution_arn: str | None
    step_name: str | None
    status: str
    request: dict
    outputs: dict | None
    failure_reason: str | None
    exit_code: int | None
    created: float
    started: float | None
    ended: float | None
    modified: float
    pid: int | None
    pid_created: float | None
    log_path: str

    def describe(self) -> dict:
        if self.kind == "transform":
            from .model_steps import describe_transform_job  # the Transform step's module

            return describe_transform_job(self)
        return self._describe_training() if self.kind == "training" else self._describe_processing()

    def _describe_training(self) -> dict:
        response = {
            "TrainingJobName": self.name,
            "TrainingJobArn": self.arn,
            "ModelArtifacts": {"S3ModelArtifacts": self._model_artifacts()},
            "TrainingJobStatus": self.status,
            "SecondaryStatus": self._secondary_status(),
            "FailureReason": self.failure_reason,
            "CreationTime": utc(self.created),
            "TrainingStartTime": utc(self.started),
            "TrainingEndTime": utc(self.ended),
            "LastModifiedTime": utc(self.modified),
            "TrainingTimeInSeconds": self._seconds(),
            "BillableTimeInSeconds": self._seconds(),
        }
        response.update({k: self.request[k] for k in TRAINING_FIELDS if k in self.request})
        return _drop_none(response)

    def _describe_processing(self) -> dict:
        response = {
            "ProcessingJobName": self.name,
            "ProcessingJobArn": self.arn,
            "ProcessingJobStatus": self.status,
            "ExitMessage": self.failure_reason,
            "FailureReason": self.failure_reason,
            "CreationTime": utc(self.created),
            "ProcessingStartTime": utc(self.started),
            "ProcessingEndTime": utc(self.ended),
            "LastModifiedTime": utc(self.modified),
        }
        response.update({k: self.request[k] for k in PROCESSING_FIELDS if k in self.request})
        return _drop_none(response)

    def _model_artifacts(self) -> str:
        """Where the job put (or, unfinished or failed, would put) model.tar.gz, as SageMaker reports it."""
        if (self.outputs or {}).get("S3ModelArtifacts"):
            return self.outputs["S3ModelArtifacts"]
        base = str((self.request.get("OutputDataConfig") or {}).get("S3OutputPath", "")).rstrip("/")
        return f"{base}/{self.name}/output/model.tar.gz"

    def _secondary_status(self) -> str:
        if self.status == "InProgress":
            return "Training" if self.started else "Starting"
        return self.status

    def _seconds(self) -> int | None:
        return int(self.ended - self.started) if self.started and self.ended else None

    def summary(self) -> dict:
        if self.kind == "transform":
            from .model_steps import transform_job_summary

            return transform_job_summary(self)
        if self.kind == "training":
            return _drop_none(
                {
                    "TrainingJobName": self.name,
                    "TrainingJobArn": self.arn,
                    "CreationTime": utc(self.created),
                    "TrainingEndTime": utc(self.ended),
                    "LastModifiedTime": utc(self.modified),
                    "TrainingJobStatus": self.status,
                }
            )
        return _drop_none(
            {
                "ProcessingJobName": self.name,
                "ProcessingJobArn": self.arn,
                "CreationTime": utc(self.created),
                "ProcessingEndTime": utc(self.ended),
                "LastModifiedTime": utc(self.modified),
                "ProcessingJobStatus": self.status,
                "FailureReason": self.failure_reason,
                "ExitMessage": self.failure_reason,
            }
        )


@dataclass
class PackageGroup(Record):
    name: str
    arn: str
    description: str | None
    created: float

    def describe(self) -> dict:
        return _drop_none(
            {
                "ModelPackageGroupName": self.name,
                "ModelPackageGroupArn": self.arn,
                "ModelPackageGroupDescription": self.description,
                "CreationTime": utc(self.created),
                "CreatedBy": {},
                "ModelPackageGroupStatus": "Completed",
            }
        )

    def summary(self) -> dict:
        described = self.describe()
        described.pop("CreatedBy")
        return described


@dataclass
class Package(Record):
    JSON_FIELDS = ("body",)
    arn: str
    group_name: str
    version: int
    description: str | None
    approval_status: str
    approval_description: str | None
    body: dict
    created: float
    modified: float

    def describe(self) -> dict:
        response = {
            "ModelPackageName": self.group_name,
            "ModelPackageGroupName": self.group_name,
            "ModelPackageVersion": self.version,
            "ModelPackageArn": self.arn,
            "ModelPackageDescription": self.description,
            "CreationTime": utc(self.created),
            "ModelPackageStatus": "Completed",
            "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
            "CertifyForMarketplace": False,
            "ModelApprovalStatus": self.approval_status,
            "ApprovalDescription": self.approval_description,
            "LastModifiedTime": utc(self.modified),
            "CreatedBy": {},
        }
        response.update(self.body)
        return _drop_none(response)

    def summary(self) -> dict:
        return _drop_none(
            {
                "ModelPackageName": self.group_name,
                "ModelPackageGroupName": self.group_name,
                "ModelPackageVersion": self.version,
                "ModelPackageArn": self.arn,
                "ModelPackageDescription": self.description,
                "CreationTime": utc(self.created),
                "ModelPackageStatus": "Completed",
                "ModelApprovalStatus": self.approval_status,
            }
        )


# --- the database ----------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY, arn TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, description TEXT,
    definition TEXT NOT NULL, role_arn TEXT, created REAL NOT NULL, modified REAL NOT NULL, last_run REAL,
    parallelism TEXT
);
CREATE TABLE IF NOT EXISTS executions (
    arn TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, pipeline_name TEXT NOT NULL, pipeline_arn TEXT NOT NULL,
    display_name TEXT NOT NULL, description TEXT, status TEXT NOT NULL, failure_reason TEXT,
    parameters TEXT NOT NULL, definition TEXT NOT NULL, client_token TEXT,
    created REAL NOT NULL, modified REAL NOT NULL,
    worker_pid INTEGER, worker_created REAL, heartbeat REAL NOT NULL, heartbeat_clock REAL NOT NULL,
    heartbeat_boot TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_pipeline ON executions (pipeline_name, created);
CREATE UNIQUE INDEX IF NOT EXISTS executions_by_token ON executions (pipeline_name, client_token);
CREATE TABLE IF NOT EXISTS steps (
    execution_arn TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
    started REAL NOT NULL, ended REAL, failure_reason TEXT, metadata TEXT NOT NULL,
    cache_source TEXT,
    PRIMARY KEY (execution_arn, name)
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, arn TEXT NOT NULL, execution_arn TEXT, step_name TEXT,
    status TEXT NOT NULL, request TEXT NOT NULL, outputs TEXT, failure_reason TEXT, exit_code INTEGER,
    created REAL NOT NULL, started REAL, ended REAL, modified REAL NOT NULL,
    pid INTEGER, pid_created REAL, log_path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_execution ON jobs (execution_arn);
CREATE TABLE IF NOT EXISTS package_groups (
    name TEXT PRIMARY KEY, arn TEXT NOT NULL UNIQUE, description TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS packages (
    arn TEXT PRIMARY KEY, group_name TEXT NOT NULL, version INTEGER NOT NULL, description TEXT,
    approval_status TEXT NOT NULL, approval_description TEXT, body TEXT NOT NULL,
    created REAL NOT NULL, modified REAL NOT NULL, UNIQUE (group_name, version)
);
"""


class StateDB:
    """One SQLite file; every ``read``/``write`` opens its own connection (safe across threads
    and processes). Writes take the write lock up front (BEGIN IMMEDIATE) so two writers never
    deadlock upgrading a read lock."""

    _initialized: ClassVar[set[str]] = set()

    def __init__(self, path: Path):
        self.path = Path(path)
        # Also when the file is gone (a wiped MLOPS_HOME): sqlite would create it without tables.
        if str(self.path) not in self._initialized or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
                _migrate(conn)
            finally:
                conn.close()
            self._initialized.add(str(self.path))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: only the first connection switches
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a state.db from an earlier version of this module up to SCHEMA (in one write transaction,
    so two processes opening an old file at once do not both add a column)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(executions)")}
        if "heartbeat_clock" not in columns:
            conn.execute("ALTER TABLE executions ADD COLUMN heartbeat_clock REAL NOT NULL DEFAULT 0")
        if "heartbeat_boot" not in columns:
            conn.execute("ALTER TABLE executions ADD COLUMN heartbeat_boot TEXT")  # NULL: boot unknown
        if "parallelism" not in {row["name"] for row in conn.execute("PRAGMA table_info(pipelines)")}:
            conn.execute("ALTER TABLE pipelines ADD COLUMN parallelism TEXT")
        if "cache_source" not in {row["name"] for row in conn.execute("PRAGMA table_info(steps)")}:
            conn.execute("ALTER TABLE steps ADD COLUMN cache_source TEXT")  # NULL: the step ran
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --- the backend -----------------------------------------------------------------------------

Launcher = Callable[[str], subprocess.Popen]


class LocalSageMakerBackend:
    """The local SageMaker: pipelines, executions, steps, jobs and the model registry.

    ``launcher(execution_arn)`` starts the detached worker of a new execution; the worker itself
    builds a backend without one.
    """

    def __init__(
        self,
        home: Path | str,
        region: str = "us-east-1",
        account_id: str = "000000000000",
        launcher: Launcher | None = None,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
    ):
        self.root = Path(home) / "sagemaker"
        self.region = region
        self.account_id = account_id
        self.launcher = launcher
        self.stale_after_seconds = stale_after_seconds
        self.db = StateDB(self.root / "state.db")

    # paths and ARNs

    def job_dir(self, job_name: str) -> Path:
        return self.root / "jobs" / job_name

    def job_log_path(self, job_name: str) -> Path:
        return self.root / "logs" / f"{job_name}.log"

    def worker_log_path(self, execution_id: str) -> Path:
        return self.root / "workers" / f"{execution_id}.log"

    def arn(self, resource: str, name: str) -> str:
        # SageMaker lower-cases resource names in its ARNs.
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{resource}/{name.lower()}"

    def _by_name_or_arn(
        self,
        conn: sqlite3.Connection,
        name_or_arn: str,
        *,
        table: str,
        resource: str,
        record: type[RecordT],
        what: str,
    ) -> RecordT:
        """The ``record`` of the ``table`` row named ``name_or_arn`` or with that ARN (a name in any case
        also finds the ARN built from it, which SageMaker lower-cases); else ResourceNotFound about ``what``."""
        row = conn.execute(
            f"SELECT * FROM {table} WHERE name = ? OR arn = ? OR arn = ?",
            (name_or_arn, name_or_arn, self.arn(resource, name_or_arn or "")),
        ).fetchone()
        if row is None:
            raise ResourceNotFound(f"{what} {name_or_arn!r} does not exist in {self.region}")
        return record.from_row(row)

    # pipelines

    def create_pipeline(
        self,
        name: str,
        definition: str,
        role_arn: str | None,
        display_name: str | None,
        description: str | None,
        parallelism: dict | None = None,
    ) -> Pipeline:
        if not PIPELINE_NAME.match(name or ""):
            raise ValidationError(f"pipeline name {name!r} must match {PIPELINE_NAME.pattern}")
        _parse_definition(definition, name)
        now = time.time()
        arn = self.arn("pipeline", name)
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM pipelines WHERE arn = ?", (arn,)).fetchone():
                # SageMaker's answer (ValidationException, "already exists"): the SDK's Pipeline.upsert reads it.
                raise ValidationError(
                    "Pipeline names must be unique within an AWS account and region. "
                    f"Pipeline with name ({name}) already exists ({arn}); use UpdatePipeline to change it"
                )
            conn.execute(
                "INSERT INTO pipelines VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (name, arn, display_name or name, description, definition, role_arn, now, now, _dumps(parallelism)),
            )
        return self.get_pipeline(name)

    def update_pipeline(
        self,
        name: str,
        definition: str | None = None,
        role_arn: str | None = None,
        display_name: str | None = None,
        description: str | None = None,
        parallelism: dict | None = None,
    ) -> Pipeline:
        if definition is not None:
            _parse_definition(definition, name)
        changes = {
            "definition": definition,
            "role_arn": role_arn,
            "display_name": display_name,
            "description": description,
            "parallelism": _dumps(parallelism),
        }
        with self.db.write() as conn:
            current = self._pipeline(conn, name)
            for column, value in changes.items():
                if value is not None:
                    conn.execute(f"UPDATE pipelines SET {column} = ? WHERE arn = ?", (value, current.arn))
            conn.execute("UPDATE pipelines SET modified = ? WHERE arn = ?", (time.time(), current.arn))
        return self.get_pipeline(name)

    def get_pipeline(self, name_or_arn: str) -> Pipeline:
        with self.db.read() as conn:
            return self._pipeline(conn, name_or_arn)

    def _pipeline(self, conn: sqlite3.Connection, name_or_arn: str) -> Pipeline:
        return self._by_name_or_arn(
            conn, name_or_arn, table="pipelines", resource="pipeline", record=Pipeline, what="pipeline"
        )

    def delete_pipeline(self, name: str) -> str:
        pipeline = self.get_pipeline(name)
        self.reap(pipeline_arn=pipeline.arn)
        with self.db.write() as conn:
            running = conn.execute(
                "SELECT arn FROM executions WHERE pipeline_arn = ? AND status IN (?, ?)",
                (pipeline.arn, *ACTIVE_EXECUTION),
            ).fetchall()
            if running:
                raise ConflictError(
                    f"pipeline {name} has {len(running)} running execution(s) ({running[0]['arn']}); stop them first"
                )
            execution_arns = [
                r["arn"] for r in conn.execute("SELECT arn FROM executions WHERE pipeline_arn = ?", (pipeline.arn,))
            ]
            conn.executemany("DELETE FROM steps WHERE execution_arn = ?", [(a,) for a in execution_arns])
            conn.execute("DELETE FROM executions WHERE pipeline_arn = ?", (pipeline.arn,))
            conn.execute("DELETE FROM pipelines WHERE arn = ?", (pipeline.arn,))
        return pipeline.arn

    def list_pipelines(self) -> list[Pipeline]:
        with self.db.read() as conn:
            return [Pipeline.from_row(r) for r in conn.execute("SELECT * FROM pipelines")]

    # executions

    def start_execution(
        self,
        pipeline_name: str,
        parameters: list[dict] | None,
        display_name: str | None,
        description: str | None,
        client_token: str | None,
    ) -> Execution:
        """Record the execution (Executing) and launch its detached worker; idempotent per token."""
        if self.launcher is None:
            raise RuntimeError("this backend has no worker launcher (it is a worker's own backend)")
        execution = self._insert_execution(pipeline_name, parameters or [], display_name, description, client_token)
        if execution.worker_pid is not None or execution.status != "Executing":
            return execution  # a repeated ClientRequestToken: the first call's execution
        try:
            proc = self.launcher(execution.arn)
        except Exception as err:
            self.finish_execution(execution.arn, "Failed", f"could not start the local worker process: {err}")
            if not isinstance(err, OSError):
                raise  # a programming error (e.g. a store the worker cannot rebuild): surface it
            return self.get_execution(execution.arn)
        self._record_worker(execution.arn, proc.pid)
        return self.get_execution(execution.arn)

    def _insert_execution(
        self,
        pipeline_name: str,
        parameters: list[dict],
        display_name: str | None,
        description: str | None,
        token: str | None,
    ) -> Execution:
        now = time.time()
        with self.db.write() as conn:
            pipeline = self._pipeline(conn, pipeline_name)
            if token:
                row = conn.execute(
                    "SELECT * FROM executions WHERE pipeline_name = ? AND client_token = ?", (pipeline.name, token)
                ).fetchone()
                if row is not None:
                    return Execution.from_row(row)
            try:
                resolve_parameters(Plan.parse(pipeline.definition).parameters, parameters)
            except (ExpressionError, DefinitionError) as err:
                raise ValidationError(f"pipeline {pipeline.name}: {err}") from err
            execution_id = random_id()
            arn = f"{pipeline.arn}/execution/{execution_id}"
            conn.execute(
                "INSERT INTO executions (arn, id, pipeline_name, pipeline_arn, display_name, description, status,"
                " parameters, definition, client_token, created, modified, heartbeat, heartbeat_clock, heartbeat_boot)"
                " VALUES (?, ?, ?, ?, ?, ?, 'Executing', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    arn,
                    execution_id,
                    pipeline.name,
                    pipeline.arn,
                    display_name or f"execution-{int(now * 1000)}",
                    description,
                    json.dumps(parameters),
                    pipeline.definition,
                    token,
                    now,
                    now,
                    now,
                    time.monotonic(),
                    boot_id(),
                ),
            )
            conn.execute("UPDATE pipelines SET last_run = ? WHERE arn = ?", (now, pipeline.arn))
            row = conn.execute("SELECT * FROM executions WHERE arn = ?", (arn,)).fetchone()
        return Execution.from_row(row)

    def _record_worker(self, arn: str, pid: int) -> None:
        created = _process_created(pid)
        with self.db.write() as conn:
            conn.execute("UPDATE executions SET worker_pid = ?, worker_created = ? WHERE arn = ?", (pid, created, arn))

    def get_execution(self, arn: str) -> Execution:
        self.reap(execution_arn=arn)
        with self.db.read() as conn:
            return self._execution(conn, arn)

    def _execution(self, conn: sqlite3.Connection, arn: str) -> Execution:
        row = conn.execute("SELECT * FROM executions WHERE arn = ?", (arn,)).fetchone()
        if row is None:
            raise ResourceNotFound(f"pipeline execution {arn!r} does not exist")
        return Execution.from_row(row)

    def list_executions(self, pipeline_name: str) -> list[Execution]:
        pipeline = self.get_pipeline(pipeline_name)
        self.reap(pipeline_arn=pipeline.arn)
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM executions WHERE pipeline_arn = ?", (pipeline.arn,)).fetchall()
        return [Execution.from_row(r) for r in rows]

    def execution_parameters(self, arn: str) -> list[dict]:
        """Every parameter's effective value (the execution's, else the default), as strings."""
        execution = self.get_execution(arn)
        values = resolve_parameters(Plan.parse(execution.definition).parameters, execution.parameters)
        return [{"Name": k, "Value": parameter_string(v)} for k, v in values.items()]

    def request_stop(self, arn: str) -> Execution:
        execution = self.get_execution(arn)
        with self.db.write() as conn:
            status = conn.execute("SELECT status FROM executions WHERE arn = ?", (arn,)).fetchone()["status"]
            if status == "Executing":
                conn.execute(
                    "UPDATE executions SET status = 'Stopping', modified = ? WHERE arn = ?", (time.time(), arn)
                )
            elif status != "Stopping":
                raise ValidationError(
                    f"pipeline execution {arn} is {status}; only an Executing execution can be stopped"
                )
        return self.get_execution(execution.arn)

    def list_steps(self, arn: str) -> list[Step]:
        self.get_execution(arn)
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM steps WHERE execution_arn = ?", (arn,)).fetchall()
        return [Step.from_row(r) for r in rows]

    # the worker's side of an execution

    def heartbeat(self, arn: str) -> str:
        """Refresh the worker's heartbeat; returns the execution status (Stopping asks it to stop)."""
        with self.db.write() as conn:
            conn.execute(
                "UPDATE executions SET heartbeat = ?, heartbeat_clock = ?, heartbeat_boot = ?"
                " WHERE arn = ? AND status IN (?, ?)",
                (time.time(), time.monotonic(), boot_id(), arn, *ACTIVE_EXECUTION),
            )
            return self._execution(conn, arn).status

    def execution_status(self, arn: str) -> str:
        with self.db.read() as conn:
            return self._execution(conn, arn).status

    def finish_execution(self, arn: str, status: str, failure_reason: str | None = None) -> bool:
        """Move an active execution to its end status; False if it had already ended (e.g. reaped)."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE executions SET status = ?, failure_reason = ?, modified = ? WHERE arn = ? AND status IN (?, ?)",
                (status, failure_reason, time.time(), arn, *ACTIVE_EXECUTION),
            )
            return cursor.rowcount == 1

    def start_step(
        self, arn: str, name: str, step_type: str, status: str = "Executing", metadata: dict | None = None
    ) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, NULL)",
                (arn, name, step_type, status, time.time(), json.dumps(metadata or {})),
            )

    def update_step(
        self,
        arn: str,
        name: str,
        status: str,
        failure_reason: str | None = None,
        metadata: dict | None = None,
        cache_source: str | None = None,
    ) -> None:
        """Set a step's status (ending it when the status is terminal); no-op once it ended.
        ``cache_source``: the execution whose job the step reused instead of running one."""
        ended = time.time() if status in ("Succeeded", "Failed", "Stopped") else None
        with self.db.write() as conn:
            conn.execute(
                "UPDATE steps SET status = ?, ended = ?, failure_reason = COALESCE(?, failure_reason),"
                " metadata = COALESCE(?, metadata), cache_source = COALESCE(?, cache_source)"
                " WHERE execution_arn = ? AND name = ? AND status IN (?, ?, ?)",
                (status, ended, failure_reason, _dumps(metadata), cache_source, arn, name, *ACTIVE_STEP),
            )

    def cached_jobs(
        self, pipeline_name: str, step_name: str, kind: str, since: float, limit: int = -1
    ) -> list[Job]:
        """The jobs that a step ``step_name`` of this pipeline's executions ran to completion after
        ``since``, newest first (at most ``limit``; -1: all): the candidates of SageMaker's step cache
        (reused results are not jobs, so a reuse always names the execution that ran the job)."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT jobs.* FROM jobs JOIN executions ON jobs.execution_arn = executions.arn"
                " WHERE executions.pipeline_name = ? AND jobs.step_name = ? AND jobs.kind = ?"
                " AND jobs.status = 'Completed' AND jobs.ended >= ? ORDER BY jobs.ended DESC LIMIT ?",
                (pipeline_name, step_name, kind, since, limit),
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    # jobs

    def create_job(self, name: str, kind: str, request: dict, execution_arn: str | None, step_name: str | None) -> Job:
        now = time.time()
        resource = f"{kind}-job"  # training-job, processing-job, transform-job
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO jobs (name, kind, arn, execution_arn, step_name, status, request, created, modified, log_path)"
                " VALUES (?, ?, ?, ?, ?, 'InProgress', ?, ?, ?, ?)",
                (
                    name,
                    kind,
                    self.arn(resource, name),
                    execution_arn,
                    step_name,
                    json.dumps(request),
                    now,
                    now,
                    str(self.job_log_path(name)),
                ),
            )
        return self.get_job(name, kind)

    def job_started(self, name: str, pid: int) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute(
                "UPDATE jobs SET started = ?, modified = ?, pid = ?, pid_created = ? WHERE name = ?",
                (now, now, pid, _process_created(pid), name),
            )

    def finish_job(
        self, name: str, status: str, failure_reason: str | None, outputs: dict | None, exit_code: int | None
    ) -> Job:
        now = time.time()
        with self.db.write() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, failure_reason = ?, outputs = ?, exit_code = ?, ended = ?, modified = ?"
                " WHERE name = ? AND status IN (?, ?)",
                (status, failure_reason, _dumps(outputs or {}), exit_code, now, now, name, *ACTIVE_JOB),
            )
        return self.get_job(name)

    def get_job(self, name: str, kind: str | None = None) -> Job:
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None or (kind and row["kind"] != kind):
            raise ResourceNotFound(f"{kind or 'training or processing'} job {name!r} does not exist in {self.region}")
        if row["status"] in ACTIVE_JOB and row["execution_arn"]:
            self.reap(execution_arn=row["execution_arn"])
            with self.db.read() as conn:
                row = conn.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        return Job.from_row(row)

    def list_jobs(self, kind: str) -> list[Job]:
        with self.db.read() as conn:
            return [Job.from_row(r) for r in conn.execute("SELECT * FROM jobs WHERE kind = ?", (kind,))]

    # model registry

    def create_package_group(self, name: str, description: str | None) -> PackageGroup:
        if not PACKAGE_GROUP_NAME.match(name or ""):
            raise ValidationError(f"model package group name {name!r} must match {PACKAGE_GROUP_NAME.pattern}")
        with self.db.write() as conn:
            self._insert_group(conn, name, description)
        return self.get_package_group(name)

    def _insert_group(self, conn: sqlite3.Connection, name: str, description: str | None) -> None:
        arn = self.arn("model-package-group", name)
        if conn.execute("SELECT 1 FROM package_groups WHERE arn = ?", (arn,)).fetchone():
            raise ValidationError(f"model package group {name} already exists ({arn})")
        conn.execute("INSERT INTO package_groups VALUES (?, ?, ?, ?)", (name, arn, description, time.time()))

    def get_package_group(self, name_or_arn: str) -> PackageGroup:
        with self.db.read() as conn:
            return self._group(conn, name_or_arn)

    def _group(self, conn: sqlite3.Connection, name_or_arn: str) -> PackageGroup:
        return self._by_name_or_arn(
            conn,
            name_or_arn,
            table="package_groups",
            resource="model-package-group",
            record=PackageGroup,
            what="model package group",
        )

    def list_package_groups(self) -> list[PackageGroup]:
        with self.db.read() as conn:
            return [PackageGroup.from_row(r) for r in conn.execute("SELECT * FROM package_groups")]

    def delete_package_group(self, name: str) -> None:
        with self.db.write() as conn:
            group = self._group(conn, name)
            count = conn.execute("SELECT COUNT(*) FROM packages WHERE group_name = ?", (group.name,)).fetchone()[0]
            if count:
                raise ConflictError(
                    f"model package group {group.name} still holds {count} model package(s); delete them first"
                )
            conn.execute("DELETE FROM package_groups WHERE arn = ?", (group.arn,))

    def create_package(
        self,
        group_name: str,
        fields_: dict,
        approval_status: str | None,
        description: str | None,
        create_group: bool = False,
        artifact_store: ObjectStore | None = None,
    ) -> Package:
        """A new version in the group; ``create_group`` makes the group if missing (RegisterModel).

        With ``artifact_store`` (the RegisterModel step), the sha256 of the artifact it registers is
        read from that store and recorded as CustomerMetadataProperties ``mlops:model_sha256``, so
        every package a pipeline registers can be deployed: hosting refuses artifacts without one.
        """
        approval_status = approval_status or "PendingManualApproval"
        _check_approval(approval_status)
        body = {k: fields_[k] for k in PACKAGE_FIELDS if fields_.get(k) is not None}
        _check_metric_sources(body)
        if artifact_store is not None:
            body = _with_artifact_sha256(body, artifact_store)  # before the transaction: it reads the file
        now = time.time()
        with self.db.write() as conn:
            try:
                group = self._group(conn, group_name)
            except ResourceNotFound:
                if not create_group:
                    raise
                self._insert_group(conn, group_name, None)
                group = self._group(conn, group_name)
            version = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM packages WHERE group_name = ?", (group.name,)
            ).fetchone()[0]
            arn = self.arn("model-package", f"{group.name}/{version}")
            conn.execute(
                "INSERT INTO packages VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (arn, group.name, version, description, approval_status, json.dumps(body), now, now),
            )
        return self.get_package(arn)

    def get_package(self, arn: str) -> Package:
        with self.db.read() as conn:
            return self._package(conn, arn)

    def _package(self, conn: sqlite3.Connection, arn: str) -> Package:
        row = conn.execute("SELECT * FROM packages WHERE arn = ?", (arn,)).fetchone()
        if row is None:
            raise ResourceNotFound(
                f"model package {arn!r} does not exist in {self.region} (versioned packages are addressed by their ARN)"
            )
        return Package.from_row(row)

    def list_packages(self) -> list[Package]:
        with self.db.read() as conn:
            return [Package.from_row(r) for r in conn.execute("SELECT * FROM packages")]

    def update_package(
        self,
        arn: str,
        approval_status: str | None,
        approval_description: str | None,
        customer_metadata: dict | None = None,
        remove_metadata: list[str] | None = None,
    ) -> Package:
        """Read, change and write the package in one write transaction: two updates at once (an approval
        and the hash recording, say) both persist, neither writes back a body read before the other."""
        if approval_status is not None:
            _check_approval(approval_status)
        with self.db.write() as conn:
            package = self._package(conn, arn)
            body = dict(package.body)
            if customer_metadata or remove_metadata:
                merged = {**body.get("CustomerMetadataProperties", {}), **(customer_metadata or {})}
                body["CustomerMetadataProperties"] = {
                    k: v for k, v in merged.items() if k not in (remove_metadata or [])
                }
            conn.execute(
                "UPDATE packages SET approval_status = COALESCE(?, approval_status),"
                " approval_description = COALESCE(?, approval_description), body = ?, modified = ? WHERE arn = ?",
                (approval_status, approval_description, json.dumps(body), time.time(), package.arn),
            )
        return self.get_package(arn)

    def delete_package(self, arn: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM packages WHERE arn = ?", (self._package(conn, arn).arn,))

    # dead workers

    def reap(self, execution_arn: str | None = None, pipeline_arn: str | None = None) -> None:
        """Fail active executions whose worker is gone or hung, so none stays Executing forever."""
        query = "SELECT * FROM executions WHERE status IN (?, ?)"
        args: tuple = ACTIVE_EXECUTION
        if execution_arn:
            query, args = query + " AND arn = ?", (*args, execution_arn)
        if pipeline_arn:
            query, args = query + " AND pipeline_arn = ?", (*args, pipeline_arn)
        with self.db.read() as conn:
            active = [Execution.from_row(r) for r in conn.execute(query, args)]
        for execution in active:
            reason = self._dead_worker_reason(execution)
            if reason:
                self._fail_dead_execution(execution, reason)

    def _dead_worker_reason(self, execution: Execution) -> str | None:
        """Why the execution's worker is dead or hung, or None while it may be alive.

        Staleness is measured on the system-wide monotonic clock, which stands still while a laptop
        sleeps: a worker is not "hung" for the time the machine was suspended. That clock restarts at
        boot, so its readings are only compared within one boot (``heartbeat_boot``); a heartbeat
        from an earlier boot means the worker died with the machine, whatever its pid says now (pids
        are reused after a reboot). The trade-off is where no boot id can be read (not Linux): the
        boot is then named by psutil's boot time, which moves if the wall clock is stepped; so a
        worker whose pid and start time still match is never declared dead by its boot alone, only
        by a wall-clock heartbeat older than the threshold (where sleep does count).
        """
        pid, since = execution.worker_pid, f"no heartbeat since {iso(execution.heartbeat)}"
        same_boot = _same_boot(execution)
        if pid is not None and not _process_matches(pid, execution.worker_created):
            return f"local worker process {pid} died {self._current_step_text(execution.arn)} ({since})"
        if not same_boot and (pid is None or execution.worker_created is None):
            who = f"local worker process {pid}" if pid is not None else f"the local worker of {execution.arn}"
            return (
                f"{who} did not survive a restart of this machine ({since}, from an earlier boot); "
                "start a new execution"
            )
        idle = time.monotonic() - execution.heartbeat_clock if same_boot else time.time() - execution.heartbeat
        if idle <= self.stale_after_seconds:
            return None
        if pid is None:
            # The launcher records the pid right after the process starts: after this grace, with no
            # heartbeat either, the launch was cut short (the launching process died in between).
            return (
                f"the local worker of {execution.arn} never started: no worker pid was recorded and {since} "
                f"(over {self.stale_after_seconds:g} s)"
            )
        return (
            f"local worker process {pid} hung {self._current_step_text(execution.arn)} ({since}, "
            f"over {self.stale_after_seconds:g} s) and was killed"
        )

    def _current_step_text(self, arn: str) -> str:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT name FROM steps WHERE execution_arn = ? ORDER BY started DESC LIMIT 1", (arn,)
            ).fetchone()
            running = conn.execute(
                "SELECT name FROM steps WHERE execution_arn = ? AND status IN (?, ?, ?)", (arn, *ACTIVE_STEP)
            ).fetchone()
        if running:
            return f"while running step {running['name']}"
        return f"between steps (after {row['name']})" if row else "before its first step"

    def _fail_dead_execution(self, execution: Execution, reason: str) -> None:
        now = time.time()
        with self.db.write() as conn:
            current = self._execution(conn, execution.arn)
            seen = (execution.heartbeat, execution.worker_pid)
            if current.status not in ACTIVE_EXECUTION or (current.heartbeat, current.worker_pid) != seen:
                return  # it ended, beat or got its pid recorded meanwhile: not dead after all
            conn.execute(
                "UPDATE executions SET status = 'Failed', failure_reason = ?, modified = ? WHERE arn = ?",
                (reason, now, execution.arn),
            )
            conn.execute(
                "UPDATE steps SET status = 'Failed', failure_reason = ?, ended = ? WHERE execution_arn = ? AND status IN (?, ?, ?)",
                (reason, now, execution.arn, *ACTIVE_STEP),
            )
            orphans = conn.execute(
                "SELECT pid, pid_created FROM jobs WHERE execution_arn = ? AND status IN (?, ?)",
                (execution.arn, *ACTIVE_JOB),
            ).fetchall()
            conn.execute(
                "UPDATE jobs SET status = 'Failed', failure_reason = ?, ended = ?, modified = ? WHERE execution_arn = ? AND status IN (?, ?)",
                (f"the job's pipeline worker died: {reason}", now, now, execution.arn, *ACTIVE_JOB),
            )
        # Jobs run in their own session: nothing else would end them once their worker is gone.
        for row in orphans:
            _kill_group(row["pid"], row["pid_created"])
        _kill_group(execution.worker_pid, execution.worker_created)


def _parse_definition(definition: str, name: str) -> Plan:
    try:
        return Plan.parse(definition)
    except DefinitionError as err:
        raise ValidationError(f"pipeline {name}: {err}") from err


def artifact_sha256(store: ObjectStore, uri: str) -> str:
    """sha256 of the object at ``uri`` (the store's own digest when its ``head`` has one, else downloaded
    to a private temporary folder and hashed in blocks)."""
    try:
        info = store.head(uri)
        if info is None:
            raise ValidationError(f"the model artifact {uri} does not exist")
        if info.sha256:
            return info.sha256.lower()
        with tempfile.TemporaryDirectory(prefix="mlops-artifact-") as scratch:
            digest = hashlib.sha256()
            with open(store.download(uri, Path(scratch) / "model.tar.gz"), "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            return digest.hexdigest()
    except (ValueError, OSError, RuntimeError) as err:  # RuntimeError: the store's ObjectStoreError
        raise ValidationError(f"cannot read the model artifact {uri}: {err}") from None


def _with_artifact_sha256(body: dict, store: ObjectStore) -> dict:
    """``body`` with the sha256 of InferenceSpecification.Containers[0].ModelDataUrl recorded as
    ``mlops:model_sha256``; a different hash given by the caller is an error naming both."""
    containers = (body.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers or not containers[0].get("ModelDataUrl"):
        raise ValidationError(
            "RegisterModel needs InferenceSpecification.Containers[0].ModelDataUrl: the local registry records "
            "the sha256 of the artifact it registers"
        )
    if any(c.get("ModelDataUrl") for c in containers[1:]):
        raise ValidationError("the local registry records one artifact hash per package: give one container")
    url = containers[0]["ModelDataUrl"]
    sha256 = artifact_sha256(store, url)
    metadata = dict(body.get("CustomerMetadataProperties") or {})
    given = metadata.get(SHA256_PROPERTY)
    if given is not None and str(given).lower() != sha256:
        raise ValidationError(
            f"the model artifact {url} has sha256 {sha256}, but the request records {SHA256_PROPERTY} {given}: "
            "it changed after training, or the request names the wrong artifact"
        )
    metadata[SHA256_PROPERTY] = sha256
    return {**body, "CustomerMetadataProperties": metadata}


@functools.cache
def _create_package_shape():
    # botocore here, not at the top: the worker imports this module at its start (0.2 s of imports,
    # on the execution's critical path) and needs botocore only for a RegisterModel step.
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateModelPackage").input_shape


def _check_metric_sources(body: dict) -> None:
    """ModelMetrics and DriftCheckBaselines as CreateModelPackage accepts them: botocore's shapes
    (members, required ContentType and S3Uri, strings) and each S3Uri's pattern. The API layer
    validates direct calls already; a RegisterModel step's request, resolved from the definition,
    comes here without it, so a Join that resolved to something else fails the step naming the field."""
    from botocore.validate import ParamValidator  # see _create_package_shape

    for name in METRIC_FIELDS:
        if name not in body:
            continue
        report = ParamValidator().validate(body[name], _create_package_shape().members[name])
        if report.has_errors():
            raise ValidationError(f"{name} is not a valid CreateModelPackage {name}: {report.generate_report()}")
        for path, uri in _source_uris(body[name], name):
            if len(uri) > MAX_METRIC_SOURCE_URI or not METRIC_SOURCE_URI.fullmatch(uri):
                raise ValidationError(
                    f"{path} {uri[:200]!r} is not an s3:// (or https://) URI of at most {MAX_METRIC_SOURCE_URI} characters"
                )


def _source_uris(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, S3Uri) of every metrics or file source under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "S3Uri" and isinstance(value, str):
                yield f"{path}.S3Uri", value
            else:
                yield from _source_uris(value, f"{path}.{key}")


def _check_approval(status: str) -> None:
    if status not in APPROVAL_STATUSES:
        raise ValidationError(f"ModelApprovalStatus {status!r} is not one of {', '.join(APPROVAL_STATUSES)}")


@functools.cache
def boot_id() -> str:
    """This boot of the machine: Linux's random boot_id, else psutil's boot time to the second.
    (Cached: no process outlives a boot.)"""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return f"boot-time-{psutil.boot_time():.0f}"


def _same_boot(execution: Execution) -> bool:
    """True if the execution's last heartbeat_clock reading was taken in this boot. A row from before
    boot ids were kept (NULL) counts as this boot unless its clock is ahead of ours, which only a
    monotonic clock from an earlier boot can be."""
    if execution.heartbeat_boot is not None and execution.heartbeat_boot != boot_id():
        return False
    return execution.heartbeat_clock <= time.monotonic()


def _process_created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _process_matches(pid: int, created: float | None) -> bool:
    """True if ``pid`` is still the process that was started (not gone, a zombie, or reused)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # Within 1 s: a wall-clock or NTP correction moves psutil's start times (boot time + ticks).
        return created is None or abs(proc.create_time() - created) < 1.0
    except psutil.Error:
        return False


def _kill_group(pid: int | None, created: float | None) -> None:
    """SIGKILL a worker or job and its children, if ``pid`` is still that process.

    Workers and jobs lead their own session (start_new_session), so their group is theirs alone;
    a process that leads no group, or shares ours, gets the signal by itself.
    """
    if pid is None or created is None or not _process_matches(pid, created):
        return
    try:
        if os.getpgid(pid) == pid and pid != os.getpgrp():
            os.killpg(pid, signal.SIGKILL)
        elif pid != os.getpid():
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
