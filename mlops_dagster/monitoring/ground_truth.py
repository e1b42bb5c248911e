"""Ground truth in SageMaker Model Monitor's ``groundTruthData`` format: read, write, join.

One JSON object per line, under ``{prefix}/yyyy/mm/dd/hh/*.jsonl`` (the hour the labels were
uploaded)::

    {"groundTruthData": {"data": "24.0", "encoding": "CSV"},
     "eventMetadata": {"eventId": "<the inferenceId sent with the request, else its eventId>"},
     "eventVersion": "0"}

``data`` is the label (CSV text, a JSON number or list, or BASE64 of CSV); a request that carried
several rows may be labelled with as many values, in the rows' order. Bad lines are counted with
a few examples (file, line, reason), never raised: a monitoring run reports them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from ..resources.object_store import ObjectStore

HOUR_FOLDER = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+$")
MAX_EXAMPLES = 5
EXAMPLE_CHARS = 200


@dataclass
class GroundTruth:
    """Labels by event id (inferenceId or eventId), with what reading them met."""

    labels: dict[str, list[float]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    records: int = 0
    bad_records: int = 0
    duplicates: int = 0  # ids labelled again in a later line (the later label wins)
    bad_examples: list[str] = field(default_factory=list)

    def bad(self, uri: str, line: int, reason: str) -> None:
        self.bad_records += 1
        if len(self.bad_examples) < MAX_EXAMPLES:
            self.bad_examples.append(f"{uri} line {line}: {reason}"[:EXAMPLE_CHARS])


@dataclass
class Joined:
    """Predictions and ground truth of the same rows, in the window's order."""

    truth: list[float] = field(default_factory=list)
    predictions: list[float] = field(default_factory=list)
    width_mismatches: int = 0  # records whose label count differs from their row count

    def add(self, labels: Sequence[float], predictions: Sequence[float]) -> None:
        if len(labels) != len(predictions):
            self.width_mismatches += 1
            return
        self.truth.extend(labels)
        self.predictions.extend(predictions)


def ground_truth_files(store: ObjectStore, prefix: str, start: datetime | None = None) -> list[str]:
    """The .jsonl files under ``prefix``; those in hour folders before ``start``'s hour are left out
    (labels arrive after the requests they label). Files outside the dated layout are all read."""
    floor = None if start is None else start.astimezone(UTC).strftime("%Y%m%d%H")
    files = []
    for uri in store.list(prefix.rstrip("/") + "/"):
        if not uri.endswith(".jsonl"):
            continue
        dated = HOUR_FOLDER.search(uri[len(prefix) :])
        if floor is not None and dated and "".join(dated.groups()) < floor:
            continue
        files.append(uri)
    return files


def read_ground_truth(store: ObjectStore, uris: Iterable[str]) -> GroundTruth:
    """Labels of every good line of ``uris``; bad lines are counted with examples."""
    found = GroundTruth()
    for uri in uris:
        found.sources.append(uri)
        text = store.get_bytes(uri).decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            found.records += 1
            try:
                key, values = parse_record(line)
            except ValueError as err:
                found.bad(uri, number, str(err))
                continue
            if key in found.labels:
                found.duplicates += 1
            found.labels[key] = values
    return found


def parse_record(line: str) -> tuple[str, list[float]]:
    """(event id, labels) of one line; ValueError saying what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at character {err.pos}): truncated or not a record") from err
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    key = (record.get("eventMetadata") or {}).get("eventId") if isinstance(record.get("eventMetadata"), dict) else None
    if not isinstance(key, str) or not key:
        raise ValueError("no eventMetadata.eventId")
    data = record.get("groundTruthData")
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError("no groundTruthData.data")
    return key, _labels(data.get("data"), str(data.get("encoding", "CSV")).upper())


def _labels(data: object, encoding: str) -> list[float]:
    if encoding == "BASE64":
        try:
            data = base64.b64decode(str(data), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as err:
            raise ValueError(f"groundTruthData is not BASE64 of UTF-8 text ({err})") from err
        encoding = "CSV"
    if encoding == "JSON" and isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"groundTruthData.data is not JSON ({err.msg})") from err
    if isinstance(data, str):
        cells = [c.strip() for c in re.split(r"[,\n]", data) if c.strip()]
    elif isinstance(data, list):
        cells = data
    else:
        cells = [data]
    try:
        values = [float(c) for c in cells if not isinstance(c, bool)]
    except (TypeError, ValueError) as err:
        raise ValueError(f"groundTruthData {str(data)[:40]!r} is not numbers") from err
    if not values or len(values) != len(cells) or not np.all(np.isfinite(values)):
        raise ValueError(f"groundTruthData {str(data)[:40]!r} is not finite numbers")
    return values


def ground_truth_record(event_id: str, labels: float | Sequence[float]) -> dict:
    """One line of a ground-truth file, as Model Monitor reads it."""
    values = [labels] if isinstance(labels, int | float) else list(labels)
    return {
        "groundTruthData": {"data": ",".join(repr(float(v)) for v in values), "encoding": "CSV"},
        "eventMetadata": {"eventId": event_id},
        "eventVersion": "0",
    }


def put_ground_truth(
    store: ObjectStore, prefix: str, labels: Mapping[str, float | Sequence[float]], when: datetime | None = None
) -> str:
    """Write ``labels`` (event id -> label) as one file in ``prefix``'s hour folder of ``when``."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    uri = f"{prefix.rstrip('/')}/{when:%Y/%m/%d/%H}/{when:%M-%S}-{uuid.uuid4().hex[:8]}.jsonl"
    lines = [json.dumps(ground_truth_record(key, value)) for key, value in labels.items()]
    store.put_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))
    return uri
