"""Endpoint data capture in SageMaker's ``DataCaptureConfig`` format: the records, a buffered writer
that keeps them off the request path, and the reader the monitoring assets use.

One record per request, one JSON object per line, as SageMaker writes them::

    {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                                       "data": "0.1,18.0,...", "encoding": "CSV"},
                     "endpointOutput": {"observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT",
                                        "data": "24.1\\n", "encoding": "CSV"}},
     "eventMetadata": {"eventId": "<uuid4>", "inferenceId": "<X-Amzn-SageMaker-Inference-Id, if sent>",
                       "inferenceTime": "2026-11-30T23:59:59Z"},
     "eventVersion": "0"}

``encoding`` follows ``CaptureContentTypeHeader`` as SageMaker applies it: CSV for its
``CsvContentTypes``, JSON for its ``JsonContentTypes``, BASE64 (the data base64-encoded) for any
other type, and for every type when the header is absent. The endpoint assets always set it to
text/csv and application/json, so their captures are readable text.

Objects: ``{DestinationS3Uri}/{endpoint}/{variant}/yyyy/mm/dd/hh/{mm-ss-mmm}-{uuid}.jsonl``, the
hour of the records' ``inferenceTime`` (UTC); one object per flush and hour.

Writing (``EndpointCapture``, used by the local server): the request path samples, builds the
record and puts it on a bounded queue without waiting; a thread batches records and writes one
object per flush (every ``flush_seconds`` or ``batch_records`` records, and on ``close``). A full
queue drops the record and counts it; a failing write is logged and counted. Neither ever reaches
the request. What a kill -9 loses is what was not flushed yet: the queue and the batch being
built, at most ``flush_seconds`` of traffic (or ``queue_records`` records when writes lag).

Reading (``iter_capture_files``, ``read_capture``): inputs are parsed with the endpoint's own rules
(training/inference.py's ``input_fn``: CSV rows without a header; JSON ``{"instances": [...]}`` or
a list of records), well-formed CSV in bulk with numpy; outputs as ``{"predictions": [...]}`` JSON or
CSV lines. A record that cannot be read (truncated JSON, wrong width, a value that is not a number,
predictions that do not match the rows) is counted in ``CaptureStats`` with its file and line, never
raised.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import queue
import random as _random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # the server imports this module; dagster (under the store) only when it captures
    from mlops_dagster.resources.object_store import ObjectStore
    from mlops_dagster.settings import Settings

log = logging.getLogger("mlops_dagster.capture")

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
_HOUR_PATH = re.compile(r"(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+\.jsonl$")
MAX_EXAMPLES = 5  # bad records described in CaptureStats


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


def inference_time(when: datetime) -> str:
    """SageMaker's inferenceTime: UTC to the second, with a Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    from mlops_dagster.resources.object_store import key_prefix  # here: it imports dagster

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
    metadata = {"eventId": event_id or str(uuid.uuid4())}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = inference_time(when or datetime.now(UTC))
    return {"captureData": capture_data, "eventMetadata": metadata, "eventVersion": EVENT_VERSION}


def hour_folder(record: Mapping) -> str:
    """'yyyy/mm/dd/hh' of a record's inferenceTime (as capture_record writes it)."""
    stamp = record["eventMetadata"]["inferenceTime"]
    return f"{stamp[0:4]}/{stamp[5:7]}/{stamp[8:10]}/{stamp[11:13]}"


# --- writing ----------------------------------------------------------------------------------


@dataclass
class CaptureCounts:
    """Each counter is changed by one thread only (the request path or the writer)."""

    captured: int = 0  # records handed to the writer
    sampled_out: int = 0  # requests not captured because of the sampling percentage
    dropped: int = 0  # records dropped: the queue was full
    written: int = 0  # records in objects written
    files: int = 0  # objects written
    failed_writes: int = 0  # objects whose write failed
    failed_records: int = 0  # records in them (lost)
    last_error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class CaptureWriter:
    """Writes queued (prefix, record) pairs as .jsonl objects from a background thread."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        flush_seconds: float = 1.0,
        batch_records: int = 1000,
        queue_records: int = 10_000,
        counts: CaptureCounts | None = None,
    ):
        if flush_seconds <= 0 or batch_records < 1 or queue_records < 1:
            raise ValueError("flush_seconds must be positive; batch_records and queue_records at least 1")
        self.store = store
        self.flush_seconds = flush_seconds
        self.batch_records = batch_records
        self.counts = counts or CaptureCounts()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_records)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, prefix: str, record: dict) -> bool:
        """Queue a record without waiting; False (and counted) when the queue is full or closed."""
        if self._closed:
            self.counts.dropped += 1
            return False
        try:
            self._queue.put_nowait((prefix, record))
        except queue.Full:
            self.counts.dropped += 1
            if self.counts.dropped in (1, 10, 100) or self.counts.dropped % 1000 == 0:
                log.warning("capture queue full: %d records dropped so far", self.counts.dropped)
            return False
        self.counts.captured += 1
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued before this call; True once written (or failed and counted)."""
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued and stop the thread; True if it finished within ``timeout``."""
        if not self._closed:
            self._closed = True
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.error("capture writer did not take the stop request within %.0f s", timeout)
                return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        batch: list[tuple[str, dict]] = []
        deadline = 0.0
        while True:
            wait = max(0.0, deadline - time.monotonic()) if batch else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:  # the oldest record has waited flush_seconds
                batch = self._write(batch)
                continue
            if item is _STOP:
                self._write(batch)
                return
            if isinstance(item, _Flush):
                batch = self._write(batch)
                item.done.set()
                continue
            if not batch:
                deadline = time.monotonic() + self.flush_seconds
            batch.append(item)
            if len(batch) >= self.batch_records:
                batch = self._write(batch)

    def _write(self, batch: list[tuple[str, dict]]) -> list:
        """One object per (prefix, hour); a failure is logged and counted, and the rest still written."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for prefix, record in batch:
            groups.setdefault((prefix, hour_folder(record)), []).append(record)
        for (prefix, hour), records in groups.items():
            now = datetime.now(UTC)
            uri = f"{prefix}{hour}/{now:%M-%S}-{now.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
            try:
                self.store.put_bytes(uri, data)
            except Exception as exc:  # any store failure: counted and logged, never the request's
                self.counts.failed_writes += 1
                self.counts.failed_records += len(records)
                self.counts.last_error = f"{uri}: {type(exc).__name__}: {exc}"[:500]
                log.error("capture write of %d records failed: %s", len(records), self.counts.last_error)
            else:
                self.counts.written += len(records)
                self.counts.files += 1
        return []


class EndpointCapture:
    """What a server calls per request: sample, build the record, hand it to the writer.

    ``settings`` may be replaced at any time (a deploy with another DataCaptureConfig); None stops
    capturing. ``random`` returns a float in [0, 1) (injectable, for tests)."""

    def __init__(
        self,
        store: ObjectStore,
        settings: CaptureSettings | None = None,
        *,
        random: Callable[[], float] = _random.random,
        flush_seconds: float = 1.0,
        batch_records: int = 1000,
        queue_records: int = 10_000,
    ):
        self.settings = settings
        self.random = random
        self.writer = CaptureWriter(
            store, flush_seconds=flush_seconds, batch_records=batch_records, queue_records=queue_records
        )

    @property
    def counts(self) -> CaptureCounts:
        return self.writer.counts

    def sampled(self, settings: CaptureSettings) -> bool:
        percentage = settings.sampling_percentage
        return percentage >= 100 or (percentage > 0 and self.random() * 100 < percentage)

    def capture(
        self,
        request_body: bytes,
        request_type: str,
        response_body: bytes | str,
        response_type: str,
        inference_id: str | None = None,
    ) -> bool:
        """Capture one request and its response (if sampled); never raises for the request path."""
        settings = self.settings
        if settings is None:
            return False
        if not self.sampled(settings):
            self.counts.sampled_out += 1
            return False
        endpoint_input = endpoint_output = None
        if settings.capture_input:
            endpoint_input = capture_part("INPUT", request_body, request_type, settings.encoding(request_type))
        if settings.capture_output:
            endpoint_output = capture_part("OUTPUT", response_body, response_type, settings.encoding(response_type))
        record = capture_record(endpoint_input, endpoint_output, inference_id=inference_id)
        return self.writer.submit(settings.prefix, record)

    def status(self) -> dict:
        settings = self.settings
        return {
            "enabled": settings is not None,
            "destination": settings.prefix if settings else None,
            "sampling_percentage": settings.sampling_percentage if settings else None,
            **self.counts.as_dict(),
        }

    def flush(self, timeout: float = 30.0) -> bool:
        return self.writer.flush(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        return self.writer.close(timeout)


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureChunk:
    """Up to ``chunk_rows`` rows of captured traffic, one entry per feature row (a request with
    several rows gives several rows with the same ids and time). ``predictions`` is NaN where
    the output was not captured."""

    features: pd.DataFrame  # columns = feature_names, float64
    predictions: np.ndarray  # float64, one per row
    inference_ids: list[str | None]
    event_ids: list[str]
    times: np.ndarray  # datetime64[ms], UTC

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class CaptureStats:
    records: int = 0  # records in the window, readable or not
    rows: int = 0  # feature rows read
    bad_records: int = 0
    bad_examples: list[str] = field(default_factory=list)  # "<uri> line <n>: <reason>", at most 5
    sources: list[str] = field(default_factory=list)  # the files read
    first_time: str | None = None  # earliest inferenceTime read (ISO, UTC)
    last_time: str | None = None
    outside_window: int = 0  # records in the files read whose inferenceTime is outside the window
    without_output: int = 0  # records with no endpointOutput (predictions NaN)

    def bad(self, uri: str, line: int, reason: str) -> None:
        self.bad_records += 1
        if len(self.bad_examples) < MAX_EXAMPLES:
            text = f"{uri} line {line}: {reason}"
            self.bad_examples.append(text if len(text) <= 300 else text[:297] + "...")

    def as_dict(self) -> dict:
        return asdict(self)


def _utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iter_capture_files(
    store: ObjectStore,
    destination: str,
    endpoint_name: str,
    variant: str = VARIANT,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[str]:
    """The capture objects of an endpoint whose hour folder can hold records in [start, end), sorted
    by hour and name. A folder is kept an hour either side of the window (a record near the hour's
    edge may sit in the next folder); read_capture filters the records themselves."""
    prefix = capture_prefix(destination, endpoint_name, variant)
    start, end = _utc(start), _utc(end)
    low = start - timedelta(hours=1) if start else None
    high = end + timedelta(hours=1) if end else None
    found = []
    for uri in _list_window(store, prefix, low, high):
        match = _HOUR_PATH.search(uri[len(prefix) :])
        if match is None:
            continue
        try:
            hour = datetime(*(int(g) for g in match.groups()), tzinfo=UTC)
        except ValueError:  # e.g. month 13: not a capture folder
            continue
        if (low is None or hour + timedelta(hours=1) > low) and (high is None or hour < high):
            found.append((hour, uri))
    return [uri for _, uri in sorted(found)]


def _list_window(store: ObjectStore, prefix: str, low: datetime | None, high: datetime | None) -> list[str]:
    """List day folders when the window is bounded and short (S3 lists less), else the whole prefix."""
    if low is None:
        return store.list(prefix)
    last = high or datetime.now(UTC) + timedelta(hours=1)
    days = (last.date() - low.date()).days + 1
    if days > 62:
        return store.list(prefix)
    uris: list[str] = []
    for offset in range(max(days, 0)):
        day = low.date() + timedelta(days=offset)
        uris += store.list(f"{prefix}{day:%Y/%m/%d}/")
    return uris


class CaptureReading(Iterator[CaptureChunk]):
    """The chunks of ``read_capture``; ``stats`` is complete once the iteration has ended."""

    def __init__(self, chunks: Iterator[CaptureChunk], stats: CaptureStats):
        self._chunks = chunks
        self.stats = stats

    def __iter__(self) -> CaptureReading:
        return self

    def __next__(self) -> CaptureChunk:
        return next(self._chunks)


def read_capture(
    store: ObjectStore,
    uris: Sequence[str],
    feature_names: list[str],
    start: datetime | None = None,
    end: datetime | None = None,
    chunk_rows: int = 100_000,
) -> CaptureReading:
    """Read capture objects into chunks of feature rows and predictions, records with an
    inferenceTime in [start, end) only. Iterate it; its ``stats`` count records, rows and bad
    records (each named by file and line) as the reading goes."""
    if not feature_names:
        raise ValueError("feature_names is empty: give the served model's features in training order")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    stats = CaptureStats()
    parser = _RecordParser(list(feature_names), _utc(start), _utc(end), stats)
    return CaptureReading(_chunks(store, uris, parser, chunk_rows), stats)


def _chunks(store: ObjectStore, uris: Sequence[str], parser: _RecordParser, chunk_rows: int) -> Iterator[CaptureChunk]:
    builder = _ChunkBuilder(parser)
    for uri in uris:
        text = store.get_bytes(uri).decode("utf-8", errors="replace")
        parser.stats.sources.append(uri)
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                builder.add(uri, number, line)
            if builder.rows >= chunk_rows:
                yield from builder.take()
    yield from builder.take()


@cache
def _handlers() -> ModuleType:
    """training/inference.py, as the endpoint runs it (its input_fn is the rule for bad rows)."""
    from mlops_dagster.serving.app import load_handlers

    return load_handlers()


@dataclass
class _Parsed:
    uri: str
    line: int
    event_id: str
    inference_id: str | None
    time: datetime
    csv_lines: list[str] | None  # well-formed looking CSV, parsed in bulk
    matrix: np.ndarray | None  # parsed one by one (JSON, quoted CSV)
    text: str  # the input as text (for the one-by-one fallback)
    predictions: list[float] | None

    @property
    def rows(self) -> int:
        return len(self.csv_lines) if self.csv_lines is not None else len(self.matrix)


class _BadRecord(Exception):
    pass


class _RecordParser:
    def __init__(self, features: list[str], start: datetime | None, end: datetime | None, stats: CaptureStats):
        self.features = features
        self.width = len(features)
        self.start, self.end = start, end
        self.stats = stats

    def parse(self, uri: str, number: int, line: str) -> _Parsed | None:
        """The record of one line; None if it is outside the window or bad (then counted)."""
        try:
            record = json.loads(line)
        except ValueError as err:
            self.stats.records += 1
            self.stats.bad(uri, number, f"not a JSON object (truncated?): {err}")
            return None
        try:
            metadata, data = _fields(record)
            when = _time(metadata)
        except _BadRecord as err:
            self.stats.records += 1
            self.stats.bad(uri, number, str(err))
            return None
        if (self.start is not None and when < self.start) or (self.end is not None and when >= self.end):
            self.stats.outside_window += 1
            return None
        self.stats.records += 1
        try:
            return self._parse_data(uri, number, metadata, data, when)
        except _BadRecord as err:
            self.stats.bad(uri, number, str(err))
            return None

    def _parse_data(self, uri: str, number: int, metadata: dict, data: dict, when: datetime) -> _Parsed:
        kind, text = _decoded(data.get("endpointInput"), "endpointInput")
        csv_lines = matrix = None
        if kind == "text/csv":
            lines = text.rstrip().splitlines()
            if lines and all(line.count(",") == self.width - 1 for line in lines):
                csv_lines = lines
        if csv_lines is None:
            matrix = self.one_by_one(kind, text)
        predictions = None
        if data.get("endpointOutput") is not None:
            predictions = _predictions(*_decoded(data["endpointOutput"], "endpointOutput"))
        event_id = metadata.get("eventId")
        inference_id = metadata.get("inferenceId")
        return _Parsed(
            uri, number, str(event_id) if event_id is not None else "", None if inference_id is None else str(inference_id),
            when, csv_lines, matrix, text, predictions,
        )  # fmt: skip

    def one_by_one(self, kind: str, text: str) -> np.ndarray:
        """The endpoint's own parsing (training/inference.py's input_fn): its reason when it refuses."""
        handlers = _handlers()
        if kind not in ("text/csv", "application/json"):
            raise _BadRecord(f"input content type {kind or 'none'} is neither text/csv nor application/json")
        try:
            return np.asarray(handlers.input_fn(text, kind, self.features), dtype=float)
        except handlers.InvalidInput as err:
            raise _BadRecord(f"input: {err}") from None


def _fields(record: Any) -> tuple[dict, dict]:
    if not isinstance(record, dict):
        raise _BadRecord(f"not a capture record (a JSON {type(record).__name__})")
    data, metadata = record.get("captureData"), record.get("eventMetadata")
    if not isinstance(data, dict) or not isinstance(data.get("endpointInput"), dict):
        raise _BadRecord("no captureData.endpointInput (was only the output captured?)")
    if not isinstance(metadata, dict):
        raise _BadRecord("no eventMetadata")
    return metadata, data


def _time(metadata: dict) -> datetime:
    stamp = metadata.get("inferenceTime")
    try:
        return _utc(datetime.fromisoformat(stamp))
    except (TypeError, ValueError):
        raise _BadRecord(f"eventMetadata.inferenceTime {stamp!r} is not an ISO 8601 time") from None


def _decoded(part: Any, name: str) -> tuple[str, str]:
    """(media type, data as text) of endpointInput or endpointOutput."""
    if not isinstance(part, dict) or not isinstance(part.get("data"), str):
        raise _BadRecord(f"{name} has no data")
    encoding, data = part.get("encoding"), part["data"]
    if encoding == BASE64:
        try:
            data = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as err:
            raise _BadRecord(f"{name}: BASE64 data that does not decode to UTF-8 text ({err})") from None
    elif encoding not in (CSV, JSON):
        raise _BadRecord(f"{name}: unknown encoding {encoding!r} (expected CSV, JSON or BASE64)")
    return media_type(part.get("observedContentType")), data


def _predictions(kind: str, text: str) -> list[float]:
    try:
        if kind == "application/json":
            values = json.loads(text)
            if isinstance(values, dict):
                values = values.get("predictions")
            if not isinstance(values, list):
                raise ValueError('expected {"predictions": [...]}')
            return [_prediction(v) for v in values]
        if kind == "text/csv":
            return [float(line.split(",", 1)[0]) for line in text.split()]
    except (ValueError, TypeError) as err:
        raise _BadRecord(f"endpointOutput is not predictions: {err}") from None
    raise _BadRecord(f"endpointOutput content type {kind or 'none'} is neither text/csv nor application/json")


def _prediction(value: Any) -> float:
    if isinstance(value, list) and len(value) == 1:  # [[24.1], ...]: one output per row
        value = value[0]
    if value is None:
        return math.nan  # output_fn writes a non-finite prediction as null
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{str(value)[:40]} is not a number")
    return float(value)


class _ChunkBuilder:
    """Records in order; well-formed CSV inputs parsed in one numpy call per chunk."""

    def __init__(self, parser: _RecordParser):
        self.parser = parser
        self.records: list[_Parsed] = []
        self.rows = 0

    def add(self, uri: str, number: int, line: str) -> None:
        parsed = self.parser.parse(uri, number, line)
        if parsed is None:
            return
        if parsed.predictions is not None and len(parsed.predictions) != parsed.rows:
            self.parser.stats.bad(uri, number, f"{len(parsed.predictions)} predictions for {parsed.rows} input rows")
            return
        self.records.append(parsed)
        self.rows += parsed.rows

    def take(self) -> Iterator[CaptureChunk]:
        records, self.records, self.rows = self.records, [], 0
        if not records:
            return
        matrices = self._matrices(records)
        kept = [(r, m) for r, m in zip(records, matrices, strict=True) if m is not None]
        if not kept:
            return
        yield self._chunk(kept)

    def _matrices(self, records: list[_Parsed]) -> list[np.ndarray | None]:
        """Each record's rows: bulk for the CSV ones; if the bulk parse meets a bad value, one by one."""
        width = self.parser.width
        fast = [r for r in records if r.csv_lines is not None]
        bulk = None
        if fast:
            try:
                values = np.array(",".join(",".join(r.csv_lines) for r in fast).split(","), dtype=float)
                if np.isfinite(values).all():
                    bulk = values.reshape(-1, width)
            except ValueError:
                pass  # a value that is not a number: the records are parsed one by one below
        result: list[np.ndarray | None] = []
        offset = 0
        for record in records:
            if record.csv_lines is None:
                result.append(record.matrix)
            elif bulk is not None:
                result.append(bulk[offset : offset + record.rows])
                offset += record.rows
            else:
                result.append(self._one(record))
        return result

    def _one(self, record: _Parsed) -> np.ndarray | None:
        try:
            return self.parser.one_by_one("text/csv", record.text)
        except _BadRecord as err:
            self.parser.stats.bad(record.uri, record.line, str(err))
            return None

    def _chunk(self, kept: list[tuple[_Parsed, np.ndarray]]) -> CaptureChunk:
        stats = self.parser.stats
        counts = [len(m) for _, m in kept]
        matrix = np.concatenate([m for _, m in kept]) if len(kept) > 1 else kept[0][1]
        predictions = np.full(len(matrix), np.nan)
        offset = 0
        for (record, _), n in zip(kept, counts, strict=True):
            if record.predictions is not None:
                predictions[offset : offset + n] = record.predictions
            else:
                stats.without_output += 1
            offset += n
        times = np.repeat(np.array([r.time.replace(tzinfo=None) for r, _ in kept], dtype="datetime64[ms]"), counts)
        inference_ids = [r.inference_id for (r, _), n in zip(kept, counts, strict=True) for _ in range(n)]
        event_ids = [r.event_id for (r, _), n in zip(kept, counts, strict=True) for _ in range(n)]
        stats.rows += len(matrix)
        first, last = min(r.time for r, _ in kept), max(r.time for r, _ in kept)
        if stats.first_time is None or first < _utc(datetime.fromisoformat(stats.first_time)):
            stats.first_time = inference_time(first)
        if stats.last_time is None or last > _utc(datetime.fromisoformat(stats.last_time)):
            stats.last_time = inference_time(last)
        features = pd.DataFrame(matrix, columns=self.parser.features, dtype=float, copy=False)
        return CaptureChunk(features, predictions, inference_ids, event_ids, times)
