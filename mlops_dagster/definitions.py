"""Where the code location is assembled, and the only place that looks at the backend.

``build_definitions`` picks the resource implementations for ``settings.backend``; every asset,
op and sensor receives them by resource key and never asks which backend it runs on.
"""

from pathlib import Path

from dagster import (
    AssetSpec,
    Definitions,
    FilesystemIOManager,
    in_process_executor,
    load_assets_from_modules,
    map_asset_specs,
)

from .alerts import AlertSink
from .assets import data, deployment, monitoring, pipeline, registry
from .code_versions import code_version_for
from .infrastructure import INFRASTRUCTURE_JOBS
from .jobs import retraining_job
from .resources.infrastructure import LocalInfrastructure, infrastructure_fields
from .resources.object_store import LocalObjectStore
from .resources.sagemaker import LocalSageMaker
from .schedules import retraining_schedule
from .sensors import check_failure_alert_sensor, pipeline_execution_sensor, run_failure_alert_sensor
from .settings import Settings
from .triggers import LocalSourceLister, retraining_triggers


def _resources(settings: Settings) -> dict:
    home = Path(settings.home)
    resources: dict = {
        "settings": settings,
        # Asset values (DataFrames, dicts) live beside the rest of the project's state.
        "io_manager": FilesystemIOManager(base_dir=str(home / "dagster" / "storage")),
    }
    if settings.backend == "local":
        store = LocalObjectStore(root=str(home / "s3"))
        resources["store"] = store
        resources["sagemaker"] = LocalSageMaker(
            home=str(home), region=settings.region, bucket=settings.bucket, store=store
        )
        resources["infrastructure"] = LocalInfrastructure(home=str(home), **infrastructure_fields(settings))
        resources["source_lister"] = LocalSourceLister(store=store)
        resources["alerts"] = AlertSink(**_alert_fields(settings))
    else:
        # Imported here: dagster-aws costs seconds to import, and the local backend never needs it.
        from dagster_aws.s3 import S3Resource

        from .resources.aws import AwsSageMaker, AwsSession, S3ObjectStore

        session = AwsSession(
            region=settings.region,
            profile=settings.aws_profile,
            endpoint_url=settings.aws_endpoint_url,
            retry_mode=settings.aws_retry_mode,
            max_attempts=settings.aws_max_attempts,
            owned_bucket=settings.bucket,
        )
        resources["store"] = S3ObjectStore(
            owner=session,
            s3=S3Resource(
                region_name=settings.region,
                profile_name=settings.aws_profile,
                endpoint_url=settings.aws_endpoint_url,
                # S3Resource hands this to botocore as retries *after* the first try (always in
                # standard mode); MLOPS_AWS_MAX_ATTEMPTS counts the first try.
                max_attempts=settings.aws_max_attempts - 1,
            )
        )
        resources["sagemaker"] = AwsSageMaker(session=session, role_arn=settings.role_arn)
        from .resources.aws_infrastructure import AwsInfrastructure

        resources["infrastructure"] = AwsInfrastructure(session=session, **infrastructure_fields(settings))
        from .resources.aws_automation import S3SourceLister, SnsAlertSink

        resources["source_lister"] = S3SourceLister(session=session)
        resources["alerts"] = SnsAlertSink(
            session=session, topic_arn=settings.alert_sns_topic_arn, **_alert_fields(settings)
        )
    return resources


def _alert_fields(settings: Settings) -> dict:
    return {"home": settings.home, "webhook_url": settings.alert_webhook_url, "ui_url": settings.ui_url}


def _assets(settings: Settings) -> list:
    """The assets, each with the code version of its source and the configured owners."""

    def annotate(spec: AssetSpec) -> AssetSpec:
        key = spec.key.to_user_string()
        return spec.replace_attributes(
            code_version=code_version_for(key) or spec.code_version,
            owners=[*spec.owners, *settings.owners],
        )

    return list(map_asset_specs(annotate, load_assets_from_modules([data, pipeline, registry, deployment, monitoring])))


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    return Definitions(
        assets=_assets(settings),
        jobs=[retraining_job, registry.approve_model, deployment.stop_endpoints, *INFRASTRUCTURE_JOBS],
        schedules=[retraining_schedule(settings)],
        sensors=[
            pipeline_execution_sensor,
            check_failure_alert_sensor,
            run_failure_alert_sensor,
            *retraining_triggers(settings),
        ],
        resources=_resources(settings),
        # Steps are thin clients of SageMaker (the work runs in its jobs): one process per run
        # saves the ~4 s of imports that a process per step costs, five times over.
        executor=in_process_executor,
    )
