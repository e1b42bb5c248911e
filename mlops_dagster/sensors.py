"""Sensors that watch what happened: pipeline executions, failed checks, failed runs.

``pipeline_execution_sensor`` watches the pipeline's executions, including ones started outside
Dagster, and materializes ``trained_model`` and ``registered_model`` for each one that ends (so a
model registered by any execution gets its lineage and verified hash, as with ``make run``); a
failed execution is also alerted, once per ARN. Each tick makes one ``list_pipeline_executions``
call (its summaries carry every status) plus at most one ``describe_pipeline_execution`` per
in-flight execution that fell off that page. The run key is the execution ARN, so re-ticks and
restarts never request the same execution twice.

``check_failure_alert_sensor`` alerts on failed ERROR asset checks. A WARN or non-blocking check
that fails leaves its run green, so a run-failure sensor never sees it: this one reads the check
evaluations from the event log (cursor: the last storage id read), once per evaluation, with a
cooldown per check. ``run_failure_alert_sensor`` alerts on every failed run of the code location.
"""

import json
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import ClientError
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    EventRecordsFilter,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from .alerts import Alert, AlertSink, clip, figures_from_metadata
from .assets.pipeline import TERMINAL, trained_model
from .assets.registry import registered_model
from .jobs import TRIGGER_DETAIL_TAG, TRIGGER_TAG
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
def pipeline_execution_sensor(
    context: SensorEvaluationContext, settings: Settings, sagemaker: SageMaker, alerts: AlertSink
):
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
        if status == "Failed":  # once per ARN: it is in handled from now on
            alerts.send(_execution_alert(settings, sagemaker, arn, summary), context.log)
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


def _execution_alert(settings: Settings, sagemaker: SageMaker, arn: str, summary: dict) -> Alert:
    reason = summary.get("PipelineExecutionFailureReason") or "no reason given"
    link = sagemaker.console_link("pipeline-execution", arn)
    return Alert(
        kind="pipeline_execution_failed",
        title=f"pipeline {settings.pipeline_name}: execution failed",
        what=f"execution {arn} ended Failed: {clip(reason, 1000)}",
        event=f"pipeline-execution:{arn}",
        execution_arn=arn,
        link=str(link.value) if link is not None else None,
        figures={
            "status": summary.get("PipelineExecutionStatus", "Failed"),
            "display_name": summary.get("PipelineExecutionDisplayName") or "",
            "started": str(summary.get("StartTime") or ""),
            "next": "trained_model (requested by this sensor, or the run that started it) names the failed step and its log",
        },
    )


# --- failed checks -------------------------------------------------------------------------------

EVENT_PAGE = 500  # check evaluations read per tick; the rest on the next tick


@dataclass(frozen=True)
class CheckEvent:
    """One stored check evaluation."""

    storage_id: int
    timestamp: float
    run_id: str
    job: str | None
    evaluation: AssetCheckEvaluation

    @property
    def check_key(self) -> str:
        return self.evaluation.asset_check_key.to_user_string()

    @property
    def asset(self) -> str:
        return self.evaluation.asset_key.to_user_string()


@dataclass
class CheckCursor:
    """The last storage id read, and when each check last raised an alert (or a retraining)."""

    after: int = 0
    last: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: str | None) -> "CheckCursor | None":
        return cls(**json.loads(raw)) if raw else None

    def dump(self, keep_after: float) -> str:
        # Entries older than the cooldown can no longer suppress anything.
        last = {k: t for k, t in self.last.items() if t >= keep_after}
        return json.dumps({"after": self.after, "last": last}, sort_keys=True)

    def cooling(self, key: str, at: float, cooldown: float) -> bool:
        """Was ``key`` alerted (or acted on) less than ``cooldown`` seconds before ``at``?"""
        return key in self.last and at - self.last[key] < cooldown


def check_events(instance: DagsterInstance, after: int | None, lookback_seconds: float) -> tuple[list[CheckEvent], int]:
    """Check evaluations stored after storage id ``after``, oldest first, and the id to resume from.

    With no cursor yet (a sensor's first tick) only the latest evaluations of the last
    ``lookback_seconds`` count: older failures are history, not news, and would all alert at once.
    """
    records_filter = EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after)
    # get_event_records is deprecated for 2.0, but in 1.13 it is the one query over the
    # evaluations of every check; its replacements read one check key at a time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        records = list(instance.get_event_records(records_filter, limit=EVENT_PAGE, ascending=after is not None))
    newest = max((r.storage_id for r in records), default=after or 0)
    if after is None:
        since = time.time() - lookback_seconds
        records = sorted((r for r in records if r.timestamp >= since), key=lambda r: r.storage_id)
    events = []
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and isinstance(event.event_specific_data, AssetCheckEvaluation):
            entry = record.event_log_entry
            events.append(
                CheckEvent(record.storage_id, entry.timestamp, entry.run_id, event.job_name, event.event_specific_data)
            )
    return events, newest


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def check_alert(alerts: AlertSink, event: CheckEvent) -> Alert:
    evaluation = event.evaluation
    severity = evaluation.severity.value
    return Alert(
        kind="check_failed",
        title=f"check {evaluation.check_name} failed on {event.asset}",
        what=clip(evaluation.description or f"asset check {event.check_key} did not pass ({severity})", 1000),
        event=f"check-evaluation:{event.storage_id}",
        asset=event.asset,
        check=evaluation.check_name,
        run_id=event.run_id,
        job=event.job,
        link=alerts.asset_link(event.asset, checks=True),
        figures={
            "severity": severity,
            "run_link": alerts.run_link(event.run_id),
            **figures_from_metadata(evaluation.metadata),
        },
        time=_iso(event.timestamp),
    )


@sensor(
    name="check_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,  # it only writes alerts: no cost on either backend
    description=(
        "Alerts on every failed ERROR asset check (including non-blocking ones, whose runs stay green), once per "
        "evaluation, at most once per check per MLOPS_ALERT_COOLDOWN_MINUTES."
    ),
)
def check_failure_alert_sensor(context: SensorEvaluationContext, settings: Settings, alerts: AlertSink):
    cooldown = settings.alert_cooldown_minutes * 60
    cursor = CheckCursor.load(context.cursor)
    events, newest = check_events(context.instance, cursor.after if cursor else None, cooldown)
    cursor = cursor or CheckCursor()
    sent, cooled = 0, 0
    for event in events:
        evaluation = event.evaluation
        if evaluation.passed or evaluation.severity != AssetCheckSeverity.ERROR:
            continue
        if cursor.cooling(event.check_key, event.timestamp, cooldown):
            cooled += 1
            context.log.info(
                f"{event.check_key} failed again (event {event.storage_id}): within its cooldown, no alert"
            )
            continue
        alerts.send(check_alert(alerts, event), context.log)
        cursor.last[event.check_key] = event.timestamp
        sent += 1
    cursor.after = newest
    return SensorResult(
        cursor=cursor.dump(keep_after=time.time() - cooldown),
        skip_reason=f"{len(events)} check evaluations read: {sent} alerts sent, {cooled} within a cooldown",
    )


# --- failed runs ---------------------------------------------------------------------------------


def _root_error(error) -> str:
    """The innermost cause's message: Dagster wraps the op's own exception in a step error."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def run_alert(alerts: AlertSink, context: RunFailureSensorContext) -> Alert:
    run = context.dagster_run
    failures = context.get_step_failure_events()
    errors = {
        event.step_key: clip(_root_error(event.event_specific_data.error), 500)
        for event in failures
        if event.step_key and getattr(event.event_specific_data, "error", None) is not None
    }
    first = next(iter(errors.items()), None)
    what = f"step {first[0]} failed: {first[1]}" if first else (context.failure_event.message or "the run failed")
    figures: dict = {"failed_steps": errors} if errors else {}
    figures.update({k: v for k, v in run.tags.items() if k in (TRIGGER_TAG, TRIGGER_DETAIL_TAG, "mlops/execution_arn")})
    if run.asset_selection:
        figures["assets"] = sorted(k.to_user_string() for k in run.asset_selection)
    return Alert(
        kind="run_failed",
        title=f"run of {run.job_name} failed",
        what=clip(what, 1000),
        event=f"run:{run.run_id}",
        run_id=run.run_id,
        job=run.job_name,
        step=first[0] if first else None,
        execution_arn=run.tags.get("mlops/execution_arn"),
        link=alerts.run_link(run.run_id),
        figures=figures,
    )


@run_failure_sensor(
    name="run_failure_alert_sensor",
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts on every failed run of this code location's jobs: run, job, failed step and its error.",
)
def run_failure_alert_sensor(context: RunFailureSensorContext, alerts: AlertSink):
    alerts.send(run_alert(alerts, context), context.log)
