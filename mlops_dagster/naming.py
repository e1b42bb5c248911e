"""Names of the SageMaker resources derived from MLOPS_PIPELINE_NAME, in one place.

Settings check every derived name at load time (``derived_name_problems``), so a pipeline name
that would make an invalid or truncated (hence colliding) model package group, endpoint,
endpoint config or model name fails before anything is trained.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import AssetKey

ENVIRONMENTS = ("dev", "staging", "prod")
# SageMaker's length limit for model package group, endpoint, endpoint config and model names.
SAGEMAKER_NAME_MAX = 63
# Model package versions of up to this many digits keep deployment names whole (and distinct).
VERSION_DIGITS = 6
STAMP_FORMAT = "%Y%m%d%H%M%S"  # UTC, to the second: one deployment per endpoint per second


def deployed_environments(asset_keys: Iterable[AssetKey]) -> list[str]:
    """The environments whose endpoint asset (``<env>_endpoint``) is among ``asset_keys``, in
    deployment order: what a run with that selection will deploy to."""
    names = {"/".join(key.path) for key in asset_keys}
    return [env for env in ENVIRONMENTS if f"{env}_endpoint" in names]


def model_package_group(pipeline_name: str) -> str:
    return f"{pipeline_name}-models"


def endpoint_name(pipeline_name: str, env: str) -> str:
    return f"{pipeline_name}-{env}"


def _full_deployment_name(endpoint: str, version: str, stamp: str) -> str:
    return f"{endpoint}-v{version}-{stamp}"


def deployment_name(endpoint: str, version: str, stamp: str) -> str:
    """The model and endpoint config one deployment creates: ``<endpoint>-v<version>-<stamp>``.

    Settings keep it within SageMaker's limit for versions of up to VERSION_DIGITS digits; a
    longer one is cut to the limit (still valid: it ends in digits of the stamp)."""
    return _full_deployment_name(endpoint, version, stamp)[:SAGEMAKER_NAME_MAX]


def default_role_name(pipeline_name: str) -> str:
    """MLOPS_ROLE_NAME's default, cut to IAM's 64 characters."""
    return f"SageMakerExecutionRole-{pipeline_name}"[:64]


def default_repository_name(pipeline_name: str) -> str:
    return f"{pipeline_name}-code"


def _longest_names(pipeline_name: str) -> list[tuple[str, str]]:
    """(what, longest form) of every SageMaker name made from the pipeline name."""
    env = max(ENVIRONMENTS, key=len)
    stamp = time.strftime(STAMP_FORMAT, time.gmtime(0))
    deployment = _full_deployment_name(endpoint_name(pipeline_name, env), "9" * VERSION_DIGITS, stamp)
    return [
        ("model package group", model_package_group(pipeline_name)),
        (f"{env} endpoint", endpoint_name(pipeline_name, env)),
        (f"{env} model and endpoint config (for version {'9' * VERSION_DIGITS})", deployment),
    ]


def max_pipeline_name_length() -> int:
    """The longest pipeline name whose derived names all fit SageMaker's limit."""
    return min(SAGEMAKER_NAME_MAX - (len(name) - 1) for _, name in _longest_names("x"))


def derived_name_problems(pipeline_name: str) -> list[str]:
    """One line per derived name that would exceed SageMaker's limit."""
    return [
        f"the {what} name {name!r} would have {len(name)} characters (SageMaker allows {SAGEMAKER_NAME_MAX})"
        for what, name in _longest_names(pipeline_name)
        if len(name) > SAGEMAKER_NAME_MAX
    ]
