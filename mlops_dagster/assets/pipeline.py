"""The recipe's steps 5-7 as assets: the SageMaker pipeline definition, an execution of it, and
the model it trained."""

import json
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from botocore.exceptions import ClientError
from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field, field_validator

from ..naming import deployed_environments
from ..resources.object_store import ObjectStore, sha256_file
from ..resources.sagemaker import SageMaker
from ..sagemaker.definition import definition_sha256, step_graph_mermaid
from ..sagemaker.definition_cache import cached_definition
from ..sagemaker.local.step_cache import CacheConfigError, duration_seconds
from ..sagemaker.training_code import TRAINING_DIR, code_version
from ..settings import Settings

TERMINAL = ("Succeeded", "Failed", "Stopped")
METRICS = ("mse", "rmse", "mae", "r2")


# Bounds that keep a run from starting what cannot finish or means nothing: a threshold of inf or
# nan turns the quality gate off, a forest of 10**12 trees never ends (SageMaker bills until then).
MAX_TREES = 10_000
MAX_MIN_SAMPLES_LEAF = 100_000
MAX_SEED = 2**32 - 1  # numpy's (hence scikit-learn's) random_state range
MAX_WAIT_SECONDS = 28 * 24 * 3600  # SageMaker's longest training job
INSTANCE_TYPE = r"^ml\.[a-z0-9-]+\.[a-z0-9]+$"  # e.g. ml.m5.large, ml.g4dn.xlarge
# pipeline_builder.DEFAULT_MAX_MODEL_BYTES (not imported here: the SDK takes seconds to import).
DEFAULT_MAX_MODEL_BYTES = 1 << 30
MAX_PROCESSING_INSTANCES = 100  # SageMaker's limit for a processing job's InstanceCount
DEFAULT_STEP_CACHE = "P30D"  # pipeline_builder.DEFAULT_STEP_CACHE


class PipelineConfig(Config):
    target: str = Field(default="medv", min_length=1, max_length=256, description="target column the scripts train on")
    mse_threshold: float = Field(
        default=25.0, gt=0, allow_inf_nan=False,
        description="CheckQuality registers the model only at or below this MSE (a finite number above 0)",
    )  # fmt: skip
    train_instance_type: str = Field(default="ml.m5.large", pattern=INSTANCE_TYPE, description="e.g. ml.m5.large")
    processing_instance_type: str = Field(default="ml.m5.large", pattern=INSTANCE_TYPE, description="e.g. ml.m5.large")
    processing_instance_count: int = Field(
        default=1, ge=1, le=MAX_PROCESSING_INSTANCES,
        description="instances of the Preprocess step, 1 to 100; above 1 the step is sharded: a Statistics step "
        "computes the train medians, then each instance cleans its share of the train part files (set s3_dataset's "
        "train_parts to a multiple of this count)",
    )  # fmt: skip
    approval_status: str = Field(
        default="PendingManualApproval", description="PendingManualApproval, Approved or Rejected"
    )
    n_estimators: int = Field(default=100, ge=1, le=MAX_TREES, description=f"trees in the forest, 1 to {MAX_TREES}")
    min_samples_leaf: int | None = Field(
        default=None, ge=1, le=MAX_MIN_SAMPLES_LEAF,
        description=f"1 to {MAX_MIN_SAMPLES_LEAF}; unset: train.py scales it to the data (a bounded model)",
    )  # fmt: skip
    max_samples: float | None = Field(
        default=None, gt=0, le=1, allow_inf_nan=False,
        description="share of the training rows each tree draws, above 0 to 1.0 (all); unset: train.py bounds it",
    )  # fmt: skip
    max_model_bytes: int = Field(
        default=DEFAULT_MAX_MODEL_BYTES, gt=0,
        description="CheckModelSize registers the model only if model.joblib has at most this many bytes "
        "(default 1 GiB: two serving workers' copies fit ml.t2.medium's 4 GiB)",
    )  # fmt: skip
    random_state: int = Field(default=42, ge=0, le=MAX_SEED, description=f"seed, 0 to {MAX_SEED}")
    training_dir: str = Field(default=str(TRAINING_DIR), description="folder with preprocess.py, train.py, evaluate.py")
    entry_point: str = Field(default="train.py", description="the training script inside training_dir")
    pass_hyperparameters: bool = Field(
        default=True, description="False runs a script without hyperparameters (the recipe's own train.py)"
    )
    step_cache_expire_after: str = Field(
        default=DEFAULT_STEP_CACHE, max_length=32,
        description="SageMaker step caching of Preprocess, Train and Evaluate: an execution reuses the job of an "
        "earlier one with the same data, code and settings if it ran within this ISO 8601 duration (P30D, PT12H); "
        "empty: every execution runs every step (the recipe's definition)",
    )  # fmt: skip

    @field_validator("step_cache_expire_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        if value.strip():
            try:
                duration_seconds(value)
            except CacheConfigError as err:
                raise ValueError(str(err)) from None
        return value.strip()


class TrainedModelConfig(Config):
    execution_arn: str | None = Field(
        default=None, description="the execution to collect; default: the latest pipeline_execution"
    )
    wait_timeout_seconds: float = Field(
        default=3600, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
        description=f"how long to wait for a running execution (at most {MAX_WAIT_SECONDS} s, 28 days)",
    )  # fmt: skip
    max_poll_seconds: float = Field(
        default=15, gt=0, le=3600, allow_inf_nan=False, description="longest pause between status checks, at most 3600 s"
    )  # fmt: skip


@asset(
    group_name="pipeline",
    kinds={"sagemaker"},
    description="The SageMaker Pipeline definition (SDK v2), upserted; its sha256 is the data version (recipe step 5).",
)
def pipeline_definition(
    context: AssetExecutionContext, config: PipelineConfig, settings: Settings, sagemaker: SageMaker, store: ObjectStore
) -> Output[dict]:
    fields = {
        "name": settings.pipeline_name,
        "bucket": settings.bucket,
        "prefix": settings.prefix,
        "region": settings.region,
        "role_arn": sagemaker.execution_role_arn(),
        "target": config.target,
        "mse_threshold": config.mse_threshold,
        "train_instance_type": config.train_instance_type,
        "processing_instance_type": config.processing_instance_type,
        # Only when sharded: the recipe's definition (and its cache key) stay as they were.
        **({"processing_instance_count": config.processing_instance_count}
           if config.processing_instance_count > 1 else {}),
        "approval_status": config.approval_status,
        "max_model_bytes": config.max_model_bytes,
        "hyperparameters": {
            "n_estimators": config.n_estimators,
            "random_state": config.random_state,
            # Unset: not passed, so train.py's "auto" bounds the model; set: used exactly.
            **{k: v for k, v in (("min_samples_leaf", config.min_samples_leaf), ("max_samples", config.max_samples))
               if v is not None},
        },
        "training_dir": config.training_dir,
        "entry_point": config.entry_point,
        "pass_hyperparameters": config.pass_hyperparameters,
        "step_cache_expire_after": config.step_cache_expire_after or None,
    }
    started = time.perf_counter()
    definition, cache = _cached_definition(settings, sagemaker, store, fields)
    build_seconds = time.perf_counter() - started
    spec = SimpleNamespace(**fields, model_package_group=package_group_name(fields["name"]))
    sha = definition_sha256(definition)
    client = sagemaker.get_client()
    try:
        current = client.describe_pipeline(PipelineName=spec.name)
    except ClientError as err:
        if err.response["Error"]["Code"] not in ("ResourceNotFound", "ValidationException"):
            raise
        current = None
    if current is None:
        arn = client.create_pipeline(
            PipelineName=spec.name,
            PipelineDefinition=definition,
            PipelineDescription="End-to-End MLOps with SageMaker Pipelines (mlops-dagster)",
            RoleArn=spec.role_arn,
        )["PipelineArn"]
        action = "created"
    elif definition_sha256(current.get("PipelineDefinition") or "") == sha:
        arn, action = current["PipelineArn"], "unchanged"
    else:
        arn = client.update_pipeline(PipelineName=spec.name, PipelineDefinition=definition, RoleArn=spec.role_arn)[
            "PipelineArn"
        ]
        action = "updated"
    context.log.info(
        f"pipeline {spec.name} {action}: {arn} (definition sha256 {sha[:12]}…, "
        f"{'from the definition cache' if cache == 'hit' else 'built by the SDK'} in {build_seconds:.2f} s)"
    )
    parameters = [p["Name"] for p in json.loads(definition)["Parameters"]]
    return Output(
        {
            "pipeline_name": spec.name,
            "pipeline_arn": arn,
            "definition_sha256": sha,
            "target": spec.target,
            "model_package_group": spec.model_package_group,
            "processing_instance_count": config.processing_instance_count,
        },
        metadata={
            "pipeline_name": spec.name,
            "pipeline_arn": arn,
            "definition_sha256": sha,
            "upsert": action,
            "definition_cache": cache,
            "build_seconds": round(build_seconds, 3),
            "parameters": MetadataValue.json(parameters),
            "model_package_group": spec.model_package_group,
            "processing_instance_count": config.processing_instance_count,
            "training_code_sha256": code_version(spec.training_dir),
            "step_graph": MetadataValue.md(f"```mermaid\n{step_graph_mermaid(definition)}\n```"),
        },
        data_version=DataVersion(sha),
    )


def package_group_name(pipeline_name: str) -> str:
    """The model package group the pipeline registers into (``PipelineSpec.model_package_group``)."""
    return f"{pipeline_name}-models"


def _cached_definition(settings: Settings, sagemaker: SageMaker, store: ObjectStore, fields: dict) -> tuple[str, str]:
    """(definition, "hit" | "miss"): the cached definition for these inputs, else an SDK build."""

    def build() -> str:
        # The SDK takes seconds to import: only a process that builds the definition pays for it.
        from ..sagemaker.pipeline_builder import PipelineSpec, build_pipeline

        return build_pipeline(PipelineSpec(**fields), sagemaker.sdk_boto_session()).definition()

    return cached_definition(settings.home, store, fields, build)


@asset(
    group_name="pipeline",
    kinds={"sagemaker"},
    description="One execution of the pipeline on the uploaded dataset; records its ARN and returns at once (step 6).",
)
def pipeline_execution(
    context: AssetExecutionContext, s3_dataset: dict, pipeline_definition: dict, sagemaker: SageMaker
) -> Output[dict]:
    if s3_dataset["target"] != pipeline_definition["target"]:
        raise Failure(
            f"s3_dataset's target column is {s3_dataset['target']!r} but the pipeline was built for "
            f"{pipeline_definition['target']!r}: set the same `target` in raw_data and pipeline_definition config"
        )
    uneven = _check_shards(s3_dataset, pipeline_definition)
    if uneven:
        context.log.warning(uneven)
    response = sagemaker.get_client().start_pipeline_execution(
        PipelineName=pipeline_definition["pipeline_name"],
        PipelineExecutionDisplayName=f"dagster-run-{context.run_id}",
        PipelineParameters=[{"Name": "InputData", "Value": s3_dataset["uri"]}],
        ClientRequestToken=context.run_id,
    )
    arn = response["PipelineExecutionArn"]
    context.log.info(f"started {arn} on {s3_dataset['uri']}")
    # A run that deploys after training: hosting gets ready meanwhile (locally, a standby server).
    # A run that names its assets did this when it started (SageMaker.setup_for_execution); again, it
    # finds everything ready and does nothing.
    selected = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    deploying = deployed_environments(selected)
    if deploying:
        prepared = sagemaker.prepare_hosting(deploying[0])
        if prepared:
            context.log.info(prepared)
    return Output(
        {"execution_arn": arn, "input_data": s3_dataset["uri"], "definition_sha256": pipeline_definition["definition_sha256"]},
        metadata={
            "execution_arn": arn,
            "execution_link": sagemaker.console_link("pipeline-execution", arn),
            "input_data": s3_dataset["uri"],
            "dataset_sha256": s3_dataset["sha256"],
            "definition_sha256": pipeline_definition["definition_sha256"],
        },
    )


def _check_shards(s3_dataset: dict, pipeline_definition: dict) -> str | None:
    """A sharded Preprocess needs the train rows as at least one part file per instance; a warning
    when the parts do not divide evenly among the instances."""
    instances = pipeline_definition.get("processing_instance_count", 1)  # absent from older values
    parts = s3_dataset.get("train_parts", 1)
    if instances > 1 and parts < instances:
        layout = "a single train.csv" if parts == 1 else f"{parts} train part files"
        raise Failure(
            f"the pipeline's Preprocess runs on {instances} instances (processing_instance_count) but s3_dataset "
            f"{s3_dataset['uri']} holds {layout}: an instance would get no train rows. Set s3_dataset's config "
            f"train_parts to a multiple of {instances} (e.g. {2 * instances}) and materialize s3_dataset again, "
            "or set processing_instance_count to 1"
        )
    if instances > 1 and parts % instances:
        return (
            f"s3_dataset's {parts} train parts do not divide evenly among the {instances} Preprocess instances: "
            f"some clean {parts // instances + 1} parts, others {parts // instances}"
        )
    return None


def latest_execution_arn(context: AssetExecutionContext) -> str:
    event = context.instance.get_latest_materialization_event(pipeline_execution.key)
    entry = event.asset_materialization.metadata.get("execution_arn") if event and event.asset_materialization else None
    if entry is None:
        raise Failure(
            "no pipeline execution to collect: materialize pipeline_execution first, or pass "
            "`execution_arn` in trained_model's config"
        )
    return str(entry.value)


def wait_for_execution(
    context: AssetExecutionContext, sagemaker: SageMaker, client, arn: str, timeout: float, max_poll: float
) -> dict:
    """Check until the execution ends, logging each step's status change; the resource decides
    how long to wait between checks (a back-off on SageMaker, the worker's end locally)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    for pause in sagemaker.poll_pauses(max_poll):
        execution = client.describe_pipeline_execution(PipelineExecutionArn=arn)
        steps = client.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending")
        for step in steps["PipelineExecutionSteps"]:
            if seen.get(step["StepName"]) != step["StepStatus"]:
                seen[step["StepName"]] = step["StepStatus"]
                context.log.info(f"step {step['StepName']}: {step['StepStatus']}")
        status = execution["PipelineExecutionStatus"]
        if status in TERMINAL:
            context.log.info(f"execution {arn} ended {status}")
            return execution
        if time.monotonic() + pause > deadline:
            raise Failure(
                f"execution {arn} still {status} after {timeout:.0f} s; it keeps running — "
                "the sensor will collect it, or raise wait_timeout_seconds"
            )
        sagemaker.wait_for_execution_change(arn, pause)
    raise AssertionError("poll_pauses ended")  # it is endless


def _step_job(steps: list[dict], name: str, kind: str) -> str | None:
    for step in steps:
        if step["StepName"] == name and kind in step.get("Metadata", {}):
            return step["Metadata"][kind]["Arn"].rsplit("/", 1)[-1]
    return None


def failure_report(sagemaker: SageMaker, arn: str, execution: dict, steps: list[dict]) -> str:
    """Which step failed, why, and the tail of its job's log."""
    failed = [s for s in steps if s["StepStatus"] in ("Failed", "Stopped")]
    lines = [f"pipeline execution {arn} ended {execution['PipelineExecutionStatus']}"]
    if execution.get("FailureReason"):
        lines.append(f"reason: {execution['FailureReason']}")
    for step in failed:
        lines.append(f"step {step['StepName']} {step['StepStatus']}: {step.get('FailureReason', '')}".rstrip(": "))
        if "Fail" in step.get("Metadata", {}):
            lines.append(f"  {step['Metadata']['Fail'].get('ErrorMessage', '')}")
        for kind, label in (("TrainingJob", "training"), ("ProcessingJob", "processing")):
            job = _step_job([step], step["StepName"], kind)
            if job:
                lines.append(f"  last lines of {label} job {job}:\n" + sagemaker.job_log_tail(job, label))
    return "\n".join(lines)


@asset(
    group_name="model",
    kinds={"sagemaker", "scikit-learn"},
    deps=[pipeline_execution],
    description="model.tar.gz from the pipeline's Train step with its evaluation metrics (waits for the execution).",
)
def trained_model(
    context: AssetExecutionContext, config: TrainedModelConfig, sagemaker: SageMaker, store: ObjectStore
) -> Output[dict]:
    arn = config.execution_arn or latest_execution_arn(context)
    client = sagemaker.get_client()
    execution = wait_for_execution(
        context, sagemaker, client, arn, config.wait_timeout_seconds, config.max_poll_seconds
    )
    steps = client.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    quality_gate = _quality_gate(execution, steps)
    if execution["PipelineExecutionStatus"] != "Succeeded" and quality_gate is None:
        raise Failure(failure_report(sagemaker, arn, execution, steps))
    if quality_gate:
        # Trained and evaluated, stopped only by CheckQuality's Fail step: the model is real,
        # it is just not registered. registered_model reports that and deploys nothing.
        context.log.warning(f"the model was trained but not registered: {quality_gate}")

    training_job = _step_job(steps, "Train", "TrainingJob")
    evaluation_job = _step_job(steps, "Evaluate", "ProcessingJob")
    if not training_job or not evaluation_job:
        raise Failure(f"execution {arn} has no Train/Evaluate job in its steps: {[s['StepName'] for s in steps]}")
    model_uri = client.describe_training_job(TrainingJobName=training_job)["ModelArtifacts"]["S3ModelArtifacts"]
    outputs = client.describe_processing_job(ProcessingJobName=evaluation_job)["ProcessingOutputConfig"]["Outputs"]
    evaluation_uri = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == "evaluation").rstrip("/")
    evaluation = json.loads(store.get_bytes(evaluation_uri + "/evaluation.json"))
    sha, members = _verify_model_archive(store, model_uri)
    package_arn = next(
        (s["Metadata"]["RegisterModel"]["Arn"] for s in steps if "RegisterModel" in s.get("Metadata", {})), None
    )
    metrics = {m: evaluation["regression_metrics"][m]["value"] for m in METRICS if m in evaluation["regression_metrics"]}
    context.log.info("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None))
    # SageMaker's step cache: steps whose data, code and settings an earlier execution had already run.
    cached = {s["StepName"]: s["CacheHitResult"]["SourcePipelineExecutionArn"] for s in steps if s.get("CacheHitResult")}
    if cached:
        context.log.info(
            "reused from earlier executions (step caching, pipeline_definition's step_cache_expire_after): "
            + ", ".join(f"{step} from {source}" for step, source in sorted(cached.items()))
        )
    value = {
        "execution_arn": arn,
        "model_data_url": model_uri,
        "sha256": sha,
        "training_job_name": training_job,
        "evaluation_uri": evaluation_uri + "/evaluation.json",
        "metrics": metrics,
        "model_package_arn": package_arn,
        "quality_gate": quality_gate or "passed",
    }
    metadata = {
        **{m: round(float(v), 6) for m, v in metrics.items() if v is not None},
        "model_data_url": model_uri,
        "model_sha256": sha,
        "archive_members": MetadataValue.json(members),
        "training_job_name": training_job,
        "execution_arn": arn,
        "model_link": store.link(model_uri),
        "training_job_link": sagemaker.console_link("training-job", training_job),
        "evaluation_job_link": sagemaker.console_link("processing-job", evaluation_job),
        "execution_link": sagemaker.console_link("pipeline-execution", arn),
        "model_package_arn": package_arn or "",
        "quality_gate": quality_gate or "passed",
        "cached_steps": MetadataValue.json(cached),
        **_footprint(evaluation),
        "evaluation": MetadataValue.md(_evaluation_summary(evaluation, quality_gate)),
    }
    if evaluation.get("feature_importances"):
        metadata["feature_importances"] = _importance_table(evaluation["feature_importances"])
    return Output(value, metadata=metadata, data_version=DataVersion(sha))


def _footprint(evaluation: dict) -> dict:
    """The model's size and load time, as the Evaluate step measured them (absent from older reports)."""
    out = {}
    if isinstance(evaluation.get("model_size_bytes"), int):
        out["model_size_mb"] = round(evaluation["model_size_bytes"] / 1e6, 3)
    if isinstance(evaluation.get("model_load_seconds"), (int, float)):
        out["model_load_seconds"] = round(float(evaluation["model_load_seconds"]), 4)
    return out


def _evaluation_summary(evaluation: dict, quality_gate: str | None) -> str:
    """evaluation.json as a short markdown table (the full file is at evaluation_uri)."""
    rows = [f"| {name} | {item.get('value'):.4g} |" if isinstance(item.get("value"), (int, float))
            else f"| {name} | n/a |" for name, item in evaluation.get("regression_metrics", {}).items()]  # fmt: skip
    held_out = evaluation.get("rows")
    lines = ["| metric | value |", "|---|---|", *rows, ""]
    if held_out is not None:
        lines.append(f"Scored on {held_out} held-out rows by the Evaluate step.")
    lines.append(f"Quality gate: {quality_gate or 'passed, model registered'}.")
    return "\n".join(lines)


def _quality_gate(execution: dict, steps: list[dict]) -> str | None:
    """The Fail step's message when the execution failed only at the quality gate, else None."""
    ended = [s for s in steps if s["StepStatus"] in ("Failed", "Stopped")]
    if execution["PipelineExecutionStatus"] != "Failed" or not ended:
        return None
    if not all("Fail" in s.get("Metadata", {}) for s in ended):
        return None
    return "; ".join(s["Metadata"]["Fail"].get("ErrorMessage", s["StepName"]) for s in ended)


def _verify_model_archive(store: ObjectStore, uri: str) -> tuple[str, list[str]]:
    """sha256 of model.tar.gz, after checking it is a readable tar holding model.joblib."""
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        path = store.download(uri, Path(tmp) / "model.tar.gz")
        try:
            with tarfile.open(path, "r:gz") as archive:
                members = sorted(m.name.removeprefix("./") for m in archive.getmembers() if m.isfile())
        except (tarfile.TarError, OSError, EOFError) as err:
            raise Failure(f"model artifact {uri} is not a readable tar.gz: {err}") from err
        if "model.joblib" not in members:
            raise Failure(f"model artifact {uri} has no model.joblib (members: {members})")
        return sha256_file(path), members


def _importance_table(importances: dict) -> MetadataValue:
    ranked = sorted(importances.items(), key=lambda kv: -kv[1])
    return MetadataValue.table(
        records=[TableRecord({"feature": k, "importance": round(float(v), 5)}) for k, v in ranked],
        schema=TableSchema(columns=[TableColumn("feature", "string"), TableColumn("importance", "float")]),
    )
