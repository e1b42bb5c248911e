"""Endpoint data capture in SageMaker's ``DataCaptureConfig`` format: the records (``records``), a
buffered writer that keeps them off the request path (``writer``), and the reader the monitoring
assets use (``reader``).

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
text/csv and application/json, so what they capture is readable text.

Objects: ``{DestinationS3Uri}/{endpoint}/{variant}/yyyy/mm/dd/hh/{mm-ss-mmm}-{uuid}.jsonl``, in the
hour folder of the records' ``inferenceTime`` (UTC); one object per flush and hour.

Nothing here imports Dagster at import time: the endpoint server imports the writer.
"""

from .reader import CaptureChunk, CaptureReading, CaptureStats, iter_capture_files, read_capture
from .records import (
    BASE64,
    CONTENT_TYPE_HEADER,
    CSV,
    EVENT_VERSION,
    INFERENCE_ID_HEADER,
    JSON,
    VARIANT,
    CaptureConfigError,
    CaptureSettings,
    capture_part,
    capture_prefix,
    capture_record,
    data_capture_summary,
    default_capture_destination,
    inference_time,
)
from .writer import CaptureCounts, CaptureWriter, EndpointCapture

__all__ = [
    "BASE64",
    "CONTENT_TYPE_HEADER",
    "CSV",
    "EVENT_VERSION",
    "INFERENCE_ID_HEADER",
    "JSON",
    "VARIANT",
    "CaptureChunk",
    "CaptureConfigError",
    "CaptureCounts",
    "CaptureReading",
    "CaptureSettings",
    "CaptureStats",
    "CaptureWriter",
    "EndpointCapture",
    "capture_part",
    "capture_prefix",
    "capture_record",
    "data_capture_summary",
    "default_capture_destination",
    "inference_time",
    "iter_capture_files",
    "read_capture",
]
