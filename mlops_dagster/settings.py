"""The one place that reads configuration.

Every setting comes from an environment variable with the ``MLOPS_`` prefix. ``Settings.from_env``
validates them all and raises ``SettingsError`` naming the variable, the bad value and what is
allowed, so a typo fails at load time instead of half-way through a run.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from dagster import ConfigurableResource
from dagster._utils.schedules import is_valid_cron_string
from pydantic import field_validator

from .naming import default_repository_name, default_role_name, derived_name_problems, max_pipeline_name_length

BACKENDS = ("local", "aws")
# S3's bucket naming rules (general purpose buckets), minus the legacy dotted forms.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Reserved by S3 for access point aliases, directory and table buckets, demos and IDNs.
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Parts of a key prefix: plain characters only (an IAM policy reads '*' and '?' as wildcards).
_PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
PREFIX_MAX = 200  # S3 keys end at 1024 bytes; the pipeline's own keys need the rest
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TEAM_RE = re.compile(r"^team:[\w.-]+$")
_IAM_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_REPO_RE = re.compile(r"^[\w.-]{1,100}$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
# SNS topic ARNs: partition, region, account, name (1-256 letters, digits, '-', '_'; FIFO topics end in .fifo).
_TOPIC_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z]{2}(-gov)?-[a-z]+-\d:\d{12}:[A-Za-z0-9_-]{1,251}(\.fifo)?$")
MAX_COOLDOWN_MINUTES = 7 * 24 * 60  # a week
MAX_DRIFT_RETRAIN_HOURS = 365 * 24  # a year


class SettingsError(ValueError):
    """A configuration variable has a value that cannot be used."""


class Settings(ConfigurableResource):
    """Validated configuration of the code location, shared with assets as the `settings` resource.

    | variable | default | meaning |
    |---|---|---|
    | MLOPS_BACKEND | local | `local` (no AWS, everything under MLOPS_HOME) or `aws` |
    | MLOPS_HOME | ./.mlops | local object store, SQLite state, logs, Dagster storage |
    | MLOPS_BUCKET | mlops-local (local); required on aws | the S3 bucket for data and artifacts |
    | MLOPS_PREFIX | mlops | key prefix inside the bucket: parts of letters, digits, '.', '_', '-' joined by '/' (at most 200 characters) |
    | MLOPS_REGION | AWS_REGION, AWS_DEFAULT_REGION, else us-east-1 (local only) | AWS region |
    | MLOPS_DATA_SOURCE | synthetic | default source of `raw_data`: a path, an s3:// URI or `synthetic` |
    | MLOPS_PIPELINE_NAME | mlops-pipeline | the SageMaker pipeline's name (at most 32 characters: endpoint, model and group names derive from it) |
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
    | MLOPS_AUTOMATION | on (local), off (aws) | `on`: schedules and retraining triggers start running; `off`: they start stopped (turn them on in the UI) |
    | MLOPS_ALERT_WEBHOOK_URL | (none) | alerts are also POSTed there as Slack-compatible JSON `{"text": ...}` (http or https) |
    | MLOPS_ALERT_SNS_TOPIC_ARN | (none) | aws: alerts are also published to this SNS topic |
    | MLOPS_ALERT_COOLDOWN_MINUTES | 60 | at most one alert per failing check in this many minutes (0 to 10080) |
    | MLOPS_DRIFT_RETRAIN_HOURS | 24 | a failed drift or model-quality check requests retraining at most once per this many hours (0 to 8760) |
    | MLOPS_UI_URL | http://127.0.0.1:3000 | the Dagster UI's address, for the links in alerts |
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
    automation: bool | None = None  # None: on for the local backend, off for aws (see automation_on)
    alert_webhook_url: str | None = None
    alert_sns_topic_arn: str | None = None
    alert_cooldown_minutes: int = 60
    drift_retrain_hours: int = 24
    ui_url: str = "http://127.0.0.1:3000"

    # The same checks when a run's config overrides the resource (the launchpad can): a value
    # that from_env refuses must not reach the store or SageMaker that way either.
    @field_validator("bucket")
    @classmethod
    def _valid_bucket(cls, value: str) -> str:
        _check_bucket(value)
        return value

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        _check_prefix(value)
        return value

    @field_validator("pipeline_name")
    @classmethod
    def _valid_pipeline_name(cls, value: str) -> str:
        _check_pipeline_name(value)
        return value

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
        _check_bucket(bucket)
        prefix = env.get("MLOPS_PREFIX", "mlops")
        _check_prefix(prefix)
        pipeline_name = env.get("MLOPS_PIPELINE_NAME") or "mlops-pipeline"
        _check_pipeline_name(pipeline_name)

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

        role_name = env.get("MLOPS_ROLE_NAME") or default_role_name(pipeline_name)
        if not _IAM_NAME_RE.match(role_name):
            raise SettingsError(
                f"MLOPS_ROLE_NAME={role_name!r} is not a valid IAM role name: 1-64 letters, digits or +=,.@_-"
            )
        repository_name = env.get("MLOPS_REPOSITORY_NAME") or default_repository_name(pipeline_name)
        if not _REPO_RE.match(repository_name) or repository_name.endswith(".git"):
            raise SettingsError(
                f"MLOPS_REPOSITORY_NAME={repository_name!r} is not a valid repository name: "
                "1-100 letters, digits, '.', '_' or '-', not ending in '.git' (CodeCommit's rule)"
            )
        full_access = _choice(env, "MLOPS_SAGEMAKER_FULL_ACCESS", "false", ("true", "false", "1", "0", "yes", "no"))
        endpoint_url = env.get("MLOPS_AWS_ENDPOINT_URL") or None
        if endpoint_url and not (endpoint_url.startswith(("http://", "https://")) and _host_of(endpoint_url)):
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

        alerting = _alerting(env, backend)
        _check_endpoint_batching(env)
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
            **alerting,
        )

    @property
    def automation_on(self) -> bool:
        """Do schedules and retraining triggers start running? (They start SageMaker work, which costs
        money on aws: there they start stopped unless MLOPS_AUTOMATION=on.)"""
        return self.automation if self.automation is not None else self.backend == "local"

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<prefix>/<parts...>``."""
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p)
        return f"s3://{self.bucket}/{key}"


def _check_endpoint_batching(env: Mapping[str, str]) -> None:
    """MLOPS_ENDPOINT_BATCHING, _BATCH_MAX_ROWS, _BATCH_MAX_WAIT_MS: each local endpoint server reads
    them when it starts (serving/batching.py); checked here too, so a bad value fails at load time."""
    from mlops_dagster.serving.batching import BatchSettings  # here: settings load before serving

    try:
        BatchSettings.from_environ(env)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _alerting(env: Mapping[str, str], backend: str) -> dict:
    """The automation, alert and trigger settings, checked."""
    automation = env.get("MLOPS_AUTOMATION")
    if automation:
        automation = _choice(env, "MLOPS_AUTOMATION", "", ("on", "off"))
    webhook = env.get("MLOPS_ALERT_WEBHOOK_URL") or None
    if webhook and not (webhook.startswith(("http://", "https://")) and _host_of(webhook)):
        # The value is not repeated: a webhook URL carries its secret in the path.
        raise SettingsError(
            "MLOPS_ALERT_WEBHOOK_URL is not an http(s) URL with a host (value not shown: webhook URLs "
            "hold a secret); use the URL your chat tool gives, e.g. https://hooks.slack.com/services/..."
        )
    topic = env.get("MLOPS_ALERT_SNS_TOPIC_ARN") or None
    if topic and not _TOPIC_RE.match(topic):
        raise SettingsError(
            f"MLOPS_ALERT_SNS_TOPIC_ARN={topic!r} is not an SNS topic ARN such as "
            "'arn:aws:sns:us-east-1:123456789012:mlops-alerts'"
        )
    if topic and backend != "aws":
        raise SettingsError(
            "MLOPS_ALERT_SNS_TOPIC_ARN is set but MLOPS_BACKEND is 'local': SNS alerts need the aws backend "
            "(unset the variable, or use MLOPS_ALERT_WEBHOOK_URL locally)"
        )
    ui_url = env.get("MLOPS_UI_URL") or "http://127.0.0.1:3000"
    if not (ui_url.startswith(("http://", "https://")) and _host_of(ui_url)):
        raise SettingsError(f"MLOPS_UI_URL={ui_url!r} is not an http(s) URL such as 'http://127.0.0.1:3000'")
    return {
        "automation": None if not automation else automation == "on",
        "alert_webhook_url": webhook,
        "alert_sns_topic_arn": topic,
        "alert_cooldown_minutes": _whole(env, "MLOPS_ALERT_COOLDOWN_MINUTES", 60, MAX_COOLDOWN_MINUTES),
        "drift_retrain_hours": _whole(env, "MLOPS_DRIFT_RETRAIN_HOURS", 24, MAX_DRIFT_RETRAIN_HOURS),
        "ui_url": ui_url.rstrip("/"),
    }


def _whole(env: Mapping[str, str], name: str, default: int, largest: int) -> int:
    text = (env.get(name) or str(default)).strip()
    if not text.isdigit() or int(text) > largest:
        raise SettingsError(f"{name}={env.get(name)!r} is not a whole number from 0 to {largest}")
    return int(text)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise SettingsError(
            f"{name}={env.get(name)!r} is not valid: allowed values are "
            + ", ".join(repr(a) for a in allowed)
        )
    return value


def _check_bucket(bucket: str) -> None:
    """S3's rules for general purpose bucket names (minus the legacy dotted forms)."""
    problem = None
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        problem = "use 3-63 lowercase letters, digits, dots or hyphens, starting and ending with a letter or digit"
    elif _is_ip_address(bucket):
        problem = "it must not be formatted as an IP address"
    elif bucket.startswith(_BUCKET_RESERVED_PREFIXES) or bucket.endswith(_BUCKET_RESERVED_SUFFIXES):
        problem = (
            "S3 reserves names starting with " + ", ".join(repr(p) for p in _BUCKET_RESERVED_PREFIXES)
            + " and ending with " + ", ".join(repr(p) for p in _BUCKET_RESERVED_SUFFIXES)
        )  # fmt: skip
    if problem:
        raise SettingsError(f"MLOPS_BUCKET={bucket!r} is not a valid S3 bucket name: {problem}")


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_prefix(prefix: str) -> None:
    """An S3 key prefix every store (S3 and the local folder tree) reads the same way."""
    parts = prefix.split("/")
    if prefix and (len(prefix) > PREFIX_MAX or any(p in (".", "..") or not _PREFIX_PART_RE.match(p) for p in parts)):
        raise SettingsError(
            f"MLOPS_PREFIX={prefix!r} is not a valid key prefix: use at most {PREFIX_MAX} characters in parts "
            "separated by single '/', each part made of letters, digits, '.', '_' or '-' and not '.' or '..', "
            "with no leading or trailing '/' (e.g. 'mlops' or 'teams/ml'; empty for the bucket's root)"
        )


def _check_pipeline_name(name: str) -> None:
    """A valid SageMaker name whose derived names (endpoints, models, ...) are valid and whole too."""
    if not _NAME_RE.match(name):
        raise SettingsError(
            f"MLOPS_PIPELINE_NAME={name!r} is not a valid SageMaker pipeline name: "
            "letters, digits and single hyphens, starting and ending with a letter or digit"
        )
    problems = derived_name_problems(name)
    if problems:
        raise SettingsError(
            f"MLOPS_PIPELINE_NAME={name!r} has {len(name)} characters; at most {max_pipeline_name_length()} "
            "are allowed, because names are derived from it: " + "; ".join(problems)
        )


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None
