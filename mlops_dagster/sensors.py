"""``pipeline_execution_sensor``: watches the pipeline's executions, including ones started
outside Dagster, and materializes ``trained_model`` and ``registered_model`` for each one that ends
(so a model registered by any execution gets its lineage and verified hash, as with ``make run``).

Each tick makes one ``list_pipeline_executions`` call (its summaries carry every status) plus at
most one ``describe_pipeline_execution`` per in-flight execution that fell off that page. The run
key is the execution ARN, so re-ticks and restarts never request the same execution twice.
"""

import json
from dataclasses import dataclass, field

from botocore.exceptions import ClientError
from dagster import (
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .assets.pipeline import TERMINAL, trained_model
from .assets.registry import registered_model
from .resources.sagemaker import SageMaker
from .settings import Settings

PAGE = 50
KEEP_HANDLED = 500  # ARNs remembered in the cursor; older ones are past the listed page anyway
RUN_PREFIX = "dagster-run-"
COLLECTED_BY = (trained_model.key, registered_model.key)  # what a run must materialize to collect an execution


@dataclass
class ExecutionCursor:
    handled: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, raw: str | None) -> "ExecutionCursor | None":
        return cls(**json.loads(raw)) if raw else None

    def dump(self) -> str:
        return json.dumps({"handled": self.handled[-KEEP_HANDLED:], "in_flight": sorted(set(self.in_flight))})


def _collects(instance: DagsterInstance, run: DagsterRun) -> bool:
    """True if ``run`` materializes both trained_model and registered_model."""
    planned = set(run.asset_selection or ())
    if not planned:  # a whole asset job (retraining_job): its plan names what it materializes
        records = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        ).records
        planned = {r.event_log_entry.dagster_event.asset_key for r in records if r.event_log_entry.dagster_event}
    return set(COLLECTED_BY) <= planned


def _collection(context: SensorEvaluationContext, arn: str, status: str, display_name: str) -> str:
    """'done' when trained_model has it from a run that also registered it (or its own run
    reported it), 'wait' while a Dagster run that includes both assets is still collecting it,
    else 'request'."""
    instance = context.instance
    latest = instance.get_latest_materialization_event(trained_model.key)
    if latest and latest.asset_materialization:
        entry = latest.asset_materialization.metadata.get("execution_arn")
        collector = instance.get_run_by_id(latest.run_id) if latest.run_id else None
        if entry is not None and entry.value == arn and (collector is None or _collects(instance, collector)):
            return "done"
    run = None
    if display_name.startswith(RUN_PREFIX):
        run = instance.get_run_by_id(display_name.removeprefix(RUN_PREFIX))
    if run is None or not _collects(instance, run):
        return "request"
    if not run.is_finished:
        return "wait"
    # The run collected it; a failed execution was reported there as a failed trained_model.
    return "request" if status == "Succeeded" and not run.is_success else "done"


@sensor(
    name="pipeline_execution_sensor",
    minimum_interval_seconds=30,
    asset_selection=AssetSelection.assets(*COLLECTED_BY),
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Watches SageMaker pipeline executions; materializes trained_model and registered_model when one ends."
    ),
)
def pipeline_execution_sensor(context: SensorEvaluationContext, settings: Settings, sagemaker: SageMaker):
    client = sagemaker.get_client()
    try:
        summaries = client.list_pipeline_executions(
            PipelineName=settings.pipeline_name, SortBy="CreationTime", SortOrder="Descending", MaxResults=PAGE
        )["PipelineExecutionSummaries"]
    except ClientError as err:
        if err.response["Error"]["Code"] in ("ResourceNotFound", "ValidationException"):
            return SkipReason(f"pipeline {settings.pipeline_name} does not exist yet: materialize pipeline_definition")
        raise
    cursor = ExecutionCursor.load(context.cursor)
    baseline = cursor is None  # first tick: executions that already ended are history, not news
    cursor = cursor or ExecutionCursor()
    listed = {s["PipelineExecutionArn"]: s for s in summaries}
    for arn in cursor.in_flight:
        if arn not in listed:
            described = client.describe_pipeline_execution(PipelineExecutionArn=arn)
            listed[arn] = {**described, "PipelineExecutionFailureReason": described.get("FailureReason")}

    handled, requests, in_flight = set(cursor.handled), [], []
    for arn, summary in listed.items():
        status = summary["PipelineExecutionStatus"]
        if arn in handled:
            continue
        if status not in TERMINAL:
            in_flight.append(arn)
            continue
        if baseline:
            cursor.handled.append(arn)
            continue
        decision = _collection(context, arn, status, summary.get("PipelineExecutionDisplayName") or "")
        if decision == "wait":
            in_flight.append(arn)
            continue
        cursor.handled.append(arn)
        if decision == "done":
            continue
        if status != "Succeeded":
            context.log.warning(
                f"execution {arn} ended {status}: {summary.get('PipelineExecutionFailureReason') or 'no reason given'}; "
                "requesting trained_model to report the failed step and its log"
            )
        requests.append(
            RunRequest(
                run_key=arn,
                asset_selection=list(COLLECTED_BY),
                run_config={"ops": {"trained_model": {"config": {"execution_arn": arn}}}},
                tags={"mlops/execution_arn": arn, "mlops/execution_status": status},
            )
        )
    cursor.in_flight = in_flight
    return SensorResult(run_requests=requests, cursor=cursor.dump())
