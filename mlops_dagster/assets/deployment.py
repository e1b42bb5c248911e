"""The recipe's "Model Deployment -> SageMaker Endpoint", per environment (its third challenge):
dev serves the latest registered model, staging the latest Approved one, prod the one staging
serves once its smoke test passed. Updates are blue/green; a failed one leaves the old model
serving. The same calls (create_model, create_endpoint_config, create/update_endpoint, the
endpoint_in_service waiter, invoke_endpoint) run against SageMaker and the local service."""

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
from pydantic import Field

from .. import naming
from ..naming import ENVIRONMENTS
from ..resources.infrastructure import managed_tags, tag_list
from ..resources.object_store import ObjectStore
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


def endpoint_name(settings: Settings, env: str) -> str:
    return naming.endpoint_name(settings.pipeline_name, env)


def _not_found(err: ClientError) -> bool:
    message = err.response["Error"].get("Message", "")
    return err.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound") and "not find" in message.lower()


def serving_package(client, name: str) -> tuple[str | None, dict | None]:
    """(model package ARN the endpoint serves, describe_endpoint) or (None, None) if no endpoint."""
    try:
        endpoint = client.describe_endpoint(EndpointName=name)
    except ClientError as err:
        if _not_found(err):
            return None, None
        raise
    config = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return model.get("PrimaryContainer", {}).get("ModelPackageName"), endpoint


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
    """Make ``env``'s endpoint serve ``package_arn`` (blue/green when it exists), then smoke-test it."""
    client, name = sagemaker.get_client(), endpoint_name(settings, env)
    current, endpoint = serving_package(client, name)
    changed = not (endpoint and endpoint["EndpointStatus"] == "InService" and current == package_arn)
    if changed:
        tags = tag_list(managed_tags(settings.pipeline_name))  # teardown_infrastructure deletes what carries them
        _roll_out(context, client, env, name, package_arn, rows, config, sagemaker, endpoint, tags)
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
    return Output(
        {"endpoint_name": name, "model_package_arn": package_arn, "smoke_test": "passed", "changed": changed},
        metadata={
            "endpoint_name": name,
            "endpoint_arn": endpoint["EndpointArn"],
            "endpoint_link": sagemaker.console_link("endpoint", name),
            "model_package_arn": package_arn,
            "changed": changed,
            "smoke_test": "passed",
            "smoke_predictions": MetadataValue.json([round(p, 4) for p in predictions]),
            "curl": sagemaker.curl_command(name, row),
        },
        data_version=DataVersion(package_arn),
    )


def _roll_out(context, client, env, name, package_arn, rows, config, sagemaker, endpoint, tags) -> None:
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
