"""Sensors that watch what happened: pipeline executions, failed checks, failed runs.

``pipeline_execution_sensor`` watches the pipeline's executions, including ones started outside
Dagster, and materializes ``trained_model`` and ``registered_model`` for each one that ends (so a
model registered by any execution gets its lineage and verified hash, as with ``make run``); a
failed execution is also alerted, once per ARN. Each tick makes one ``list_pipeline_executions``
call (its summaries carry every status) plus at most one ``describe_pipeline_execution`` per
in-flight execution that fell off that page. The run key is the execution ARN, so re-ticks and
restarts never request the same execution twice.

``check_failure_alert_sensor`` alerts on failed ERROR asset checks. A WARN or non-blocking check
that fails leaves its run green, so a run-failure sensor never sees it: this one reads the
executions of its code location's checks from the event log's check index (numbered across runs on
every storage, run-sharded SQLite included; cursor: per check, the last execution id read), once per
evaluation, with a cooldown per check. ``run_failure_alert_sensor`` alerts on every failed run of the code location.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
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

if TYPE_CHECKING:
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecord

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

EXECUTION_PAGE = 100  # executions of one check read per query; the first tick reads one page


@dataclass(frozen=True)
class CheckEvent:
    """One stored check evaluation; ``execution_id`` is its row in the check-execution index, which
    every event log storage numbers across runs (event storage ids restart per run on run-sharded SQLite)."""

    execution_id: int
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
    """Per check (by its key's user string): ``read``, the execution id up to which every execution
    was read, and ``seen``, the evaluations read above it (an older execution whose run is still
    going holds ``read`` back until it ends); and when each check last raised an alert (or a retraining)."""

    read: dict[str, int] = field(default_factory=dict)
    seen: dict[str, list[int]] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: str | None) -> "CheckCursor | None":
        if not raw:
            return None
        body = json.loads(raw)
        # A cursor of the storage-id era has no "read": its checks start over with the first tick's look-back.
        return cls(read=body.get("read", {}), seen=body.get("seen", {}), last=body.get("last", {}))

    def dump(self, keep_after: float) -> str:
        # Entries older than the cooldown can no longer suppress anything.
        last = {k: t for k, t in self.last.items() if t >= keep_after}
        seen = {k: sorted(ids) for k, ids in self.seen.items() if ids}
        return json.dumps({"read": self.read, "seen": seen, "last": last}, sort_keys=True)

    def cooling(self, key: str, at: float, cooldown: float) -> bool:
        """Was ``key`` alerted (or acted on) less than ``cooldown`` seconds before ``at``?"""
        return key in self.last and at - self.last[key] < cooldown

    @classmethod
    def past_latest(cls, instance: DagsterInstance, keys: list[AssetCheckKey]) -> "CheckCursor":
        """A cursor past every execution of ``keys`` stored so far (a check never executed starts at 0:
        its first evaluation is news, not history)."""
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        return cls(read={key.to_user_string(): latest[key].id if key in latest else 0 for key in keys})


def watched_checks(context: SensorEvaluationContext) -> list[AssetCheckKey]:
    """The asset checks of the sensor's code location (the event log has no list of check keys)."""
    repository = context.repository_def
    if repository is None:
        return []
    return sorted(repository.asset_graph.asset_check_keys, key=lambda k: k.to_user_string())


def _executions_after(
    instance: DagsterInstance, key: AssetCheckKey, after: int | None
) -> list["AssetCheckExecutionRecord"]:
    """Executions of ``key`` with an id above ``after``, newest first; with no ``after``, one page."""
    records: list[AssetCheckExecutionRecord] = []
    before = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(key, limit=EXECUTION_PAGE, cursor=before)
        fresh = [r for r in page if after is None or r.id > after]
        records.extend(fresh)
        if after is None or len(fresh) < EXECUTION_PAGE:
            return records
        before = page[-1].id


def _running(instance: DagsterInstance, record: "AssetCheckExecutionRecord") -> bool:
    """A planned execution whose run is still going may yet be evaluated; one whose run ended never will."""
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    return run is not None and not run.is_finished


def check_events(
    instance: DagsterInstance, keys: list[AssetCheckKey], cursor: CheckCursor, lookback_seconds: float
) -> list[CheckEvent]:
    """Evaluations of ``keys`` not read before, oldest first; ``cursor`` moves past them.

    A check with no place in the cursor yet (the sensor's first tick) counts only its evaluations of
    the last ``lookback_seconds``: older failures are history, not news, and would all alert at once.
    """
    since = time.time() - lookback_seconds
    events = []
    for key in keys:
        name = key.to_user_string()
        after, seen = cursor.read.get(name), set(cursor.seen.get(name, ()))
        records = _executions_after(instance, key, after)
        running = [
            r.id for r in records if not isinstance(r.evaluation, AssetCheckEvaluation) and _running(instance, r)
        ]
        for record in records:
            evaluation, entry = record.evaluation, record.event
            if not isinstance(evaluation, AssetCheckEvaluation) or entry is None or record.id in seen:
                continue
            seen.add(record.id)
            if after is None and entry.timestamp < since:
                continue
            job = entry.dagster_event.job_name if entry.dagster_event else None
            events.append(CheckEvent(record.id, entry.timestamp, record.run_id, job, evaluation))
        read = min(running) - 1 if running else max((r.id for r in records), default=after or 0)
        cursor.read[name] = max(read, after or 0)
        cursor.seen[name] = [i for i in seen if i > cursor.read[name]]
    return sorted(events, key=lambda e: (e.timestamp, e.execution_id))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def check_alert(alerts: AlertSink, event: CheckEvent) -> Alert:
    evaluation = event.evaluation
    severity = evaluation.severity.value
    return Alert(
        kind="check_failed",
        title=f"check {evaluation.check_name} failed on {event.asset}",
        what=clip(evaluation.description or f"asset check {event.check_key} did not pass ({severity})", 1000),
        event=f"check-execution:{event.execution_id}",
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


NO_DEFINITIONS = (
    "no code location in the sensor's context, so no asset checks to read (build_sensor_context(definitions=...))"
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
    keys = watched_checks(context)
    if not keys:
        reason = NO_DEFINITIONS if context.repository_def is None else "the code location has no asset checks"
        return SensorResult(cursor=context.cursor, skip_reason=reason)
    cooldown = settings.alert_cooldown_minutes * 60
    cursor = CheckCursor.load(context.cursor) or CheckCursor()
    events = check_events(context.instance, keys, cursor, cooldown)
    sent, cooled = 0, 0
    for event in events:
        evaluation = event.evaluation
        if evaluation.passed or evaluation.severity != AssetCheckSeverity.ERROR:
            continue
        if cursor.cooling(event.check_key, event.timestamp, cooldown):
            cooled += 1
            context.log.info(
                f"{event.check_key} failed again (execution {event.execution_id}): within its cooldown, no alert"
            )
            continue
        alerts.send(check_alert(alerts, event), context.log)
        cursor.last[event.check_key] = event.timestamp
        sent += 1
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
