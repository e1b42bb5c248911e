"""The aws backend's alert and trigger resources: SNS for alerts, S3 listings for new data.

Imported only by definitions.py on the aws backend (boto3 and dagster-aws cost seconds to import).
"""

from __future__ import annotations

import hashlib
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from ..alerts import Alert, AlertSink, clip
from ..triggers import SourceLister, SourceObject
from .aws import AwsSession
from .object_store import split_uri

SNS_SUBJECT_MAX = 100  # SNS: printable ASCII, no line breaks, at most 100 characters
SNS_MESSAGE_MAX = 200_000  # bytes; SNS accepts 256 KiB


class SnsAlertSink(AlertSink):
    """The log, alerts.jsonl and the webhook as ``AlertSink``, plus SNS Publish to a topic."""

    session: AwsSession
    topic_arn: str | None = Field(default=None, description="MLOPS_ALERT_SNS_TOPIC_ARN")

    def _publish(self, alert: Alert, record: dict[str, Any], log: Any) -> dict[str, str]:
        if not self.topic_arn:
            return {}
        subject = "".join(c if 32 <= ord(c) < 127 else " " for c in alert.title)[:SNS_SUBJECT_MAX].strip()
        params: dict[str, Any] = {
            "TopicArn": self.topic_arn,
            "Subject": subject or "mlops alert",
            "Message": clip(alert.text(), SNS_MESSAGE_MAX),
            "MessageAttributes": {"kind": {"DataType": "String", "StringValue": alert.kind}},
        }
        if self.topic_arn.endswith(".fifo"):  # FIFO topics need a group and deduplicate by this id
            params["MessageGroupId"] = "mlops-alerts"
            params["MessageDeduplicationId"] = hashlib.sha256(alert.event.encode()).hexdigest()
        try:
            message_id = self.session.client("sns").publish(**params)["MessageId"]
        except (ClientError, BotoCoreError) as err:
            log.warning(f"alert to SNS topic {self.topic_arn} failed: {err}; the alert is in {self.path}")
            return {"sns": f"failed: {type(err).__name__}"}
        return {"sns": f"ok: {message_id}"}


class S3SourceLister(SourceLister):
    """Objects under an s3:// data source from ListObjectsV2 (dagster-aws's ``get_objects``);
    an object's version is its ETag (S3's content tag: re-uploading the same bytes keeps it)."""

    session: AwsSession

    def objects(self, uri: str, known: dict[str, SourceObject]) -> list[SourceObject]:
        from dagster_aws.s3.sensor import get_objects

        bucket, prefix = split_uri(uri)
        listed = get_objects(bucket=bucket, prefix=prefix, client=self.session.client("s3"))
        return [
            SourceObject(
                uri=f"s3://{bucket}/{o['Key']}",
                version=str(o.get("ETag", "")).strip('"'),
                modified=o["LastModified"].timestamp(),
                size=int(o.get("Size", 0)),
            )
            for o in listed
            if not o["Key"].endswith("/")  # folder placeholders the console creates
        ]
