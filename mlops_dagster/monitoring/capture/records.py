"""Capture records and their configuration: SageMaker's DataCaptureConfig, checked, and the
JSON Lines records it writes (see the package's docstring for the format and layout)."""

from __future__ import annotations

import base64
import math
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_dagster.settings import Settings

VARIANT = "AllTraffic"
EVENT_VERSION = "0"
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"
CSV, JSON, BASE64 = "CSV", "JSON", "BASE64"
CAPTURE_MODES = ("Input", "Output", "InputAndOutput")
DESTINATION_FOLDER = "datacapture"
# The content type header an endpoint asset sets: what training/inference.py reads and writes.
CONTENT_TYPE_HEADER = {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}
_CONTENT_TYPE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*/[a-zA-Z0-9](-*[a-zA-Z0-9.])*")  # botocore's pattern
_CONFIG_KEYS = {
    "EnableCapture", "InitialSamplingPercentage", "DestinationS3Uri", "KmsKeyId", "CaptureOptions",
    "CaptureContentTypeHeader",
}  # fmt: skip


class CaptureConfigError(ValueError):
    """A DataCaptureConfig the endpoint cannot capture with; the message names the field."""


def default_capture_destination(settings: Settings) -> str:
    """``s3://{bucket}/{prefix}/datacapture``: where endpoint assets capture unless configured."""
    return settings.uri(DESTINATION_FOLDER)


def media_type(header: str | None) -> str:
    """'text/csv; charset=utf-8' -> 'text/csv'."""
    return (header or "").split(";", 1)[0].strip().lower()


def capture_prefix(destination: str, endpoint_name: str, variant: str = VARIANT) -> str:
    """``{destination}/{endpoint}/{variant}/``: the folder of an endpoint's hour folders."""
    return f"{destination.rstrip('/')}/{endpoint_name}/{variant}/"


# The last second formatted: a busy endpoint captures many requests per second, and strftime
# cost about a fifth of a record's time on the request path.
_last_stamp: tuple[int, str] = (-(2**63), "")


def inference_time(when: datetime) -> str:
    """SageMaker's inferenceTime: UTC to the second, with a Z."""
    global _last_stamp
    second = math.floor(when.timestamp())
    cached = _last_stamp  # one read: another thread may replace it meanwhile
    if cached[0] == second:
        return cached[1]
    text = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last_stamp = (second, text)
    return text


# Its own generator, seeded from the OS once: a handler calling random.seed() cannot repeat ids.
_ids = random.Random()


def new_event_id() -> str:
    """A random (version 4) UUID, as SageMaker's eventId. It must be unique, not secret: drawn from
    a seeded generator rather than the OS's entropy (uuid4's system call per record was another
    fifth of a record's time)."""
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureSettings:
    """One endpoint's DataCaptureConfig, checked and resolved (what the server needs to capture)."""

    destination: str
    endpoint_name: str
    variant: str = VARIANT
    sampling_percentage: int = 100
    capture_input: bool = True
    capture_output: bool = True
    csv_content_types: tuple[str, ...] = ()
    json_content_types: tuple[str, ...] = ()

    @classmethod
    def from_data_capture_config(
        cls, config: Any, endpoint_name: str, variant: str = VARIANT
    ) -> CaptureSettings | None:
        """The settings of a DataCaptureConfig as CreateEndpointConfig takes it; None when
        EnableCapture is false. Raises CaptureConfigError naming the field that is wrong."""
        if not isinstance(config, Mapping):
            raise CaptureConfigError(f"DataCaptureConfig must be an object, got {type(config).__name__}")
        unknown = sorted(set(config) - _CONFIG_KEYS)
        if unknown:
            raise CaptureConfigError(
                f"DataCaptureConfig has unknown fields {', '.join(unknown)} (known: {', '.join(sorted(_CONFIG_KEYS))})"
            )
        enabled = config.get("EnableCapture", True)
        if not isinstance(enabled, bool):
            raise CaptureConfigError(f"DataCaptureConfig.EnableCapture must be true or false, got {enabled!r}")
        percentage = _sampling_percentage(config.get("InitialSamplingPercentage"))
        destination = _destination(config.get("DestinationS3Uri"))
        capture_input, capture_output = _capture_modes(config.get("CaptureOptions"))
        kms = config.get("KmsKeyId")
        if kms is not None and not isinstance(kms, str):
            raise CaptureConfigError(f"DataCaptureConfig.KmsKeyId must be a string, got {type(kms).__name__}")
        csv_types, json_types = _content_type_header(config.get("CaptureContentTypeHeader"))
        if not enabled:
            return None
        return cls(
            destination, endpoint_name, variant, percentage, capture_input, capture_output, csv_types, json_types
        )

    @property
    def prefix(self) -> str:
        return capture_prefix(self.destination, self.endpoint_name, self.variant)

    def encoding(self, content_type: str | None) -> str:
        kind = media_type(content_type)
        if kind in self.csv_content_types:
            return CSV
        if kind in self.json_content_types:
            return JSON
        return BASE64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> CaptureSettings:
        values = dict(data)
        for key in ("csv_content_types", "json_content_types"):
            values[key] = tuple(values.get(key) or ())
        return cls(**values)


def data_capture_summary(config: Mapping | None) -> dict | None:
    """DescribeEndpoint's DataCaptureConfig (a DataCaptureConfigSummary) for an endpoint config's one."""
    if not config:
        return None
    enabled = bool(config.get("EnableCapture", True))
    summary = {
        "EnableCapture": enabled,
        "CaptureStatus": "Started" if enabled else "Stopped",
        "CurrentSamplingPercentage": config["InitialSamplingPercentage"],
        "DestinationS3Uri": config["DestinationS3Uri"],
    }
    if config.get("KmsKeyId"):
        summary["KmsKeyId"] = config["KmsKeyId"]
    return summary


def _sampling_percentage(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise CaptureConfigError(
            f"DataCaptureConfig.InitialSamplingPercentage must be an integer from 0 to 100, got {value!r}"
        )
    return value


def _destination(value: Any) -> str:
    from mlops_dagster.objects import key_prefix

    if not isinstance(value, str) or not value.startswith("s3://"):
        raise CaptureConfigError(
            f"DataCaptureConfig.DestinationS3Uri must be an s3:// URI (s3://bucket/prefix), got {value!r}"
        )
    try:
        key_prefix(value.rstrip("/") + "/")
    except ValueError as err:
        raise CaptureConfigError(f"DataCaptureConfig.DestinationS3Uri: {err}") from None
    return value.rstrip("/")


def _capture_modes(options: Any) -> tuple[bool, bool]:
    if not isinstance(options, list) or not 1 <= len(options) <= 32:
        raise CaptureConfigError(
            'DataCaptureConfig.CaptureOptions must be a list of 1 to 32 {"CaptureMode": "Input"|"Output"|"InputAndOutput"}'
        )
    modes = set()
    for number, option in enumerate(options, 1):
        mode = option.get("CaptureMode") if isinstance(option, Mapping) else None
        if mode not in CAPTURE_MODES:
            raise CaptureConfigError(
                f"DataCaptureConfig.CaptureOptions[{number}].CaptureMode must be one of {', '.join(CAPTURE_MODES)}, "
                f"got {mode!r}"
            )
        modes.add(mode)
    both = "InputAndOutput" in modes
    return both or "Input" in modes, both or "Output" in modes


def _content_type_header(header: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if header is None:
        return (), ()
    if not isinstance(header, Mapping) or set(header) - {"CsvContentTypes", "JsonContentTypes"}:
        raise CaptureConfigError(
            "DataCaptureConfig.CaptureContentTypeHeader must be an object with CsvContentTypes and/or JsonContentTypes"
        )
    lists = []
    for key in ("CsvContentTypes", "JsonContentTypes"):
        types = header.get(key)
        if types is None:
            lists.append(())
            continue
        if (
            not isinstance(types, list)
            or not 1 <= len(types) <= 10
            or not all(isinstance(t, str) and len(t) <= 256 and _CONTENT_TYPE.fullmatch(t) for t in types)
        ):
            raise CaptureConfigError(
                f"DataCaptureConfig.CaptureContentTypeHeader.{key} must be a list of 1 to 10 media types "
                f"such as text/csv, got {types!r}"
            )
        lists.append(tuple(t.lower() for t in types))
    return lists[0], lists[1]


# --- records ----------------------------------------------------------------------------------


def capture_part(mode: str, data: bytes | str, content_type: str, encoding: str) -> dict:
    """endpointInput (mode INPUT) or endpointOutput (OUTPUT). Text that is not UTF-8 is captured as BASE64."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if encoding != BASE64:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            encoding = BASE64
    if encoding == BASE64:
        text = base64.b64encode(raw).decode("ascii")
    return {"observedContentType": content_type, "mode": mode, "data": text, "encoding": encoding}


def capture_record(
    endpoint_input: dict | None,
    endpoint_output: dict | None,
    *,
    inference_id: str | None = None,
    event_id: str | None = None,
    when: datetime | None = None,
) -> dict:
    """One capture record (a JSON object of the .jsonl files)."""
    capture_data = {}
    if endpoint_input is not None:
        capture_data["endpointInput"] = endpoint_input
    if endpoint_output is not None:
        capture_data["endpointOutput"] = endpoint_output
    metadata = {"eventId": event_id or new_event_id()}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = inference_time(when or datetime.now(UTC))
    return {"captureData": capture_data, "eventMetadata": metadata, "eventVersion": EVENT_VERSION}


def hour_folder(record: Mapping) -> str:
    """'yyyy/mm/dd/hh' of a record's inferenceTime (as capture_record writes it)."""
    stamp = record["eventMetadata"]["inferenceTime"]
    return f"{stamp[0:4]}/{stamp[5:7]}/{stamp[8:10]}/{stamp[11:13]}"
