"""Writing capture records off the request path: a bounded queue and a background thread.

The request path (``EndpointCapture.capture``) samples, builds the record and queues it without
waiting; the writer thread batches records and writes one object per flush and hour folder
(every ``flush_seconds``, or ``batch_records`` records, and on ``flush``/``close``). The queue is a
deque the writer drains in bulk when it wakes: a record does not wake it (a wake-up per record
cost a busy endpoint about a fifth of its latency), only a full batch, a flush or a close does. A full queue
drops the record; a failing write is logged and its records are lost; both are counted and
neither reaches the request. A kill -9 loses what was not written yet: the queue and the batch
being built, normally at most ``flush_seconds`` of traffic (up to ``queue_records`` records when
the store lags).
"""

from __future__ import annotations

import json
import logging
import random as _random
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .records import CaptureSettings, capture_part, capture_record, hour_folder

if TYPE_CHECKING:  # the server imports this module; dagster (under the store) only when it captures
    from mlops_dagster.resources.object_store import ObjectStore

log = logging.getLogger("mlops_dagster.capture")


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
        self.queue_records = queue_records
        self._pending: deque = deque()  # records, _Flush markers and _STOP, in order
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, prefix: str, record: dict) -> bool:
        """Queue a record without waiting; False (and counted) when the queue is full or closed."""
        if self._closed:
            self.counts.dropped += 1
            return False
        if len(self._pending) >= self.queue_records:
            self.counts.dropped += 1
            if self.counts.dropped in (1, 10, 100) or self.counts.dropped % 1000 == 0:
                log.warning("capture queue full: %d records dropped so far", self.counts.dropped)
            return False
        self._pending.append((prefix, record))
        self.counts.captured += 1
        if len(self._pending) >= self.batch_records and not self._wake.is_set():
            self._wake.set()  # once: set() takes a lock, and the writer may still be busy
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued before this call; True once written (or failed and counted)."""
        marker = _Flush()
        self._pending.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued and stop the thread; True if it finished within ``timeout``."""
        if not self._closed:
            self._closed = True
            self._pending.append(_STOP)
            self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)  # a record waits at most flush_seconds
            self._wake.clear()  # a set() after this wakes the next wait: nothing is missed
            if not self._drain():
                return

    def _drain(self) -> bool:
        """Write what is queued, in order; False at the stop request."""
        batch: list[tuple[str, dict]] = []
        while self._pending:
            item = self._pending.popleft()
            if item is _STOP:
                self._write(batch)
                return False
            if isinstance(item, _Flush):
                batch = self._write(batch)
                item.done.set()
                continue
            batch.append(item)
            if len(batch) >= self.batch_records:
                batch = self._write(batch)
        self._write(batch)
        return True

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
