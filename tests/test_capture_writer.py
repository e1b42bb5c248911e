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
