"""Endpoint deployment on the aws backend, against moto in-process (mock_aws).

moto 5.2.5 has no UpdateEndpoint: an operation-scoped ``before-call`` handler answers it and
moves moto's endpoint to the new config, as SageMaker does when a blue/green update completes
(a Stubber would capture every call of the client, and the rest must reach moto).
moto's InvokeEndpoint returns queued bodies: the test queues the predictions.
"""

import json

import boto3
import pytest
from aws_helpers import on_new_sessions
from botocore.awsrequest import AWSResponse
from dagster import AssetObservation, Output, build_asset_context
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends
from moto.sagemakerruntime.models import sagemakerruntime_backends

from mlops_dagster import build_definitions
from mlops_dagster.assets.deployment import EndpointConfig, dev_endpoint, prod_endpoint, staging_endpoint
from mlops_dagster.datasets import synthetic_boston, to_csv_bytes
from mlops_dagster.settings import Settings

REGION = "us-east-1"
BUCKET = "mlops-deploy-test"
DATASET = f"s3://{BUCKET}/mlops/data/abc/"
ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/SageMakerExecutionRole-test"


class _Empty:
    def stream(self, *_a, **_k):
        yield b""


class UpdateEndpointAnswer:
    """Answers UpdateEndpoint and switches moto's endpoint to the new config."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, params, context, **_):
        if model.name != "UpdateEndpoint":
            return None
        request = json.loads(params["body"])
        self.calls.append(request)
        endpoint = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].endpoints[request["EndpointName"]]
        endpoint.endpoint_config_name = request["EndpointConfigName"]
        parsed = {"EndpointArn": endpoint.arn, "ResponseMetadata": {"HTTPStatusCode": 200}}
        return AWSResponse("http://canned.invalid/", 200, {}, _Empty()), parsed

    def install(self, session: boto3.Session) -> None:
        session.events.register("before-call.sagemaker.UpdateEndpoint", self)


@pytest.fixture
def aws(mlops_home, monkeypatch):
    with mock_aws():
        settings = Settings.from_env({
            "MLOPS_BACKEND": "aws", "MLOPS_REGION": REGION, "MLOPS_BUCKET": BUCKET,
            "MLOPS_ROLE_ARN": ROLE, "MLOPS_HOME": str(mlops_home),
        })  # fmt: skip
        defs = build_definitions(settings)
        updates = UpdateEndpointAnswer()
        on_new_sessions(monkeypatch, updates.install)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="mlops/data/abc/validation.csv", Body=to_csv_bytes(synthetic_boston(20, 3)))
        client = boto3.client("sagemaker", region_name=REGION)
        client.create_model_package_group(ModelPackageGroupName="mlops-pipeline-models")
        yield {"defs": defs, "settings": settings, "client": client, "updates": updates}


def _package(client, status="PendingManualApproval") -> str:
    return client.create_model_package(
        ModelPackageGroupName="mlops-pipeline-models",
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
                            "ModelDataUrl": f"s3://{BUCKET}/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]  # fmt: skip


def _registered(arn: str, status: str = "PendingManualApproval") -> dict:
    return {
        "model_package_arn": arn, "model_package_group": "mlops-pipeline-models", "version": 1,
        "approval_status": status, "target": "medv", "lineage": {"dataset_uri": DATASET},
    }  # fmt: skip


def _queue_predictions(n: int, times: int = 4) -> None:
    backend = sagemakerruntime_backends[DEFAULT_ACCOUNT_ID][REGION]
    body = json.dumps({"predictions": [21.5] * n})
    backend.results_queue.extend([(body, "application/json", "AllTraffic", "")] * times)


def _invoke(asset, world, **inputs):
    resources = {k: world["defs"].resources[k] for k in ("settings", "sagemaker", "store")}
    with build_asset_context(resources=resources) as context:
        return list(asset(context, config=EndpointConfig(wait_delay_seconds=1, wait_max_attempts=5), **inputs))


def test_dev_endpoint_is_created_then_updated_blue_green(aws):
    client = aws["client"]
    first, second = _package(client), _package(client)
    _queue_predictions(5)
    [created] = _invoke(dev_endpoint, aws, registered_model=_registered(first))
    assert isinstance(created, Output)
    assert created.value["model_package_arn"] == first and created.value["changed"]
    endpoint = client.describe_endpoint(EndpointName="mlops-pipeline-dev")
    assert endpoint["EndpointStatus"] == "InService"
    config = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelPackageName"] == first
    assert model["ExecutionRoleArn"] == ROLE
    assert created.metadata["curl"].value.startswith(
        "curl -s -X POST https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/mlops-pipeline-dev/invocations"
    )

    [same] = _invoke(dev_endpoint, aws, registered_model=_registered(first))
    assert same.value["changed"] is False and aws["updates"].calls == []

    [updated] = _invoke(dev_endpoint, aws, registered_model=_registered(second))
    assert updated.value["model_package_arn"] == second
    [request] = aws["updates"].calls
    assert request["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE"
    assert "AutoRollbackConfiguration" not in request["DeploymentConfig"]


def test_staging_skips_without_an_approved_package_and_prod_follows_staging(aws):
    client = aws["client"]
    pending = _package(client)
    [skipped] = _invoke(staging_endpoint, aws, registered_model=_registered(pending))
    assert isinstance(skipped, AssetObservation)
    reason = skipped.metadata["skipped"].value
    assert reason.startswith("approval gate: no Approved package in mlops-pipeline-models")
    assert "approve one with the approve_model job" in reason

    approved = _package(client, "Approved")
    _queue_predictions(5, times=8)
    [staged] = _invoke(staging_endpoint, aws, registered_model=_registered(pending))
    assert staged.value["model_package_arn"] == approved

    [promoted] = _invoke(prod_endpoint, aws, staging_endpoint=staged.value, registered_model=_registered(pending))
    assert promoted.value["endpoint_name"] == "mlops-pipeline-prod"
    assert promoted.value["model_package_arn"] == approved

    stale = {**staged.value, "model_package_arn": pending}
    [refused] = _invoke(prod_endpoint, aws, staging_endpoint=stale, registered_model=_registered(pending))
    assert isinstance(refused, AssetObservation)
    assert refused.metadata["skipped"].value.startswith(f"staging gate: staging serves {approved}")


def test_endpoint_configs_carry_data_capture_and_a_capture_change_updates_the_endpoint(aws):
    client, package = aws["client"], _package(aws["client"])
    _queue_predictions(5, times=12)

    def deploy(**capture):
        resources = {k: aws["defs"].resources[k] for k in ("settings", "sagemaker", "store")}
        config = EndpointConfig(wait_delay_seconds=1, wait_max_attempts=5, **capture)
        with build_asset_context(resources=resources) as context:
            [output] = dev_endpoint(context, config=config, registered_model=_registered(package))
        endpoint = client.describe_endpoint(EndpointName="mlops-pipeline-dev")
        described = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        return output, described.get("DataCaptureConfig")

    created, capture = deploy()
    assert capture == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": f"s3://{BUCKET}/mlops/datacapture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
    }
    prefix = f"s3://{BUCKET}/mlops/datacapture/mlops-pipeline-dev/AllTraffic/"
    assert created.metadata["capture_destination"].value == prefix and created.value["capture_prefix"] == prefix
    assert created.metadata["capture_sampling_percentage"].value == 100

    same, _ = deploy()
    assert same.value["changed"] is False and aws["updates"].calls == []

    sampled, capture = deploy(capture_sampling_percentage=20, capture_destination=f"s3://{BUCKET}/elsewhere/")
    assert sampled.value["changed"] is True and len(aws["updates"].calls) == 1  # same package, new config
    assert capture["InitialSamplingPercentage"] == 20 and capture["DestinationS3Uri"] == f"s3://{BUCKET}/elsewhere"

    off, capture = deploy(capture_enabled=False)
    assert off.value["changed"] is True and capture in (None, {})
    assert off.metadata["capture_destination"].value == "off" and off.value["capture_prefix"] is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("capture_destination", "https://bucket/x", "capture_destination must be an s3:// prefix"),
        ("capture_destination", "s3://bucket/a//b", "empty segment"),
        ("capture_sampling_percentage", 101, "less than or equal to 100"),
    ],
)
def test_capture_settings_of_an_endpoint_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        EndpointConfig(**{field: value})
