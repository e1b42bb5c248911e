"""Where the code location is assembled, and the only place that looks at the backend.

``build_definitions`` picks the resource implementations for ``settings.backend``; every asset,
op and sensor receives them by resource key and never asks which backend it runs on.
"""

from __future__ import annotations

from pathlib import Path

from dagster import Definitions, FilesystemIOManager, load_assets_from_modules
from dagster_aws.s3 import S3Resource

from .assets import data
from .resources.object_store import LocalObjectStore, S3ObjectStore
from .settings import Settings


def _resources(settings: Settings) -> dict:
    home = Path(settings.home)
    resources: dict = {
        "settings": settings,
        # Asset values (DataFrames, dicts) live beside the rest of the project's state.
        "io_manager": FilesystemIOManager(base_dir=str(home / "dagster" / "storage")),
    }
    if settings.backend == "local":
        resources["store"] = LocalObjectStore(root=str(home / "s3"))
    else:
        resources["store"] = S3ObjectStore(s3=S3Resource(region_name=settings.region))
    return resources


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    return Definitions(
        assets=load_assets_from_modules([data]),
        asset_checks=[],
        resources=_resources(settings),
    )
