"""A drift baseline with every model (issue 10, part 2): the pipeline's RegisterModel step names the
baselines (DriftCheckBaselines / ModelMetrics, Std:Join on the execution id), registered_model writes
them there in Model Monitor's formats, and load_model_baselines reads them back for monitoring."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import latest_metadata, materialize_assets, run_job

from mlops_dagster.datasets import BOSTON_FEATURES
from mlops_dagster.monitoring.baseline import Baseline, BaselineError
from mlops_dagster.monitoring.store import (
    MissingBaselineError,
    baseline_locations,
    load_model_baselines,
    predictions_baseline,
    write_model_baselines,
)
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.offline import local_boto_session
from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline

BUCKET = "mlops-local"
ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"
FILES = ("statistics.json", "constraints.json", "baseline_sample.json")
JSON = {"ContentType": "application/json"}
GRAPH = ["raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution", "trained_model", "registered_model"]


def _register_step(definition: str) -> dict:
    [check] = [s for s in json.loads(definition)["Steps"] if s["Name"] == "CheckQuality"]
    [size_check] = check["Arguments"]["IfSteps"]  # CheckModelSize
    [register] = size_check["Arguments"]["IfSteps"]
    return register["Arguments"]


def _at(kind: str, name: str) -> dict:
    """The definition's Std:Join for one baseline file of this execution."""
    root = f"s3://{BUCKET}/mlops/mlops-pipeline"
    values = [root, {"Get": "Execution.PipelineExecutionId"}, "baseline", kind, name]
    return {**JSON, "S3Uri": {"Std:Join": {"On": "/", "Values": values}}}


def test_the_definition_names_the_baselines_by_execution_id_and_stays_byte_identical(tmp_path: Path):
    spec = PipelineSpec(name="mlops-pipeline", bucket=BUCKET, prefix="mlops", region="us-east-1", role_arn=ROLE)
    builds = [
        build_pipeline(
            spec, local_boto_session(LocalObjectStore(root=str(tmp_path / d)), BUCKET, "us-east-1")
        ).definition()
        for d in ("a", "b")
    ]
    assert builds[0] == builds[1]
    register = _register_step(builds[0])
    data = {"Statistics": _at("data", "statistics.json"), "Constraints": _at("data", "constraints.json")}
    prediction = {
        "Statistics": _at("prediction", "statistics.json"),
        "Constraints": _at("prediction", "constraints.json"),
    }
    assert register["DriftCheckBaselines"] == {"ModelDataQuality": data, "ModelQuality": prediction}
    assert register["ModelMetrics"]["ModelDataQuality"] == data
    evaluation = register["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]["Std:Join"]["Values"]
    assert evaluation[-1] == "evaluation.json"
    # Evaluate predicts on the validation split (the prediction baseline's source).
    [evaluate] = [s for s in json.loads(builds[0])["Steps"] if s["Name"] == "Evaluate"]
    arguments = evaluate["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--validation-dir") + 1] == "/opt/ml/processing/validation"
    sources = [i["S3Input"]["S3Uri"] for i in evaluate["Arguments"]["ProcessingInputs"]]
    assert {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['validation'].S3Output.S3Uri"} in sources


def _assert_model_monitor_statistics(statistics: dict, features: list[str], rows: int) -> None:
    assert statistics["version"] == 0.0 and statistics["dataset"] == {"item_count": rows}
    assert [f["name"] for f in statistics["features"]] == features
    for feature in statistics["features"]:
        assert feature["inferred_type"] in ("Integral", "Fractional"), feature["name"]
        numbers = feature["numerical_statistics"]
        assert numbers["common"] == {"num_present": rows, "num_missing": 0}
        assert numbers["min"] <= numbers["mean"] <= numbers["max"] and numbers["std_dev"] >= 0
        assert numbers["sum"] == pytest.approx(numbers["mean"] * rows)
        buckets = numbers["distribution"]["kll"]["buckets"]
        assert len(buckets) == 10 and sum(b["count"] for b in buckets) == rows
        assert buckets[0]["lower_bound"] == numbers["min"] and buckets[-1]["upper_bound"] == numbers["max"]
        assert numbers["distribution"]["kll"]["sketch"]["parameters"] == {"c": 0.64, "k": 2048.0}


def _assert_model_monitor_constraints(constraints: dict, features: list[str]) -> None:
    assert constraints["version"] == 0.0
    assert [f["name"] for f in constraints["features"]] == features
    assert all(f["completeness"] == 1.0 and "is_non_negative" in f["num_constraints"] for f in constraints["features"])
    distribution = constraints["monitoring_config"]["distribution_constraints"]
    assert distribution["perform_comparison"] == "Enabled" and distribution["comparison_method"] == "Robust"


def test_every_registered_model_has_its_baselines_where_the_package_names_them(defs, instance, mlops_home):
    result = run_job(defs, instance, "retraining_job", {"ops": {"raw_data": {"config": {"rows": 300}}}})
    assert result.success, result.log_text[-3000:]
    registered = latest_metadata(result, "registered_model")
    dataset = latest_metadata(result, "s3_dataset")
    arn = registered["model_package_arn"]
    client = defs.resources["sagemaker"].get_client()
    store = defs.resources["store"]
    package = client.describe_model_package(ModelPackageName=arn)

    # The URIs the definition fixed, resolved for this execution by the local service.
    execution_id = registered["execution_arn"].rsplit("/", 1)[-1]
    root = f"s3://{BUCKET}/mlops/mlops-pipeline/{execution_id}/baseline"
    data = {"Statistics": {**JSON, "S3Uri": f"{root}/data/statistics.json"},
            "Constraints": {**JSON, "S3Uri": f"{root}/data/constraints.json"}}  # fmt: skip
    prediction = {"Statistics": {**JSON, "S3Uri": f"{root}/prediction/statistics.json"},
                  "Constraints": {**JSON, "S3Uri": f"{root}/prediction/constraints.json"}}  # fmt: skip
    assert package["DriftCheckBaselines"] == {"ModelDataQuality": data, "ModelQuality": prediction}
    assert package["ModelMetrics"]["ModelDataQuality"] == data
    evaluation_uri = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert evaluation_uri.endswith("/evaluation.json")

    # registered_model records them, in its metadata and its value.
    stems = dict(zip(("statistics", "constraints", "sample"), FILES, strict=True))
    uris = {f"baseline_{s}_uri": f"{root}/data/{n}" for s, n in stems.items()}
    uris |= {f"prediction_baseline_{s}_uri": f"{root}/prediction/{n}" for s, n in stems.items()}
    assert {k: registered[k] for k in uris} == uris
    assert result.output_for_node("registered_model")["baselines"] == {**uris, "evaluation_uri": evaluation_uri}

    # Model Monitor's formats: the Boston features of the training data, every train row counted.
    train_rows = dataset["train_rows"]
    statistics = json.loads(store.get_bytes(f"{root}/data/statistics.json"))
    _assert_model_monitor_statistics(statistics, BOSTON_FEATURES, train_rows)
    _assert_model_monitor_constraints(json.loads(store.get_bytes(f"{root}/data/constraints.json")), BOSTON_FEATURES)
    train = pd.read_csv(store.path_for(dataset["train_uri"]))
    lstat = next(f for f in statistics["features"] if f["name"] == "lstat")["numerical_statistics"]
    assert lstat["mean"] == pytest.approx(train["lstat"].mean()) and lstat["max"] == train["lstat"].max()
    sample = json.loads(store.get_bytes(f"{root}/data/baseline_sample.json"))["features"]
    assert list(sample) == BOSTON_FEATURES and all(s["count"] == train_rows for s in sample.values())

    # The prediction baseline: the model's predictions on the validation split, as the Evaluate step wrote them.
    predictions = pd.read_csv(store.path_for(evaluation_uri.removesuffix("evaluation.json") + "predictions.csv"))
    validation_uri = _preprocess_output(client, registered["execution_arn"], "validation") + "/validation.csv"
    assert len(predictions) == len(pd.read_csv(store.path_for(validation_uri))) > 0
    prediction_statistics = json.loads(store.get_bytes(f"{root}/prediction/statistics.json"))
    _assert_model_monitor_statistics(prediction_statistics, ["prediction"], len(predictions))
    mean = prediction_statistics["features"][0]["numerical_statistics"]["mean"]
    assert mean == pytest.approx(predictions["prediction"].mean())
    _assert_model_monitor_constraints(
        json.loads(store.get_bytes(f"{root}/prediction/constraints.json")), ["prediction"]
    )

    # What monitoring reads.
    baselines = load_model_baselines(store, client, arn)
    assert baselines.model_package_arn == arn
    assert baselines.data.features == BOSTON_FEATURES and baselines.data.item_count == train_rows
    assert baselines.prediction.features == ["prediction"] and baselines.prediction.item_count == len(predictions)
    assert baselines.validation_metrics["mse"] == pytest.approx(registered["mse"], rel=1e-5)
    assert baselines.uris == {**uris, "evaluation_uri": evaluation_uri}

    # A lost file: the reader names the package, the file and what to do; materializing registered_model
    # again (what the message says) writes the same files back.
    store.path_for(f"{root}/data/statistics.json").unlink()
    with pytest.raises(MissingBaselineError) as missing:
        load_model_baselines(store, client, arn)
    message = str(missing.value)
    assert arn in message and f"{root}/data/statistics.json does not exist" in message
    assert "materialize registered_model" in message
    again = materialize_assets(defs, instance, GRAPH, selection=["registered_model"])
    assert again.success and latest_metadata(again, "registered_model")["model_package_arn"] == arn
    assert json.loads(store.get_bytes(f"{root}/data/statistics.json")) == statistics


def _preprocess_output(client, execution_arn: str, name: str) -> str:
    steps = client.list_pipeline_execution_steps(PipelineExecutionArn=execution_arn)["PipelineExecutionSteps"]
    [job] = [s["Metadata"]["ProcessingJob"]["Arn"] for s in steps if s["StepName"] == "Preprocess"]
    outputs = client.describe_processing_job(ProcessingJobName=job.rsplit("/", 1)[-1])["ProcessingOutputConfig"]
    return next(o["S3Output"]["S3Uri"] for o in outputs["Outputs"] if o["OutputName"] == name).rstrip("/")


# --- the store API on hand-made packages (no pipeline run) ------------------------------------

ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/mlops-pipeline-models/7"
ROOT = f"s3://{BUCKET}/mlops/mlops-pipeline/exec-1/baseline"


class _Registry:
    """DescribeModelPackage of one package."""

    def __init__(self, package: dict):
        self.package = package

    def describe_model_package(self, ModelPackageName: str) -> dict:  # noqa: N803
        assert ModelPackageName == ARN
        return self.package


def _package(kinds=("data", "prediction"), evaluation: str | None = f"{ROOT}/evaluation.json") -> dict:
    def block(kind: str) -> dict:
        return {n.title(): {**JSON, "S3Uri": f"{ROOT}/{kind}/{n}.json"} for n in ("statistics", "constraints")}

    drift = {{"data": "ModelDataQuality", "prediction": "ModelQuality"}[k]: block(k) for k in kinds}
    package = {"ModelPackageArn": ARN, "DriftCheckBaselines": drift}
    if evaluation:
        package["ModelMetrics"] = {"ModelQuality": {"Statistics": {**JSON, "S3Uri": evaluation}}}
    return package


def _baselines() -> tuple[Baseline, Baseline]:
    frame = pd.DataFrame({"rm": [6.1, 6.5, 7.2, 5.9], "lstat": [4.9, 9.1, 4.0, 12.5], "medv": [24, 21.6, 34.7, 18]})
    from mlops_dagster.monitoring.store import data_baseline

    return data_baseline(frame, "medv"), predictions_baseline(pd.DataFrame({"prediction": [23.0, 22.1, 33.0]}), "p")


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(tmp_path / "s3"))


def test_written_baselines_load_back_with_validation_metrics(store):
    package = _package()
    data, prediction = _baselines()
    store.put_bytes(f"{ROOT}/evaluation.json", json.dumps({"regression_metrics": {"mse": {"value": 4.5}}}).encode())
    uris = write_model_baselines(store, package, data, prediction)
    assert uris["baseline_sample_uri"] == f"{ROOT}/data/baseline_sample.json"
    loaded = load_model_baselines(store, _Registry(package), ARN)
    assert loaded.data.features == ["rm", "lstat"] and loaded.data.item_count == 4
    assert loaded.prediction.item_count == 3 and loaded.validation_metrics == {"mse": 4.5}
    assert loaded.uris == uris


def test_a_package_without_prediction_baseline_or_evaluation_loads_the_data_baseline(store):
    package = _package(kinds=("data",), evaluation=None)
    data, prediction = _baselines()
    with pytest.raises(MissingBaselineError, match=f"model package {ARN} names no DriftCheckBaselines.ModelQuality"):
        write_model_baselines(store, package, data, prediction)
    write_model_baselines(store, package, data, None)
    loaded = load_model_baselines(store, _Registry(package), ARN)
    assert loaded.prediction is None and loaded.validation_metrics == {}
    # ModelMetrics.ModelDataQuality stands in when DriftCheckBaselines is absent.
    fallback = {
        "ModelPackageArn": ARN,
        "ModelMetrics": {"ModelDataQuality": package["DriftCheckBaselines"]["ModelDataQuality"]},
    }
    assert baseline_locations(fallback).data == baseline_locations(package).data


@pytest.mark.parametrize(
    "package, message",
    [
        (
            {"ModelPackageArn": ARN},
            f"model package {ARN} names no data baseline (no DriftCheckBaselines.ModelDataQuality",
        ),
        (
            {
                "ModelPackageArn": ARN,
                "DriftCheckBaselines": {"ModelDataQuality": {"Statistics": {**JSON, "S3Uri": "s3://b/s.json"}}},
            },
            f"model package {ARN}: DriftCheckBaselines.ModelDataQuality names only one of Statistics and Constraints",
        ),
    ],
)
def test_a_package_that_names_no_baseline_is_an_error_saying_so(store, package: dict, message: str):
    with pytest.raises(MissingBaselineError) as error:
        load_model_baselines(store, _Registry(package), ARN)
    assert message in str(error.value)


def test_missing_or_malformed_files_are_named_with_the_package(store):
    package = _package()
    data, prediction = _baselines()
    with pytest.raises(MissingBaselineError) as missing:
        load_model_baselines(store, _Registry(package), ARN)
    assert str(missing.value) == (
        f"model package {ARN}: its data baseline file {ROOT}/data/statistics.json does not exist; "
        "materialize registered_model for it (its run computes and writes the baselines)"
    )
    write_model_baselines(store, package, data, prediction)
    with pytest.raises(MissingBaselineError, match=f"evaluation report .* {ROOT}/evaluation.json does not exist"):
        load_model_baselines(store, _Registry(package), ARN)
    store.put_bytes(f"{ROOT}/evaluation.json", b"{}")
    store.put_bytes(f"{ROOT}/prediction/constraints.json", b"{not json")
    with pytest.raises(
        BaselineError, match=f"model package {ARN}: prediction baseline {ROOT}/prediction/constraints.json is not JSON"
    ):
        load_model_baselines(store, _Registry(package), ARN)


def test_predictions_without_rows_or_column_say_what_to_do():
    with pytest.raises(BaselineError, match="p.csv holds no predictions: the validation split was empty"):
        predictions_baseline(pd.DataFrame({"prediction": [], "medv": []}), "p.csv")
    with pytest.raises(BaselineError, match=r"p.csv has no 'prediction' column \(columns: \['y'\]\)"):
        predictions_baseline(pd.DataFrame({"y": [1.0]}), "p.csv")


def test_registered_model_warns_for_a_package_without_baselines_and_fails_naming_a_missing_input(store, caplog):
    import logging
    from types import SimpleNamespace

    from dagster import Failure

    from mlops_dagster.assets.registry import _write_baselines

    context = SimpleNamespace(log=logging.getLogger("test"))
    trained = {"evaluation_uri": f"{ROOT}/evaluation.json"}
    lineage = {"dataset_uri": f"s3://{BUCKET}/mlops/data/abc/", "target": "medv"}
    with caplog.at_level(logging.WARNING):
        assert _write_baselines(context, store, {"ModelPackageArn": ARN}, lineage, trained) == (
            {}, {"drift_baseline": "none: the package names no baseline (see the run's log)"},
        )  # fmt: skip
    assert f"no drift baseline: model package {ARN} names no data baseline" in caplog.text
    with pytest.raises(Failure) as failure:
        _write_baselines(context, store, _package(), lineage, trained)
    assert failure.value.description.startswith(
        f"cannot write the drift baselines of model package {ARN}: the training data "
        f"s3://{BUCKET}/mlops/data/abc/train.csv does not exist"
    )
