"""Retraining triggers: new data, new code, drift; their cursors, run keys and tags; the default
status of automation on each backend; and the trigger in the registered model's lineage."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import boto3
import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    Definitions,
    Output,
    SensorResult,
    SkipReason,
    asset,
    build_sensor_context,
    materialize,
)

from mlops_dagster import build_definitions
from mlops_dagster.jobs import retraining_job
from mlops_dagster.resources.infrastructure import CommitRequest, LocalInfrastructure, infrastructure_fields
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.settings import Settings, SettingsError
from mlops_dagster.triggers import LocalSourceLister, evaluate_drift, evaluate_new_code, evaluate_new_data

CSV_V1 = b"crim,rm,medv\n0.1,6.5,24.0\n0.2,6.1,21.6\n"
CSV_V2 = b"crim,rm,medv\n0.1,6.5,24.0\n0.2,6.1,21.6\n0.3,7.1,34.7\n"
AN_HOUR_AGO = time.time() - 3600


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"MLOPS_HOME": str(home), **env})


def _write(path: Path, data: bytes, age_s: float = 3600) -> Path:
    """Write ``data`` with an mtime ``age_s`` back (a settled file; the sensor leaves newer ones a tick)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- new data ------------------------------------------------------------------------------------


def _data_tick(instance, settings: Settings, cursor=None, lister=None):
    lister = lister or LocalSourceLister(store=LocalObjectStore(root=str(Path(settings.home) / "s3")))
    with build_sensor_context(instance=instance, cursor=cursor) as context:
        return evaluate_new_data(context, settings, lister)


def test_synthetic_source_is_skipped_with_the_reason(mlops_home, instance):
    result = _data_tick(instance, _settings(mlops_home))
    assert isinstance(result, SkipReason)
    assert "MLOPS_DATA_SOURCE is 'synthetic': there is no data source to watch" in result.skip_message


def test_a_missing_source_is_skipped_naming_it(mlops_home, instance, tmp_path):
    result = _data_tick(instance, _settings(mlops_home, MLOPS_DATA_SOURCE=str(tmp_path / "nope.csv")))
    assert isinstance(result, SkipReason) and "nope.csv does not exist (yet)" in result.skip_message


def test_a_changed_file_requests_retraining_once_per_version(mlops_home, instance, tmp_path):
    source = _write(tmp_path / "boston.csv", CSV_V1)
    settings = _settings(mlops_home, MLOPS_DATA_SOURCE=str(source))
    first = _data_tick(instance, settings)
    assert first.run_requests == [] and "first tick: recorded 1 objects" in first.skip_reason.skip_message
    assert _data_tick(instance, settings, first.cursor).run_requests == []  # re-tick: nothing new

    _write(source, CSV_V2)
    changed = _data_tick(instance, settings, first.cursor)
    [request] = changed.run_requests
    assert request.run_key == f"data:{source}@{_sha(CSV_V2)}"
    assert request.run_config == {"ops": {"raw_data": {"config": {"source": str(source)}}}}
    assert request.tags == {"mlops/trigger": "data", "mlops/trigger_detail": f"{source}@{_sha(CSV_V2)}"}
    assert _data_tick(instance, settings, changed.cursor).run_requests == []  # re-tick: no duplicate

    # Back to the first bytes: the run key of that version (Dagster never runs a run key twice).
    _write(source, CSV_V1, age_s=1800)
    [back] = _data_tick(instance, settings, changed.cursor).run_requests
    assert back.run_key == f"data:{source}@{_sha(CSV_V1)}"


def test_a_touched_but_unchanged_file_is_not_news(mlops_home, instance, tmp_path):
    source = _write(tmp_path / "boston.csv", CSV_V1)
    settings = _settings(mlops_home, MLOPS_DATA_SOURCE=str(source))
    first = _data_tick(instance, settings)
    _write(source, CSV_V1, age_s=600)  # same bytes, new mtime: re-hashed, same version
    assert _data_tick(instance, settings, first.cursor).run_requests == []


def test_a_folder_source_retrains_on_the_newest_new_file(mlops_home, instance, tmp_path):
    folder = tmp_path / "incoming"
    _write(folder / "2026-01.csv", CSV_V1, age_s=7200)
    settings = _settings(mlops_home, MLOPS_DATA_SOURCE=str(folder))
    first = _data_tick(instance, settings)
    _write(folder / "2026-02.csv", CSV_V2, age_s=1200)
    newest = _write(folder / "sub" / "2026-03.csv", CSV_V2 + b"0.4,5.9,19.0\n", age_s=600)
    _write(folder / ".2026-04.csv.part", b"partial", age_s=600)  # hidden: an upload in progress
    result = _data_tick(instance, settings, first.cursor)
    [request] = result.run_requests
    assert request.run_config["ops"]["raw_data"]["config"]["source"] == str(newest)
    assert sorted(json.loads(result.cursor)["objects"]) == sorted(
        str(p) for p in (folder / "2026-01.csv", folder / "2026-02.csv", newest)
    )
    assert _data_tick(instance, settings, result.cursor).run_requests == []


def test_a_file_still_being_written_waits_for_the_next_tick(mlops_home, instance, tmp_path):
    folder = tmp_path / "incoming"
    _write(folder / "a.csv", CSV_V1)
    settings = _settings(mlops_home, MLOPS_DATA_SOURCE=str(folder))
    first = _data_tick(instance, settings)
    fresh = _write(folder / "b.csv", CSV_V2, age_s=0)  # modified just now
    waiting = _data_tick(instance, settings, first.cursor)
    assert waiting.run_requests == [] and str(fresh) not in json.loads(waiting.cursor)["objects"]
    _write(fresh, CSV_V2, age_s=60)  # settled
    [request] = _data_tick(instance, settings, waiting.cursor).run_requests
    assert request.run_key == f"data:{fresh}@{_sha(CSV_V2)}"


def test_a_new_source_takes_stock_again(mlops_home, instance, tmp_path):
    a, b = _write(tmp_path / "a.csv", CSV_V1), _write(tmp_path / "b.csv", CSV_V2)
    first = _data_tick(instance, _settings(mlops_home, MLOPS_DATA_SOURCE=str(a)))
    switched = _data_tick(instance, _settings(mlops_home, MLOPS_DATA_SOURCE=str(b)), first.cursor)
    assert switched.run_requests == [] and "first tick" in switched.skip_reason.skip_message


def test_an_s3_source_in_the_local_store(mlops_home, instance):
    store = LocalObjectStore(root=str(mlops_home / "s3"))
    store.put_bytes("s3://mlops-local/raw/boston.csv", CSV_V1)
    store.put_bytes("s3://mlops-local/raw/boston.csv.bak", b"old")  # not the named object
    for path in (mlops_home / "s3" / "mlops-local" / "raw").iterdir():
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    settings = _settings(mlops_home, MLOPS_DATA_SOURCE="s3://mlops-local/raw/boston.csv")
    first = _data_tick(instance, settings)
    assert list(json.loads(first.cursor)["objects"]) == ["s3://mlops-local/raw/boston.csv"]
    store.put_bytes("s3://mlops-local/raw/boston.csv", CSV_V2)
    os.utime(mlops_home / "s3" / "mlops-local" / "raw" / "boston.csv", (AN_HOUR_AGO + 60, AN_HOUR_AGO + 60))
    [request] = _data_tick(instance, settings, first.cursor).run_requests
    assert request.run_key == f"data:s3://mlops-local/raw/boston.csv@{_sha(CSV_V2)}"


def test_an_s3_prefix_on_aws_by_etag(mlops_home, instance, aws):
    from mlops_dagster.resources.aws import AwsSession
    from mlops_dagster.resources.aws_automation import S3SourceLister

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw-data")
    s3.put_object(Bucket="raw-data", Key="boston/2026-01.csv", Body=CSV_V1)
    s3.put_object(Bucket="raw-data", Key="boston/", Body=b"")  # the console's folder placeholder
    lister = S3SourceLister(session=AwsSession(region="us-east-1"))
    settings = _settings(mlops_home, MLOPS_DATA_SOURCE="s3://raw-data/boston")
    first = _data_tick(instance, settings, lister=lister)
    assert list(json.loads(first.cursor)["objects"]) == ["s3://raw-data/boston/2026-01.csv"]

    s3.put_object(Bucket="raw-data", Key="boston/2026-01.csv", Body=CSV_V1)  # the same bytes again
    assert _data_tick(instance, settings, first.cursor, lister).run_requests == []
    s3.put_object(Bucket="raw-data", Key="boston/2026-02.csv", Body=CSV_V2)
    result = _data_tick(instance, settings, first.cursor, lister)
    [request] = result.run_requests
    etag = s3.head_object(Bucket="raw-data", Key="boston/2026-02.csv")["ETag"].strip('"')
    assert request.run_key == f"data:s3://raw-data/boston/2026-02.csv@{etag}"
    assert request.tags["mlops/trigger"] == "data"
    assert _data_tick(instance, settings, result.cursor, lister).run_requests == []


# --- new code ------------------------------------------------------------------------------------


def _code_tick(instance, settings, infrastructure, cursor=None):
    with build_sensor_context(instance=instance, cursor=cursor) as context:
        return evaluate_new_code(context, settings, infrastructure)


def test_a_new_commit_requests_retraining_and_the_first_tick_only_records(mlops_home, instance):
    settings = _settings(mlops_home)
    infrastructure = LocalInfrastructure(home=str(mlops_home), **infrastructure_fields(settings))
    missing = _code_tick(instance, settings, infrastructure)
    assert (
        isinstance(missing, SkipReason) and "has no branch main yet: run setup_infrastructure" in missing.skip_message
    )

    v1 = infrastructure.ensure_code_repository("training", {"train.py": b"print(1)\n"}, CommitRequest()).commit_id
    first = _code_tick(instance, settings, infrastructure)
    assert first.run_requests == [] and f"first tick: main is at {v1[:12]}" in first.skip_reason.skip_message
    assert _code_tick(instance, settings, infrastructure, first.cursor).run_requests == []

    v2 = infrastructure.ensure_code_repository("training", {"train.py": b"print(2)\n"}, CommitRequest()).commit_id
    assert v2 != v1 and infrastructure.head_commit() == v2
    result = _code_tick(instance, settings, infrastructure, first.cursor)
    [request] = result.run_requests
    assert request.run_key == f"code:{v2}"
    assert request.tags == {"mlops/trigger": "code", "mlops/trigger_detail": f"mlops-pipeline-code@main: {v2}"}
    assert _code_tick(instance, settings, infrastructure, result.cursor).run_requests == []


def test_codecommit_head_through_get_branch(mlops_home, instance, aws, monkeypatch):
    """moto lacks GetBranch: a canned answer stands in for it, as in test_aws_moto_server.py."""
    from aws_helpers import CannedAnswer, on_new_sessions

    from mlops_dagster.resources.aws import AwsSession
    from mlops_dagster.resources.aws_infrastructure import AwsInfrastructure

    missing = {"Error": {"Code": "RepositoryDoesNotExistException", "Message": "no repository"}}
    branch = CannedAnswer("before-call.codecommit.GetBranch", missing, status=400)
    on_new_sessions(monkeypatch, branch.install)
    env = {"MLOPS_BACKEND": "aws", "MLOPS_BUCKET": "mlops-abc", "MLOPS_REGION": "us-east-1"}
    settings = _settings(mlops_home, **env)
    infrastructure = AwsInfrastructure(session=AwsSession(region="us-east-1"), **infrastructure_fields(settings))
    assert isinstance(_code_tick(instance, settings, infrastructure), SkipReason)

    branch.status, branch.parsed = 200, {"branch": {"branchName": "main", "commitId": "a" * 40}}
    first = _code_tick(instance, settings, infrastructure)
    assert first.run_requests == []
    branch.parsed = {"branch": {"branchName": "main", "commitId": "b" * 40}}
    [request] = _code_tick(instance, settings, infrastructure, first.cursor).run_requests
    assert request.run_key == "code:" + "b" * 40 and request.tags["mlops/trigger"] == "code"
    assert branch.calls == 3


# --- drift ---------------------------------------------------------------------------------------

CHECKS = ("feature_drift", "model_quality", "data_quality")


def _monitoring(failing: tuple[str, ...]):
    @asset(name="data_quality_report", check_specs=[AssetCheckSpec(c, asset="data_quality_report") for c in CHECKS])
    def report():
        yield Output(1)
        for name in CHECKS:
            yield AssetCheckResult(check_name=name, passed=name not in failing, severity=AssetCheckSeverity.WARN)

    return report


def _fail(instance, *checks: str) -> str:
    result = materialize([_monitoring(checks)], instance=instance)
    assert result.success
    return result.run_id


def _drift_tick(instance, settings, cursor=None) -> SensorResult:
    """One tick of the trigger in a code location holding the stand-in asset and its checks."""
    definitions = Definitions(assets=[_monitoring(())])
    with build_sensor_context(instance=instance, cursor=cursor, definitions=definitions) as context:
        return evaluate_drift(context, settings)


def test_a_failed_drift_check_requests_retraining_at_most_once_per_period(mlops_home, any_instance):
    instance = any_instance
    settings = _settings(mlops_home)  # 24 h
    first = _drift_tick(instance, settings)
    _fail(instance, "data_quality")  # not a drift check
    quiet = _drift_tick(instance, settings, first.cursor)
    assert quiet.run_requests == []

    run_id = _fail(instance, "feature_drift")
    result = _drift_tick(instance, settings, quiet.cursor)
    [request] = result.run_requests
    assert request.run_key.startswith("drift:")
    assert request.tags == {
        "mlops/trigger": "drift", "mlops/trigger_detail": f"data_quality_report:feature_drift failed in run {run_id}",
    }  # fmt: skip
    assert _drift_tick(instance, settings, result.cursor).run_requests == []  # re-tick

    _fail(instance, "model_quality")  # within the period: no second retraining
    cooled = _drift_tick(instance, settings, result.cursor)
    assert cooled.run_requests == []

    cursor = json.loads(cooled.cursor)  # the period over
    cursor["last"] = {k: t - 25 * 3600 for k, t in cursor["last"].items()}
    _fail(instance, "model_quality")
    [again] = _drift_tick(instance, settings, json.dumps(cursor)).run_requests
    assert "data_quality_report:model_quality failed" in again.tags["mlops/trigger_detail"]


def test_drift_retraining_period_is_configurable(mlops_home, any_instance):
    instance = any_instance
    settings = _settings(mlops_home, MLOPS_DRIFT_RETRAIN_HOURS="0")
    first = _drift_tick(instance, settings)
    _fail(instance, "feature_drift")
    _fail(instance, "feature_drift")
    assert len(_drift_tick(instance, settings, first.cursor).run_requests) == 2
    with pytest.raises(SettingsError, match="MLOPS_DRIFT_RETRAIN_HOURS='daily' is not a whole number from 0 to 8760"):
        _settings(mlops_home, MLOPS_DRIFT_RETRAIN_HOURS="daily")


def test_the_first_drift_tick_acts_on_a_failure_within_the_period(mlops_home, any_instance):
    """A drift found before the sensor's first tick (make monitor, then the daemon starts) still retrains."""
    _fail(any_instance, "feature_drift")
    [request] = _drift_tick(any_instance, _settings(mlops_home)).run_requests
    assert request.tags["mlops/trigger"] == "drift"


def test_drift_failures_in_several_runs_each_retrain_once_on_make_uis_run_sharded_event_log(mlops_home, ui_instance):
    """Storage ids restart in each run's shard there: each failed run requests one retraining, keyed
    by its check execution, and a re-tick requests none."""
    settings = _settings(mlops_home, MLOPS_DRIFT_RETRAIN_HOURS="0")
    first = _drift_tick(ui_instance, settings)
    runs = [
        _fail(ui_instance, "feature_drift"),
        _fail(ui_instance, "data_quality"),
        _fail(ui_instance, "model_quality"),
    ]
    second = _drift_tick(ui_instance, settings, first.cursor)
    runs.append(_fail(ui_instance, "feature_drift"))
    third = _drift_tick(ui_instance, settings, second.cursor)
    again = _drift_tick(ui_instance, settings, third.cursor)
    details = [r.tags["mlops/trigger_detail"] for r in [*second.run_requests, *third.run_requests]]
    assert details == [f"data_quality_report:feature_drift failed in run {runs[0]}",
                       f"data_quality_report:model_quality failed in run {runs[2]}",
                       f"data_quality_report:feature_drift failed in run {runs[3]}"]  # fmt: skip
    keys = [r.run_key for r in [*second.run_requests, *third.run_requests]]
    assert len(set(keys)) == 3 and all(k.startswith("drift:data_quality_report:") for k in keys)
    assert again.run_requests == [] and again.skip_reason.skip_message.startswith("0 check evaluations read")


def test_without_its_code_location_the_drift_trigger_skips_saying_why(mlops_home, instance):
    with build_sensor_context(instance=instance, cursor='{"read": {}}') as context:
        result = evaluate_drift(context, _settings(mlops_home))
    assert "no code location in the sensor's context" in result.skip_reason.skip_message
    assert result.cursor == '{"read": {}}'


# --- wiring: job, tags, default status ------------------------------------------------------------

TRIGGER_SENSORS = ("new_data_sensor", "new_code_sensor", "drift_retraining_sensor")


def test_triggers_run_the_retraining_job_which_never_deploys(defs):
    graph = defs.resolve_asset_graph()
    selected = {k.to_user_string() for k in retraining_job.selection.resolve(graph)}
    assert not selected & {"dev_endpoint", "staging_endpoint", "prod_endpoint"}
    for name in TRIGGER_SENSORS:
        assert defs.resolve_sensor_def(name).job_name == "retraining_job", name
    schedule = defs.resolve_schedule_def("retraining_schedule")
    assert schedule.tags == {"mlops/trigger": "schedule", "mlops/trigger_detail": "cron 0 3 * * 1 UTC"}


def _statuses(home: Path, **env: str) -> dict[str, str]:
    defs = build_definitions(_settings(home, **env))
    statuses = {name: defs.resolve_sensor_def(name).default_status.value for name in TRIGGER_SENSORS}
    statuses["retraining_schedule"] = defs.resolve_schedule_def("retraining_schedule").default_status.value
    return statuses


AWS = {"MLOPS_BACKEND": "aws", "MLOPS_BUCKET": "mlops-abc", "MLOPS_REGION": "us-east-1"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "RUNNING"),
        ({"MLOPS_AUTOMATION": "off"}, "STOPPED"),
        (AWS, "STOPPED"),
        ({**AWS, "MLOPS_AUTOMATION": "on"}, "RUNNING"),
        ({**AWS, "MLOPS_AUTOMATION": "OFF"}, "STOPPED"),
    ],
)
def test_automation_that_spends_money_starts_stopped_on_aws(mlops_home, env, expected):
    assert set(_statuses(mlops_home, **env).values()) == {expected}


def test_alerting_sensors_run_whatever_the_automation_setting(mlops_home):
    defs = build_definitions(_settings(mlops_home, **AWS))
    for name in ("check_failure_alert_sensor", "run_failure_alert_sensor", "pipeline_execution_sensor"):
        assert defs.resolve_sensor_def(name).default_status.value == "RUNNING", name


def test_a_bad_automation_value_is_refused(mlops_home):
    with pytest.raises(
        SettingsError, match="MLOPS_AUTOMATION='yes please' is not valid: allowed values are 'on', 'off'"
    ):
        _settings(mlops_home, MLOPS_AUTOMATION="yes please")


# --- lineage -------------------------------------------------------------------------------------


class _ExecutionClient:
    def list_pipeline_parameters_for_execution(self, **_):
        return {"PipelineParameters": []}

    def describe_pipeline_definition_for_execution(self, **_):
        return {"PipelineDefinition": "{}"}


def test_the_registered_models_lineage_records_the_trigger(settings, mlops_home):
    from mlops_dagster.assets.registry import _lineage

    store = LocalObjectStore(root=str(mlops_home / "s3"))
    trained = {"execution_arn": "arn:x", "training_job_name": "t", "model_data_url": "s3://b/m", "sha256": "0" * 64}
    tags = {"mlops/trigger": "drift", "mlops/trigger_detail": "data_quality_report:feature_drift failed in run r"}
    lineage = _lineage(_ExecutionClient(), store, settings, trained, tags)
    assert (lineage["trigger"], lineage["trigger_detail"]) == ("drift", tags["mlops/trigger_detail"])
    assert _lineage(_ExecutionClient(), store, settings, trained, {})["trigger"] == "manual"
