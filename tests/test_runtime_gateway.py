"""The SageMaker Runtime API of the local endpoints (serving/gateway.py), called by boto3 and the SDK.

A real local endpoint (a tiny random forest, deployed through the local service as in
test_local_hosting.py) is called through the gateway's address with botocore's own client and the
SageMaker SDK's Predictor and serializers, unchanged: only the endpoint URL points here. Nothing
may leave the machine (``local_only``); the SDK's telemetry is off (mlops_dagster.sagemaker's
sdk_config). Every process a test starts is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from test_local_hosting import GROUP, ROWS, csv_body, deployable, forest, pack, register, upload

import mlops_dagster.sagemaker  # noqa: F401  (the SDK's configuration: telemetry off) before sagemaker
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import LocalSageMakerService
from mlops_dagster.serving import gateway, process

NAME = "gateway-dev"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


@dataclass
class Served:
    home: Path
    sm: LocalSageMakerService
    url: str
    expected: list[float]


def deploy(home: Path, scratch: Path, name: str, seed: int = 1) -> tuple[LocalSageMakerService, list[float]]:
    store = LocalObjectStore(root=str(home / "s3"))
    sm = LocalSageMakerService(home, store)
    model = forest(seed)
    artifact = upload(store, f"m{seed}", pack(scratch / f"m{seed}", model), model)
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    deployable(sm, name, register(sm, artifact, artifact.sha256))
    assert sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    return sm, artifact.predict()


def stop_all(home: Path, sm: LocalSageMakerService, before: set[int]) -> None:
    sm.stop_all_endpoints()
    gateway.stop_gateway(home)
    for pid, proc in list(process._children.items()):
        if pid not in before and proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("mlops-home")
    before = set(process._children)
    sm, expected = deploy(home, tmp_path_factory.mktemp("artifacts"), NAME)
    try:
        yield Served(home, sm, json.loads(gateway.runtime_path(home).read_text())["url"], expected)
    finally:
        stop_all(home, sm, before)


@pytest.fixture
def runtime(served, local_only):
    """botocore's own sagemaker-runtime client, pointed at the gateway (any credentials: not checked)."""
    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1")
    yield session.client("sagemaker-runtime", endpoint_url=served.url, config=NO_RETRIES)
    assert local_only == []  # nothing tried to leave the machine


def client_error(call, **params) -> ClientError:
    with pytest.raises(ClientError) as err:
        call(**params)
    return err.value


def test_boto3_invoke_endpoint_gets_the_prediction_and_the_runtime_headers(served, runtime):
    response = runtime.invoke_endpoint(
        EndpointName=NAME,
        Body=csv_body(ROWS),
        ContentType="text/csv",
        Accept="application/json",
        CustomAttributes="trace=1",
        InferenceId="request-1",
        TargetVariant="AllTraffic",
    )
    assert json.loads(response["Body"].read())["predictions"] == pytest.approx(served.expected, rel=1e-12)
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    # The scikit-learn container returns no custom attributes; neither does the local server.
    assert "CustomAttributes" not in response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ResponseMetadata"]["RequestId"]

    csv = runtime.invoke_endpoint(
        EndpointName=NAME, Body=csv_body(ROWS.head(2)), ContentType="text/csv", Accept="text/csv"
    )
    assert csv["ContentType"].startswith("text/csv")
    assert [float(v) for v in csv["Body"].read().decode().split()] == pytest.approx(served.expected[:2], rel=1e-12)


def test_the_sdk_predictors_work_unchanged(served, local_only, monkeypatch):
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import CSVSerializer
    from sagemaker.sklearn.model import SKLearnPredictor

    boto_session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1")
    client = boto_session.client("sagemaker-runtime", endpoint_url=served.url, config=NO_RETRIES)
    session = sagemaker.Session(boto_session=boto_session, sagemaker_runtime_client=client)
    predictor = Predictor(NAME, session, serializer=CSVSerializer(), deserializer=JSONDeserializer())
    assert predictor.predict(ROWS.values)["predictions"] == pytest.approx(served.expected, rel=1e-12)

    # AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME: a session's own runtime client goes to the gateway.
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", served.url)
    plain = sagemaker.Session(boto_session=boto_session)
    sklearn = SKLearnPredictor(NAME, plain, serializer=CSVSerializer(), deserializer=JSONDeserializer())
    assert sklearn.predict(ROWS.head(3).values.tolist())["predictions"] == pytest.approx(served.expected[:3], rel=1e-12)
    assert local_only == []


def test_an_unknown_endpoint_is_a_validation_error(runtime):
    err = client_error(runtime.invoke_endpoint, EndpointName="nope", Body=b"1,2", ContentType="text/csv")
    assert err.response["Error"] == {
        "Code": "ValidationError",
        "Message": "Endpoint nope of account 000000000000 not found.",
    }
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert isinstance(err, runtime.exceptions.ValidationError)

    err = client_error(
        runtime.invoke_endpoint, EndpointName=NAME, Body=b"1", ContentType="text/csv", TargetVariant="Blue"
    )
    assert (
        err.response["Error"]["Code"] == "ValidationError" and "TargetVariant Blue" in err.response["Error"]["Message"]
    )


def test_a_model_server_error_is_a_model_error_with_the_original_answer(runtime):
    err = client_error(runtime.invoke_endpoint, EndpointName=NAME, Body=b"1.0,2.0\n", ContentType="text/csv")
    assert isinstance(err, runtime.exceptions.ModelError)
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err.response["Error"]["Code"] == "ModelError"
    assert err.response["Error"]["Message"].startswith("Received client error (400) from primary with message")
    assert err.response["OriginalStatusCode"] == 400
    assert "row 1" in err.response["OriginalMessage"]
    assert err.response["LogStreamArn"] == (
        f"arn:aws:logs:us-east-1:000000000000:log-group:/aws/sagemaker/Endpoints/{NAME}"
    )


def test_a_body_over_6_mb_is_the_runtimes_413(runtime):
    body = b"0" * (6 * 1024 * 1024 + 1)
    err = client_error(runtime.invoke_endpoint, EndpointName=NAME, Body=body, ContentType="text/csv")
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert err.response["Error"]["Code"] == "413"
    assert "6291456" in err.response["Error"]["Message"]


def test_runtime_json_lives_with_the_endpoints_and_a_dead_gateway_is_restarted(tmp_path, local_only):
    home, before = tmp_path / "home", set(process._children)
    home.mkdir()
    sm, _ = deploy(home, tmp_path / "artifacts", "gw-life")
    try:
        path = gateway.runtime_path(home)
        first = json.loads(path.read_text())
        assert first["url"] == f"http://127.0.0.1:{first['port']}"
        assert gateway.is_alive(gateway.read_gateway(home))

        os.kill(first["pid"], signal.SIGKILL)  # the next deploy notices and starts another
        psutil.Process(first["pid"]).wait(10)
        sm.update_endpoint(EndpointName="gw-life", EndpointConfigName="gw-life")
        second = gateway.read_gateway(home)
        assert second.pid != first["pid"] and gateway.is_alive(second)

        sm.delete_endpoint(EndpointName="gw-life")  # the last endpoint: the gateway stops with it
        assert not path.exists()
        assert not psutil.pid_exists(second.pid) or psutil.Process(second.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        stop_all(home, sm, before)
    assert local_only == []


def test_the_gateways_file_name_is_not_an_endpoint_environment(served):
    err = client_error(
        served.sm.create_endpoint,
        EndpointName="clash",
        EndpointConfigName=NAME,
        Tags=[{"Key": "mlops:environment", "Value": "runtime"}],
    )
    assert "'runtime' is reserved" in err.response["Error"]["Message"]


def test_make_runs_report_says_how_to_call_the_gateway(served, local_only, capsys, tmp_path):
    from mlops_dagster.report import runtime_usage

    row = ",".join(repr(float(v)) for v in ROWS.iloc[0])
    curl = f"curl -s -X POST http://127.0.0.1:1/invocations -H 'Content-Type: text/csv' --data-binary '{row}'"
    usage = runtime_usage(served.home, NAME, curl)
    assert f"{served.url}/endpoints/{NAME}/invocations" in usage and row in usage
    # The Python lines it prints run as they are and print the prediction.
    lines = usage.splitlines()
    start = lines.index("  From Python:") + 1
    exec("\n".join(line.strip() for line in lines[start : start + 4]), {})  # noqa: S102 (our own text)
    assert json.loads(capsys.readouterr().out)["predictions"] == pytest.approx(served.expected[:1], rel=1e-12)
    assert local_only == []
    # So does its curl line (where curl is installed).
    command = next(line.strip() for line in lines if line.strip().startswith("curl "))
    if shutil.which("curl"):
        answer = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(answer.stdout)["predictions"] == pytest.approx(served.expected[:1], rel=1e-12)
    assert runtime_usage(tmp_path, NAME, curl) is None  # no gateway recorded: nothing to say


def test_a_failure_of_the_gateway_itself_is_internal_failure(tmp_path, monkeypatch):
    """Called as ASGI (no server): a bug below the handler answers the runtime's InternalFailure (500)."""
    from mlops_dagster.sagemaker.local.runtime import LocalSageMakerRuntime

    def broken(self, **params):
        raise RuntimeError("state.db is unreadable")

    monkeypatch.setattr(LocalSageMakerRuntime, "invoke_endpoint", broken)
    app = gateway.create_app(tmp_path, "us-east-1", "000000000000")
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"1,2", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": f"/endpoints/{NAME}/invocations", "raw_path": b"",
        "headers": [(b"content-type", b"text/csv")], "query_string": b"", "http_version": "1.1",
        "scheme": "http", "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2), "root_path": "",
    }  # fmt: skip
    with pytest.raises(RuntimeError, match="state.db is unreadable"):  # re-raised to uvicorn, which logs it
        asyncio.run(app(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 500
    assert (b"x-amzn-errortype", b"InternalFailure") in start["headers"]
    assert "RuntimeError: state.db is unreadable" in json.loads(body)["message"]


def test_an_endpoint_served_without_a_gateway_gets_one_when_it_is_next_read(served):
    """An endpoint deployed before the gateway existed (or whose gateway was stopped alone): describing it starts one."""
    gateway.stop_gateway(served.home)
    assert not gateway.runtime_path(served.home).exists()
    assert served.sm.describe_endpoint(EndpointName=NAME)["EndpointStatus"] == "InService"
    record = gateway.read_gateway(served.home)
    assert record is not None and gateway.is_alive(record)
    served.url = record.url  # the port may differ: the tests after this one use the new address


def test_a_gateway_with_no_endpoint_left_exits_by_itself(tmp_path):
    """Endpoints gone without stop_endpoint's hook (a wiped folder, a caller that died): it does not linger."""
    before = set(process._children)
    record = gateway.ensure_gateway(tmp_path, "us-east-1", "000000000000")  # no endpoint record at all
    try:
        assert gateway.is_alive(record)
        deadline = gateway.WATCH_SECONDS * 2 + process.START_DEADLINE_SECONDS  # bounds the wait only
        # SIGTERM to itself: uvicorn shuts down, then re-raises the signal (the exit status says which)
        assert process._children[record.pid].wait(deadline) == -signal.SIGTERM
        assert not gateway.runtime_path(tmp_path).exists()
    finally:
        stop_all_children(before)


def stop_all_children(before: set[int]) -> None:
    for pid, proc in list(process._children.items()):
        if pid not in before and proc.poll() is None:
            proc.kill()
            proc.wait(10)
