"""Reading captured traffic back: the capture objects of a window, parsed into feature rows.

Inputs are parsed with the endpoint's rules (training/inference.py's ``input_fn``: CSV rows without
a header; JSON ``{"instances": [...]}`` or a list of records); outputs as ``{"predictions": [...]}``
JSON or one prediction per CSV line. What the local endpoint writes (CSV or JSON encoding, one
second ``inferenceTime``, plain numbers) takes a fast path: the records of a chunk are checked with
string operations and their numbers converted in one numpy call. Anything else (BASE64, JSON
instances, quoted CSV, a bulk conversion that meets a bad value) goes record by record through
``input_fn``, whose message is the reason a record is bad. Bad records (truncated JSON, wrong width,
a value that is not a number, predictions that do not match the rows) are counted in
``CaptureStats`` with their file and line, never raised.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .records import BASE64, CSV, JSON, VARIANT, capture_prefix, media_type

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

MAX_EXAMPLES = 5  # bad records described in CaptureStats
MAX_LISTED_DAYS = 62  # a longer window lists the whole endpoint prefix instead of day by day
_JSON_PREDICTIONS = '{"predictions": ['  # how output_fn starts its JSON


@dataclass(frozen=True)
class CaptureChunk:
    """Rows of captured traffic, one entry per feature row (a request with several rows gives
    several rows with the same ids and time). ``predictions`` is NaN where no output was captured."""

    features: pd.DataFrame  # columns = feature_names, float64
    predictions: np.ndarray  # float64, one per row
    inference_ids: list[str | None]
    event_ids: list[str]
    times: np.ndarray  # datetime64[ms], UTC

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class CaptureStats:
    records: int = 0  # records in the window, readable or not (and unreadable lines)
    rows: int = 0  # feature rows read
    bad_records: int = 0
    bad_examples: list[str] = field(default_factory=list)  # "<uri> line <n>: <reason>", at most 5
    sources: list[str] = field(default_factory=list)  # the objects read
    first_time: str | None = None  # earliest inferenceTime read (ISO 8601, UTC)
    last_time: str | None = None
    outside_window: int = 0  # records in the objects read whose inferenceTime is outside the window
    without_output: int = 0  # records with no endpointOutput (their predictions are NaN)

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


# --- finding the objects ----------------------------------------------------------------------


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
        hour = _hour_of(uri[len(prefix) :])
        if hour is None:
            continue
        if (low is None or hour + timedelta(hours=1) > low) and (high is None or hour < high):
            found.append((hour, uri))
    return [uri for _, uri in sorted(found)]


def _hour_of(relative: str) -> datetime | None:
    """The hour of 'yyyy/mm/dd/hh/<name>.jsonl'; None for anything else."""
    parts = relative.split("/")
    if len(parts) != 5 or not parts[4].endswith(".jsonl") or not all(p.isdigit() for p in parts[:4]):
        return None
    try:
        return datetime(*(int(p) for p in parts[:4]), tzinfo=UTC)
    except ValueError:  # e.g. month 13: not a capture folder
        return None


def _list_window(store: ObjectStore, prefix: str, low: datetime | None, high: datetime | None) -> list[str]:
    """Day folders when the window has a start and is short (S3 lists less), else the whole prefix."""
    if low is None:
        return store.list(prefix)
    last = high or datetime.now(UTC) + timedelta(hours=1)
    days = (last.date() - low.date()).days + 1
    if days > MAX_LISTED_DAYS:
        return store.list(prefix)
    uris: list[str] = []
    for offset in range(max(days, 0)):
        uris += store.list(f"{prefix}{low.date() + timedelta(days=offset):%Y/%m/%d}/")
    return uris


# --- reading them -----------------------------------------------------------------------------


class CaptureReading(Iterator["CaptureChunk"]):
    """The chunks of ``read_capture``; ``stats`` grows as they are read and is complete at the end."""

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
    """Read capture objects into chunks of about ``chunk_rows`` feature rows and their predictions,
    the records with an inferenceTime in [start, end) only. Iterate it; its ``stats`` count
    records, rows and bad records (each named by object and line)."""
    if not feature_names:
        raise ValueError("feature_names is empty: give the served model's features in training order")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    stats = CaptureStats()
    builder = _ChunkBuilder([str(f) for f in feature_names], _utc(start), _utc(end), stats)
    return CaptureReading(_chunks(store, uris, builder, chunk_rows), stats)


def _chunks(store: ObjectStore, uris: Sequence[str], builder: _ChunkBuilder, chunk_rows: int) -> Iterator[CaptureChunk]:
    for uri in uris:
        lines = store.get_bytes(uri).decode("utf-8", errors="replace").splitlines()
        builder.stats.sources.append(uri)
        for first in range(0, len(lines), chunk_rows):  # a large object is read in slices
            builder.add_lines(uri, lines[first : first + chunk_rows], first + 1)
            if builder.rows >= chunk_rows:
                chunk = builder.take()
                if chunk is not None:
                    yield chunk
    chunk = builder.take()
    if chunk is not None:
        yield chunk


@cache
def _handlers() -> ModuleType:
    """training/inference.py, as the endpoint runs it (its input_fn decides what a bad row is)."""
    from mlops_dagster.serving.app import load_handlers

    return load_handlers()


class _BadRecord(Exception):
    pass


class _NotUsual(Exception):
    """A record or a slice of lines is not what the fast path takes; the careful path reads it."""


def _window_key(value: datetime | None) -> str | None:
    """``value`` rounded up to the millisecond as a time key: ISO 8601 without the Z, with a
    three-digit fraction only when it is not zero. Keys of usual inferenceTimes (``_usual_time``)
    compare as text the way the times compare: "...:05" < "...:05.250" < "...:06"."""
    if value is None:
        return None
    millisecond = -(-value.microsecond // 1000)
    value = value.replace(microsecond=0) + timedelta(milliseconds=millisecond)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    return text if value.microsecond == 0 else f"{text}.{value.microsecond // 1000:03d}"


def _usual_time(stamp: str) -> bool:
    """'2026-11-30T23:59:59Z' or '2026-11-30T23:59:59.123Z' (its key is the stamp without the Z)."""
    return (len(stamp) == 20 or (len(stamp) == 24 and stamp[19] == ".")) and stamp[-1] == "Z" and stamp[10] == "T"


class _ChunkBuilder:
    """The records of the current chunk, in order, as parallel lists.

    ``inputs[i]`` is CSV text (rows separated by newlines, converted in bulk at ``take``) or a
    parsed matrix; ``outputs[i]`` the predictions as comma-separated text (bulk too), a list of
    floats, or None (no output captured). A slice of lines in which every record is the usual
    single-row CSV record is taken whole, with one json.loads and list comprehensions; otherwise
    line by line, each record the fast way when it can be, else the careful way."""

    def __init__(self, features: list[str], start: datetime | None, end: datetime | None, stats: CaptureStats):
        self.features = features
        self.width = len(features)
        self.commas = self.width - 1
        self.start, self.end = start, end
        # The keys of usual inferenceTimes compare as text against these.
        self.start_key, self.end_key = _window_key(start), _window_key(end)
        self.stats = stats
        self._reset()

    def _reset(self) -> None:
        self.inputs: list[str | np.ndarray] = []
        self.row_counts: list[int] = []
        self.outputs: list[str | list[float] | None] = []
        self.times: list[str] = []  # ISO 8601 without the Z, to the second or millisecond
        self.event_ids: list[str] = []
        self.inference_ids: list[str | None] = []
        self.where: list[tuple[str, int]] = []  # (object, line) of each record
        self.rows = 0

    # adding lines

    def add_lines(self, uri: str, lines: list[str], first: int) -> None:
        try:
            self._add_slice(uri, lines, first)
        except _NotUsual:
            for number, line in enumerate(lines, first):
                if line and not line.isspace():
                    self.add(uri, number, line)

    def _add_slice(self, uri: str, lines: list[str], first: int) -> None:
        """All the records of ``lines`` at once, or _NotUsual (nothing added)."""
        try:
            records = json.loads("[" + ",".join(lines) + "]")  # a blank or bad line fails it
            metadata = [r["eventMetadata"] for r in records]
            stamps = [m["inferenceTime"] for m in metadata]
            data = [r["captureData"] for r in records]
            inputs = [d["endpointInput"] for d in data]
            outputs = [d["endpointOutput"] for d in data]
            commas = self.commas
            texts = [i["data"].rstrip() for i in inputs]
            usual = (
                all(_usual_time(s) for s in stamps)
                and all(i["encoding"] == CSV and i["observedContentType"].startswith("text/csv") for i in inputs)
                and all(t.count(",") == commas and "\n" not in t and t for t in texts)
            )
            predictions = _single_outputs(outputs) if usual else None
            event_ids = [m["eventId"] for m in metadata]
            inference_ids = [m.get("inferenceId") for m in metadata]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise _NotUsual from None
        if predictions is None or not all(type(e) is str for e in event_ids):
            raise _NotUsual
        if not records:
            return
        stamps = [s[:-1] for s in stamps]
        keep = self._in_window(stamps)
        if keep is not None:
            texts, predictions, stamps, event_ids, inference_ids = (
                [values[k] for k in keep] for values in (texts, predictions, stamps, event_ids, inference_ids)
            )
        self.stats.records += len(texts)
        self.inputs += texts
        self.row_counts += [1] * len(texts)
        self.outputs += predictions
        self.times += stamps
        self.event_ids += event_ids
        self.inference_ids += [None if i is None else str(i) for i in inference_ids]
        numbers = range(first, first + len(lines)) if keep is None else [first + k for k in keep]
        self.where += [(uri, n) for n in numbers]
        self.rows += len(texts)

    def _in_window(self, keys: list[str]) -> list[int] | None:
        """Indices of the time keys in the window; None when all of them are."""
        low, high, stamps = self.start_key, self.end_key, keys
        if (low is None or min(stamps) >= low) and (high is None or max(stamps) < high):
            return None
        keep = [k for k, s in enumerate(stamps) if (low is None or s >= low) and (high is None or s < high)]
        self.stats.outside_window += len(stamps) - len(keep)
        return keep

    def add(self, uri: str, number: int, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError as err:
            self.stats.records += 1
            self.stats.bad(uri, number, f"not a JSON object (truncated?): {err}")
            return
        try:
            self._add_fast(uri, number, record)
        except (_NotUsual, KeyError, TypeError, AttributeError, IndexError):
            self._add_careful(uri, number, record)  # it says what is wrong, if anything

    def _add_fast(self, uri: str, number: int, record: dict) -> None:
        """The usual record (CSV rows, canonical time), appended or counted outside the window."""
        metadata = record["eventMetadata"]
        stamp = metadata["inferenceTime"]
        if not _usual_time(stamp):
            raise _NotUsual
        key = stamp[:-1]
        data = record["captureData"]
        endpoint_input = data["endpointInput"]
        if endpoint_input["encoding"] != CSV or not endpoint_input["observedContentType"].startswith("text/csv"):
            raise _NotUsual
        text = endpoint_input["data"].rstrip()
        lines = text.split("\n")
        if not text or any(line.count(",") != self.commas for line in lines):
            raise _NotUsual
        output = data.get("endpointOutput")
        predictions = None
        if output is not None:
            predictions = _fast_output(output, len(lines))
            if predictions is None:
                raise _NotUsual
        if (self.start_key is not None and key < self.start_key) or (self.end_key is not None and key >= self.end_key):
            self.stats.outside_window += 1
            return
        self.stats.records += 1
        self._append(text, len(lines), predictions, key, metadata, (uri, number))

    def _append(
        self,
        values: str | np.ndarray,
        rows: int,
        outputs: str | list[float] | None,
        time: str,
        metadata: dict,
        where: tuple[str, int],
    ) -> None:
        event_id, inference_id = metadata.get("eventId"), metadata.get("inferenceId")
        self.inputs.append(values)
        self.row_counts.append(rows)
        self.outputs.append(outputs)
        self.times.append(time)
        self.event_ids.append("" if event_id is None else str(event_id))
        self.inference_ids.append(None if inference_id is None else str(inference_id))
        self.where.append(where)
        self.rows += rows

    def _add_careful(self, uri: str, number: int, record: Any) -> None:
        try:
            metadata, data = _fields(record)
            when = _time(metadata)
        except _BadRecord as err:
            self.stats.records += 1
            self.stats.bad(uri, number, str(err))
            return
        if (self.start is not None and when < self.start) or (self.end is not None and when >= self.end):
            self.stats.outside_window += 1
            return
        self.stats.records += 1
        try:
            matrix = self._parse_input(*_decoded(data["endpointInput"], "endpointInput"))
            predictions = None
            if data.get("endpointOutput") is not None:
                predictions = _predictions(*_decoded(data["endpointOutput"], "endpointOutput"))
                if len(predictions) != len(matrix):
                    raise _BadRecord(f"{len(predictions)} predictions for {len(matrix)} input rows")
        except _BadRecord as err:
            self.stats.bad(uri, number, str(err))
            return
        stamp = when.replace(tzinfo=None).isoformat(timespec="milliseconds")
        self._append(matrix, len(matrix), predictions, stamp, metadata, (uri, number))

    def _parse_input(self, kind: str, text: str) -> np.ndarray:
        """The endpoint's own parsing (training/inference.py's input_fn); its reason when it refuses."""
        if kind not in ("text/csv", "application/json"):
            raise _BadRecord(f"input content type {kind or 'none'} is neither text/csv nor application/json")
        handlers = _handlers()
        try:
            return np.asarray(handlers.input_fn(text, kind, self.features), dtype=float).reshape(-1, self.width)
        except handlers.InvalidInput as err:
            raise _BadRecord(f"input: {err}") from None

    # the chunk

    def take(self) -> CaptureChunk | None:
        """The chunk of the records added since the last take (None if none of them is readable)."""
        if not self.inputs:
            self._reset()
            return None
        times = self._time_array()
        matrices = self._input_matrices()
        predictions = self._output_arrays()
        keep = [
            i
            for i, (t, m, p) in enumerate(zip(times, matrices, predictions, strict=True))
            if m is not None and p is not None and not np.isnat(t)
        ]
        chunk = self._chunk(keep, times, matrices, predictions) if keep else None
        self._reset()
        return chunk

    def _time_array(self) -> np.ndarray:
        """The records' times (datetime64[ms]); NaT, and the record counted bad, where one is not a time."""
        try:
            return np.array(self.times, dtype="datetime64[ms]")
        except ValueError:  # e.g. month 13: find which
            return self._times_one_by_one()

    def _times_one_by_one(self) -> np.ndarray:
        times = np.full(len(self.times), np.datetime64("NaT"), dtype="datetime64[ms]")
        for i, key in enumerate(self.times):
            try:
                times[i] = np.datetime64(key, "ms")
            except ValueError:
                self.stats.bad(*self.where[i], f"eventMetadata.inferenceTime {key + 'Z'!r} is not a time")
        return times

    def _input_matrices(self) -> list[np.ndarray | None]:
        """Each record's rows: the CSV texts in one conversion; if it fails, one by one."""
        texts = [i for i, value in enumerate(self.inputs) if isinstance(value, str)]
        result: list[np.ndarray | None] = list(self.inputs)  # type: ignore[arg-type]
        if not texts:
            return result
        bulk = _csv_floats("\n".join(self.inputs[i] for i in texts), self.width)  # type: ignore[misc]
        if bulk is not None and np.isfinite(bulk).all():
            self._split(bulk, texts, result)
            return result
        for i in texts:
            try:
                result[i] = self._parse_input("text/csv", self.inputs[i])  # type: ignore[arg-type]
            except _BadRecord as err:
                result[i] = None
                self.stats.bad(*self.where[i], str(err))
        return result

    def _split(self, bulk: np.ndarray, records: list[int], result: list) -> None:
        """Hand each record its own rows of ``bulk`` (the records' texts parsed as one)."""
        offset = 0
        for i in records:
            result[i] = bulk[offset : offset + self.row_counts[i]]
            offset += self.row_counts[i]

    def _output_arrays(self) -> list[np.ndarray | list[float] | bool | None]:
        """Each record's predictions: an array, True when not captured (NaNs), None when bad."""
        texts = [i for i, value in enumerate(self.outputs) if isinstance(value, str)]
        result: list = [True if value is None else value for value in self.outputs]
        if not texts:
            return result
        bulk = _csv_floats(",".join(self.outputs[i] for i in texts).replace(",", "\n"), 1)  # type: ignore[misc]
        if bulk is not None:
            self._split(bulk.ravel(), texts, result)
            return result
        for i in texts:
            try:  # output_fn writes a prediction that is not finite as null
                result[i] = [math.nan if v.strip() == "null" else float(v) for v in self.outputs[i].split(",")]
            except ValueError:
                result[i] = None
                self.stats.bad(*self.where[i], f"endpointOutput is not predictions: {self.outputs[i][:60]!r}")
        return result

    def _chunk(self, keep: list[int], times: np.ndarray, matrices: list, outputs: list) -> CaptureChunk:
        counts = [self.row_counts[i] for i in keep]
        matrix = np.concatenate([matrices[i] for i in keep]) if len(keep) > 1 else matrices[keep[0]]
        predictions = np.full(len(matrix), np.nan)
        offset = 0
        for i, n in zip(keep, counts, strict=True):
            if outputs[i] is True:
                self.stats.without_output += 1
            else:
                predictions[offset : offset + n] = outputs[i]
            offset += n
        stamps = times[keep] if len(keep) < len(times) else times
        if len(matrix) == len(keep):  # one row per record (the usual case)
            times = stamps
            inference_ids = [self.inference_ids[i] for i in keep]
            event_ids = [self.event_ids[i] for i in keep]
        else:
            times = np.repeat(stamps, counts)
            inference_ids = [self.inference_ids[i] for i, n in zip(keep, counts, strict=True) for _ in range(n)]
            event_ids = [self.event_ids[i] for i, n in zip(keep, counts, strict=True) for _ in range(n)]
        self._note_times(stamps.min(), stamps.max())
        self.stats.rows += len(matrix)
        features = pd.DataFrame(matrix, columns=self.features, dtype=float, copy=False)
        return CaptureChunk(features, predictions, inference_ids, event_ids, times)

    def _note_times(self, first: np.datetime64, last: np.datetime64) -> None:
        stats = self.stats
        if stats.first_time is None or first < np.datetime64(stats.first_time.rstrip("Z"), "ms"):
            stats.first_time = _iso(first)
        if stats.last_time is None or last > np.datetime64(stats.last_time.rstrip("Z"), "ms"):
            stats.last_time = _iso(last)


def _csv_floats(text: str, width: int) -> np.ndarray | None:
    """Rows of ``width`` numbers (rows already checked to have that width) in one C-parser pass;
    None if a value is not a number (empty, text, nan)."""
    try:
        frame = pd.read_csv(
            io.StringIO(text), header=None, dtype=np.float64, engine="c", na_filter=False, skip_blank_lines=False
        )
    except (ValueError, pd.errors.ParserError):
        return None
    return frame.to_numpy() if frame.shape[1] == width else None


def _iso(value: np.datetime64) -> str:
    text = str(value.astype("datetime64[ms]"))
    return (text[:-4] if text.endswith(".000") else text) + "Z"


def _single_outputs(outputs: list[dict]) -> list[str] | None:
    """One prediction per output, as text, when all are what output_fn writes for one row; else None."""
    data = [o["data"] for o in outputs]
    if all(o["encoding"] == JSON and o["observedContentType"].startswith("application/json") for o in outputs):
        start = len(_JSON_PREDICTIONS)
        if not all(d.startswith(_JSON_PREDICTIONS) and d.endswith("]}") for d in data):
            return None
        values = [d[start:-2] for d in data]
    elif all(o["encoding"] == CSV and o["observedContentType"].startswith("text/csv") for o in outputs):
        values = [d.strip() for d in data]
    else:
        return None
    if any("," in v or "[" in v or "\n" in v or not v for v in values):
        return None
    return values


def _fast_output(output: dict, rows: int) -> str | None:
    """The predictions of an output as output_fn writes it, as comma-separated text; None otherwise."""
    encoding, kind, text = output["encoding"], output["observedContentType"], output["data"]
    if encoding == CSV and kind.startswith("text/csv"):
        text = text.rstrip()
        if "," in text:  # several outputs per row: not what the model writes
            return None
        values = text.replace("\n", ",")
    elif encoding == JSON and kind.startswith("application/json") and text.startswith(_JSON_PREDICTIONS):
        if not text.endswith("]}") or "[" in text[len(_JSON_PREDICTIONS) :]:
            return None
        values = text[len(_JSON_PREDICTIONS) : -2]
    else:
        return None
    return values if values and values.count(",") == rows - 1 else None


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
        return math.nan  # output_fn writes a prediction that is not finite as null
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{str(value)[:40]} is not a number")
    return float(value)
