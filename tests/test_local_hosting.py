"""The local SageMaker service's hosting API and its runtime, against real endpoint server processes.

Models are tiny random forests on the synthetic Boston data, packed as SageMaker packs a model
directory (model.joblib and features.json at the archive root), put in the local ObjectStore and
registered as model packages, with and without the "mlops:model_sha256" that deployments require.
Every server a test starts is stopped by the fixture, whatever the test does. Polling loops have
deadlines; nothing asserts on timings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import pandas as pd
import psutil
import pytest
from botocore.exceptions import ClientError, ParamValidationError, WaiterError
from botocore.response import StreamingBody
from sklearn.ensemble import RandomForestRegressor

from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import LocalSageMakerRuntime, LocalSageMakerService
from mlops_dagster.serving import process

ROLE = "arn:aws:iam::000000000000:role/local"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
GROUP = "hosting-models"
BUCKET = "mlops-local"
ROWS = synthetic_boston(25, seed=99)[BOSTON_FEATURES]
DEADLINE = 30  # seconds; only bounds polling on a loaded machine
WAIT = {"Delay": 1, "MaxAttempts": 60}


# --- models, store and registry ---------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    uri: str
    sha256: str
    model: RandomForestRegressor | None

    def predict(self, frame: pd.DataFrame = ROWS) -> list[float]:
        return self.model.predict(frame).tolist()


def forest(seed: int, **params) -> RandomForestRegressor:
    frame = synthetic_boston(300, seed=seed)
    model = RandomForestRegressor(n_estimators=10, random_state=seed, n_jobs=1, **params)
    return model.fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET])


def pack(directory: Path, estimator) -> bytes:
    """model.joblib + features.json at the archive root, as SageMaker packs /opt/ml/model."""
    model_dir = directory / "model"
    model_dir.mkdir(parents=True)
    joblib.dump(estimator, model_dir / "model.joblib")
    (model_dir / "features.json").write_text(json.dumps(BOSTON_FEATURES))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def upload(store: LocalObjectStore, key: str, data: bytes, model=None) -> Artifact:
    info = store.put_bytes(f"s3://{BUCKET}/{key}/model.tar.gz", data)
    return Artifact(info.uri, hashlib.sha256(data).hexdigest(), model)


def register(sm: LocalSageMakerService, artifact: Artifact, sha256: str | None) -> str:
    """A package version whose container is ``artifact``; ``sha256`` recorded as the registry asset does."""
    extra = {"CustomerMetadataProperties": {"mlops:model_sha256": sha256}} if sha256 else {}
    return sm.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": artifact.uri}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        **extra,
    )["ModelPackageArn"]


@dataclass
class World:
    home: Path
    sm: LocalSageMakerService
    runtime: LocalSageMakerRuntime
    a: Artifact
    b: Artifact
    corrupt: Artifact
    # a, b (sha recorded), unrecorded (b's artifact, no sha), corrupt, mismatch (records a's hash, holds b)
    packages: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("mlops-home")
    scratch = tmp_path_factory.mktemp("artifacts")
    store = LocalObjectStore(root=str(home / "s3"))
    sm = LocalSageMakerService(home, store)
    a = upload(store, "a", pack(scratch / "a", forest(1)), forest(1))
    b = upload(store, "b", pack(scratch / "b", forest(2, max_depth=3)), forest(2, max_depth=3))
    corrupt = upload(store, "corrupt", b"\x1f\x8b not really gzip" * 100)
    assert a.predict() != b.predict()
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    packages = {
        "a": register(sm, a, a.sha256),
        "b": register(sm, b, b.sha256),
        "unrecorded": register(sm, b, None),
        "corrupt": register(sm, corrupt, corrupt.sha256),
        "mismatch": register(sm, b, a.sha256),  # the registry says a's bytes; the URI holds b's
    }
    before = set(process._children)
    try:
        yield World(home, sm, LocalSageMakerRuntime(home, store), a, b, corrupt, packages)
    finally:
        stop_everything(home, sm, before)


def stop_everything(home: Path, sm: LocalSageMakerService, started_before: set[int]) -> None:
    """Every endpoint's server, then any other server process this module started."""
    sm.stop_all_endpoints()
    for record in (home / "endpoints").glob("*.json"):
        process.stop_endpoint(home, record.stem)
    for pid, proc in list(process._children.items()):
        if pid not in started_before and proc.poll() is None:
            proc.kill()
            proc.wait(10)


def deployable(sm: LocalSageMakerService, name: str, package: str | None = None, **container) -> str:
    """A model and an endpoint config named ``name`` (one AllTraffic variant)."""
    primary = {"ModelPackageName": package, **container} if package else container
    sm.create_model(ModelName=name, PrimaryContainer=primary, ExecutionRoleArn=ROLE)
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
                "InitialVariantWeight": 1.0,
            }
        ],
    )
    return name


# --- invoking ---------------------------------------------------------------------------------


def csv_body(frame: pd.DataFrame) -> bytes:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in frame.itertuples(index=False)).encode()


def predict_csv(runtime: LocalSageMakerRuntime, name: str, frame: pd.DataFrame = ROWS) -> list[float]:
    response = runtime.invoke_endpoint(
        EndpointName=name, Body=csv_body(frame), ContentType="text/csv", Accept="text/csv"
    )
    assert isinstance(response["Body"], StreamingBody)
    assert response["ContentType"].startswith("text/csv")
    return [float(line) for line in response["Body"].read().decode().splitlines()]


def predict_json(runtime: LocalSageMakerRuntime, name: str, frame: pd.DataFrame = ROWS) -> list[float]:
    body = json.dumps({"instances": frame.to_dict(orient="records")}).encode()
    response = runtime.invoke_endpoint(
        EndpointName=name, Body=io.BytesIO(body), ContentType="application/json", Accept="application/json"
    )
    assert response["ContentType"] == "application/json"
    return json.loads(response["Body"].read())["predictions"]


def error(err: pytest.ExceptionInfo) -> tuple[str, str]:
    return err.value.response["Error"]["Code"], err.value.response["Error"]["Message"]


def server_pid(home: Path, env: str) -> int:
    return process.read_endpoint(home, env).pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_status(sm: LocalSageMakerService, name: str, status: str) -> dict:
    deadline = time.monotonic() + DEADLINE
    while True:
        described = sm.describe_endpoint(EndpointName=name)
        if described["EndpointStatus"] == status or time.monotonic() > deadline:
            return described
        time.sleep(0.1)


# --- the registry keeps what deployments check ------------------------------------------------


def test_model_packages_keep_customer_metadata(world):
    sm, arn = world.sm, world.packages["a"]
    assert sm.describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"] == {
        "mlops:model_sha256": world.a.sha256
    }
    plain = world.packages["unrecorded"]
    assert "CustomerMetadataProperties" not in sm.describe_model_package(ModelPackageName=plain)
    sm.update_model_package(ModelPackageArn=plain, CustomerMetadataProperties={"team": "ml", "x": "1"})
    sm.update_model_package(ModelPackageArn=plain, CustomerMetadataPropertiesToRemove=["x"])
    assert sm.describe_model_package(ModelPackageName=plain)["CustomerMetadataProperties"] == {"team": "ml"}


# --- an endpoint's life -----------------------------------------------------------------------


def test_create_update_roll_back_and_delete(world):
    sm, runtime, home = world.sm, world.runtime, world.home
    name = "hosting-dev"
    deployable(sm, "model-a", world.packages["a"])
    arn = sm.create_endpoint(
        EndpointName=name, EndpointConfigName="model-a", Tags=[{"Key": "mlops:environment", "Value": "dev"}]
    )["EndpointArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:000000000000:endpoint/hosting-dev"

    # Synchronous: the waiter (botocore's own) finds InService on its first call.
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "model-a")
    assert "FailureReason" not in described
    variant = described["ProductionVariants"][0]
    assert (variant["VariantName"], variant["CurrentInstanceCount"], variant["CurrentWeight"]) == ("AllTraffic", 1, 1.0)
    assert variant["DeployedImages"][0]["SpecifiedImage"] == IMAGE
    record = process.read_endpoint(home, "dev")  # the environment came from the tag
    assert (record.sha256, record.model_package_arn) == (world.a.sha256, world.packages["a"])
    assert (home / "sagemaker" / "models" / world.a.sha256 / "model.tar.gz").is_file()
    assert sm.local_endpoint_url(EndpointName=name) == f"{record.url}/invocations"
    assert [e["EndpointName"] for e in sm.list_endpoints(StatusEquals="InService")["Endpoints"]] == [name]

    # The smoke row was one row of zeros as wide as features.json; real requests match the model.
    assert predict_csv(runtime, name) == pytest.approx(world.a.predict(), rel=1e-12)
    assert predict_json(runtime, name) == pytest.approx(world.a.predict(), rel=1e-12)
    response = runtime.invoke_endpoint(EndpointName=name, Body=csv_body(ROWS.head(1)), ContentType="text/csv")
    assert response["InvokedProductionVariant"] == "AllTraffic"

    # A malformed row is the model server's 400, surfaced as SageMaker's ModelError.
    with pytest.raises(runtime.exceptions.ModelError) as err:
        runtime.invoke_endpoint(EndpointName=name, Body=b"1.0,2.0\n", ContentType="text/csv")
    assert err.value.response["OriginalStatusCode"] == 400
    assert "row 1 has 2 values, expected 13" in err.value.response["OriginalMessage"]
    assert error(err)[1].startswith("Received client error (400) from primary with message")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    with pytest.raises(ClientError) as err:
        runtime.invoke_endpoint(EndpointName=name, Body=b"0" * (6 * 1024 * 1024 + 1), ContentType="text/csv")
    assert error(err)[0] == "413"

    # Blue/green to another package; smoke rows from the container Environment (records).
    smoke = json.dumps(ROWS.head(2).to_dict(orient="records"))
    deployable(sm, "model-b", world.packages["b"], Environment={"MLOPS_SMOKE_ROWS": smoke})
    blue_green = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 0,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "endpoint-5xx"}]},
    }
    pid = server_pid(home, "dev")
    sm.update_endpoint(EndpointName=name, EndpointConfigName="model-b", DeploymentConfig=blue_green)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "model-b")
    assert described["LastDeploymentConfig"] == blue_green
    assert server_pid(home, "dev") == pid  # blue/green inside the running server
    expected_b = pytest.approx(world.b.predict(), rel=1e-12)
    assert predict_csv(runtime, name) == expected_b

    # Refused updates leave model-b serving: a corrupt archive (the server's reason) ...
    deployable(sm, "model-corrupt", world.packages["corrupt"], Environment={"MLOPS_SMOKE_ROWS": "[[0]]"})
    sm.update_endpoint(EndpointName=name, EndpointConfigName="model-corrupt")
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "model-b")
    assert described["FailureReason"].startswith("update rolled back: cannot extract model.tar.gz")
    assert predict_csv(runtime, name) == expected_b

    # ... the same archive without smoke rows (this service reads features.json first) ...
    deployable(sm, "model-corrupt-plain", world.packages["corrupt"])
    sm.update_endpoint(EndpointName=name, EndpointConfigName="model-corrupt-plain")
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "model-b")
    assert "not a readable model.tar.gz" in described["FailureReason"]

    # ... and bytes that are not the ones the registry recorded.
    deployable(sm, "model-mismatch", world.packages["mismatch"])
    sm.update_endpoint(EndpointName=name, EndpointConfigName="model-mismatch")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "model-b")
    reason = described["FailureReason"]
    assert reason.startswith("update rolled back: the artifact s3://mlops-local/b/model.tar.gz has sha256")
    assert world.b.sha256 in reason and world.a.sha256 in reason
    assert predict_csv(runtime, name) == expected_b

    # The same package again (same config, or a new config of it): nothing reloads.
    loaded_at = process.endpoint_status(process.read_endpoint(home, "dev"))["live"]["loaded_at"]
    sm.update_endpoint(EndpointName=name, EndpointConfigName="model-b")
    deployable(sm, "model-b-again", world.packages["b"])
    sm.update_endpoint(EndpointName=name, EndpointConfigName="model-b-again")
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "model-b-again")
    assert "FailureReason" not in described
    live = process.endpoint_status(process.read_endpoint(home, "dev"))["live"]
    assert (live["loaded_at"], live["sha256"], server_pid(home, "dev")) == (loaded_at, world.b.sha256, pid)

    # Delete stops the process and removes the record; the name is unknown afterwards.
    sm.delete_endpoint(EndpointName=name)
    assert gone(pid)
    assert not (home / "endpoints" / "dev.json").exists()
    with pytest.raises(ClientError) as err:
        sm.describe_endpoint(EndpointName=name)
    assert error(err) == ("ValidationException", f'Could not find endpoint "{arn}".')
    with pytest.raises(runtime.exceptions.ValidationError) as err:
        predict_csv(runtime, name)
    assert error(err)[1] == f"Endpoint {name} of account 000000000000 not found."
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAIT)


def test_a_dead_server_fails_the_endpoint_and_update_starts_a_new_one(world):
    sm, runtime, home = world.sm, world.runtime, world.home
    name = "crash"  # no mlops:environment tag: the environment is the name
    deployable(sm, "crash-a", world.packages["a"])
    deployable(sm, "crash-b", world.packages["b"])
    sm.create_endpoint(EndpointName=name, EndpointConfigName="crash-a")
    pid = server_pid(home, "crash")
    assert predict_csv(runtime, name) == pytest.approx(world.a.predict(), rel=1e-12)

    os.kill(pid, signal.SIGKILL)
    # The runtime notices first (the request fails): the endpoint is no longer InService.
    deadline = time.monotonic() + DEADLINE
    while True:
        with pytest.raises(ClientError) as err:
            predict_csv(runtime, name)
        if error(err)[0] == "ValidationError" or time.monotonic() > deadline:
            break
    assert error(err) == ("ValidationError", f"Endpoint {name} of account 000000000000 not found.")
    described = wait_for_status(sm, name, "Failed")
    assert described["EndpointStatus"] == "Failed"
    assert f"pid {pid}" in described["FailureReason"] and "not running any more" in described["FailureReason"]
    with pytest.raises(WaiterError, match="terminal failure state"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)

    sm.update_endpoint(EndpointName=name, EndpointConfigName="crash-b")
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "crash-b")
    assert server_pid(home, "crash") != pid
    assert predict_csv(runtime, name) == pytest.approx(world.b.predict(), rel=1e-12)

    new_pid = server_pid(home, "crash")
    sm.delete_endpoint(EndpointName=name)
    assert gone(new_pid) and not (home / "endpoints" / "crash.json").exists()

    # Delete tolerates a dead process; create after delete starts a fresh server.
    sm.create_endpoint(EndpointName=name, EndpointConfigName="crash-a")
    os.kill(server_pid(home, "crash"), signal.SIGKILL)
    sm.delete_endpoint(EndpointName=name)
    assert not (home / "endpoints" / "crash.json").exists()


def test_a_refused_create_is_failed_and_leaves_no_server(world):
    sm, home = world.sm, world.home
    name = "refused"
    deployable(sm, "refused-mismatch", world.packages["mismatch"])
    sm.create_endpoint(EndpointName=name, EndpointConfigName="refused-mismatch")
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "Failed"
    assert described["FailureReason"].startswith("deploy failed: the artifact")
    assert world.a.sha256 in described["FailureReason"] and world.b.sha256 in described["FailureReason"]
    assert "ProductionVariants" not in described
    assert process.read_endpoint(home, "refused") is None  # the idle server it started is gone
    with pytest.raises(WaiterError, match="terminal failure state"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    with pytest.raises(ClientError) as err:
        sm.local_endpoint_url(EndpointName=name)
    assert "is Failed, not InService" in error(err)[1]

    # Locally (unlike SageMaker) a Failed endpoint can be updated.
    deployable(sm, "refused-a", world.packages["a"])
    sm.update_endpoint(EndpointName=name, EndpointConfigName="refused-a")
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    assert predict_json(world.runtime, name) == pytest.approx(world.a.predict(), rel=1e-12)
    sm.delete_endpoint(EndpointName=name)


def test_a_deploy_whose_process_died_is_not_left_in_progress(world):
    """A caller killed mid-deploy: the next reader settles the endpoint on what actually serves."""
    sm = world.sm
    deployable(sm, "orphan", world.packages["a"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    endpoint = sm.hosting._insert_endpoint("orphan", "orphan", "orphan", [], None)
    with sm.hosting.db.write() as conn:
        conn.execute("UPDATE hosting_endpoints SET owner_pid = ? WHERE arn = ?", (dead_pid, endpoint.arn))
    described = sm.describe_endpoint(EndpointName="orphan")
    assert described["EndpointStatus"] == "Failed"
    assert (
        f"the process (pid {dead_pid}) creating endpoint orphan exited before it finished" in described["FailureReason"]
    )
    sm.delete_endpoint(EndpointName="orphan")


# --- nothing is unpickled whose hash is not recorded ------------------------------------------


def test_a_package_whose_hash_is_not_recorded_is_refused_and_the_old_model_keeps_serving(world):
    sm, runtime, home = world.sm, world.runtime, world.home
    name = "unverified"
    deployable(sm, "unverified-a", world.packages["a"])
    sm.create_endpoint(EndpointName=name, EndpointConfigName="unverified-a")
    try:
        pid = server_pid(home, name)
        # A package that recorded its hash when it was created, and has it removed before the deploy.
        removed = register(sm, world.b, world.b.sha256)
        deployable(sm, "unverified-removed", removed)
        deployable(sm, "unverified-never", world.packages["unrecorded"])  # created without one
        sm.update_model_package(ModelPackageArn=removed, CustomerMetadataPropertiesToRemove=["mlops:model_sha256"])
        for config, package in (("unverified-removed", removed), ("unverified-never", world.packages["unrecorded"])):
            sm.update_endpoint(EndpointName=name, EndpointConfigName=config)
            described = sm.describe_endpoint(EndpointName=name)
            assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "unverified-a")
            reason = described["FailureReason"]
            assert reason.startswith(
                f"update rolled back: model package {package} records no mlops:model_sha256 in its "
                f"CustomerMetadataProperties, so its artifact {world.b.uri} is not loaded"
            )
            assert "UpdateModelPackage(" in reason and "materialize trained_model and registered_model" in reason
            assert predict_csv(runtime, name) == pytest.approx(world.a.predict(), rel=1e-12)
            assert server_pid(home, name) == pid
            assert process.read_endpoint(home, name).sha256 == world.a.sha256

        # Recording the hash is what makes it deployable.
        sm.update_model_package(
            ModelPackageArn=removed, CustomerMetadataProperties={"mlops:model_sha256": world.b.sha256}
        )
        sm.update_endpoint(EndpointName=name, EndpointConfigName="unverified-removed")
        assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == "unverified-removed"
        assert predict_csv(runtime, name) == pytest.approx(world.b.predict(), rel=1e-12)
    finally:
        sm.delete_endpoint(EndpointName=name)

    # A new endpoint of an unrecorded package fails, and leaves no server.
    deployable(sm, "unverified-create", world.packages["unrecorded"])
    sm.create_endpoint(EndpointName="unverified-create", EndpointConfigName="unverified-create")
    described = sm.describe_endpoint(EndpointName="unverified-create")
    assert described["EndpointStatus"] == "Failed"
    assert described["FailureReason"].startswith(
        f"deploy failed: model package {world.packages['unrecorded']} records no"
    )
    assert process.read_endpoint(home, "unverified-create") is None
    sm.delete_endpoint(EndpointName="unverified-create")


def test_a_model_with_a_direct_model_data_url_needs_its_hash_as_a_tag(world):
    sm, runtime = world.sm, world.runtime
    container = {"Image": IMAGE, "ModelDataUrl": world.a.uri}

    def tagged(sha256: str) -> list[dict]:
        return [{"Key": "mlops:model_sha256", "Value": sha256}]

    code, message = client_error(sm.create_model, ModelName="direct-untagged", PrimaryContainer=container)
    assert code == "ValidationException"
    assert message.startswith(
        f"model direct-untagged gives ModelDataUrl {world.a.uri} without a mlops:model_sha256 tag, so the artifact "
        "is not loaded"
    )
    assert "Tags=[{'Key': 'mlops:model_sha256'" in message and "ModelPackageName" in message
    message = client_error(sm.create_model, ModelName="direct-bad", PrimaryContainer=container, Tags=tagged("abc"))[1]
    assert message == "model direct-bad: tag mlops:model_sha256 'abc' is not a sha256 (64 hex digits)"
    for refused in ("direct-untagged", "direct-bad"):
        assert client_error(sm.describe_model, ModelName=refused)[1].startswith("Could not find model")

    sm.create_model(ModelName="direct-a", PrimaryContainer=container, Tags=tagged(world.a.sha256.upper()))
    sm.create_model(ModelName="direct-wrong", PrimaryContainer={**container, "ModelDataUrl": world.b.uri},
                    Tags=tagged(world.a.sha256))  # fmt: skip
    for model in ("direct-a", "direct-wrong"):
        sm.create_endpoint_config(
            EndpointConfigName=model, ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": model}]
        )
    sm.create_endpoint(EndpointName="direct", EndpointConfigName="direct-a")
    try:
        assert sm.describe_endpoint(EndpointName="direct")["EndpointStatus"] == "InService"
        assert predict_csv(runtime, "direct") == pytest.approx(world.a.predict(), rel=1e-12)
        sm.update_endpoint(EndpointName="direct", EndpointConfigName="direct-wrong")
        described = sm.describe_endpoint(EndpointName="direct")
        assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "direct-a")
        assert described["FailureReason"] == (
            f"update rolled back: the artifact {world.b.uri} has sha256 {world.b.sha256}, but model direct-wrong's "
            f"tag mlops:model_sha256 records {world.a.sha256}: refusing to deploy it"
        )
        assert predict_csv(runtime, "direct") == pytest.approx(world.a.predict(), rel=1e-12)
    finally:
        sm.delete_endpoint(EndpointName="direct")


# --- errors, as SageMaker gives them -----------------------------------------------------------


def client_error(call, **params) -> tuple[str, str]:
    with pytest.raises(ClientError) as err:
        call(**params)
    return error(err)


def test_unknown_names_and_duplicates(world):
    sm, arn = world.sm, "arn:aws:sagemaker:us-east-1:000000000000"
    assert client_error(sm.describe_endpoint, EndpointName="nope") == (
        "ValidationException",
        f'Could not find endpoint "{arn}:endpoint/nope".',
    )
    assert client_error(sm.delete_endpoint, EndpointName="nope")[0] == "ValidationException"
    assert client_error(sm.update_endpoint, EndpointName="nope", EndpointConfigName="x")[0] == "ValidationException"
    assert client_error(sm.describe_model, ModelName="Nope") == (
        "ValidationException",
        f'Could not find model "{arn}:model/nope".',
    )
    assert client_error(sm.delete_model, ModelName="nope")[0] == "ValidationException"
    assert client_error(sm.describe_endpoint_config, EndpointConfigName="nope") == (
        "ValidationException",
        f'Could not find endpoint configuration "{arn}:endpoint-config/nope".',
    )
    assert client_error(sm.delete_endpoint_config, EndpointConfigName="nope")[0] == "ValidationException"
    assert client_error(sm.create_endpoint, EndpointName="e", EndpointConfigName="nope")[1].startswith(
        "Could not find endpoint configuration"
    )

    deployable(sm, "dup", world.packages["a"])
    code, message = client_error(
        sm.create_model, ModelName="dup", PrimaryContainer={"ModelPackageName": world.packages["a"]}
    )
    assert (code, message) == ("ValidationException", f'Cannot create already existing model "{arn}:model/dup".')
    code, message = client_error(
        sm.create_endpoint_config,
        EndpointConfigName="dup",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "dup"}],
    )
    assert message == f'Cannot create already existing endpoint configuration "{arn}:endpoint-config/dup".'

    with pytest.raises(world.runtime.exceptions.ValidationError) as err:
        world.runtime.invoke_endpoint(EndpointName="nope", Body=b"1", ContentType="text/csv")
    assert error(err) == ("ValidationError", "Endpoint nope of account 000000000000 not found.")
    with pytest.raises(WaiterError, match="ValidationException"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName="nope", WaiterConfig=WAIT)


def test_requests_the_local_service_cannot_serve_are_refused(world):
    sm, package = world.sm, world.packages["a"]
    with pytest.raises(ParamValidationError):
        sm.create_endpoint(EndpointName="e")  # EndpointConfigName is required, as botocore says
    with pytest.raises(ValueError, match="Waiter does not exist: image_created"):
        sm.get_waiter("image_created")

    def create_model(**params) -> str:
        return client_error(sm.create_model, ModelName="bad", ExecutionRoleArn=ROLE, **params)[1]

    missing = "arn:aws:sagemaker:us-east-1:000000000000:model-package/hosting-models/99"
    assert missing in create_model(PrimaryContainer={"ModelPackageName": missing})
    assert "needs Image" in create_model(PrimaryContainer={"ModelDataUrl": world.a.uri})
    assert "MLOPS_SMOKE_ROWS is not JSON" in create_model(
        PrimaryContainer={"ModelPackageName": package, "Environment": {"MLOPS_SMOKE_ROWS": "[1,"}}
    )
    assert "one container per model" in create_model(
        Containers=[{"ModelPackageName": package}, {"ModelPackageName": package}]
    )
    assert "multi-model" in create_model(
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://b/k", "Mode": "MultiModel"}
    )

    deployable(sm, "two", package)
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "two",
        "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large",
    }
    assert (
        "one production variant"
        in client_error(
            sm.create_endpoint_config,
            EndpointConfigName="two-variants",
            ProductionVariants=[variant, {**variant, "VariantName": "Canary"}],
        )[1]
    )
    assert (
        "AsyncInferenceConfig"
        in client_error(
            sm.create_endpoint_config,
            EndpointConfigName="async",
            ProductionVariants=[variant],
            AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://b/out"}},
        )[1]
    )
    assert (
        'Could not find model "'
        in client_error(
            sm.create_endpoint_config,
            EndpointConfigName="ghost",
            ProductionVariants=[{**variant, "ModelName": "ghost"}],
        )[1]
    )

    # The environment (endpoints/<env>.json) must be a usable file name, and one endpoint's alone.
    message = client_error(sm.create_endpoint, EndpointName="Upper-Case", EndpointConfigName="two")[1]
    assert "environment from its name (no mlops:environment tag)" in message
    with sm.hosting.db.read() as conn:  # nothing was recorded for the refused endpoints
        assert conn.execute("SELECT COUNT(*) FROM hosting_endpoints WHERE name = 'Upper-Case'").fetchone()[0] == 0


def test_an_environment_belongs_to_one_endpoint(world):
    sm = world.sm
    deployable(sm, "envs", world.packages["a"])
    sm.create_endpoint(
        EndpointName="envs-one", EndpointConfigName="envs", Tags=[{"Key": "mlops:environment", "Value": "shared-env"}]
    )
    try:
        code, message = client_error(
            sm.create_endpoint,
            EndpointName="envs-two",
            EndpointConfigName="envs",
            Tags=[{"Key": "mlops:environment", "Value": "shared-env"}],
        )
        assert code == "ValidationException" and "endpoint envs-one already serves environment shared-env" in message
        pid = server_pid(world.home, "shared-env")
        assert "envs-one" in sm.stop_all_endpoints()
        described = sm.describe_endpoint(EndpointName="envs-one")
        assert described["EndpointStatus"] == "Failed" and "stop_all_endpoints" in described["FailureReason"]
        assert gone(pid)
    finally:
        sm.delete_endpoint(EndpointName="envs-one")


def test_listing_models_configs_and_endpoints(world):
    sm = world.sm
    for name in ("list-1", "list-2", "list-3"):
        deployable(sm, name, world.packages["a"])
    models = sm.list_models(NameContains="list-", SortBy="Name", SortOrder="Ascending")["Models"]
    assert [m["ModelName"] for m in models] == ["list-1", "list-2", "list-3"]
    page = sm.list_models(NameContains="list-", SortBy="Name", SortOrder="Descending", MaxResults=2)
    assert [m["ModelName"] for m in page["Models"]] == ["list-3", "list-2"]
    rest = sm.list_models(NameContains="list-", SortBy="Name", SortOrder="Descending", NextToken=page["NextToken"])
    assert [m["ModelName"] for m in rest["Models"]] == ["list-1"]
    configs = sm.list_endpoint_configs(NameContains="list-")["EndpointConfigs"]
    assert {c["EndpointConfigName"] for c in configs} == {"list-1", "list-2", "list-3"}

    described = sm.describe_model(ModelName="list-1")
    assert described["PrimaryContainer"] == {"ModelPackageName": world.packages["a"]}
    assert (described["ExecutionRoleArn"], described["EnableNetworkIsolation"]) == (ROLE, False)
    config = sm.describe_endpoint_config(EndpointConfigName="list-1")
    assert config["ProductionVariants"][0]["ModelName"] == "list-1"
    assert config["EndpointConfigArn"].endswith(":endpoint-config/list-1")

    sm.delete_endpoint_config(EndpointConfigName="list-3")
    sm.delete_model(ModelName="list-3")
    assert [m["ModelName"] for m in sm.list_models(NameContains="list-")["Models"]] == ["list-2", "list-1"]
    assert sm.list_endpoints(NameContains="no-such-endpoint")["Endpoints"] == []
