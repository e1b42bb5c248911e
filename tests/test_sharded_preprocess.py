"""Sharded preprocessing (issue 12 part 2): the train rows as part files, a Statistics step for the
global medians, and Preprocess on N instances of the local service, each cleaning its shard.

The end-to-end test runs the real scripts (training/) through the local service on a dataset
written by s3_dataset, and compares with the one-instance Preprocess on the same rows.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import Failure
from helpers import latest_metadata, materialize_assets, run_data_assets, step_failure_text
from pydantic import ValidationError

from mlops_dagster.assets.data import S3DatasetConfig, _write_parts
from mlops_dagster.assets.pipeline import PipelineConfig, _check_shards
from mlops_dagster.datasets import synthetic_boston
from mlops_dagster.sagemaker.local import worker
from mlops_dagster.sagemaker.offline import local_boto_session
from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline
from mlops_dagster.sagemaker.training_code import TRAINING_DIR

ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"
BUCKET = "mlops-local"
GAPS = {"crim": range(3, 240, 40), "rm": range(7, 240, 41), "lstat": range(11, 240, 45)}  # under 5% each


def load_script(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no training/__pycache__ (it is uploaded code)
    spec = importlib.util.spec_from_file_location(f"sharded_{name[:-3]}", TRAINING_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source_with_gaps(path: Path) -> Path:
    """240 Boston-schema rows with missing feature values, so per-shard and global medians differ."""
    frame = synthetic_boston(240, 11)
    for column, rows in GAPS.items():
        frame.loc[list(rows), column] = np.nan
    frame.to_csv(path, index=False)
    return path


def sorted_rows(frame: pd.DataFrame) -> np.ndarray:
    """The rows as floats in a canonical order: equal arrays are equal multisets of rows."""
    values = frame.to_numpy(dtype="float64")
    return values[np.lexsort(values.T[::-1])]


def test_sharded_pipeline_cleans_like_one_instance(defs, sm_in_process, tmp_path, monkeypatch):
    sm, store = sm_in_process, sm_in_process.store
    result = run_data_assets(
        defs, raw_config={"source": str(source_with_gaps(tmp_path / "gaps.csv"))}, s3_config={"train_parts": 4}
    )
    assert result.success
    dataset = result.output_for_node("s3_dataset")
    prefix = dataset["uri"]
    parts = [f"{prefix}train/part-{i:05d}.csv" for i in range(4)]
    # train.csv stays (the recipe's layout, drift baselines); the parts hold the same rows in order.
    assert (dataset["train_parts"], dataset["train_parts_uri"]) == (4, prefix + "train/")
    assert sorted(store.list(prefix)) == sorted([prefix + "manifest.json", prefix + "train.csv",
                                                 prefix + "validation.csv", *parts])  # fmt: skip
    train_csv = store.get_bytes(prefix + "train.csv").decode().splitlines(keepends=True)
    part_lines = [store.get_bytes(uri).decode().splitlines(keepends=True) for uri in parts]
    assert all(lines[0] == train_csv[0] and len(lines) > 1 for lines in part_lines)
    assert [row for lines in part_lines for row in lines[1:]] == train_csv[1:]
    manifest = json.loads(store.get_bytes(prefix + "manifest.json"))
    assert manifest["train_parts"] == 4 and sorted(manifest["files"]) == sorted(
        ["train.csv", "validation.csv", *(u.removeprefix(prefix) for u in parts)]
    )
    again = run_data_assets(defs, raw_config={"source": str(tmp_path / "gaps.csv")}, s3_config={"train_parts": 4})
    assert latest_metadata(again, "s3_dataset")["written"] is False  # same files: nothing written again
    assert again.output_for_node("s3_dataset")["uri"] == prefix

    spec = PipelineSpec(name="sharded", bucket=BUCKET, prefix="mlops", region="us-east-1", role_arn=ROLE,
                        processing_instance_count=3, hyperparameters={"n_estimators": 10, "random_state": 42})  # fmt: skip
    body = build_pipeline(spec, local_boto_session(store, BUCKET, "us-east-1")).definition()
    steps = {s["Name"]: s for s in json.loads(body)["Steps"]}
    assert list(steps)[:3] == ["Statistics", "Preprocess", "Train"]
    assert json.loads(body)["Parameters"][-1] == {"Name": "ProcessingInstanceCount", "Type": "Integer", "DefaultValue": 3}
    assert steps["Statistics"]["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    assert steps["Preprocess"]["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == {
        "Get": "Parameters.ProcessingInstanceCount"
    }
    distributions = [i["S3Input"]["S3DataDistributionType"] for i in steps["Preprocess"]["Arguments"]["ProcessingInputs"]]
    assert distributions == ["ShardedByS3Key", "FullyReplicated", "FullyReplicated", "FullyReplicated"]

    sm.create_pipeline(PipelineName="sharded", PipelineDefinition=body, RoleArn=ROLE)
    arn = sm.start_pipeline_execution(
        PipelineName="sharded",  # two instances instead of the definition's three: a parameter of the execution
        PipelineParameters=[{"Name": "InputData", "Value": prefix}, {"Name": "ProcessingInstanceCount", "Value": "2"}],
    )["PipelineExecutionArn"]
    worker.run_execution(sm.home, store, arn)
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    ran = {s["StepName"]: s for s in sm.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]}
    assert execution["PipelineExecutionStatus"] == "Succeeded", (execution, ran)
    assert {"Statistics", "Preprocess", "Train", "Evaluate"} <= set(ran)

    job = ran["Preprocess"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
    described = sm.describe_processing_job(ProcessingJobName=job)
    assert described["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    out = {o["OutputName"]: o["S3Output"]["S3Uri"].rstrip("/") for o in described["ProcessingOutputConfig"]["Outputs"]}
    # Each instance wrote its own parts (named after its input parts); validation and test once.
    assert store.list(out["train"] + "/") == [f"{out['train']}/part-{i:05d}.csv" for i in range(4)]
    assert store.list(out["validation"] + "/") == [out["validation"] + "/validation.csv"]
    assert store.list(out["test"] + "/") == [out["test"] + "/test.csv"]
    logs = {host: sm.job_log_path(job).with_name(name).read_text()
            for host, name in (("algo-1", f"{job}.log"), ("algo-2", f"{job}.algo-2.log"))}  # fmt: skip
    assert "host algo-1 of 2: 2 train part(s): ['part-00000.csv', 'part-00002.csv']" in logs["algo-1"]
    assert "host algo-2 of 2: 2 train part(s): ['part-00001.csv', 'part-00003.csv']" in logs["algo-2"]
    assert "validation: " in logs["algo-1"] and "validation and test are written by algo-1" in logs["algo-2"]

    # The one-instance recipe Preprocess on the same train.csv and validation.csv.
    single = tmp_path / "single"
    (single / "input").mkdir(parents=True)
    for name in ("train.csv", "validation.csv"):
        (single / "input" / name).write_bytes(store.get_bytes(prefix + name))
    preprocess = load_script("preprocess.py", monkeypatch)
    assert preprocess.main(["--input-dir", str(single / "input"), "--output-dir", str(single)]) == 0
    expected = pd.read_csv(single / "train" / "train.csv")
    sharded = [pd.read_csv(io.BytesIO(store.get_bytes(f"{out['train']}/part-{i:05d}.csv"))) for i in range(4)]
    assert np.array_equal(sorted_rows(pd.concat(sharded)), sorted_rows(expected))
    for split in ("validation", "test"):
        assert store.get_bytes(f"{out[split]}/{split}.csv") == (single / split / f"{split}.csv").read_bytes()

    # The imputed cells hold the global medians, which differ from a shard's own.
    raw_parts = [pd.read_csv(io.BytesIO(store.get_bytes(uri))) for uri in parts]
    medians = pd.concat(raw_parts).drop(columns=["medv"]).median()
    differs = 0
    for raw, cleaned in zip(raw_parts, sharded, strict=True):
        for column in GAPS:
            gaps = raw[column].isna().to_numpy()
            assert (cleaned.loc[gaps, column] == medians[column]).all()
            differs += bool(gaps.any() and raw[column].median() != medians[column])
    assert differs > 0

    # Train read every part: the forest was fit on all the cleaned train rows.
    training = sm.describe_training_job(TrainingJobName=ran["Train"]["Metadata"]["TrainingJob"]["Arn"].rsplit("/", 1)[-1])
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(training["ModelArtifacts"]["S3ModelArtifacts"]))) as tar:
        report = json.load(tar.extractfile("evaluation.json"))
    assert report["rows"]["train"] == len(expected)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, -1, 101, True, 2.0, "2"])
def test_the_builder_refuses_a_bad_instance_count(count, tmp_path):
    spec = PipelineSpec(name="p", bucket=BUCKET, prefix="mlops", region="us-east-1", role_arn=ROLE,
                        processing_instance_count=count)  # fmt: skip
    with pytest.raises(ValueError, match=r"processing_instance_count must be a whole number from 1 to 100 "):
        build_pipeline(spec, boto_session=None)  # refused before any SDK call


@pytest.mark.parametrize(("value", "message"), [(0, "greater than or equal to 1"), (101, "less than or equal to 100")])
def test_pipeline_config_bounds_the_instance_count(value, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig(processing_instance_count=value)


@pytest.mark.parametrize("value", [0, 10_001])
def test_s3_dataset_config_bounds_the_part_count(value):
    with pytest.raises(ValidationError, match=f"train_parts must be an integer from 1 to 10,000; got {value}"):
        S3DatasetConfig(train_parts=value)


@pytest.mark.parametrize(
    ("parts", "instances", "message"),
    [
        (1, 2, "runs on 2 instances (processing_instance_count) but s3_dataset s3://b/d/ holds a single train.csv"),
        (3, 4, "holds 3 train part files: an instance would get no train rows. Set s3_dataset's config train_parts "
               "to a multiple of 4 (e.g. 8)"),
    ],
)  # fmt: skip
def test_pipeline_execution_refuses_fewer_parts_than_instances(parts, instances, message):
    with pytest.raises(Failure, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _check_shards({"uri": "s3://b/d/", "train_parts": parts}, {"processing_instance_count": instances})
    assert _check_shards({"uri": "s3://b/d/", "train_parts": instances}, {"processing_instance_count": instances}) is None
    assert _check_shards({"uri": "s3://b/d/"}, {"pipeline_name": "older value, one instance"}) is None
    assert _check_shards({"uri": "s3://b/d/", "train_parts": 5}, {"processing_instance_count": 2}) == (
        "s3_dataset's 5 train parts do not divide evenly among the 2 Preprocess instances: some clean 3 parts, "
        "others 2"
    )


def test_a_sharded_pipeline_refuses_a_one_file_dataset_before_starting(defs, instance):
    result = materialize_assets(
        defs, instance, ["raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution"],
        {"raw_data": {"rows": 100}, "pipeline_definition": {"processing_instance_count": 3}},
    )  # fmt: skip
    definition = latest_metadata(result, "pipeline_definition")
    assert definition["processing_instance_count"] == 3 and "Statistics" in definition["step_graph"]
    message = step_failure_text(result, "pipeline_execution")
    assert "Preprocess runs on 3 instances (processing_instance_count) but s3_dataset s3://" in message
    assert "holds a single train.csv: an instance would get no train rows" in message
    assert "train_parts to a multiple of 3 (e.g. 6)" in message
    assert defs.resources["sagemaker"].get_client().list_pipeline_executions(PipelineName="mlops-pipeline")[
        "PipelineExecutionSummaries"
    ] == []


def test_more_parts_than_train_rows_is_refused(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("a,medv\n1,2\n3,4\n")
    with pytest.raises(Failure, match="train_parts is 3 but the train split has 2 rows: every part needs at least one row"):
        _write_parts(train, 2, 3, tmp_path / "parts")
    written = _write_parts(train, 2, 2, tmp_path / "parts")
    assert [path.read_text() for path, _sha in written.values()] == ["a,medv\n1,2\n", "a,medv\n3,4\n"]


def write_parts(folder: Path, frames: list[pd.DataFrame]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        frame.to_csv(folder / f"part-{index:05d}.csv", index=False)


def test_transform_refuses_a_host_without_parts_and_foreign_statistics(tmp_path, monkeypatch, capsys):
    preprocess = load_script("preprocess.py", monkeypatch)
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0], "medv": [1.0, 2.0, 3.0]})
    write_parts(tmp_path / "input" / "train", [frame])
    assert preprocess.main(["--mode", "statistics", "--input-dir", str(tmp_path / "input"),
                            "--output-dir", str(tmp_path)]) == 0  # fmt: skip
    stats = tmp_path / "statistics" / "statistics.json"
    assert json.loads(stats.read_text())["medians"] == {"a": 2.0}
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    base = ["--mode", "transform", "--output-dir", str(tmp_path / "out"), "--resource-config", str(config)]
    with pytest.raises(preprocess.InputError, match="host algo-2 of 2 received no train part; give the dataset at least"):
        preprocess.main([*base, "--input-dir", str(empty), "--statistics", str(stats)])
    with pytest.raises(preprocess.InputError, match="computed for target 'medv', not 'price'"):
        preprocess.main([*base, "--input-dir", str(tmp_path / "input"), "--statistics", str(stats), "--target", "price"])
    with pytest.raises(preprocess.InputError, match="file not found \\(the Statistics step's output\\)"):
        preprocess.main([*base, "--input-dir", str(tmp_path / "input"), "--statistics", str(tmp_path / "none.json")])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        preprocess.main(["--mode", "transform"])
    assert "--mode transform needs --statistics" in capsys.readouterr().err


def test_a_part_with_other_columns_names_the_file(tmp_path, monkeypatch):
    preprocess = load_script("preprocess.py", monkeypatch)
    write_parts(tmp_path / "input" / "train", [pd.DataFrame({"a": [1.0], "medv": [1.0]}),
                                               pd.DataFrame({"b": [1.0], "medv": [1.0]})])  # fmt: skip
    with pytest.raises(preprocess.InputError, match=r"part-00001.csv: columns differ from .*part-00000.csv \(missing: \['a'\], unexpected: \['b'\]\)"):
        preprocess.main(["--mode", "statistics", "--input-dir", str(tmp_path / "input"), "--output-dir", str(tmp_path)])


def test_train_reads_every_part_of_the_channel_like_train_csv(tmp_path, monkeypatch):
    train = load_script("train.py", monkeypatch)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=60), "z": rng.normal(size=60)})
    frame["medv"] = 2 * frame["x"] + rng.normal(size=60)
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    whole.mkdir()
    frame.to_csv(whole / "train.csv", index=False)
    write_parts(parted, [frame.iloc[:25], frame.iloc[25:][["z", "x", "medv"]]])  # same columns, other order
    reports = []
    for channel in (whole, parted):
        model = tmp_path / f"model-{channel.name}"
        assert train.main(["--model-dir", str(model), "--training", str(channel), "--n_estimators", "5"]) == 0
        reports.append(json.loads((model / "evaluation.json").read_text()))
    # Same rows in the same order: the same forest and metrics (to the last bits: the forest's
    # parallel predict may sum in another order from run to run).
    metrics = [{k: v["value"] for k, v in report.pop("regression_metrics").items()} for report in reports]
    assert reports[0] == reports[1]
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-12)

    write_parts(tmp_path / "bad", [frame.iloc[:30], frame.iloc[30:][["x", "medv"]]])
    with pytest.raises(train.TrainingError, match="part-00001.csv: columns .* differ from .*part-00000.csv's"):
        train.main(["--model-dir", str(tmp_path / "m"), "--training", str(tmp_path / "bad")])
