"""dev -> staging -> prod on the local backend: real endpoint processes, approval gate,
blue/green with rollback, a dead server redeployed, stop_endpoints."""

import json
import os
import signal

import pytest
from dagster import DagsterInstance
from helpers import latest_metadata, materialize_assets

from mlops_dagster import build_definitions
from mlops_dagster.datasets import BOSTON_FEATURES
from mlops_dagster.monitoring.capture import iter_capture_files, read_capture
from mlops_dagster.serving.process import flush_capture, is_alive, read_endpoint
from mlops_dagster.settings import Settings

GRAPH = [
    "raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution", "trained_model", "registered_model",
    "dev_endpoint", "staging_endpoint", "prod_endpoint",
]  # fmt: skip


def _run(defs, instance, ops=None, selection=None):
    return materialize_assets(defs, instance, GRAPH, ops, selection)


_materialized = latest_metadata


def _messages(instance, result, step: str) -> list[str]:
    """What the step logged (context.log) in this run."""
    return [e.user_message for e in instance.all_logs(result.run_id) if e.step_key == step and e.user_message]


def _observed_skip(result, key):
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            observation = event.event_specific_data.asset_observation
            if observation.asset_key.to_user_string() == key and "skipped" in observation.metadata:
                return observation.metadata["skipped"].value
    return None


def _predict(defs, endpoint: str, row: str) -> float:
    runtime = defs.resources["sagemaker"].get_runtime_client()
    response = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Accept="application/json", Body=row)
    return json.loads(response["Body"].read())["predictions"][0]


@pytest.fixture
def world(settings: Settings):
    defs = build_definitions(settings)
    with DagsterInstance.ephemeral() as instance:
        yield defs, instance
        # Never leave a server running: the same job `make endpoint-stop` runs.
        stopped = defs.resolve_job_def("stop_endpoints").execute_in_process(instance=instance)
        assert stopped.success
        observed = {
            e.event_specific_data.asset_observation.asset_key.to_user_string()
            for e in stopped.all_events if e.event_type_value == "ASSET_OBSERVATION"
        }  # fmt: skip
        assert observed == {"dev_endpoint", "staging_endpoint", "prod_endpoint"}


def test_dev_staging_prod_with_gates_rollback_and_restart(world, mlops_home):
    defs, instance = world
    first = _run(defs, instance, {"raw_data": {"rows": 300}})
    assert first.success, "the first run must succeed: staging and prod are skipped, not failed"
    dev = _materialized(first, "dev_endpoint")
    registered = _materialized(first, "registered_model")
    assert dev["model_package_arn"] == registered["model_package_arn"]
    assert dev["smoke_test"] == "passed"
    assert _materialized(first, "staging_endpoint") is None and _materialized(first, "prod_endpoint") is None
    gate = _observed_skip(first, "staging_endpoint")
    assert gate.startswith("approval gate: no Approved package") and "PendingManualApproval" in gate
    record = read_endpoint(mlops_home, "dev")
    assert record.url.startswith("http://127.0.0.1:") and is_alive(record)
    # The run deploys after training: pipeline_execution started a standby server, and dev adopted it.
    standby = [m for m in _messages(instance, first, "pipeline_execution") if "standby endpoint server (pid" in m]
    assert len(standby) == 1 and f"(pid {record.pid})" in standby[0], standby
    row = dev["curl"].split("--data-binary '")[1].rstrip("'")
    prediction = _predict(defs, "mlops-pipeline-dev", row)
    assert isinstance(prediction, float)

    # The dev endpoint captures every request by default (the smoke test's too), in SageMaker's layout.
    destination = "s3://mlops-local/mlops/datacapture"
    assert dev["capture_destination"] == f"{destination}/mlops-pipeline-dev/AllTraffic/"
    assert flush_capture(record)["written"] >= 2
    store = defs.resources["store"]
    reading = read_capture(store, iter_capture_files(store, destination, "mlops-pipeline-dev"), BOSTON_FEATURES)
    chunks = list(reading)
    assert reading.stats.bad_records == 0 and reading.stats.rows >= 6  # 5 smoke rows, then ours
    assert chunks[-1].features.iloc[-1].tolist() == [float(v) for v in row.split(",")]
    assert chunks[-1].predictions[-1] == prediction

    # Approve version 1, then promote: staging serves it, prod follows staging.
    approve = defs.resolve_job_def("approve_model").execute_in_process(
        run_config={"ops": {"approve_model_package": {"config": {"model_package": "1", "status": "Approved"}}}},
        instance=instance,
    )
    assert approve.success
    promoted = _run(defs, instance, selection=["staging_endpoint", "prod_endpoint"])
    assert promoted.success
    assert _materialized(promoted, "staging_endpoint")["model_package_arn"] == registered["model_package_arn"]
    assert _materialized(promoted, "prod_endpoint")["model_package_arn"] == registered["model_package_arn"]
    assert _predict(defs, "mlops-pipeline-prod", row) == pytest.approx(prediction)

    # Deploying what already serves changes nothing.
    again = _run(defs, instance, selection=["dev_endpoint"])
    assert _materialized(again, "dev_endpoint")["changed"] is False

    # A second model whose artifact is corrupted after registration: the sha256 recorded in the
    # registry refuses it, dev rolls back and keeps serving the first model.
    second = _run(defs, instance, {"raw_data": {"rows": 260, "seed": 7}}, selection=GRAPH[:6])
    assert second.success
    model = _materialized(second, "trained_model")
    artifact = mlops_home / "s3" / model["model_data_url"].removeprefix("s3://")
    artifact.write_bytes(b"not a tar.gz")
    refused = _run(defs, instance, selection=["dev_endpoint"])
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert "rolled back" in message and registered["model_package_arn"] in message
    assert _predict(defs, "mlops-pipeline-dev", row) == pytest.approx(prediction)

    # A dead server is reported and the next deployment starts a new one.
    record = read_endpoint(mlops_home, "prod")
    os.kill(record.pid, signal.SIGKILL)
    client = defs.resources["sagemaker"].get_client()
    described = client.describe_endpoint(EndpointName="mlops-pipeline-prod")
    assert described["EndpointStatus"] == "Failed" and str(record.pid) in described["FailureReason"]
    restarted = _run(defs, instance, selection=["prod_endpoint"])
    assert restarted.success
    assert read_endpoint(mlops_home, "prod").pid != record.pid
    assert _predict(defs, "mlops-pipeline-prod", row) == pytest.approx(prediction)
