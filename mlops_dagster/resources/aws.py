"""boto3 sessions and clients for the aws backend: region, profile, endpoint, retries in one place."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from dagster import ConfigurableResource
from pydantic import Field


class AwsSession(ConfigurableResource):
    """The normal AWS credential chain (env, profile, SSO, instance role); never keys in config."""

    region: str
    profile: str | None = Field(default=None, description="named profile from ~/.aws/config")
    endpoint_url: str | None = Field(default=None, description="an S3/SageMaker-compatible endpoint (tests: moto)")
    retry_mode: str = Field(default="standard", description="botocore retry mode: standard or adaptive")
    max_attempts: int = Field(default=8, ge=1, description="botocore attempts per call, first try included")

    def boto_session(self) -> boto3.Session:
        return boto3.Session(profile_name=self.profile, region_name=self.region)

    def botocore_config(self) -> BotoConfig:
        return BotoConfig(retries={"mode": self.retry_mode, "max_attempts": self.max_attempts})

    def client(self, service: str, session: boto3.Session | None = None) -> Any:
        session = session or self.boto_session()
        kwargs: dict[str, Any] = {"config": self.botocore_config()}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return session.client(service, **kwargs)
