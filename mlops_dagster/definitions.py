"""Where the code location is assembled, and the only place that looks at the backend.

``build_definitions`` picks the resource implementations for ``settings.backend``; every asset,
op and sensor receives them by resource key and never asks which backend it runs on.
"""

from pathlib import Path

from dagster import Definitions, FilesystemIOManager, load_assets_from_modules
from dagster_aws.s3 import S3Resource

from .assets import data, pipeline
from .jobs import retraining_job
from .resources.aws import AwsSession
from .resources.object_store import LocalObjectStore, S3ObjectStore
from .resources.sagemaker import AwsSageMaker, LocalSageMaker
from .schedules import retraining_schedule
from .sensors import pipeline_execution_sensor
from .settings import Settings


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
    else:
        session = AwsSession(region=settings.region)
        resources["store"] = S3ObjectStore(s3=S3Resource(region_name=settings.region))
        resources["sagemaker"] = AwsSageMaker(session=session, role_arn=settings.role_arn)
    return resources


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    return Definitions(
        assets=load_assets_from_modules([data, pipeline]),
        jobs=[retraining_job],
        schedules=[retraining_schedule(settings)],
        sensors=[pipeline_execution_sensor],
        resources=_resources(settings),
    )
