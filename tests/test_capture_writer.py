"""The capture writer drains its queue in bulk: records wait for the timer, a full batch or a flush."""

from __future__ import annotations

import threading

from mlops_dagster.monitoring.capture.writer import CaptureWriter
from mlops_dagster.objects import LocalObjects

PREFIX = "s3://mlops-local/mlops/datacapture/ep/AllTraffic/"
RECORD = {"eventMetadata": {"inferenceTime": "2026-03-04T05:06:07Z"}, "captureData": {}}


def test_a_record_is_written_by_the_timer_without_a_flush(tmp_path):
    store = LocalObjects(tmp_path)
    written = threading.Event()
    writer = CaptureWriter(store, flush_seconds=0.05, batch_records=1000)
    original = writer._write

    def observed(batch):
        result = original(batch)
        if writer.counts.written:
            written.set()
        return result

    writer._write = observed
    try:
        assert writer.submit(PREFIX, RECORD)
        assert written.wait(30)  # bounded only; the timer (50 ms) wrote it, nothing else asked
        assert len(store.list(PREFIX)) == 1
    finally:
        assert writer.close()


def test_a_full_batch_wakes_the_writer_before_the_timer(tmp_path):
    store = LocalObjects(tmp_path)
    writer = CaptureWriter(store, flush_seconds=3600, batch_records=3)
    try:
        for _ in range(2):
            assert writer.submit(PREFIX, RECORD)
        assert not writer._wake.is_set()  # two records: no wake-up
        assert writer.submit(PREFIX, RECORD)  # the third fills the batch
        assert writer.flush()
        assert (writer.counts.written, writer.counts.files) == (3, 1)
    finally:
        assert writer.close()


def test_inference_time_is_utc_to_the_second_and_follows_the_clock():
    from datetime import UTC, datetime, timedelta, timezone

    from mlops_dagster.monitoring.capture.records import inference_time

    base = datetime(2026, 3, 4, 5, 6, 7, 999_999, tzinfo=UTC)
    assert inference_time(base) == "2026-03-04T05:06:07Z"
    assert inference_time(base.replace(microsecond=0)) == "2026-03-04T05:06:07Z"  # same second: cached
    assert inference_time(base + timedelta(microseconds=1)) == "2026-03-04T05:06:08Z"  # the next one
    plus_two = timezone(timedelta(hours=2))
    assert inference_time(datetime(2026, 3, 4, 7, 6, 8, tzinfo=plus_two)) == "2026-03-04T05:06:08Z"
    assert inference_time(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)) == "1969-12-31T23:59:59Z"


def test_event_ids_are_version_4_uuids_and_unaffected_by_random_seed():
    import random
    import uuid

    from mlops_dagster.monitoring.capture.records import new_event_id

    random.seed(1)
    first = new_event_id()
    random.seed(1)  # a handler reseeding the global generator does not repeat ids
    second = new_event_id()
    assert first != second
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in (first, second))
    assert len({new_event_id() for _ in range(10_000)}) == 10_000
