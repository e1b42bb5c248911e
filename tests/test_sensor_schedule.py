"""pipeline_execution_sensor against the local SageMaker service, and the retraining schedule."""

import json
import time
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    RunRequest,
    SensorResult,
    SkipReason,
    asset,
    build_sensor_context,
    materialize,
)

from mlops_dagster import build_definitions
from mlops_dagster.jobs import retraining_job
from mlops_dagster.sensors import pipeline_execution_sensor
from mlops_dagster.settings import Settings

# A one-step pipeline whose script waits for a flag file, so a test decides when it ends.
WAIT_SCRIPT = """
import argparse, os, sys, time
p = argparse.ArgumentParser(); p.add_argument("--flag"); p.add_argument("--mode")
a = p.parse_args()
while not os.path.exists(a.flag):
    time.sleep(0.1)
if a.mode == "fail":
    sys.exit("asked to fail")
"""


def _definition(code_uri: str, flag: Path) -> str:
    step = {
        "Name": "Wait",
        "Type": "Processing",
        "Arguments": {
            "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}},
            "AppSpecification": {
                "ImageUri": "local",
                "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/wait.py"],
                "ContainerArguments": ["--flag", str(flag), "--mode", {"Get": "Parameters.Mode"}],
            },
            "RoleArn": "arn:aws:iam::000000000000:role/x",
            "ProcessingInputs": [
                {"InputName": "code", "AppManaged": False, "S3Input": {
                    "S3Uri": code_uri, "LocalPath": "/opt/ml/processing/input/code", "S3DataType": "S3Prefix",
                    "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated", "S3CompressionType": "None"}}
            ],
        },
    }  # fmt: skip
    return json.dumps({
        "Version": "2020-12-01", "Metadata": {}, "PipelineExperimentConfig": None,
        "Parameters": [{"Name": "Mode", "Type": "String", "DefaultValue": "ok"}], "Steps": [step],
    })  # fmt: skip


@pytest.fixture
def world(settings: Settings, tmp_path):
    defs = build_definitions(settings)
    store, sagemaker = defs.resources["store"], defs.resources["sagemaker"]
    code_uri = "s3://mlops-local/mlops/tests/wait.py"
    store.put_bytes(code_uri, WAIT_SCRIPT.encode())
    with DagsterInstance.ephemeral() as instance:
        yield {
            "defs": defs,
            "client": sagemaker.get_client(),
            "instance": instance,
            "resources": {"settings": settings, "sagemaker": sagemaker, "alerts": defs.resources["alerts"]},
            "definition": _definition(code_uri, tmp_path / "flag"),
            "flag": tmp_path / "flag",
        }


def _tick(world, cursor=None):
    with build_sensor_context(instance=world["instance"], cursor=cursor, resources=world["resources"]) as context:
        return pipeline_execution_sensor(context), context


def _start(world, mode="ok") -> str:
    return world["client"].start_pipeline_execution(
        PipelineName="mlops-pipeline", PipelineParameters=[{"Name": "Mode", "Value": mode}]
    )["PipelineExecutionArn"]


def _wait_until_ended(client, arn: str, deadline_s: float = 120) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        status = client.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"]
        if status in ("Succeeded", "Failed", "Stopped"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"{arn} did not end within {deadline_s} s")


def test_sensor_skips_until_the_pipeline_exists(world):
    result, _ = _tick(world)
    assert isinstance(result, SkipReason)
    assert "pipeline mlops-pipeline does not exist yet" in result.skip_message


COLLECTED = [AssetKey("trained_model"), AssetKey("registered_model")]


def test_sensor_requests_trained_model_once_per_ended_execution(world):
    client = world["client"]
    client.create_pipeline(PipelineName="mlops-pipeline", PipelineDefinition=world["definition"], RoleArn="arn:aws:iam::000000000000:role/x")
    result, _ = _tick(world)  # first tick: baseline, nothing to report
    assert isinstance(result, SensorResult) and result.run_requests == []

    arn = _start(world)  # started outside Dagster
    result, _ = _tick(world, result.cursor)
    assert result.run_requests == []
    assert json.loads(result.cursor)["in_flight"] == [arn]
    assert client.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Executing"

    world["flag"].touch()
    assert _wait_until_ended(client, arn) == "Succeeded"
    result, _ = _tick(world, result.cursor)
    [request] = result.run_requests
    assert isinstance(request, RunRequest)
    assert request.run_key == arn
    # registered_model too: a model any execution registered gets its lineage and verified hash.
    assert request.asset_selection == COLLECTED
    assert request.run_config == {"ops": {"trained_model": {"config": {"execution_arn": arn}}}}
    assert request.tags["mlops/execution_status"] == "Succeeded"
    assert json.loads(result.cursor)["in_flight"] == []

    again, _ = _tick(world, result.cursor)  # re-tick: no duplicate
    assert again.run_requests == []


def test_sensor_reports_a_failed_execution_with_a_run(world):
    client = world["client"]
    client.create_pipeline(PipelineName="mlops-pipeline", PipelineDefinition=world["definition"], RoleArn="arn:aws:iam::000000000000:role/x")
    baseline, _ = _tick(world)
    world["flag"].touch()
    arn = _start(world, mode="fail")
    assert _wait_until_ended(client, arn) == "Failed"
    result, _ = _tick(world, baseline.cursor)
    [request] = result.run_requests
    assert request.run_key == arn and request.tags["mlops/execution_status"] == "Failed"


def test_sensor_baseline_ignores_executions_that_ended_before_it_started(world):
    client = world["client"]
    client.create_pipeline(PipelineName="mlops-pipeline", PipelineDefinition=world["definition"], RoleArn="arn:aws:iam::000000000000:role/x")
    world["flag"].touch()
    arn = _start(world)
    _wait_until_ended(client, arn)
    result, _ = _tick(world)
    assert result.run_requests == []
    assert arn in json.loads(result.cursor)["handled"]


def test_retraining_schedule_is_weekly_by_default_and_configurable(mlops_home):
    defs = build_definitions(Settings.from_env({"MLOPS_HOME": str(mlops_home)}))
    schedule = defs.get_schedule_def("retraining_schedule")
    assert schedule.cron_schedule == "0 3 * * 1"
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in retraining_job.selection.resolve(graph)}
    assert keys == {
        "raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution", "trained_model", "registered_model",
    }  # fmt: skip
    assert pipeline_execution_sensor.asset_selection.resolve(graph) == set(COLLECTED)
    daily = build_definitions(Settings.from_env({"MLOPS_HOME": str(mlops_home), "MLOPS_RETRAIN_CRON": "0 4 * * *"}))
    assert daily.get_schedule_def("retraining_schedule").cron_schedule == "0 4 * * *"


class _CountingClient:
    """Wraps a client and counts calls per method, to check how much the sensor asks per tick."""

    def __init__(self, client):
        self._client, self.calls = client, {}

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def counted(**kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(**kwargs)

        return counted


def test_sensor_asks_at_most_one_describe_per_in_flight_execution(world, monkeypatch):
    client = world["client"]
    client.create_pipeline(PipelineName="mlops-pipeline", PipelineDefinition=world["definition"], RoleArn="arn:aws:iam::000000000000:role/x")
    baseline, _ = _tick(world)
    running = [_start(world) for _ in range(2)]
    counting = _CountingClient(client)
    sagemaker = world["resources"]["sagemaker"]
    monkeypatch.setattr(type(sagemaker), "get_client", lambda self: counting)
    result, _ = _tick(world, baseline.cursor)
    assert sorted(json.loads(result.cursor)["in_flight"]) == sorted(running)
    assert counting.calls.get("list_pipeline_executions") == 1
    assert counting.calls.get("describe_pipeline_execution", 0) <= len(running)
    world["flag"].touch()
    for arn in running:
        _wait_until_ended(client, arn)


def _stub_collection(instance: DagsterInstance, arn: str, keys: list[str]) -> None:
    """A run that materializes stand-ins of ``keys`` (trained_model reporting ``arn``)."""

    def stub(key: str):
        @asset(name=key)
        def _stub() -> MaterializeResult:
            return MaterializeResult(metadata={"execution_arn": arn} if key == "trained_model" else {})

        return _stub

    assert materialize([stub(k) for k in keys], instance=instance).success


def test_an_execution_collected_without_registered_model_is_requested_again(world):
    """trained_model alone (say `--select trained_model`) leaves the package without its lineage:
    the sensor still requests the pair; once a run materialized both, the execution is done."""
    client = world["client"]
    client.create_pipeline(PipelineName="mlops-pipeline", PipelineDefinition=world["definition"], RoleArn="arn:aws:iam::000000000000:role/x")
    baseline, _ = _tick(world)
    world["flag"].touch()
    arn = _start(world)
    assert _wait_until_ended(client, arn) == "Succeeded"

    _stub_collection(world["instance"], arn, ["trained_model"])
    result, _ = _tick(world, baseline.cursor)
    [request] = result.run_requests
    assert (request.run_key, request.asset_selection) == (arn, COLLECTED)

    _stub_collection(world["instance"], arn, ["trained_model", "registered_model"])
    result, _ = _tick(world, baseline.cursor)
    assert result.run_requests == []
    assert arn in json.loads(result.cursor)["handled"]
