"""The one place that reads configuration.

Every setting comes from an environment variable with the ``MLOPS_`` prefix. ``Settings.from_env``
validates them all and raises ``SettingsError`` naming the variable, the bad value and what is
allowed, so a typo fails at load time instead of half-way through a run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from dagster import ConfigurableResource
from dagster._utils.schedules import is_valid_cron_string

BACKENDS = ("local", "aws")
# S3's bucket naming rules (general purpose buckets), minus the legacy dotted forms.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TEAM_RE = re.compile(r"^team:[\w.-]+$")
_IAM_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_REPO_RE = re.compile(r"^[\w.-]{1,100}$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}$")


class SettingsError(ValueError):
    """A configuration variable has a value that cannot be used."""


class Settings(ConfigurableResource):
    """Validated configuration of the code location, shared with assets as the `settings` resource.

    | variable | default | meaning |
    |---|---|---|
    | MLOPS_BACKEND | local | `local` (no AWS, everything under MLOPS_HOME) or `aws` |
    | MLOPS_HOME | ./.mlops | local object store, SQLite state, logs, Dagster storage |
    | MLOPS_BUCKET | mlops-local (local); required on aws | the S3 bucket for data and artifacts |
    | MLOPS_PREFIX | mlops | key prefix inside the bucket |
    | MLOPS_REGION | AWS_REGION, AWS_DEFAULT_REGION, else us-east-1 (local only) | AWS region |
    | MLOPS_DATA_SOURCE | synthetic | default source of `raw_data`: a path, an s3:// URI or `synthetic` |
    | MLOPS_PIPELINE_NAME | mlops-pipeline | the SageMaker pipeline's name |
    | MLOPS_ROLE_ARN | (local: a placeholder) | aws: the SageMaker execution role (setup_infrastructure creates one) |
    | MLOPS_RETRAIN_CRON | 0 3 * * 1 | when retraining_schedule materializes the graph (weekly, Monday 03:00 UTC) |
    | MLOPS_ROLE_NAME | SageMakerExecutionRole-<pipeline name> | the role setup_infrastructure creates (aws) |
    | MLOPS_REPOSITORY_NAME | <pipeline name>-code | the code repository (CodeCommit on aws, bare git locally) |
    | MLOPS_SAGEMAKER_FULL_ACCESS | false | also attach AmazonSageMakerFullAccess to the role (opt-in) |
    | MLOPS_AWS_PROFILE | (credential chain) | named AWS profile |
    | MLOPS_AWS_ENDPOINT_URL | (AWS) | an S3/SageMaker/IAM-compatible endpoint, e.g. a moto server |
    | MLOPS_AWS_RETRY_MODE | standard | botocore retry mode: standard or adaptive |
    | MLOPS_AWS_MAX_ATTEMPTS | 8 | botocore attempts per call (first try included) |
    | MLOPS_OWNERS | (none) | comma-separated asset owners shown in the UI: emails or team:<name> |
    """

    backend: str = "local"
    home: str = str(Path(".mlops").resolve())
    bucket: str = "mlops-local"
    prefix: str = "mlops"
    region: str = "us-east-1"
    data_source: str = "synthetic"
    pipeline_name: str = "mlops-pipeline"
    role_arn: str | None = None
    retrain_cron: str = "0 3 * * 1"
    role_name: str = "SageMakerExecutionRole-mlops-pipeline"
    repository_name: str = "mlops-pipeline-code"
    sagemaker_full_access: bool = False
    aws_profile: str | None = None
    aws_endpoint_url: str | None = None
    aws_retry_mode: str = "standard"
    aws_max_attempts: int = 8
    owners: list[str] = []

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        backend = _choice(env, "MLOPS_BACKEND", "local", BACKENDS)
        home = Path(env.get("MLOPS_HOME") or ".mlops").expanduser().resolve()
        if home.exists() and not home.is_dir():
            raise SettingsError(f"MLOPS_HOME={str(home)!r} exists and is not a directory")

        region = env.get("MLOPS_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            if backend == "aws":
                raise SettingsError(
                    "MLOPS_REGION is not set: the aws backend needs a region "
                    "(set MLOPS_REGION or AWS_REGION, e.g. us-east-1)"
                )
            region = "us-east-1"
        if not _REGION_RE.match(region):
            raise SettingsError(f"MLOPS_REGION={region!r} is not an AWS region name such as 'us-east-1'")

        bucket = env.get("MLOPS_BUCKET") or ""
        if not bucket:
            if backend == "aws":
                raise SettingsError(
                    "MLOPS_BUCKET is not set: the aws backend needs the name of the S3 bucket "
                    "for data and artifacts (e.g. sagemaker-mlops-abc123)"
                )
            bucket = "mlops-local"
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise SettingsError(
                f"MLOPS_BUCKET={bucket!r} is not a valid S3 bucket name: use 3-63 lowercase "
                "letters, digits, dots or hyphens, starting and ending with a letter or digit"
            )

        prefix = env.get("MLOPS_PREFIX", "mlops")
        if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix or ".." in prefix.split("/"):
            raise SettingsError(
                f"MLOPS_PREFIX={prefix!r} is not a valid key prefix: no leading or trailing '/', "
                "no empty or '..' parts (e.g. 'mlops' or 'teams/ml')"
            )

        pipeline_name = env.get("MLOPS_PIPELINE_NAME") or "mlops-pipeline"
        if not _NAME_RE.match(pipeline_name):
            raise SettingsError(
                f"MLOPS_PIPELINE_NAME={pipeline_name!r} is not a valid SageMaker pipeline name: "
                "letters, digits and single hyphens, starting with a letter or digit"
            )

        role_arn = env.get("MLOPS_ROLE_ARN") or None
        if role_arn and not _ROLE_RE.match(role_arn):
            raise SettingsError(
                f"MLOPS_ROLE_ARN={role_arn!r} is not an IAM role ARN such as "
                "'arn:aws:iam::123456789012:role/SageMakerExecutionRole'"
            )
        retrain_cron = env.get("MLOPS_RETRAIN_CRON") or "0 3 * * 1"
        if not is_valid_cron_string(retrain_cron):
            raise SettingsError(
                f"MLOPS_RETRAIN_CRON={retrain_cron!r} is not a cron expression such as '0 3 * * 1' "
                "(minute hour day-of-month month day-of-week)"
            )

        role_name = env.get("MLOPS_ROLE_NAME") or f"SageMakerExecutionRole-{pipeline_name}"[:64]
        if not _IAM_NAME_RE.match(role_name):
            raise SettingsError(
                f"MLOPS_ROLE_NAME={role_name!r} is not a valid IAM role name: 1-64 letters, digits or +=,.@_-"
            )
        repository_name = env.get("MLOPS_REPOSITORY_NAME") or f"{pipeline_name}-code"
        if not _REPO_RE.match(repository_name):
            raise SettingsError(
                f"MLOPS_REPOSITORY_NAME={repository_name!r} is not a valid repository name: "
                "1-100 letters, digits, '.', '_' or '-'"
            )
        full_access = _choice(env, "MLOPS_SAGEMAKER_FULL_ACCESS", "false", ("true", "false", "1", "0", "yes", "no"))
        endpoint_url = env.get("MLOPS_AWS_ENDPOINT_URL") or None
        if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
            raise SettingsError(
                f"MLOPS_AWS_ENDPOINT_URL={endpoint_url!r} is not an http(s) URL such as 'http://127.0.0.1:5000'"
            )
        retry_mode = _choice(env, "MLOPS_AWS_RETRY_MODE", "standard", ("standard", "adaptive"))
        attempts_text = env.get("MLOPS_AWS_MAX_ATTEMPTS") or "8"
        if not attempts_text.isdigit() or not 1 <= int(attempts_text) <= 20:
            raise SettingsError(f"MLOPS_AWS_MAX_ATTEMPTS={attempts_text!r} is not a whole number from 1 to 20")

        owners = [o.strip() for o in (env.get("MLOPS_OWNERS") or "").split(",") if o.strip()]
        for owner in owners:
            if not (_EMAIL_RE.match(owner) or _TEAM_RE.match(owner)):
                raise SettingsError(
                    f"MLOPS_OWNERS has {owner!r}: each owner is an email address or team:<name>, comma-separated"
                )

        return cls(
            backend=backend,
            home=str(home),
            bucket=bucket,
            prefix=prefix,
            region=region,
            data_source=env.get("MLOPS_DATA_SOURCE") or "synthetic",
            pipeline_name=pipeline_name,
            role_arn=role_arn,
            retrain_cron=retrain_cron,
            role_name=role_name,
            repository_name=repository_name,
            sagemaker_full_access=full_access in ("true", "1", "yes"),
            aws_profile=env.get("MLOPS_AWS_PROFILE") or None,
            aws_endpoint_url=endpoint_url,
            aws_retry_mode=retry_mode,
            aws_max_attempts=int(attempts_text),
            owners=owners,
        )

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<prefix>/<parts...>``."""
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p)
        return f"s3://{self.bucket}/{key}"


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise SettingsError(
            f"{name}={env.get(name)!r} is not valid: allowed values are "
            + ", ".join(repr(a) for a in allowed)
        )
    return value
