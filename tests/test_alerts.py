"""Alerts: the sinks (file, webhook, SNS), the failed-check and failed-run sensors, failed pipeline
executions, and the alert settings."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    DagsterEventType,
    Definitions,
    Output,
    SensorResult,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    job,
    materialize,
    op,
)

from mlops_dagster.alerts import Alert, AlertSink
from mlops_dagster.sensors import check_failure_alert_sensor, pipeline_execution_sensor, run_failure_alert_sensor
from mlops_dagster.settings import Settings, SettingsError

SECRET = "T000/B000/not-a-real-secret"


def _alert(n: int = 1) -> Alert:
    return Alert(kind="check_failed", title=f"check feature_drift failed ({n})", what="rm and lstat drifted",
                 event=f"check-evaluation:{n}", asset="data_quality_report", check="feature_drift", run_id="r1",
                 link="http://127.0.0.1:3000/assets/data_quality_report?view=checks", figures={"drifted": 2})  # fmt: skip


def _lines(home: Path) -> list[dict]:
    path = home / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- the file sink -------------------------------------------------------------------------------


def test_every_alert_is_one_json_line_appended_to_alerts_jsonl(tmp_path):
    sink = AlertSink(home=str(tmp_path))
    (tmp_path / "alerts.jsonl").write_text('{"kind": "older"}\n')  # what is there stays
    outcomes = sink.send(_alert(1))
    sink.send(_alert(2))
    lines = _lines(tmp_path)
    assert [line["kind"] for line in lines] == ["older", "check_failed", "check_failed"]
    first = lines[1]
    assert first["title"] == "check feature_drift failed (1)"
    assert first["what"] == "rm and lstat drifted"
    assert (first["asset"], first["check"], first["run_id"], first["event"]) == (
        "data_quality_report", "feature_drift", "r1", "check-evaluation:1",
    )  # fmt: skip
    assert first["link"].endswith("?view=checks") and first["figures"] == {"drifted": 2}
    assert first["time"].endswith("+00:00")
    assert outcomes == {"log": "ok", "file": str(tmp_path / "alerts.jsonl")}


def test_concurrent_senders_never_interleave_lines(tmp_path):
    sink = AlertSink(home=str(tmp_path))
    big = {f"feature_{i}": "x" * 300 for i in range(20)}  # ~6 kB lines: longer than one pipe buffer

    def send(worker: int) -> None:
        for n in range(25):
            sink.send(Alert(kind="run_failed", title=f"{worker}-{n}", what="w", event=f"{worker}-{n}", figures=big))

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = _lines(tmp_path)  # every line parses
    assert sorted(line["title"] for line in lines) == sorted(f"{w}-{n}" for w in range(8) for n in range(25))


def test_a_link_planted_at_alerts_jsonl_is_refused_naming_the_file(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "alerts.jsonl").symlink_to(target)
    with pytest.raises(OSError, match="cannot append the alert to .*alerts.jsonl"):
        AlertSink(home=str(tmp_path)).send(_alert())
    assert not target.exists()


# --- the webhook ---------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, self.headers["Content-Type"], json.loads(body)))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.requests, server.statuses = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}/services/{SECRET}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_webhook_gets_a_slack_compatible_post(tmp_path, webhook):
    sink = AlertSink(home=str(tmp_path), webhook_url=webhook.url)
    outcomes = sink.send(_alert())
    [(path, content_type, body)] = webhook.requests
    assert path == f"/services/{SECRET}" and content_type == "application/json"
    assert list(body) == ["text"]
    assert "check feature_drift failed (1)" in body["text"] and "rm and lstat drifted" in body["text"]
    assert "data_quality_report?view=checks" in body["text"]
    assert outcomes["webhook"] == "ok"
    assert len(_lines(tmp_path)) == 1


def test_webhook_is_retried_on_a_5xx(tmp_path, webhook):
    webhook.statuses = [503, 502]
    sink = AlertSink(home=str(tmp_path), webhook_url=webhook.url, webhook_attempts=3, webhook_backoff_seconds=0)
    assert sink.send(_alert())["webhook"] == "ok"
    assert len(webhook.requests) == 3


def test_a_failing_webhook_is_logged_without_its_secret_and_the_alert_stays_in_the_file(tmp_path, webhook, caplog):
    webhook.statuses = [500, 500]
    sink = AlertSink(home=str(tmp_path), webhook_url=webhook.url, webhook_attempts=2, webhook_backoff_seconds=0)
    with caplog.at_level(logging.WARNING, logger="mlops_dagster.alerts"):
        outcomes = sink.send(_alert())
    assert outcomes["webhook"] == "failed: HTTP 500"
    assert len(webhook.requests) == 2
    assert "alert webhook to 127.0.0.1 failed (HTTP 500, 2 attempts)" in caplog.text
    assert SECRET not in caplog.text
    assert [line["event"] for line in _lines(tmp_path)] == ["check-evaluation:1"]


def test_an_unreachable_webhook_fails_quietly(tmp_path, caplog):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = AlertSink(home=str(tmp_path), webhook_url=f"http://127.0.0.1:{port}/{SECRET}", webhook_attempts=2,
                     webhook_backoff_seconds=0, webhook_timeout_seconds=2)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mlops_dagster.alerts"):
        outcomes = sink.send(_alert())
    assert outcomes["webhook"].startswith("failed: ")
    assert "alert webhook to 127.0.0.1 failed (NewConnectionError, 2 attempts)" in caplog.text
    assert SECRET not in caplog.text
    assert len(_lines(tmp_path)) == 1


# --- SNS (aws) -----------------------------------------------------------------------------------


def test_sns_sink_publishes_the_alert(tmp_path, aws):
    from mlops_dagster.resources.aws import AwsSession
    from mlops_dagster.resources.aws_automation import SnsAlertSink

    sns, sqs = boto3.client("sns", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
    topic = sns.create_topic(Name="mlops-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    sink = SnsAlertSink(home=str(tmp_path), session=AwsSession(region="us-east-1"), topic_arn=topic)
    outcomes = sink.send(_alert())
    assert outcomes["sns"].startswith("ok: ")
    [message] = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    envelope = json.loads(message["Body"])
    assert envelope["TopicArn"] == topic
    assert envelope["Subject"] == "check feature_drift failed (1)"
    assert "rm and lstat drifted" in envelope["Message"]
    assert envelope["MessageAttributes"]["kind"]["Value"] == "check_failed"
    assert len(_lines(tmp_path)) == 1


def test_a_failing_sns_publish_is_logged_and_the_alert_stays_in_the_file(tmp_path, aws, caplog):
    from mlops_dagster.resources.aws import AwsSession
    from mlops_dagster.resources.aws_automation import SnsAlertSink

    missing = "arn:aws:sns:us-east-1:123456789012:no-such-topic"
    sink = SnsAlertSink(home=str(tmp_path), session=AwsSession(region="us-east-1", max_attempts=1), topic_arn=missing)
    with caplog.at_level(logging.WARNING, logger="mlops_dagster.alerts"):
        outcomes = sink.send(_alert())
    assert outcomes["sns"].startswith("failed: ")
    assert f"alert to SNS topic {missing} failed" in caplog.text
    assert len(_lines(tmp_path)) == 1


# --- failed checks -------------------------------------------------------------------------------

CHECKS = ("data_quality", "feature_drift", "warn_only")


def _traffic(outcomes: dict[str, tuple[bool, AssetCheckSeverity]]):
    """A stand-in monitoring asset whose checks end as ``outcomes`` says (non-blocking: the run stays green)."""

    @asset(name="data_quality_report", check_specs=[AssetCheckSpec(c, asset="data_quality_report") for c in CHECKS])
    def report():
        yield Output(1)
        for name in CHECKS:
            passed, severity = outcomes.get(name, (True, AssetCheckSeverity.ERROR))
            yield AssetCheckResult(check_name=name, passed=passed, severity=severity,
                                   description=None if passed else f"{name}: rm drifted (p=1e-9)",
                                   metadata={"drifted_features": "rm", "ks_rm": 0.41})  # fmt: skip

    return report


ERROR, WARN = AssetCheckSeverity.ERROR, AssetCheckSeverity.WARN


def _materialize(instance, **outcomes) -> str:
    result = materialize([_traffic(outcomes)], instance=instance)
    assert result.success  # a failed non-blocking check leaves the run green
    return result.run_id


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"MLOPS_HOME": str(home), **env})


def _tick_checks(instance, settings, cursor=None, definitions=None) -> SensorResult:
    """One tick of the sensor in a code location holding the stand-in asset and its checks."""
    sink = AlertSink(home=settings.home)
    definitions = definitions or Definitions(assets=[_traffic({})])
    with build_sensor_context(
        instance=instance, cursor=cursor, definitions=definitions, resources={"settings": settings, "alerts": sink}
    ) as context:
        return check_failure_alert_sensor(context)


def test_a_failed_error_check_alerts_once_even_though_its_run_is_green(mlops_home, any_instance):
    instance = any_instance
    settings = _settings(mlops_home)
    run_id = _materialize(instance, feature_drift=(False, ERROR), warn_only=(False, WARN))
    result = _tick_checks(instance, settings)
    [line] = _lines(mlops_home)  # the WARN failure and the passing check raise nothing
    assert line["kind"] == "check_failed"
    assert (line["asset"], line["check"], line["run_id"]) == ("data_quality_report", "feature_drift", run_id)
    assert line["what"] == "feature_drift: rm drifted (p=1e-9)"
    assert line["figures"]["drifted_features"] == "rm" and line["figures"]["ks_rm"] == 0.41
    assert line["figures"]["run_link"] == f"http://127.0.0.1:3000/runs/{run_id}"
    assert line["link"] == "http://127.0.0.1:3000/assets/data_quality_report?view=checks"

    again = _tick_checks(instance, settings, result.cursor)  # re-tick: the cursor moved past it
    assert len(_lines(mlops_home)) == 1
    assert json.loads(again.cursor)["read"] == json.loads(result.cursor)["read"]


def test_a_check_failing_again_within_its_cooldown_does_not_alert_again(mlops_home, any_instance):
    instance = any_instance
    settings = _settings(mlops_home, MLOPS_ALERT_COOLDOWN_MINUTES="60")
    _materialize(instance, data_quality=(False, ERROR))
    first = _tick_checks(instance, settings)
    _materialize(instance, data_quality=(False, ERROR), feature_drift=(False, ERROR))
    second = _tick_checks(instance, settings, first.cursor)
    # data_quality is cooling down; feature_drift is another check: its first failure alerts.
    assert [line["check"] for line in _lines(mlops_home)] == ["data_quality", "feature_drift"]
    assert "1 within a cooldown" in second.skip_reason.skip_message

    # The cooldown over (its last alert placed two hours back), the next failure alerts.
    cursor = json.loads(second.cursor)
    cursor["last"] = {key: when - 7200 for key, when in cursor["last"].items()}
    _materialize(instance, data_quality=(False, ERROR))
    _tick_checks(instance, settings, json.dumps(cursor))
    assert [line["check"] for line in _lines(mlops_home)] == ["data_quality", "feature_drift", "data_quality"]


def test_without_cooldown_every_failed_evaluation_alerts_once(mlops_home, any_instance):
    instance = any_instance
    settings = _settings(mlops_home, MLOPS_ALERT_COOLDOWN_MINUTES="0")
    first = _tick_checks(instance, settings)  # nothing yet: the cursor starts at the beginning
    _materialize(instance, data_quality=(False, ERROR))
    _materialize(instance, data_quality=(False, ERROR))
    second = _tick_checks(instance, settings, first.cursor)
    _tick_checks(instance, settings, second.cursor)
    events = [line["event"] for line in _lines(mlops_home)]
    assert len(events) == 2 and len(set(events)) == 2


def test_the_first_tick_treats_failures_older_than_the_cooldown_as_history(mlops_home, any_instance):
    instance = any_instance
    _materialize(instance, data_quality=(False, ERROR))
    settings = _settings(mlops_home, MLOPS_ALERT_COOLDOWN_MINUTES="0")  # look back 0 s
    first = _tick_checks(instance, settings)
    assert _lines(mlops_home) == []
    assert json.loads(first.cursor)["read"]["data_quality_report:data_quality"] > 0
    _materialize(instance, data_quality=(False, ERROR))
    _tick_checks(instance, settings, first.cursor)
    assert len(_lines(mlops_home)) == 1


def test_failures_in_several_runs_each_alert_once_on_make_uis_run_sharded_event_log(mlops_home, ui_instance):
    """Storage ids restart in each run's shard there: the sensor reads each check's executions instead."""
    settings = _settings(mlops_home, MLOPS_ALERT_COOLDOWN_MINUTES="0")
    first = _tick_checks(ui_instance, settings)
    runs = [_materialize(ui_instance, data_quality=(False, ERROR)) for _ in range(2)]
    second = _tick_checks(ui_instance, settings, first.cursor)
    runs.append(_materialize(ui_instance, feature_drift=(False, ERROR), data_quality=(False, ERROR)))
    third = _tick_checks(ui_instance, settings, second.cursor)
    again = _tick_checks(ui_instance, settings, third.cursor)  # re-tick: nothing new
    alerted = [(line["check"], line["run_id"]) for line in _lines(mlops_home)]
    assert alerted == [("data_quality", runs[0]), ("data_quality", runs[1]),
                       ("data_quality", runs[2]), ("feature_drift", runs[2])]  # fmt: skip
    assert len({line["event"] for line in _lines(mlops_home)}) == 4
    assert again.skip_reason.skip_message.startswith("0 check evaluations read")


def _slow_traffic(entered: threading.Event, release: threading.Event):
    """The stand-in asset whose data_quality check fails once ``release`` is set."""

    @asset(name="data_quality_report", check_specs=[AssetCheckSpec(c, asset="data_quality_report") for c in CHECKS])
    def report():
        entered.set()
        assert release.wait(timeout=120), "the test never released the slow run"
        yield Output(1)
        for name in CHECKS:
            yield AssetCheckResult(check_name=name, passed=name != "data_quality", severity=ERROR)

    return report


def test_a_run_evaluating_after_a_later_run_still_alerts(mlops_home, ui_instance):
    """Run A plans the check (its execution id comes first), run B evaluates it, the sensor ticks, and
    only then does A evaluate: A's still-running execution holds the cursor back, so it is not skipped."""
    settings = _settings(mlops_home, MLOPS_ALERT_COOLDOWN_MINUTES="0")
    first = _tick_checks(ui_instance, settings)
    entered, release, slow = threading.Event(), threading.Event(), {}
    worker = threading.Thread(
        target=lambda: slow.update(result=materialize([_slow_traffic(entered, release)], instance=ui_instance))
    )
    worker.start()
    try:
        assert entered.wait(timeout=120), "the slow run never started its asset"
        later = _materialize(ui_instance, data_quality=(False, ERROR))
        second = _tick_checks(ui_instance, settings, first.cursor)
    finally:
        release.set()
        worker.join()
    third = _tick_checks(ui_instance, settings, second.cursor)
    _tick_checks(ui_instance, settings, third.cursor)
    assert [line["run_id"] for line in _lines(mlops_home)] == [later, slow["result"].run_id]


def test_a_cursor_of_the_storage_id_era_keeps_its_cooldowns_and_starts_each_check_over():
    from mlops_dagster.sensors import CheckCursor

    cursor = CheckCursor.load('{"after": 1234, "last": {"data_quality_report:data_quality": 5.0}}')
    assert (cursor.read, cursor.seen, cursor.last) == ({}, {}, {"data_quality_report:data_quality": 5.0})


def test_without_its_code_location_the_check_sensor_skips_saying_why(mlops_home, instance):
    sink = AlertSink(home=str(mlops_home))
    resources = {"settings": _settings(mlops_home), "alerts": sink}
    with build_sensor_context(instance=instance, cursor='{"read": {}}', resources=resources) as context:
        result = check_failure_alert_sensor(context)
    assert "no code location in the sensor's context" in result.skip_reason.skip_message
    assert result.cursor == '{"read": {}}'


# --- failed runs ---------------------------------------------------------------------------------


@op
def explode():
    raise ValueError("the disk is full")


@job(description="fails")
def failing_job():
    explode()


def test_a_failed_run_alerts_with_its_job_step_and_error(mlops_home, instance):
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False, tags={"mlops/trigger": "data"})
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    [failure] = instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)
    sink = AlertSink(home=str(mlops_home))
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor", dagster_event=failure.dagster_event, dagster_instance=instance,
        dagster_run=run, resources={"alerts": sink},
    ).for_run_failure()  # fmt: skip
    run_failure_alert_sensor(context)
    [line] = _lines(mlops_home)
    assert line["kind"] == "run_failed" and line["title"] == "run of failing_job failed"
    assert (line["run_id"], line["job"], line["step"]) == (result.run_id, "failing_job", "explode")
    assert "step explode failed: ValueError: the disk is full" in line["what"]
    assert line["link"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
    assert line["figures"]["mlops/trigger"] == "data"


def test_run_failure_sensor_watches_the_code_location(defs):
    sensor = defs.resolve_sensor_def("run_failure_alert_sensor")
    assert sensor.default_status.value == "RUNNING"
    assert defs.resolve_sensor_def("check_failure_alert_sensor").default_status.value == "RUNNING"


# --- failed pipeline executions ------------------------------------------------------------------


class _Executions:
    """A SageMaker client answering list_pipeline_executions from a list the test edits."""

    def __init__(self):
        self.summaries: list[dict] = []

    def list_pipeline_executions(self, **_):
        return {"PipelineExecutionSummaries": list(self.summaries)}


class _StubSageMaker:
    def __init__(self, client):
        self.client = client

    def get_client(self):
        return self.client

    def console_link(self, kind: str, name: str):
        return None


def test_a_failed_pipeline_execution_alerts_once_per_arn(mlops_home, instance):
    settings = _settings(mlops_home)
    client = _Executions()
    resources = {"settings": settings, "sagemaker": _StubSageMaker(client), "alerts": AlertSink(home=str(mlops_home))}

    def tick(cursor):
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            return pipeline_execution_sensor(context)

    arn = "arn:aws:sagemaker:us-east-1:000000000000:pipeline/mlops-pipeline/execution/abc123"
    old = {**_summary(arn.replace("abc123", "old")), "PipelineExecutionStatus": "Failed"}
    client.summaries = [old]
    baseline = tick(None)  # what ended before the sensor started is history: no alert
    assert _lines(mlops_home) == []

    client.summaries = [{**_summary(arn), "PipelineExecutionStatus": "Failed"}, old]
    result = tick(baseline.cursor)
    [request] = result.run_requests
    assert request.run_key == arn
    [line] = _lines(mlops_home)
    assert line["kind"] == "pipeline_execution_failed" and line["execution_arn"] == arn
    assert "ended Failed: step Train failed: out of memory" in line["what"]
    tick(result.cursor)  # re-tick
    assert len(_lines(mlops_home)) == 1


def _summary(arn: str) -> dict:
    return {"PipelineExecutionArn": arn, "PipelineExecutionDisplayName": "outside",
            "PipelineExecutionFailureReason": "step Train failed: out of memory"}  # fmt: skip


# --- settings ------------------------------------------------------------------------------------


def test_alert_settings_defaults_and_values(tmp_path):
    s = _settings(tmp_path)
    assert (s.alert_webhook_url, s.alert_sns_topic_arn, s.alert_cooldown_minutes, s.ui_url) == (
        None, None, 60, "http://127.0.0.1:3000",
    )  # fmt: skip
    s = Settings.from_env({
        "MLOPS_HOME": str(tmp_path), "MLOPS_BACKEND": "aws", "MLOPS_BUCKET": "mlops-abc", "MLOPS_REGION": "eu-west-1",
        "MLOPS_ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x", "MLOPS_ALERT_COOLDOWN_MINUTES": "15",
        "MLOPS_ALERT_SNS_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:mlops-alerts.fifo", "MLOPS_UI_URL": "https://dagster.example.com/",
    })  # fmt: skip
    assert s.alert_webhook_url == "https://hooks.slack.com/services/T/B/x" and s.alert_cooldown_minutes == 15
    assert s.alert_sns_topic_arn.endswith(":mlops-alerts.fifo") and s.ui_url == "https://dagster.example.com"


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example.com/x", "hooks.slack.com/services/x", "https:///services/x", "file:///etc/passwd"]
)
def test_a_bad_webhook_url_is_refused_without_echoing_it(tmp_path, url):
    with pytest.raises(SettingsError, match="MLOPS_ALERT_WEBHOOK_URL is not an http\\(s\\) URL") as err:
        _settings(tmp_path, MLOPS_ALERT_WEBHOOK_URL=url)
    assert url not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MLOPS_ALERT_SNS_TOPIC_ARN", "arn:aws:sqs:us-east-1:123456789012:q", "is not an SNS topic ARN"),
        ("MLOPS_ALERT_SNS_TOPIC_ARN", "mlops-alerts", "is not an SNS topic ARN"),
        ("MLOPS_ALERT_COOLDOWN_MINUTES", "1h", "is not a whole number from 0 to 10080"),
        ("MLOPS_ALERT_COOLDOWN_MINUTES", "-5", "is not a whole number from 0 to 10080"),
        ("MLOPS_ALERT_COOLDOWN_MINUTES", "10081", "is not a whole number from 0 to 10080"),
        ("MLOPS_UI_URL", "localhost:3000", "is not an http(s) URL"),
    ],
)
def test_bad_alert_settings_name_the_variable(tmp_path, name, value, message):
    env = {"MLOPS_BACKEND": "aws", "MLOPS_BUCKET": "mlops-abc", "MLOPS_REGION": "us-east-1", name: value}
    with pytest.raises(SettingsError) as err:
        _settings(tmp_path, **env)
    assert f"{name}={value!r}" in str(err.value) and message in str(err.value)


def test_an_sns_topic_needs_the_aws_backend(tmp_path):
    with pytest.raises(SettingsError, match="MLOPS_ALERT_SNS_TOPIC_ARN is set but MLOPS_BACKEND is 'local'"):
        _settings(tmp_path, MLOPS_ALERT_SNS_TOPIC_ARN="arn:aws:sns:us-east-1:123456789012:mlops-alerts")


def test_the_alert_file_is_private_to_its_owner(tmp_path):
    AlertSink(home=str(tmp_path)).send(_alert())
    assert os.stat(tmp_path / "alerts.jsonl").st_mode & 0o077 == 0
