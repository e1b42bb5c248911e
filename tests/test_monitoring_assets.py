"""The monitoring group: endpoint_traffic, data_quality_report (+ data_quality, feature_drift,
prediction_drift checks) and model_quality_report (+ model_quality), on small fixtures: capture
files written in SageMaker's format, a model package with its baselines in the local registry,
and an endpoint that describe_endpoint reports as serving it."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from dagster import materialize
from helpers import check_evaluations, latest_metadata

from mlops_dagster.assets import monitoring as monitoring_assets
from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.monitoring import compute_baseline, prediction_baseline, regression_metrics
from mlops_dagster.monitoring.capture import default_capture_destination
from mlops_dagster.monitoring.ground_truth import put_ground_truth
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.resources.sagemaker import LocalSageMaker
from mlops_dagster.serving.process import is_alive

ENDPOINT = "mlops-pipeline-dev"
SHIFTED = ["rm", "lstat"]
ASSETS = [
    monitoring_assets.endpoint_traffic,
    monitoring_assets.data_quality_report,
    monitoring_assets.model_quality_report,
]


def model(frame: pd.DataFrame) -> np.ndarray:
    """The 'served model': a fixed formula, so predictions are known without training."""
    return 22.5 + 5.5 * (frame["rm"] - 6.28) - 0.55 * (frame["lstat"] - 12.6)


# --- fixtures: a registered package with baselines, an endpoint serving it ----------------------


class _ServingClient:
    """The local SageMaker client, with an endpoint that serves ``package_arn`` since ``deployed``."""

    def __init__(self, real, package_arn: str, deployed: datetime):
        self._real, self._package, self._deployed = real, package_arn, deployed

    def describe_endpoint(self, EndpointName: str) -> dict:  # noqa: N803 (boto3's names)
        assert EndpointName == ENDPOINT
        return {
            "EndpointName": ENDPOINT,
            "EndpointArn": f"arn:aws:sagemaker:us-east-1:000000000000:endpoint/{ENDPOINT}",
            "EndpointConfigName": "config-1",
            "EndpointStatus": "InService",
            "CreationTime": self._deployed,
            "LastModifiedTime": self._deployed,
        }

    def describe_endpoint_config(self, EndpointConfigName: str) -> dict:  # noqa: N803
        return {"ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "model-1"}]}

    def describe_model(self, ModelName: str) -> dict:  # noqa: N803
        return {"PrimaryContainer": {"ModelPackageName": self._package}}

    def __getattr__(self, name: str):
        return getattr(self._real, name)


class ServingSageMaker(LocalSageMaker):
    package_arn: str
    deployed_at: str

    def get_client(self):
        return _ServingClient(super().get_client(), self.package_arn, datetime.fromisoformat(self.deployed_at))


@pytest.fixture(scope="module")
def training() -> pd.DataFrame:
    return synthetic_boston(3000, seed=1)


def register_package(settings, store: LocalObjectStore, training: pd.DataFrame) -> str:
    """A package in the local registry naming baselines computed from ``training``."""
    train, validation = training.iloc[:2400], training.iloc[2400:]
    root = f"s3://{settings.bucket}/{settings.prefix}/test/baseline"
    baselines = {
        "data": compute_baseline(train, BOSTON_FEATURES),
        "prediction": prediction_baseline(model(validation)),
    }
    for kind, baseline in baselines.items():
        for name, data in baseline.files().items():
            store.put_bytes(f"{root}/{kind}/{name}", data)
    mse = float(np.mean((validation[BOSTON_TARGET] - model(validation)) ** 2))
    evaluation = {"regression_metrics": {"mse": {"value": mse, "standard_deviation": None}}}
    store.put_bytes(f"{root}/evaluation.json", json.dumps(evaluation).encode())
    client = LocalSageMaker(
        home=settings.home, region=settings.region, bucket=settings.bucket, store=store
    ).get_client()
    client.create_model_package_group(ModelPackageGroupName="mlops-pipeline-models")

    def pair(kind: str) -> dict:
        return {
            "Statistics": {"ContentType": "application/json", "S3Uri": f"{root}/{kind}/statistics.json"},
            "Constraints": {"ContentType": "application/json", "S3Uri": f"{root}/{kind}/constraints.json"},
        }

    return client.create_model_package(
        ModelPackageGroupName="mlops-pipeline-models",
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": "sklearn", "ModelDataUrl": f"{root}/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        DriftCheckBaselines={"ModelDataQuality": pair("data"), "ModelQuality": pair("prediction")},
        ModelMetrics={
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": f"{root}/evaluation.json"}}
        },
    )["ModelPackageArn"]


class Loop:
    """A test's monitoring setup: the store, the served package, and how to send and judge traffic."""

    def __init__(self, settings, training: pd.DataFrame, instance):
        self.settings, self.instance = settings, instance
        self.store = LocalObjectStore(root=f"{settings.home}/s3")
        self.package_arn = register_package(settings, self.store, training)
        self.deployed = datetime.now(UTC) - timedelta(hours=2)
        self.sagemaker = ServingSageMaker(
            home=settings.home, region=settings.region, bucket=settings.bucket, store=self.store,
            package_arn=self.package_arn, deployed_at=self.deployed.isoformat(),
        )  # fmt: skip
        self.destination = default_capture_destination(settings)
        self.files = 0

    def capture(self, lines: list[str], when: datetime) -> str:
        """One capture file in ``when``'s hour folder, as an endpoint's capture writes them."""
        self.files += 1
        uri = f"{self.destination}/{ENDPOINT}/AllTraffic/{when:%Y/%m/%d/%H}/{when:%M-%S}-{self.files:04d}.jsonl"
        self.store.put_bytes(uri, ("\n".join(lines) + "\n").encode())
        return uri

    def send(self, frame: pd.DataFrame, when: datetime, per_request: int = 5, ids: bool = False) -> list[str]:
        """Capture ``frame`` as requests of ``per_request`` rows (one file); returns the inference ids."""
        lines, sent = [], []
        for i in range(0, len(frame), per_request):
            part = frame.iloc[i : i + per_request]
            inference_id = f"req-{uuid.uuid4().hex[:12]}" if ids else None
            sent.append(inference_id)
            lines.append(json.dumps(capture_record(part[BOSTON_FEATURES], model(part), when, inference_id)))
        self.capture(lines, when)
        return sent

    def run(self, traffic: dict | None = None, quality: dict | None = None):
        ops = {"endpoint_traffic": {"config": traffic or {}}}
        if quality:
            ops["model_quality_report"] = {"config": quality}
        return materialize(
            ASSETS,
            resources={"settings": self.settings, "store": self.store, "sagemaker": self.sagemaker},
            run_config={"ops": ops},
            instance=self.instance,
            raise_on_error=False,
        )


def capture_record(features: pd.DataFrame, predictions, when: datetime, inference_id: str | None = None) -> dict:
    """One request/response pair in SageMaker's data capture format (CSV in, JSON out)."""
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in features.to_numpy())
    metadata = {"eventId": str(uuid.uuid4()), "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
    if inference_id:
        metadata["inferenceId"] = inference_id
    return {
        "captureData": {
            "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": body, "encoding": "CSV"},
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": json.dumps({"predictions": [float(p) for p in predictions]}),
                "encoding": "JSON",
            },
        },
        "eventMetadata": metadata,
        "eventVersion": "0",
    }


@pytest.fixture
def loop(settings, training, instance) -> Loop:
    return Loop(settings, training, instance)


def recently(minutes: int = 30) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def shifted(frame: pd.DataFrame, training: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """``features`` moved by one standard deviation of the training data: rm up, the others down
    (more rooms, less lower-status population: both raise the predicted price)."""
    out = frame.copy()
    for name in features:
        out[name] = out[name] + (1 if name == "rm" else -1) * training[name].std()
    return out


# --- drift checks ------------------------------------------------------------------------------


def test_a_window_like_the_training_data_passes_every_check(loop):
    loop.send(synthetic_boston(600, seed=7), recently())
    result = loop.run()
    assert result.success
    checks = check_evaluations(result)
    assert {n: c.passed for n, c in checks.items()} == {
        "data_quality": True, "feature_drift": True, "prediction_drift": True, "model_quality": True,
    }  # fmt: skip
    assert checks["feature_drift"].description.startswith("no drift over 600 rows")
    traffic = latest_metadata(result, "endpoint_traffic")
    assert (traffic["dagster/row_count"], traffic["records"], traffic["bad_records"]) == (600, 120, 0)
    assert traffic["model_package_arn"] == loop.package_arn
    assert traffic["window_origin"] == "deployment of the model now serving"


def test_a_window_with_two_shifted_features_fails_feature_drift_naming_exactly_them(loop, training):
    loop.send(shifted(synthetic_boston(600, seed=8), training, SHIFTED), recently())
    result = loop.run()
    assert result.success  # a failed check is not a failed run: the alert sensor watches the checks
    checks = check_evaluations(result)
    drift = checks["feature_drift"]
    assert not drift.passed and drift.severity.value == "ERROR"
    assert drift.metadata["drifted_features"].value == SHIFTED
    assert "drift in 2 feature(s) ['rm', 'lstat']" in drift.description
    table = drift.metadata["features"].value
    assert "| feature | KS statistic | p-value | PSI | drifted? |" in table
    drifted_rows = [line.split("|")[1].strip() for line in table.splitlines() if "**yes**" in line]
    assert drifted_rows == SHIFTED
    assert not checks["prediction_drift"].passed  # the predicted prices rise with both
    picture = drift.metadata["drift_picture"].value
    svg = open(picture).read()
    assert svg.startswith("<svg") and ">rm<" in svg and ">lstat<" in svg and ">crim<" not in svg


def test_a_tiny_window_passes_as_insufficient_samples(loop, training):
    loop.send(shifted(synthetic_boston(12, seed=9), training, SHIFTED), recently())
    checks = check_evaluations(loop.run())
    for name in ("feature_drift", "prediction_drift"):
        assert checks[name].passed, name
        assert checks[name].description.startswith("insufficient samples: 12 rows"), checks[name].description


def test_bad_captured_records_are_counted_and_reported_never_a_crash(loop):
    when = recently()
    frame = synthetic_boston(200, seed=3)
    parts = [frame.iloc[i : i + 5] for i in range(0, 200, 5)]
    good = [json.dumps(capture_record(part[BOSTON_FEATURES], model(part), when)) for part in parts]
    narrow = capture_record(synthetic_boston(1, seed=4)[BOSTON_FEATURES[:-1]], [20.0], when)
    text = capture_record(synthetic_boston(1, seed=5)[BOSTON_FEATURES], [20.0], when)
    text["captureData"]["endpointInput"]["data"] = (
        "abc," + text["captureData"]["endpointInput"]["data"].split(",", 1)[1]
    )
    truncated = json.dumps(capture_record(synthetic_boston(1, seed=6), [20.0], when))[:80]
    loop.capture(good + [json.dumps(narrow), json.dumps(text), truncated], when)
    result = loop.run()
    assert result.success
    traffic = latest_metadata(result, "endpoint_traffic")
    assert (traffic["records"], traffic["bad_records"], traffic["dagster/row_count"]) == (43, 3, 200)
    examples = traffic["bad_examples"]
    assert len(examples) == 3 and all(".jsonl" in e for e in examples)
    quality = check_evaluations(result)["data_quality"]
    assert not quality.passed  # 3 of 43 is over the default 1%
    assert "3 of 43 captured records unreadable" in quality.description
    assert quality.metadata["bad_records"].value == 3


# --- model quality -----------------------------------------------------------------------------


def test_ground_truth_is_joined_and_a_clearly_worse_model_fails_model_quality(loop):
    frame = synthetic_boston(300, seed=11)
    ids = loop.send(frame, recently(), per_request=1, ids=True)
    prefix = f"s3://{loop.settings.bucket}/{loop.settings.prefix}/groundtruth"
    put_ground_truth(loop.store, prefix, dict(zip(ids, frame[BOSTON_TARGET], strict=True)))
    result = loop.run()
    check = check_evaluations(result)["model_quality"]
    expected = regression_metrics(frame[BOSTON_TARGET], model(frame))
    assert check.passed, check.description
    assert check.metadata["labelled_rows"].value == 300
    assert check.metadata["mse"].value == pytest.approx(expected.mse)
    assert check.metadata["r2"].value == pytest.approx(expected.r2)

    # The same requests, labelled as if the world had moved on: prices 8 higher than predicted.
    later = datetime.now(UTC) + timedelta(hours=1)
    worse = f"s3://{loop.settings.bucket}/{loop.settings.prefix}/groundtruth-worse"
    put_ground_truth(loop.store, worse, {i: v + 8 for i, v in zip(ids, frame[BOSTON_TARGET], strict=True)}, later)
    start = latest_metadata(result, "endpoint_traffic")["window_start"]
    result = loop.run(traffic={"start": start}, quality={"ground_truth": worse, "worse_ratio": 1.5})
    check = check_evaluations(result)["model_quality"]
    assert not check.passed and check.severity.value == "ERROR"
    assert check.description.startswith("model quality degraded: mse ")
    assert check.metadata["mse"].value > 1.5 * check.metadata["validation_mse"].value


def test_without_ground_truth_model_quality_passes_saying_so(loop):
    loop.send(synthetic_boston(100, seed=12), recently())
    check = check_evaluations(loop.run())["model_quality"]
    assert check.passed and check.description.startswith("no ground truth for this window")


# --- report files and the window ---------------------------------------------------------------


def test_reports_are_written_under_the_dated_prefix_in_model_monitor_formats(loop, training):
    loop.send(shifted(synthetic_boston(400, seed=13), training, ["nox"]), recently())
    result = loop.run()
    prefix = latest_metadata(result, "data_quality_report")["report_prefix"]
    end = datetime.fromisoformat(latest_metadata(result, "endpoint_traffic")["window_end"])
    assert prefix == (
        f"s3://{loop.settings.bucket}/{loop.settings.prefix}/monitoring/{ENDPOINT}/{end:%Y/%m/%d/%H-%M-%S}"
    )
    assert re.search(r"/monitoring/[^/]+/\d{4}/\d{2}/\d{2}/\d{2}-\d{2}-\d{2}$", prefix)
    statistics = json.loads(loop.store.get_bytes(f"{prefix}/statistics.json"))
    assert statistics["dataset"]["item_count"] == 400
    assert [f["name"] for f in statistics["features"]] == BOSTON_FEATURES
    assert {"mean", "std_dev", "distribution"} <= set(statistics["features"][0]["numerical_statistics"])
    violations = json.loads(loop.store.get_bytes(f"{prefix}/constraint_violations.json"))["violations"]
    assert [(v["feature_name"], v["constraint_check_type"]) for v in violations] == [("nox", "baseline_drift_check")]
    prediction = json.loads(loop.store.get_bytes(f"{prefix}/prediction/statistics.json"))
    assert [f["name"] for f in prediction["features"]] == ["prediction"]
    assert loop.store.get_bytes(f"{prefix}/drift.svg").startswith(b"<svg")


def test_the_default_window_advances_so_no_new_traffic_is_insufficient_samples(loop):
    loop.send(synthetic_boston(300, seed=14), recently())
    first = latest_metadata(loop.run(), "endpoint_traffic")
    assert first["dagster/row_count"] == 300
    result = loop.run()
    second = latest_metadata(result, "endpoint_traffic")
    assert second["window_start"] == first["window_end"]
    assert second["window_origin"] == "end of the previous window"
    assert (second["dagster/row_count"], second["records"]) == (0, 0)
    drift = check_evaluations(result)["feature_drift"]
    assert drift.passed and drift.description.startswith("insufficient samples: 0 rows")


def test_a_window_ending_before_the_deployment_is_empty_not_a_failure(loop):
    """Right after a deployment in the same run (make run twice), now - settle_seconds is before
    the deployment: the default window is empty. A window the config inverts is still refused."""
    loop.send(synthetic_boston(50, seed=3), recently())
    result = loop.run(traffic={"settle_seconds": 86_400})
    assert result.success
    meta = latest_metadata(result, "endpoint_traffic")
    assert meta["window_start"] == meta["window_end"]
    assert meta["window_origin"] == "deployment of the model now serving"
    assert (meta["dagster/row_count"], meta["records"]) == (0, 0)
    inverted = loop.run(traffic={"start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"})
    assert not inverted.success
    from helpers import failure_text

    assert "endpoint_traffic window starts at 2030-01-02T00:00:00+00:00, after its end" in failure_text(inverted)


def test_a_bad_window_setting_is_refused_naming_the_field(loop):
    result = loop.run(traffic={"start": "yesterday"})
    assert not result.success
    from helpers import failure_text

    assert "endpoint_traffic config start='yesterday' is not an ISO-8601 time" in failure_text(result)


# --- the whole local loop ----------------------------------------------------------------------

GRAPH = [
    "raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution", "trained_model", "registered_model",
    "dev_endpoint",
]  # fmt: skip


def test_the_local_loop_end_to_end_as_make_monitor_shows_it(settings, mlops_home, ui_instance):
    """make run's graph up to the dev endpoint, then the demo (make monitor): a window like the
    training data passes, a shifted one fails feature_drift naming the shifted features, the alert
    sensor appends to alerts.jsonl and the drift trigger requests retraining. No server is left."""
    from helpers import materialize_assets

    from mlops_dagster import build_definitions
    from mlops_dagster.monitoring import demo
    from mlops_dagster.serving.process import read_endpoint

    defs = build_definitions(settings)
    said: list[str] = []
    # The instance make monitor uses (run-sharded SQLite): the sensors' cursors must work there.
    instance = ui_instance
    try:
        built = materialize_assets(defs, instance, GRAPH, {"raw_data": {"rows": 400}})
        assert built.success
        outcome = demo.run(settings, defs, instance, rows=300, batch=10, say=said.append)
    finally:
        stopped = defs.resolve_job_def("stop_endpoints").execute_in_process(instance=instance)
        assert stopped.success
    assert read_endpoint(mlops_home, "dev") is None or not is_alive(read_endpoint(mlops_home, "dev"))
    text = "\n".join(said)
    assert all(check.passed for check in outcome["like-training"].values()), text
    assert "300 rows in 30 requests" in text
    assert outcome["like-training"]["model_quality"].metadata["labelled_rows"].value == 300, text
    drift = outcome["shifted"]["feature_drift"]
    assert not drift.passed, text
    assert set(drift.metadata["drifted_features"].value) == {"rm", "lstat", "ptratio"}, text
    assert not outcome["shifted"]["prediction_drift"].passed, text  # all three shifts raise the price
    alerts = [json.loads(line) for line in (mlops_home / "alerts.jsonl").read_text().splitlines()]
    assert {a.get("check") for a in alerts} == {"feature_drift", "prediction_drift"}, text
    [request] = outcome["sensors"]["run_requests"]
    assert request.tags["mlops/trigger"] == "drift", text


def test_ground_truth_lines_in_each_encoding_parse_and_bad_ones_are_counted(tmp_path):
    from mlops_dagster.monitoring.ground_truth import ground_truth_files, read_ground_truth

    store = LocalObjectStore(root=str(tmp_path))
    prefix = "s3://bucket/groundtruth"
    lines = [
        {
            "groundTruthData": {"data": "24.0", "encoding": "CSV"},
            "eventMetadata": {"eventId": "a"},
            "eventVersion": "0",
        },
        {"groundTruthData": {"data": "[21.5, 22.5]", "encoding": "JSON"}, "eventMetadata": {"eventId": "b"}},
        {"groundTruthData": {"data": "MzAuMA==", "encoding": "BASE64"}, "eventMetadata": {"eventId": "c"}},
        {"groundTruthData": {"data": "cheap", "encoding": "CSV"}, "eventMetadata": {"eventId": "d"}},
        {"groundTruthData": {"data": "1.0"}, "eventMetadata": {}},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"groundTruthData": {"da\n'
    store.put_bytes(f"{prefix}/2026/11/30/22/a.jsonl", text.encode())
    store.put_bytes(f"{prefix}/2026/11/30/20/old.jsonl", b"not read: before the window's hour\n")
    files = ground_truth_files(store, prefix, datetime(2026, 11, 30, 22, 15, tzinfo=UTC))
    assert files == [f"{prefix}/2026/11/30/22/a.jsonl"]
    truth = read_ground_truth(store, files)
    assert truth.labels == {"a": [24.0], "b": [21.5, 22.5], "c": [30.0]}
    assert (truth.records, truth.bad_records) == (6, 3)
    assert [e.split(": ", 1)[0] for e in truth.bad_examples] == [f"{files[0]} line {n}" for n in (4, 5, 6)]
    assert "is not numbers" in truth.bad_examples[0] and "no eventMetadata.eventId" in truth.bad_examples[1]
    assert "not JSON" in truth.bad_examples[2]
