"""``python -m mlops_dagster.report``: what the last materialization of each asset made, and where.

`make run` calls it after materializing, so a user sees URIs, row counts and metrics without
opening the UI. It reads the Dagster instance at $DAGSTER_HOME.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from dagster import AssetKey, DagsterInstance, MetadataValue

from . import defs

# Entry kinds worth a line in a terminal; tables, markdown and JSON are for the UI.
_SCALARS = (
    MetadataValue.text("").__class__,
    MetadataValue.int(0).__class__,
    MetadataValue.float(0.0).__class__,
    MetadataValue.path("").__class__,
    MetadataValue.url("").__class__,
    MetadataValue.bool(False).__class__,
)


def main() -> int:
    instance = DagsterInstance.get()
    keys = defs.resolve_asset_graph().toposorted_asset_keys  # in the order the data flows
    print("\nWhat the graph made (latest materialization of each asset):")
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        name = key.to_user_string()
        if event is None or event.asset_materialization is None:
            print(f"\n  {name}: not materialized")
            continue
        when = datetime.fromtimestamp(event.timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"\n  {name}  ({when}, run {event.run_id[:8]})")
        for label, value in event.asset_materialization.metadata.items():
            if isinstance(value, _SCALARS) and value.value not in ("", None):
                print(f"    {label}: {value.value}")
    _try_it(instance)
    settings = defs.resources["settings"]
    if settings.backend == "local":
        print(f"Local object store: s3://<bucket>/<key> is {settings.home}/s3/<bucket>/<key>")
        print(f"Local SageMaker state and job logs: {settings.home}/sagemaker/")
    print(f"Dagster run history: {instance.root_directory} (open it with `make ui`)\n")
    return 0


def _try_it(instance: DagsterInstance) -> None:
    """The commands a user wants next: call the model, approve it, promote it."""
    for env in ("prod", "staging", "dev"):
        event = instance.get_latest_materialization_event(AssetKey(f"{env}_endpoint"))
        if event and event.asset_materialization and "curl" in event.asset_materialization.metadata:
            metadata = event.asset_materialization.metadata
            print(f"Ask the {env} endpoint for a prediction:\n  {metadata['curl'].value}\n")
            if "endpoint_name" in metadata:
                usage = runtime_usage(
                    defs.resources["settings"].home, metadata["endpoint_name"].value, metadata["curl"].value
                )
                print(usage or "", end="")
            break
    event = instance.get_latest_materialization_event(AssetKey("registered_model"))
    if event and event.asset_materialization:
        metadata = event.asset_materialization.metadata
        arn, version = metadata["model_package_arn"].value, metadata["model_package_version"].value
        # The registry, not the materialization, knows whether it was approved since.
        status = defs.resources["sagemaker"].get_client().describe_model_package(ModelPackageName=arn)
        if status["ModelApprovalStatus"] != "Approved":
            print(
                f"Model version {version} is {status['ModelApprovalStatus']}. Approve it, then deploy it to "
                f"staging and prod:\n  make approve VERSION={version} COMMENT='reviewed'\n  make promote\n"
            )


def runtime_usage(home: str | Path, endpoint_name: str, curl: str) -> str | None:
    """How to call ``endpoint_name`` through the local SageMaker Runtime API (serving/gateway.py),
    from Python and curl; None when no gateway is recorded (the aws backend, or no endpoint is up)."""
    try:
        gateway = json.loads((Path(home) / "endpoints" / "runtime.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    url, region = gateway["url"], gateway.get("region", "us-east-1")
    row = re.search(r"--data-binary '([^']*)'", curl)
    body = row.group(1) if row else "<one CSV row>"
    return (
        f"The same endpoint through the SageMaker Runtime API at {url} (boto3 and the SageMaker SDK work\n"
        "unchanged; request signatures are not checked):\n"
        f"  curl -s -X POST {url}/endpoints/{endpoint_name}/invocations -H 'Content-Type: text/csv' "
        f"--data-binary '{body}'\n"
        "  From Python:\n"
        "    import boto3\n"
        f'    runtime = boto3.client("sagemaker-runtime", endpoint_url="{url}", region_name="{region}")\n'
        f'    answer = runtime.invoke_endpoint(EndpointName="{endpoint_name}", ContentType="text/csv", Body="{body}")\n'
        '    print(answer["Body"].read().decode())\n'
        f"  The SageMaker SDK: export AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={url}, then\n"
        f'    Predictor("{endpoint_name}", serializer=CSVSerializer(), deserializer=JSONDeserializer()).predict(rows)\n\n'
    )


if __name__ == "__main__":
    sys.exit(main())
