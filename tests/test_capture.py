"""Data capture: SageMaker's capture format written by the local endpoint, and read back.

The first part drives the pieces in-process (records, the writer with its queue and failures,
sampling with an injected random, the reader on hand-written files); the second a real endpoint of
the local SageMaker service (a server process), configured through CreateEndpointConfig's
DataCaptureConfig exactly as on AWS. Waits are on events or on the server's flush, never on time.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from test_local_hosting import BUCKET, ROLE, forest, pack, register, stop_everything, upload

from mlops_dagster.datasets import BOSTON_FEATURES, synthetic_boston
from mlops_dagster.monitoring.capture import (
    CONTENT_TYPE_HEADER,
    CaptureConfigError,
    CaptureSettings,
    CaptureWriter,
    EndpointCapture,
    capture_part,
    capture_record,
    iter_capture_files,
    read_capture,
)
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import LocalSageMakerRuntime, LocalSageMakerService
from mlops_dagster.serving import process

DESTINATION = f"s3://{BUCKET}/mlops/datacapture"
ROWS = synthetic_boston(12, seed=5)[BOSTON_FEATURES]
HOUR = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def settings(percentage: int = 100, endpoint: str = "ep", **config) -> CaptureSettings:
    return CaptureSettings.from_data_capture_config(
        {
            "InitialSamplingPercentage": percentage,
            "DestinationS3Uri": DESTINATION,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": CONTENT_TYPE_HEADER,
            **config,
        },
        endpoint,
    )


def csv_rows(frame: pd.DataFrame) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in frame.itertuples(index=False))


def record(
    frame: pd.DataFrame, predictions: list[float], when: datetime = HOUR, inference_id: str | None = None
) -> dict:
    """A record as the endpoint writes it: CSV in, JSON out."""
    return capture_record(
        capture_part("INPUT", csv_rows(frame), "text/csv", "CSV"),
        capture_part("OUTPUT", json.dumps({"predictions": predictions}), "application/json", "JSON"),
        inference_id=inference_id,
        when=when,
    )


def put_lines(store: LocalObjectStore, lines: list[str], when: datetime = HOUR, name: str = "a") -> str:
    uri = f"{DESTINATION}/ep/AllTraffic/{when:%Y/%m/%d/%H}/{name}.jsonl"
    store.put_bytes(uri, ("\n".join(lines) + "\n").encode())
    return uri


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(tmp_path / "s3"))


def read_all(store, uris, **window):
    reading = read_capture(store, uris, BOSTON_FEATURES, **window)
    chunks = list(reading)
    return chunks, reading.stats


# --- records and configuration ------------------------------------------------------------------


def test_a_record_has_sagemakers_fields_and_encodings():
    made = capture_record(
        capture_part("INPUT", b"1,2", "text/csv", "CSV"),
        capture_part("OUTPUT", "3.5\n", "text/csv; charset=utf-8", "CSV"),
        inference_id="req-1",
        event_id="e-1",
        when=datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC),
    )
    assert made == {
        "captureData": {
            "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2", "encoding": "CSV"},
            "endpointOutput": {
                "observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT", "data": "3.5\n", "encoding": "CSV",
            },
        },
        "eventMetadata": {"eventId": "e-1", "inferenceId": "req-1", "inferenceTime": "2026-11-30T23:59:59Z"},
        "eventVersion": "0",
    }  # fmt: skip
    odd = capture_part("INPUT", b"\xff\xfe raw", "text/csv", "CSV")  # not UTF-8: kept whole, as BASE64
    assert odd["encoding"] == "BASE64" and base64.b64decode(odd["data"]) == b"\xff\xfe raw"
    assert "inferenceId" not in capture_record(None, None)["eventMetadata"]


def test_encoding_follows_the_content_type_header_as_sagemaker_applies_it():
    chosen = settings(CaptureContentTypeHeader={"CsvContentTypes": ["text/csv"]})
    assert chosen.encoding("text/csv; charset=utf-8") == "CSV"
    assert chosen.encoding("application/json") == "BASE64"  # not listed
    assert settings().encoding("application/json") == "JSON"
    without = CaptureSettings.from_data_capture_config(
        {"InitialSamplingPercentage": 5, "DestinationS3Uri": DESTINATION, "CaptureOptions": [{"CaptureMode": "Input"}]},
        "ep",
    )
    assert without.encoding("text/csv") == "BASE64"  # no header: everything base64, as on AWS
    assert (without.capture_input, without.capture_output) == (True, False)
    assert settings(EnableCapture=False) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"InitialSamplingPercentage": 101}, "InitialSamplingPercentage must be an integer from 0 to 100, got 101"),
        ({"InitialSamplingPercentage": True}, "InitialSamplingPercentage must be an integer"),
        ({"DestinationS3Uri": "https://bucket/x"}, "DestinationS3Uri must be an s3:// URI"),
        ({"DestinationS3Uri": "s3://bucket//x"}, "empty segment"),
        ({"CaptureOptions": []}, "CaptureOptions must be a list of 1 to 32"),
        ({"CaptureOptions": [{"CaptureMode": "Both"}]}, "CaptureOptions[1].CaptureMode must be one of Input"),
        ({"CaptureContentTypeHeader": {"CsvContentTypes": ["csv"]}}, "CsvContentTypes must be a list of 1 to 10"),
        ({"EnableCapture": "yes"}, "EnableCapture must be true or false"),
        ({"Sampling": 5}, "unknown fields Sampling"),
    ],
)
def test_a_bad_data_capture_config_is_refused_naming_the_field(change, message):
    with pytest.raises(CaptureConfigError) as err:
        settings(**change)
    assert message in str(err.value)


# --- writing ----------------------------------------------------------------------------------


def test_sampling_takes_the_percentage_of_requests_with_an_injected_random(store):
    draws = itertools.cycle([0.0, 0.49, 0.5, 0.99])  # half of them below 0.5
    capture = EndpointCapture(store, settings(50), random=lambda: next(draws))
    try:
        taken = [capture.capture(b"1", "text/csv", "2\n", "text/csv") for _ in range(8)]
        assert taken == [True, True, False, False] * 2
        capture.settings = settings(0)
        assert not any(capture.capture(b"1", "text/csv", "2\n", "text/csv") for _ in range(5))
        capture.settings = settings(100)
        assert capture.capture(b"1", "text/csv", "2\n", "text/csv")
        assert capture.flush()
    finally:
        capture.close()
    counts = capture.counts
    assert (counts.captured, counts.sampled_out, counts.written) == (5, 9, 5)


def test_records_are_batched_into_hour_folders_and_nothing_is_lost_on_close(store):
    writer = CaptureWriter(store, flush_seconds=3600, batch_records=1000)  # only close writes
    for minute in (0, 59, 60, 61):  # two hours
        when = HOUR.replace(minute=0) + timedelta(minutes=minute)
        assert writer.submit(f"{DESTINATION}/ep/AllTraffic/", record(ROWS.head(1), [1.0], when))
    assert writer.counts.written == 0
    assert writer.close()
    uris = store.list(f"{DESTINATION}/ep/AllTraffic/")
    assert [u.split("AllTraffic/")[1][:13] for u in uris] == ["2026/03/04/05", "2026/03/04/06"]
    assert [len(store.get_bytes(u).splitlines()) for u in uris] == [2, 2]
    assert (writer.counts.written, writer.counts.files) == (4, 2)
    assert not writer.submit(f"{DESTINATION}/ep/AllTraffic/", record(ROWS.head(1), [1.0]))  # closed
    assert writer.counts.dropped == 1


class FailingStore:
    def __init__(self):
        self.calls = 0

    def put_bytes(self, uri: str, data: bytes):
        self.calls += 1
        raise OSError(28, "No space left on device")


def test_a_failing_write_is_counted_and_logged_never_raised(caplog):
    store = FailingStore()
    capture = EndpointCapture(store, settings())
    try:
        assert capture.capture(b"1,2", "text/csv", "3\n", "text/csv")  # the request's part: fine
        assert capture.flush()
    finally:
        capture.close()
    counts = capture.counts
    assert (counts.failed_writes, counts.failed_records, counts.written, store.calls) == (1, 1, 0, 1)
    assert "No space left on device" in counts.last_error and counts.last_error.startswith(f"{DESTINATION}/ep/")
    assert "capture write of 1 records failed" in caplog.text


class BlockingStore:
    """put_bytes waits until released: the writer thread is busy, the queue fills."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def put_bytes(self, uri: str, data: bytes):
        self.entered.set()
        assert self.release.wait(30)


def test_a_full_queue_drops_and_counts_instead_of_waiting():
    store = BlockingStore()
    writer = CaptureWriter(store, batch_records=1, queue_records=1)
    prefix = f"{DESTINATION}/ep/AllTraffic/"
    try:
        assert writer.submit(prefix, record(ROWS.head(1), [1.0]))
        assert store.entered.wait(30)  # the writer holds the first record, stuck in put_bytes
        assert writer.submit(prefix, record(ROWS.head(1), [1.0]))  # fills the queue
        assert not writer.submit(prefix, record(ROWS.head(1), [1.0]))  # full: dropped, at once
        assert writer.counts.dropped == 1
    finally:
        store.release.set()
        assert writer.close()
    assert (writer.counts.captured, writer.counts.written) == (2, 2)


# --- reading ----------------------------------------------------------------------------------


def test_the_reader_returns_rows_predictions_ids_and_times(store):
    frame = ROWS.head(6)
    lines = [json.dumps(record(frame.iloc[[i]], [float(i)], HOUR + timedelta(seconds=i), f"id-{i}")) for i in range(4)]
    two_rows = record(frame.iloc[4:6], [4.0, 5.0])  # several rows in one request, a time in milliseconds
    two_rows["eventMetadata"]["inferenceTime"] = "2026-03-04T05:06:11.500Z"
    lines.append(json.dumps(two_rows))
    uri = put_lines(store, lines)
    assert iter_capture_files(store, DESTINATION, "ep") == [uri]
    (chunk,), stats = read_all(store, [uri])
    pd.testing.assert_frame_equal(chunk.features, frame.reset_index(drop=True).astype(float))
    assert chunk.predictions.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert chunk.inference_ids == ["id-0", "id-1", "id-2", "id-3", None, None]
    assert chunk.event_ids[4] == chunk.event_ids[5] == two_rows["eventMetadata"]["eventId"]
    assert str(chunk.times[0]) == "2026-03-04T05:06:07.000" and str(chunk.times[5]) == "2026-03-04T05:06:11.500"
    assert (stats.records, stats.rows, stats.bad_records, stats.sources) == (5, 6, 0, [uri])
    assert (stats.first_time, stats.last_time) == ("2026-03-04T05:06:07Z", "2026-03-04T05:06:11.500Z")


def test_the_reader_takes_json_instances_records_base64_and_quoted_csv(store):
    frame = ROWS.head(4)
    instances = capture_part(
        "INPUT", json.dumps({"instances": frame.iloc[:2].values.tolist()}), "application/json", "JSON"
    )
    records = capture_part("INPUT", json.dumps(frame.iloc[2:3].to_dict(orient="records")), "application/json", "JSON")
    encoded = capture_part("INPUT", csv_rows(frame.iloc[3:4]), "text/csv", "BASE64")
    quoted = capture_part("INPUT", ",".join(f'"{v!r}"' for v in frame.iloc[3].tolist()), "text/csv", "CSV")
    csv_out = capture_part("OUTPUT", "9.5\n", "text/csv; charset=utf-8", "CSV")
    lines = [
        capture_record(instances, capture_part("OUTPUT", '{"predictions": [1.0, 2.0]}', "application/json", "JSON")),
        capture_record(records, capture_part("OUTPUT", "[[3.0]]", "application/json", "BASE64")),
        capture_record(encoded, csv_out),
        capture_record(quoted, None),  # input captured only: no prediction
    ]
    lines[1]["captureData"]["endpointOutput"]["data"] = base64.b64encode(b'{"predictions": [3.0]}').decode()
    for line in lines:
        line["eventMetadata"]["inferenceTime"] = "2026-03-04T05:06:07+00:00"  # another ISO 8601 spelling
    (chunk,), stats = read_all(store, [put_lines(store, [json.dumps(line) for line in lines])])
    expected = pd.concat([frame, frame.iloc[3:4]]).reset_index(drop=True).astype(float)
    pd.testing.assert_frame_equal(chunk.features, expected)
    assert chunk.predictions.tolist()[:4] == [1.0, 2.0, 3.0, 9.5] and np.isnan(chunk.predictions[4])
    assert (stats.rows, stats.bad_records, stats.without_output) == (5, 0, 1)


def test_bad_records_are_counted_with_file_line_and_reason_never_raised(store):
    good = [json.dumps(record(ROWS.iloc[[i]], [float(i)])) for i in range(3)]
    wrong_width = record(ROWS.iloc[[0]], [0.0])
    wrong_width["captureData"]["endpointInput"]["data"] = "1,2,3"
    text_value = record(ROWS.iloc[[0]], [0.0])
    text_value["captureData"]["endpointInput"]["data"] = ",".join(["abc"] + ["1"] * 12)
    mismatch = record(ROWS.iloc[[0]], [1.0, 2.0])
    no_time = record(ROWS.iloc[[0]], [0.0])
    no_time["eventMetadata"]["inferenceTime"] = "yesterday"
    lines = [
        good[0],
        good[1][: len(good[1]) // 2],  # truncated JSON (a crash mid-write)
        json.dumps(wrong_width),
        json.dumps(text_value),
        json.dumps(mismatch),
        json.dumps(no_time),
        good[2],
    ]
    uri = put_lines(store, lines)
    (chunk,), stats = read_all(store, [uri])
    assert chunk.predictions.tolist() == [0.0, 2.0] and len(chunk.features) == 2
    assert (stats.records, stats.rows, stats.bad_records) == (7, 2, 5)
    examples = "\n".join(stats.bad_examples)
    assert f"{uri} line 2: not a JSON object (truncated?)" in examples
    assert f"{uri} line 3: input: row 1 has 3 values, expected 13" in examples
    assert f"{uri} line 4: input: row 1, crim: 'abc' is not a number" in examples
    assert f"{uri} line 5: 2 predictions for 1 input rows" in examples
    assert f"{uri} line 6: eventMetadata.inferenceTime 'yesterday' is not an ISO 8601 time" in examples

    other = put_lines(store, ["[1, 2]", "{}", *[json.dumps(record(ROWS.iloc[[0]], [0.0]))] * 5], name="b")
    chunks, stats = read_all(store, [other])
    assert stats.bad_records == 2 and len(stats.bad_examples) == 2 and stats.rows == 5
    assert f"{other} line 1: not a capture record (a JSON list)" in stats.bad_examples[0]
    assert f"{other} line 2: no captureData.endpointInput" in stats.bad_examples[1]
    many = put_lines(store, ["{"] * 8, name="c")
    assert len(read_all(store, [many])[1].bad_examples) == 5  # at most five described; all counted
    assert read_all(store, [many])[1].bad_records == 8


def test_one_bad_value_among_usual_records_costs_only_that_record(store):
    lines = [json.dumps(record(ROWS.iloc[[i]], [float(i)])) for i in range(10)]
    bad = record(ROWS.iloc[[3]], [3.0])
    bad["captureData"]["endpointInput"]["data"] = ",".join(["nan"] + ["1"] * 12)  # the endpoint refuses nan
    lines[3] = json.dumps(bad)
    (chunk,), stats = read_all(store, [put_lines(store, lines)])
    assert chunk.predictions.tolist() == [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert (
        stats.bad_records == 1 and "line 4: input: row 1, crim: 'nan' is not a finite number" in stats.bad_examples[0]
    )


def test_the_window_prunes_hour_folders_and_filters_records(store):
    hours = [HOUR + timedelta(hours=h) for h in range(-3, 4)]
    uris = [put_lines(store, [json.dumps(record(ROWS.iloc[[0]], [float(h.hour)], h))], h) for h in hours]
    start, end = HOUR, HOUR + timedelta(hours=1, seconds=1)
    found = iter_capture_files(store, DESTINATION, "ep", start=start, end=end)
    assert found == uris[2:6]  # an hour folder either side is kept (records near an edge)
    (chunk,), stats = read_all(store, found, start=start, end=end)
    assert chunk.predictions.tolist() == [5.0, 6.0]  # 05:06:07 and 06:06:07 are in [start, end)
    assert stats.outside_window == 2
    assert iter_capture_files(store, DESTINATION, "ep", start=HOUR + timedelta(days=1)) == []
    assert iter_capture_files(store, DESTINATION, "other") == []


def test_large_reads_come_in_chunks(store):
    uris = [put_lines(store, [json.dumps(record(ROWS.iloc[[i % 12]], [float(i)])) for i in range(k, k + 5)], name=str(k))
            for k in range(0, 20, 5)]  # fmt: skip
    chunks, stats = read_all(store, uris, chunk_rows=3)
    assert all(len(c) <= 5 for c in chunks) and len(chunks) >= 4
    assert np.concatenate([c.predictions for c in chunks]).tolist() == [float(i) for i in range(20)]
    assert stats.rows == 20 and len(stats.sources) == 4


# --- a real local endpoint ------------------------------------------------------------------------


class Endpoint:
    """One endpoint of the local SageMaker service, reconfigured test by test (UpdateEndpoint)."""

    NAME = "capture-ep"

    def __init__(self, home: Path, tmp: Path):
        self.home = home
        self.store = LocalObjectStore(root=str(home / "s3"))
        self.sm = LocalSageMakerService(home, self.store)
        self.runtime = LocalSageMakerRuntime(home, self.store)
        self.model = forest(1)
        artifact = upload(self.store, "capture-model", pack(tmp, self.model), self.model)
        self.sm.create_model_package_group(ModelPackageGroupName="hosting-models")
        package = register(self.sm, artifact, artifact.sha256)
        self.sm.create_model(ModelName="capture-model", PrimaryContainer={"ModelPackageName": package},
                             ExecutionRoleArn=ROLE)  # fmt: skip
        self.configs = itertools.count()

    def config(self, capture: dict | None) -> str:
        name = f"capture-config-{next(self.configs)}"
        extra = {"DataCaptureConfig": capture} if capture is not None else {}
        self.sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "capture-model",
                                 "InitialInstanceCount": 1, "InstanceType": "ml.t2.medium"}],
            **extra,
        )  # fmt: skip
        return name

    def deploy(self, capture: dict | None) -> dict:
        name = self.config(capture)
        try:
            self.sm.describe_endpoint(EndpointName=self.NAME)
        except ClientError:
            self.sm.create_endpoint(EndpointName=self.NAME, EndpointConfigName=name)
        else:
            self.sm.update_endpoint(EndpointName=self.NAME, EndpointConfigName=name)
        described = self.sm.describe_endpoint(EndpointName=self.NAME)
        assert described["EndpointStatus"] == "InService", described.get("FailureReason")
        return described

    @property
    def record(self) -> process.EndpointRecord:
        return process.read_endpoint(self.home, self.NAME)

    def invoke(self, body: bytes, content_type: str, accept: str, inference_id: str | None = None) -> bytes:
        extra = {"InferenceId": inference_id} if inference_id else {}
        response = self.runtime.invoke_endpoint(
            EndpointName=self.NAME, Body=body, ContentType=content_type, Accept=accept, **extra
        )
        return response["Body"].read()

    def read(self, destination: str = DESTINATION):
        uris = iter_capture_files(self.store, destination, self.NAME)
        reading = read_capture(self.store, uris, BOSTON_FEATURES)
        chunks = list(reading)
        return (
            uris,
            (pd.concat([c.features for c in chunks], ignore_index=True) if chunks else None),
            chunks,
            reading.stats,
        )


def capture_config(percentage: int = 100, destination: str = DESTINATION, header: bool = True) -> dict:
    config = {
        "EnableCapture": True,
        "InitialSamplingPercentage": percentage,
        "DestinationS3Uri": destination,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
    }
    return {**config, "CaptureContentTypeHeader": CONTENT_TYPE_HEADER} if header else config


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    home = tmp_path_factory.mktemp("capture-home")
    before = set(process._children)
    world = Endpoint(home, tmp_path_factory.mktemp("capture-model"))
    try:
        yield world
    finally:
        stop_everything(home, world.sm, before)


def test_csv_and_json_requests_are_captured_in_sagemakers_layout_and_read_back(endpoint):
    described = endpoint.deploy(capture_config())
    assert described["DataCaptureConfig"] == {
        "EnableCapture": True, "CaptureStatus": "Started", "CurrentSamplingPercentage": 100,
        "DestinationS3Uri": DESTINATION,
    }  # fmt: skip
    config = endpoint.sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    assert config["DataCaptureConfig"]["CaptureContentTypeHeader"] == CONTENT_TYPE_HEADER
    frame = ROWS.head(5)
    answers = [float(endpoint.invoke(csv_rows(frame.iloc[[i]]).encode(), "text/csv", "text/csv", f"req-{i}"))
               for i in range(3)]  # fmt: skip
    body = json.dumps({"instances": frame.iloc[3:5].values.tolist()}).encode()
    answers += json.loads(endpoint.invoke(body, "application/json", "application/json", "req-json"))["predictions"]
    counts = process.flush_capture(endpoint.record)
    assert (counts["captured"], counts["written"], counts["failed_writes"], counts["dropped"]) == (4, 4, 0, 0)

    uris, features, chunks, stats = endpoint.read()
    today = datetime.now(UTC)
    for uri in uris:
        folder, name = uri.removeprefix(f"{DESTINATION}/{endpoint.NAME}/AllTraffic/").rsplit("/", 1)
        hour = datetime.strptime(folder, "%Y/%m/%d/%H").replace(tzinfo=UTC)
        assert timedelta(0) <= today - hour < timedelta(hours=2) and name.endswith(".jsonl")
    pd.testing.assert_frame_equal(features, frame.reset_index(drop=True).astype(float))
    predictions = np.concatenate([c.predictions for c in chunks])
    assert predictions.tolist() == answers == endpoint.model.predict(frame).tolist()
    assert [i for c in chunks for i in c.inference_ids] == ["req-0", "req-1", "req-2", "req-json", "req-json"]
    assert stats.bad_records == 0

    first = json.loads(endpoint.store.get_bytes(uris[0]).splitlines()[0])
    assert set(first) == {"captureData", "eventMetadata", "eventVersion"} and first["eventVersion"] == "0"
    assert first["captureData"]["endpointInput"] == {
        "observedContentType": "text/csv", "mode": "INPUT", "data": csv_rows(frame.iloc[[0]]), "encoding": "CSV",
    }  # fmt: skip
    assert first["captureData"]["endpointOutput"]["encoding"] == "CSV"
    assert first["captureData"]["endpointOutput"]["observedContentType"].startswith("text/csv")
    assert set(first["eventMetadata"]) == {"eventId", "inferenceId", "inferenceTime"}
    assert endpoint.record.capture_destination == f"{DESTINATION}/{endpoint.NAME}/AllTraffic/"


def test_without_a_content_type_header_requests_are_captured_base64_and_still_read(endpoint):
    destination = f"s3://{BUCKET}/base64-capture"
    endpoint.deploy(capture_config(destination=destination, header=False))  # same model: capture changes only
    frame = ROWS.iloc[5:7]
    sent = json.dumps(frame.to_dict(orient="records")).encode()
    answer = json.loads(endpoint.invoke(sent, "application/json", "application/json", "req-b64"))["predictions"]
    process.flush_capture(endpoint.record)
    uris, features, chunks, stats = endpoint.read(destination)
    captured = json.loads(endpoint.store.get_bytes(uris[0]).splitlines()[0])["captureData"]
    assert captured["endpointInput"]["encoding"] == captured["endpointOutput"]["encoding"] == "BASE64"
    assert base64.b64decode(captured["endpointInput"]["data"]) == sent
    pd.testing.assert_frame_equal(features, frame.reset_index(drop=True).astype(float))
    assert chunks[0].predictions.tolist() == answer and stats.bad_records == 0


def test_sampling_zero_captures_nothing_and_a_bad_inference_id_is_refused(endpoint):
    destination = f"s3://{BUCKET}/sampled-out"
    endpoint.deploy(capture_config(percentage=0, destination=destination))
    before = process.capture_status(endpoint.record)
    for i in range(6):
        endpoint.invoke(csv_rows(ROWS.iloc[[i]]).encode(), "text/csv", "text/csv")
    after = process.flush_capture(endpoint.record)
    assert after["sampled_out"] - before["sampled_out"] == 6 and after["captured"] == before["captured"]
    assert endpoint.read(destination)[0] == []
    with pytest.raises(ClientError, match="InferenceId .* must be 1 to 64 printable characters"):
        endpoint.invoke(csv_rows(ROWS.iloc[[0]]).encode(), "text/csv", "text/csv", "x" * 65)
    direct = process.invoke(endpoint.record, b"1", "text/csv", inference_id="tab\tinside")
    assert direct.status == 400 and b"X-Amzn-SageMaker-Inference-Id must be 1 to 64" in direct.body


def test_a_failing_capture_write_is_counted_and_the_request_still_succeeds(endpoint):
    destination = f"s3://{BUCKET}/blocked"
    # A file where the endpoint's capture folder must go: every write of the local store fails.
    blocker = endpoint.store.path_for(f"{destination}/{endpoint.NAME}")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    endpoint.deploy(capture_config(destination=destination))
    before = process.capture_status(endpoint.record)
    answer = endpoint.invoke(csv_rows(ROWS.iloc[[0]]).encode(), "text/csv", "text/csv")
    assert float(answer) == endpoint.model.predict(ROWS.iloc[[0]])[0]
    after = process.flush_capture(endpoint.record)
    assert after["failed_writes"] == before["failed_writes"] + 1
    assert after["failed_records"] == before["failed_records"] + 1
    assert "is an object" in after["last_error"] and after["errors"] == 0
    with open(endpoint.record.log) as log:
        assert "capture write of 1 records failed" in log.read()


def test_a_clean_stop_writes_every_captured_request(endpoint):
    destination = f"s3://{BUCKET}/clean-stop"
    endpoint.deploy(capture_config(destination=destination))
    sent = 25
    for i in range(sent):
        endpoint.invoke(csv_rows(ROWS.iloc[[i % 12]]).encode(), "text/csv", "application/json", f"stop-{i}")
    endpoint.sm.delete_endpoint(EndpointName=endpoint.NAME)  # SIGTERM: no flush asked for
    _, features, chunks, stats = endpoint.read(destination)
    assert len(features) == stats.records == sent
    assert sorted(i for c in chunks for i in c.inference_ids) == sorted(f"stop-{i}" for i in range(sent))


def test_create_endpoint_config_refuses_a_bad_data_capture_config(endpoint):
    with pytest.raises(ClientError) as err:
        endpoint.config({**capture_config(), "InitialSamplingPercentage": 150})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "InitialSamplingPercentage must be an integer from 0 to 100, got 150" in str(err.value)
    with pytest.raises(ClientError, match=r"CaptureOptions\[1\].CaptureMode must be one of"):
        endpoint.config({**capture_config(), "CaptureOptions": [{"CaptureMode": "Everything"}]})
