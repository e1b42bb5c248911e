"""The pipeline assets on the local backend, from an empty $MLOPS_HOME: definition, execution,
trained model, and the failures a user must see in Dagster."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import latest_metadata, materialize_assets, step_failure_text

from mlops_dagster.sagemaker.training_code import TRAINING_DIR

ALL = ["raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution", "trained_model"]
FIXTURES = Path(__file__).parent / "fixtures"


def _run(defs, instance, ops: dict | None = None, selection: list[str] | None = None):
    return materialize_assets(defs, instance, ALL, ops, selection)


_metadata = latest_metadata
_failure = step_failure_text


@pytest.mark.own_definition_cache  # asserts a miss
def test_whole_graph_trains_evaluates_and_registers(defs, instance, mlops_home):
    result = _run(defs, instance, {"raw_data": {"rows": 400}})
    assert result.success
    definition = _metadata(result, "pipeline_definition")
    model = _metadata(result, "trained_model")
    assert definition["upsert"] == "created"
    assert definition["definition_cache"] == "miss"  # an empty definition cache (own_definition_cache)
    assert definition["pipeline_arn"] == "arn:aws:sagemaker:us-east-1:000000000000:pipeline/mlops-pipeline"
    assert model["execution_arn"] == _metadata(result, "pipeline_execution")["execution_arn"]
    assert 0 < model["mse"] < 25 and model["r2"] > 0.6
    assert model["rmse"] ** 2 == pytest.approx(model["mse"], rel=1e-5)  # metadata rounds to 6 decimals
    assert model["model_data_url"].endswith("/output/model.tar.gz")
    assert "model.joblib" in model["archive_members"]
    # links a person follows from the UI: the local artifact, the job log, the worker log
    for link in ("model_link", "training_job_link", "evaluation_job_link", "execution_link"):
        assert Path(model[link]).is_file(), link
    assert "Model R2" in Path(model["training_job_link"]).read_text()
    assert model["model_package_arn"].startswith(
        "arn:aws:sagemaker:us-east-1:000000000000:model-package/mlops-pipeline-models/"
    )
    # the artifact the asset verified is the one in the store
    artifact = mlops_home / "s3" / model["model_data_url"].removeprefix("s3://")
    import hashlib

    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == model["model_sha256"]
    client = defs.resources["sagemaker"].get_client()
    package = client.describe_model_package(ModelPackageName=model["model_package_arn"])
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    # Not only registered_model (not materialized here) records the hash: the RegisterModel step
    # does, so a package from a run without it (or an execution started outside Dagster) can be deployed.
    assert _metadata(result, "registered_model") is None
    assert package["CustomerMetadataProperties"] == {"mlops:model_sha256": model["model_sha256"]}
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model["model_data_url"]
    assert package["MetadataProperties"]["GeneratedBy"] == model["execution_arn"]
    # the trained model's value carries what downstream needs
    value = result.output_for_node("trained_model")
    assert value["training_job_name"] == model["training_job_name"]

    # Same code and config: the definition comes from the cache, unchanged and not updated.
    again = _run(defs, instance, selection=["pipeline_definition"])
    assert _metadata(again, "pipeline_definition")["definition_cache"] == "hit"
    assert _metadata(again, "pipeline_definition")["upsert"] == "unchanged"
    assert _metadata(again, "pipeline_definition")["definition_sha256"] == definition["definition_sha256"]

    # A new execution on the same dataset and code: step caching reuses the first execution's jobs,
    # and trained_model says so; the model is the same artifact, registered as a new version.
    rerun = _run(defs, instance, selection=["pipeline_execution", "trained_model"])
    assert rerun.success
    reused = _metadata(rerun, "trained_model")
    assert reused["execution_arn"] != model["execution_arn"]
    assert reused["cached_steps"] == {step: model["execution_arn"] for step in ("Preprocess", "Train", "Evaluate")}
    assert (reused["model_data_url"], reused["model_sha256"]) == (model["model_data_url"], model["model_sha256"])
    assert reused["model_package_arn"] not in ("", model["model_package_arn"])
    assert _metadata(result, "trained_model")["cached_steps"] == {}


def test_a_failing_training_script_reaches_dagster_with_its_failure_text(defs, instance, tmp_path):
    code = tmp_path / "training"
    shutil.copytree(TRAINING_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "train.py").write_text(
        "import os, sys\n"
        "print('loading data...')\n"
        "with open(os.path.join(os.environ['SM_OUTPUT_DIR'], 'failure'), 'w') as f:\n"
        "    f.write('disk quota exceeded while writing the model')\n"
        "sys.exit(3)\n"
    )
    result = _run(defs, instance, {"raw_data": {"rows": 100}, "pipeline_definition": {"training_dir": str(code)}})
    message = _failure(result, "trained_model")
    assert "step Train Failed" in message
    assert "disk quota exceeded while writing the model" in message
    assert "loading data..." in message  # the tail of the job's log


def test_missing_target_column_fails_with_a_message_naming_it(defs, instance):
    # The dataset has medv; a pipeline built for 'price' is started on it directly (as a user
    # could from the console), and trained_model collects the failure.
    setup = _run(
        defs, instance, {"raw_data": {"rows": 100}, "pipeline_definition": {"target": "price"}},
        selection=["raw_data", "s3_dataset", "pipeline_definition"],
    )  # fmt: skip
    assert setup.success
    client = defs.resources["sagemaker"].get_client()
    arn = client.start_pipeline_execution(
        PipelineName="mlops-pipeline",
        PipelineParameters=[{"Name": "InputData", "Value": setup.output_for_node("s3_dataset")["uri"]}],
    )["PipelineExecutionArn"]
    result = _run(defs, instance, {"trained_model": {"execution_arn": arn}}, selection=["trained_model"])
    message = _failure(result, "trained_model")
    assert "step Preprocess Failed" in message
    assert "'price'" in message


def test_pipeline_execution_refuses_a_dataset_built_for_another_target(defs, instance):
    result = _run(defs, instance, {"raw_data": {"rows": 100}, "pipeline_definition": {"target": "price"}},
                  selection=["raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution"])  # fmt: skip
    message = _failure(result, "pipeline_execution")
    assert "target column is 'medv' but the pipeline was built for 'price'" in message


def test_trained_model_without_any_execution_says_what_to_do(defs, instance):
    result = _run(defs, instance, selection=["trained_model"])
    assert "materialize pipeline_execution first" in _failure(result, "trained_model")


def test_trained_model_times_out_with_a_clear_message(defs, instance, tmp_path):
    code = tmp_path / "training"
    shutil.copytree(TRAINING_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "train.py").write_text("import time\ntime.sleep(120)\n")
    result = _run(
        defs, instance,
        {"raw_data": {"rows": 100}, "pipeline_definition": {"training_dir": str(code)},
         "trained_model": {"wait_timeout_seconds": 2, "max_poll_seconds": 1}},
    )  # fmt: skip
    message = _failure(result, "trained_model")
    assert "still Executing after 2 s" in message
    arn = _metadata(result, "pipeline_execution")["execution_arn"]
    client = defs.resources["sagemaker"].get_client()
    client.stop_pipeline_execution(PipelineExecutionArn=arn)


def test_recipe_train_py_runs_unmodified_as_the_training_entry_point(defs, instance):
    recipe = FIXTURES / "recipe_train.py"
    result = _run(
        defs, instance,
        {"raw_data": {"rows": 150},
         "pipeline_definition": {"entry_point": str(recipe), "pass_hyperparameters": False, "mse_threshold": 1000}},
    )  # fmt: skip
    assert result.success, _failure(result, "trained_model")
    model = _metadata(result, "trained_model")
    assert "model.joblib" in model["archive_members"] and "evaluation.json" in model["archive_members"]
    client = defs.resources["sagemaker"].get_client()
    job = client.describe_training_job(TrainingJobName=model["training_job_name"])
    assert json.loads(job["HyperParameters"]["sagemaker_program"]) == "recipe_train.py"
