"""The registration gate on model size: the real scripts on the local SageMaker service, with a
MaxModelBytes below the model's size, stop at CheckModelSize and register nothing."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from mlops_dagster.datasets import synthetic_boston
from mlops_dagster.sagemaker.local import worker
from mlops_dagster.sagemaker.offline import local_boto_session
from mlops_dagster.sagemaker.pipeline_builder import DEFAULT_MAX_MODEL_BYTES, PipelineSpec, build_pipeline

BUCKET = "mlops-local"
ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"


def test_default_limit_leaves_room_for_two_workers_on_ml_t2_medium():
    # ml.t2.medium: 4 GiB and 2 vCPUs, one serving worker (one copy of the model) per vCPU.
    assert 2 * DEFAULT_MAX_MODEL_BYTES <= 4 * 2**30 - 1.5 * 2**30
    with pytest.raises(ValueError, match=r"max_model_bytes must be a whole number of bytes above 0, got 0"):
        build_pipeline(PipelineSpec(name="p", bucket=BUCKET, prefix="", region="us-east-1", role_arn=ROLE,
                                    max_model_bytes=0), None)  # fmt: skip


def test_model_above_max_model_bytes_is_not_registered(sm_in_process):
    sm, store = sm_in_process, sm_in_process.store
    spec = PipelineSpec(name="mlops-pipeline", bucket=BUCKET, prefix="mlops", region="us-east-1", role_arn=ROLE)
    body = build_pipeline(spec, local_boto_session(store, BUCKET, "us-east-1")).definition()
    frame = synthetic_boston(300, seed=7)
    for name, part in (("train", frame.iloc[:240]), ("validation", frame.iloc[240:])):
        store.put_bytes(f"s3://{BUCKET}/mlops/data/{name}.csv", part.to_csv(index=False).encode())
    sm.create_pipeline(PipelineName=spec.name, PipelineDefinition=body, RoleArn=ROLE)

    arn = sm.start_pipeline_execution(
        PipelineName=spec.name, PipelineParameters=[{"Name": "MaxModelBytes", "Value": "1000"}]
    )["PipelineExecutionArn"]
    worker.run_execution(sm.home, store, arn)

    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    steps = {
        s["StepName"]: s for s in sm.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    }
    assert execution["PipelineExecutionStatus"] == "Failed", execution.get("FailureReason")
    assert set(steps) == {"Preprocess", "Train", "Evaluate", "CheckQuality", "CheckModelSize", "ModelTooLarge"}
    assert steps["CheckQuality"]["Metadata"] == {"Condition": {"Outcome": "True"}}  # accurate enough
    assert steps["CheckModelSize"]["Metadata"] == {"Condition": {"Outcome": "False"}}  # too large

    job = steps["Evaluate"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
    outputs = sm.describe_processing_job(ProcessingJobName=job)["ProcessingOutputConfig"]["Outputs"]
    report = json.loads(store.get_bytes(outputs[0]["S3Output"]["S3Uri"].rstrip("/") + "/evaluation.json"))
    size = report["model_size_bytes"]
    assert size > 1000 and report["model_load_seconds"] > 0
    message = steps["ModelTooLarge"]["Metadata"]["Fail"]["ErrorMessage"]
    assert message.startswith(f"model not registered: model.joblib is {size} bytes, above the MaxModelBytes 1000 ")
    assert message in execution["FailureReason"]
    with pytest.raises(ClientError):  # nothing was registered, not even the group
        sm.describe_model_package_group(ModelPackageGroupName=spec.model_package_group)


def test_pipeline_definition_passes_size_settings_exactly_when_set(defs, instance):
    from dagster import materialize

    config = {"min_samples_leaf": 3, "max_samples": 0.5, "max_model_bytes": 12345}
    result = materialize(
        [defs.get_assets_def("pipeline_definition")], resources=defs.resources, instance=instance,
        run_config={"ops": {"pipeline_definition": {"config": config}}},
    )  # fmt: skip
    assert result.success
    client = defs.resources["sagemaker"].get_client()
    doc = json.loads(client.describe_pipeline(PipelineName="mlops-pipeline")["PipelineDefinition"])
    [train] = [s for s in doc["Steps"] if s["Name"] == "Train"]
    hyperparameters = {k: json.loads(v) for k, v in train["Arguments"]["HyperParameters"].items()}
    assert (hyperparameters["min_samples_leaf"], hyperparameters["max_samples"]) == (3, 0.5)
    assert {"Name": "MaxModelBytes", "Type": "Integer", "DefaultValue": 12345} in doc["Parameters"]


def test_trained_model_metadata_shows_size_and_load_time():
    from mlops_dagster.assets.pipeline import _footprint

    evaluation = {"regression_metrics": {}, "model_size_bytes": 3_456_789, "model_load_seconds": 0.012345678}
    assert _footprint(evaluation) == {"model_size_mb": 3.457, "model_load_seconds": 0.0123}
    assert _footprint({"regression_metrics": {}}) == {}  # a report from an evaluate.py without them
