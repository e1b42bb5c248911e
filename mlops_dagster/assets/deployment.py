"""The recipe's "Model Deployment -> SageMaker Endpoint", per environment (its third challenge):
dev serves the latest registered model, staging the latest Approved one, prod the one staging
serves once its smoke test passed. Updates are blue/green; a failed one leaves the old model
serving. The same calls (create_model, create_endpoint_config, create/update_endpoint, the
endpoint_in_service waiter, invoke_endpoint) run against SageMaker and the local service.

Every endpoint captures its traffic (SageMaker's DataCaptureConfig, on both backends) unless its
config says otherwise: capture_enabled, capture_sampling_percentage, capture_destination (default
s3://{bucket}/{prefix}/datacapture). A change of these is a change of the endpoint config: the
endpoint is updated (blue/green) even when the model is the same."""

import io
import json
import math
import time

import pandas as pd
from botocore.exceptions import ClientError, WaiterError
from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    DataVersion,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    asset,
    job,
    op,
)
from pydantic import Field, field_validator

from .. import naming
from ..monitoring.capture import CONTENT_TYPE_HEADER, capture_prefix, default_capture_destination
from ..naming import ENVIRONMENTS
from ..resources.infrastructure import managed_tags, tag_list
from ..resources.object_store import ObjectStore, key_prefix
from ..resources.sagemaker import SageMaker
from ..settings import Settings

SMOKE_ROWS = 5
VARIANT = "AllTraffic"


class EndpointConfig(Config):
    instance_type: str = Field(default="ml.t2.medium", description="hosting instance type (aws)")
    instance_count: int = Field(default=1, ge=1)
    rollback_alarms: list[str] = Field(
        default_factory=list, description="CloudWatch alarms that roll a blue/green update back (aws)"
    )
    wait_delay_seconds: int = Field(default=15, ge=1, description="endpoint_in_service waiter delay")
    wait_max_attempts: int = Field(default=120, ge=1, description="endpoint_in_service waiter attempts")
    capture_enabled: bool = Field(
        default=True, description="capture requests and responses (SageMaker DataCaptureConfig) for monitoring"
    )
    capture_sampling_percentage: int = Field(
        default=100, ge=0, le=100, description="percentage of requests captured (InitialSamplingPercentage)"
    )
    capture_destination: str | None = Field(
        default=None,
        description="s3:// prefix the capture files go under (default: s3://{bucket}/{prefix}/datacapture); "
        "on aws the SageMaker role must be allowed to write there",
    )

    @field_validator("capture_destination")
    @classmethod
    def _s3_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("s3://"):
            raise ValueError(f"capture_destination must be an s3:// prefix (s3://bucket/folder), got {value!r}")
        key_prefix(value.rstrip("/") + "/")  # InvalidKey (a ValueError) names what is wrong
        return value.rstrip("/")


def endpoint_name(settings: Settings, env: str) -> str:
    return naming.endpoint_name(settings.pipeline_name, env)


def _not_found(err: ClientError) -> bool:
    message = err.response["Error"].get("Message", "")
    return err.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound") and "not find" in message.lower()


def serving_package(client, name: str) -> tuple[str | None, dict | None]:
    """(model package ARN the endpoint serves, describe_endpoint) or (None, None) if no endpoint."""
    package, endpoint, _ = serving_state(client, name)
    return package, endpoint


def serving_state(client, name: str) -> tuple[str | None, dict | None, dict | None]:
    """(package ARN, describe_endpoint, describe_endpoint_config) of an endpoint; Nones if there is none."""
    try:
        endpoint = client.describe_endpoint(EndpointName=name)
    except ClientError as err:
        if _not_found(err):
            return None, None, None
        raise
    config = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return model.get("PrimaryContainer", {}).get("ModelPackageName"), endpoint, config


def data_capture_config(config: EndpointConfig, settings: Settings) -> dict | None:
    """The DataCaptureConfig of CreateEndpointConfig for ``config``; None when capture is off.
    CaptureContentTypeHeader is set so that CSV and JSON are captured as text (SageMaker would
    base64-encode them without it)."""
    if not config.capture_enabled:
        return None
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": config.capture_sampling_percentage,
        "DestinationS3Uri": config.capture_destination or default_capture_destination(settings),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": CONTENT_TYPE_HEADER,
    }


def _capture_key(capture: dict | None) -> tuple | None:
    """What decides whether two DataCaptureConfigs capture the same way (None: no capture)."""
    if not capture or not capture.get("EnableCapture", True):
        return None
    header = capture.get("CaptureContentTypeHeader") or {}
    return (
        capture["InitialSamplingPercentage"],
        capture["DestinationS3Uri"].rstrip("/"),
        tuple(sorted(option["CaptureMode"] for option in capture.get("CaptureOptions", []))),
        tuple(sorted(header.get("CsvContentTypes") or [])),
        tuple(sorted(header.get("JsonContentTypes") or [])),
    )


def smoke_rows(store: ObjectStore, registered_model: dict) -> list[list[float]]:
    """A few rows of the model's validation data without the target: what the smoke test sends."""
    uri, target = registered_model["lineage"]["dataset_uri"].rstrip("/") + "/validation.csv", registered_model["target"]
    frame = pd.read_csv(io.BytesIO(store.get_bytes(uri)))
    if target not in frame.columns:
        raise Failure(f"{uri} has no target column {target!r}: cannot build smoke-test rows")
    return frame.drop(columns=[target]).head(SMOKE_ROWS).astype(float).values.tolist()


def smoke_test(runtime, name: str, rows: list[list[float]]) -> list[float]:
    """Predictions for the smoke rows through InvokeEndpoint; each must be a finite number."""
    body = "\n".join(",".join(repr(v) for v in row) for row in rows)
    try:
        response = runtime.invoke_endpoint(
            EndpointName=name, ContentType="text/csv", Accept="application/json", Body=body.encode()
        )
    except ClientError as err:
        raise Failure(f"smoke test of endpoint {name} failed: {err}") from err
    predictions = json.loads(response["Body"].read())["predictions"]
    if len(predictions) != len(rows) or not all(isinstance(p, (int, float)) and math.isfinite(p) for p in predictions):
        raise Failure(f"smoke test of endpoint {name}: expected {len(rows)} finite predictions, got {predictions!r}")
    return predictions


def _blue_green(config: EndpointConfig) -> dict:
    deployment = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 0,
        }
    }
    if config.rollback_alarms:
        deployment["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in config.rollback_alarms]}
    return deployment


def deploy(
    context: AssetExecutionContext,
    env: str,
    package_arn: str,
    rows: list[list[float]],
    config: EndpointConfig,
    settings: Settings,
    sagemaker: SageMaker,
) -> Output[dict]:
    """Make ``env``'s endpoint serve ``package_arn`` with ``config``'s data capture (blue/green when it
    exists), then smoke-test it."""
    client, name = sagemaker.get_client(), endpoint_name(settings, env)
    current, endpoint, endpoint_config = serving_state(client, name)
    capture = data_capture_config(config, settings)
    same_capture = _capture_key((endpoint_config or {}).get("DataCaptureConfig")) == _capture_key(capture)
    serving = endpoint is not None and endpoint["EndpointStatus"] == "InService" and current == package_arn
    changed = not (serving and same_capture)
    if changed:
        if serving:
            context.log.info(f"{name}: its data capture settings change; updating its endpoint config")
        tags = tag_list(managed_tags(settings.pipeline_name))  # teardown_infrastructure deletes what carries them
        _roll_out(context, client, env, name, package_arn, rows, config, sagemaker, endpoint, tags, capture)
        current_after, endpoint = serving_package(client, name)
        if current_after != package_arn:
            raise Failure(
                f"deploying {package_arn} to {env} was rolled back: {endpoint.get('FailureReason', 'no reason given')}; "
                f"{current_after or 'nothing'} still serves on {name}"
            )
    else:
        context.log.info(f"{name} already serves {package_arn}: nothing changed")
    predictions = smoke_test(sagemaker.get_runtime_client(), name, rows)
    context.log.info(f"{name} serves {package_arn}; smoke test predictions {predictions}")
    row = ",".join(repr(v) for v in rows[0])
    destination = capture["DestinationS3Uri"] if capture else None
    captured = capture_prefix(destination, name, VARIANT) if destination else None
    deployed_at = endpoint["LastModifiedTime"].isoformat()  # when the endpoint last changed config
    return Output(
        {
            "endpoint_name": name, "model_package_arn": package_arn, "smoke_test": "passed", "changed": changed,
            "capture_destination": destination, "capture_prefix": captured, "deployed_at": deployed_at,
        },  # fmt: skip
        metadata={
            "endpoint_name": name,
            "endpoint_arn": endpoint["EndpointArn"],
            "endpoint_link": sagemaker.console_link("endpoint", name),
            "model_package_arn": package_arn,
            "changed": changed,
            "deployed_at": deployed_at,
            "capture_destination": captured or "off",
            "capture_sampling_percentage": config.capture_sampling_percentage if capture else 0,
            "smoke_test": "passed",
            "smoke_predictions": MetadataValue.json([round(p, 4) for p in predictions]),
            "curl": sagemaker.curl_command(name, row),
        },
        data_version=DataVersion(package_arn),
    )


def _roll_out(context, client, env, name, package_arn, rows, config, sagemaker, endpoint, tags, capture) -> None:
    stamp = time.strftime(naming.STAMP_FORMAT, time.gmtime())
    version = package_arn.rsplit("/", 1)[-1]
    resource_name = naming.deployment_name(name, version, stamp)
    client.create_model(
        ModelName=resource_name,
        PrimaryContainer={
            "ModelPackageName": package_arn,
            # The scikit-learn container serves training/inference.py from the training code;
            # the smoke rows let the local server test the new model before switching to it.
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "MLOPS_SMOKE_ROWS": json.dumps(rows[:2])},
        },
        ExecutionRoleArn=sagemaker.execution_role_arn(),
        Tags=tags,
    )
    client.create_endpoint_config(
        EndpointConfigName=resource_name,
        ProductionVariants=[
            {"VariantName": VARIANT, "ModelName": resource_name, "InitialInstanceCount": config.instance_count,
             "InstanceType": config.instance_type}  # fmt: skip
        ],
        **({"DataCaptureConfig": capture} if capture else {}),
        Tags=tags,
    )
    if endpoint is not None and endpoint["EndpointStatus"] == "Failed":
        # A failed endpoint cannot be updated; SageMaker's way out is delete and create.
        context.log.warning(f"{name} is Failed ({endpoint.get('FailureReason')}); recreating it")
        client.delete_endpoint(EndpointName=name)
        endpoint = None
    if endpoint is None:
        context.log.info(f"creating endpoint {name} with {package_arn}")
        client.create_endpoint(
            EndpointName=name,
            EndpointConfigName=resource_name,
            Tags=[*tags, {"Key": "mlops:environment", "Value": env}],
        )
    else:
        context.log.info(f"blue/green update of {name} to {package_arn}")
        client.update_endpoint(EndpointName=name, EndpointConfigName=resource_name, DeploymentConfig=_blue_green(config))
    try:
        client.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": config.wait_delay_seconds, "MaxAttempts": config.wait_max_attempts}
        )
    except WaiterError as err:
        reason = client.describe_endpoint(EndpointName=name).get("FailureReason", str(err))
        raise Failure(f"endpoint {name} did not reach InService: {reason}") from err


def _skip(context: AssetExecutionContext, gate: str):
    """A gate that is not met: no materialization (downstream skips too), the reason on the run page."""
    context.log.warning(f"skipped: {gate}")
    yield AssetObservation(asset_key=context.asset_key, metadata={"skipped": gate})


def _latest_approved(client, group: str) -> dict | None:
    summaries = client.list_model_packages(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved", SortBy="CreationTime", SortOrder="Descending",
        MaxResults=1,
    )["ModelPackageSummaryList"]  # fmt: skip
    return summaries[0] if summaries else None


@asset(
    group_name="deployment",
    kinds={"sagemaker"},
    output_required=False,
    description="The dev endpoint: serves the latest registered model package.",
)
def dev_endpoint(
    context: AssetExecutionContext, config: EndpointConfig, registered_model: dict, settings: Settings,
    sagemaker: SageMaker, store: ObjectStore,
):  # fmt: skip
    rows = smoke_rows(store, registered_model)
    yield deploy(context, "dev", registered_model["model_package_arn"], rows, config, settings, sagemaker)


@asset(
    group_name="deployment",
    kinds={"sagemaker"},
    output_required=False,
    description="The staging endpoint: serves the latest Approved model package (approval gate).",
)
def staging_endpoint(
    context: AssetExecutionContext, config: EndpointConfig, registered_model: dict, settings: Settings,
    sagemaker: SageMaker, store: ObjectStore,
):  # fmt: skip
    approved = _latest_approved(sagemaker.get_client(), registered_model["model_package_group"])
    if approved is None:
        yield from _skip(
            context,
            f"approval gate: no Approved package in {registered_model['model_package_group']} "
            f"(version {registered_model['version']} is {registered_model['approval_status']}); "
            "approve one with the approve_model job",
        )
        return
    rows = smoke_rows(store, registered_model)
    yield deploy(context, "staging", approved["ModelPackageArn"], rows, config, settings, sagemaker)


@asset(
    group_name="deployment",
    kinds={"sagemaker"},
    output_required=False,
    description="The prod endpoint: serves the package that staging serves, once its smoke test passed.",
)
def prod_endpoint(
    context: AssetExecutionContext, config: EndpointConfig, staging_endpoint: dict, registered_model: dict,
    settings: Settings, sagemaker: SageMaker, store: ObjectStore,
):  # fmt: skip
    serving, endpoint = serving_package(sagemaker.get_client(), staging_endpoint["endpoint_name"])
    if staging_endpoint.get("smoke_test") != "passed" or serving != staging_endpoint["model_package_arn"]:
        yield from _skip(
            context,
            f"staging gate: staging serves {serving or 'nothing'} "
            f"({(endpoint or {}).get('EndpointStatus', 'no endpoint')}), not the smoke-tested "
            f"{staging_endpoint['model_package_arn']}; materialize staging_endpoint first",
        )
        return
    rows = smoke_rows(store, registered_model)
    yield deploy(context, "prod", serving, rows, config, settings, sagemaker)


@op(description="Delete the dev, staging and prod endpoints (locally: stop their server processes).")
def delete_endpoints(context: OpExecutionContext, settings: Settings, sagemaker: SageMaker) -> list[str]:
    client, deleted = sagemaker.get_client(), []
    for env in ENVIRONMENTS:
        name = endpoint_name(settings, env)
        try:
            client.delete_endpoint(EndpointName=name)
        except ClientError as err:
            if _not_found(err):
                context.log.info(f"{name}: no endpoint")
                continue
            raise
        deleted.append(name)
        context.log.info(f"{name}: deleted")
        # On the endpoint asset's page, so its last curl is not mistaken for a live endpoint.
        context.log_event(
            AssetObservation(asset_key=f"{env}_endpoint", metadata={"status": "deleted by stop_endpoints"})
        )
    return deleted


@job(description="Stop serving: delete every environment's endpoint (make endpoint-stop). Models stay registered.")
def stop_endpoints():
    delete_endpoints()
