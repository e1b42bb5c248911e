"""Alerts: what failed, where to look, and the figures, sent to every configured sink.

Every alert goes to the Dagster log and is appended to ``$MLOPS_HOME/alerts.jsonl`` (one JSON
object per line, written with one O_APPEND write, so concurrent writers never interleave and the
file is never rewritten). Optionally it is also POSTed to a Slack-compatible webhook
(``{"text": ...}``) and, on aws, published to an SNS topic (``SnsAlertSink`` in
resources/aws_automation.py; definitions.py chooses). A webhook or topic that fails is logged and
never hides the alert: the file line is written first, and a failure to write it is an error.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from dagster import ConfigurableResource, MetadataValue
from pydantic import Field

ALERTS_FILE = "alerts.jsonl"
MAX_TEXT = 2_000  # characters of one figure or description kept in an alert
MAX_FIGURES = 50  # figures kept per alert
RETRY_STATUSES = (429, 500, 502, 503, 504)

logger = logging.getLogger("mlops_dagster.alerts")


@dataclass
class Alert:
    """One alert. ``event`` identifies what it is about (a check evaluation, a run, an execution)."""

    kind: str  # check_failed | run_failed | pipeline_execution_failed
    title: str
    what: str  # what failed, one or two sentences
    event: str
    asset: str | None = None
    check: str | None = None
    run_id: str | None = None
    job: str | None = None
    step: str | None = None
    execution_arn: str | None = None
    link: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    time: str = ""

    def record(self) -> dict[str, Any]:
        """The alert as its alerts.jsonl line: only the fields that have a value."""
        body = asdict(self)
        body["time"] = self.time or datetime.now(UTC).isoformat(timespec="seconds")
        return {k: v for k, v in body.items() if v not in (None, {}, "")}

    def text(self) -> str:
        """A short message for chat and e-mail: title, what failed, where to look, a few figures."""
        lines = [f"*{self.title}*", self.what]
        where = [f"{name} {value}" for name, value in (("asset", self.asset), ("check", self.check), ("job", self.job),
                 ("step", self.step), ("run", self.run_id), ("execution", self.execution_arn)) if value]  # fmt: skip
        if where:
            lines.append("; ".join(where))
        shown = [f"{k}={v}" for k, v in self.figures.items() if isinstance(v, int | float | str) and len(str(v)) < 80]
        if shown:
            lines.append(", ".join(shown[:10]))
        if self.link:
            lines.append(self.link)
        return "\n".join(lines)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def figures_from_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster metadata as plain JSON values (tables as row dicts), long texts clipped."""
    figures: dict[str, Any] = {}
    for name, entry in list(metadata.items())[:MAX_FIGURES]:
        value = entry.value if isinstance(entry, MetadataValue) else entry
        if hasattr(value, "records"):  # a table: its rows
            value = [dict(r.data) for r in value.records][:MAX_FIGURES]
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = json.dumps(str(value))
        figures[name] = json.loads(text) if len(text) <= MAX_TEXT else clip(text)
    return figures


class AlertSink(ConfigurableResource):
    """Where alerts go: the Dagster log and $MLOPS_HOME/alerts.jsonl always, a webhook when set."""

    home: str = Field(description="MLOPS_HOME: alerts are appended to alerts.jsonl there")
    webhook_url: str | None = Field(
        default=None, description="MLOPS_ALERT_WEBHOOK_URL: Slack-compatible JSON POST {'text': ...}"
    )
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="per attempt")
    webhook_attempts: int = Field(default=3, ge=1, le=10, description="attempts per alert, the first included")
    webhook_backoff_seconds: float = Field(default=0.5, ge=0, le=30, description="urllib3 backoff factor")
    ui_url: str = Field(default="http://127.0.0.1:3000", description="MLOPS_UI_URL: the base of the links")

    @property
    def path(self) -> Path:
        return Path(self.home, ALERTS_FILE)

    # links into the Dagster UI

    def run_link(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def asset_link(self, asset: str, checks: bool = False) -> str:
        path = "/".join(quote(part, safe="") for part in asset.split("/"))
        return f"{self.ui_url.rstrip('/')}/assets/{path}" + ("?view=checks" if checks else "")

    # sending

    def send(self, alert: Alert, log: Any = None) -> dict[str, str]:
        """Log the alert, append it to alerts.jsonl, then try the other sinks; returns each sink's outcome.

        Raises OSError (naming the file) only when the file line cannot be written: then the
        sensor's tick fails and its cursor does not move, so the alert is retried.
        """
        log = log or logger
        record = alert.record()
        log.error(f"ALERT {alert.kind}: {alert.title}: {clip(alert.what, 500)}")
        self._append(record)
        outcomes = {"log": "ok", "file": str(self.path)}
        if self.webhook_url:
            outcomes["webhook"] = self._post_webhook(alert, log)
        outcomes.update(self._publish(alert, record, log))
        return outcomes

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the end, whole, whoever else appends; O_NOFOLLOW: a link
        # planted in place of the file is refused rather than written through.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as err:
            raise OSError(err.errno, f"cannot append the alert to {self.path}: {err.strerror}") from err
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write (full disk, signal): finish the line
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)

    def _post_webhook(self, alert: Alert, log: Any) -> str:
        """POST the alert, retrying connection errors, timeouts and 429/5xx answers.

        The retries are ours, not urllib3's: urllib3 logs each retry with the URL's path, and a
        webhook URL carries its secret in the path. Only the host is ever logged here.
        """
        host = urlsplit(self.webhook_url or "").hostname or "?"
        body = json.dumps({"text": alert.text()}).encode()
        timeout = urllib3.Timeout(total=self.webhook_timeout_seconds)
        outcome = ""
        with urllib3.PoolManager(retries=False, timeout=timeout) as http:
            for attempt in range(self.webhook_attempts):
                if attempt:
                    time.sleep(self.webhook_backoff_seconds * 2 ** (attempt - 1))
                try:
                    status = http.request(
                        "POST", self.webhook_url, body=body, headers={"Content-Type": "application/json"}
                    ).status
                except urllib3.exceptions.HTTPError as err:
                    outcome = type(err).__name__
                    continue
                if 200 <= status < 300:
                    return "ok"
                outcome = f"HTTP {status}"
                if status not in RETRY_STATUSES:
                    break
        log.warning(f"alert webhook to {host} failed ({outcome}, {attempt + 1} attempts); the alert is in {self.path}")
        return f"failed: {outcome}"

    def _publish(self, alert: Alert, record: dict[str, Any], log: Any) -> dict[str, str]:
        """Further sinks of a subclass (SNS on aws); none here."""
        return {}
