"""registered_model (lineage, the prod gate) and the approve_model job, on the local backend."""

import json

import pytest
from dagster import AssetMaterialization, Failure
from helpers import latest_metadata, materialize_assets, step_failure_text

from mlops_dagster.assets.registry import _record_sha256

GRAPH = ["raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution", "trained_model", "registered_model"]


def _run(defs, instance, ops=None, selection=None):
    return materialize_assets(defs, instance, GRAPH, ops, selection)


_materialized = latest_metadata


def _check(result, name):
    [evaluation] = [
        e.event_specific_data for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name
    ]  # fmt: skip
    return evaluation


def _approve(defs, instance, **config):
    job = defs.resolve_job_def("approve_model")
    return job.execute_in_process(
        run_config={"ops": {"approve_model_package": {"config": config}}}, instance=instance, raise_on_error=False
    )


def test_registered_model_lineage_approval_and_prod_gate(defs, instance, mlops_home):
    result = _run(defs, instance, {"raw_data": {"rows": 300}})
    assert result.success
    registered = _materialized(result, "registered_model")
    dataset = _materialized(result, "s3_dataset")
    definition = _materialized(result, "pipeline_definition")
    model = _materialized(result, "trained_model")
    assert registered["model_package_arn"] == model["model_package_arn"]
    assert registered["model_package_version"] == 1
    assert registered["approval_status"] == "PendingManualApproval"
    assert registered["dataset_uri"] == dataset["uri"]
    assert registered["dataset_files_sha256"] == {
        "train.csv": dataset["train_sha256"], "validation.csv": dataset["validation_sha256"],
    }  # fmt: skip
    assert registered["definition_sha256"] == definition["definition_sha256"]
    assert registered["execution_arn"] == model["execution_arn"]
    assert registered["training_job_name"] == model["training_job_name"]
    assert registered["mse"] == pytest.approx(model["mse"])
    gate = _check(result, "not_worse_than_prod")
    assert gate.passed and gate.description == "no other model serves in prod yet"

    # Approval: by version number, visible as an observation on registered_model.
    approved = _approve(defs, instance, model_package="1", status="Approved", comment="looks good")
    assert approved.success
    client = defs.resources["sagemaker"].get_client()
    package = client.describe_model_package(ModelPackageName=registered["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ApprovalDescription"] == "looks good"
    observations = [e for e in approved.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observations[0].event_specific_data.asset_observation.metadata["approval_status"].value == "Approved"

    # A better model in prod makes the new one fail its blocking gate.
    better = defs.resources["store"]
    better.put_bytes("s3://mlops-local/mlops/tests/evaluation.json",
                     json.dumps({"regression_metrics": {"mse": {"value": 0.5}}}).encode())  # fmt: skip
    prod_arn = client.create_model_package(
        ModelPackageGroupName="mlops-pipeline-models",
        ModelApprovalStatus="Approved",
        InferenceSpecification={"Containers": [{"Image": "x", "ModelDataUrl": model["model_data_url"]}],
                                "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["text/csv"]},
        ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                      "S3Uri": "s3://mlops-local/mlops/tests/evaluation.json"}}},
    )["ModelPackageArn"]  # fmt: skip
    instance.report_runless_asset_event(AssetMaterialization("prod_endpoint", metadata={"model_package_arn": prod_arn}))
    again = _run(defs, instance, selection=["registered_model"])
    gate = _check(again, "not_worse_than_prod")
    assert not gate.passed
    assert f"new mse {model['mse']:.4g} is worse than prod's 0.5" in gate.description
    assert not again.success  # blocking: nothing downstream may deploy it


def test_approve_model_rejects_bad_input(defs, instance):
    client = defs.resources["sagemaker"].get_client()
    client.create_model_package_group(ModelPackageGroupName="mlops-pipeline-models")
    result = _approve(defs, instance, model_package="7", status="Approved")
    assert not result.success
    assert "has no version 7" in _failure_text(result)
    result = _approve(defs, instance, model_package="latest", status="Approved")
    assert "neither a version number (e.g. 3) nor an ARN" in _failure_text(result)
    result = _approve(defs, instance, model_package="1", status="Maybe")
    assert "status 'Maybe' is not one of Approved, Rejected, PendingManualApproval" in _failure_text(result)


def test_a_model_stopped_by_the_quality_gate_is_not_registered(defs, instance):
    result = _run(defs, instance, {"raw_data": {"rows": 150}, "pipeline_definition": {"mse_threshold": 0.001}})
    assert result.success  # the model was trained and evaluated; only registration was refused
    model = _materialized(result, "trained_model")
    assert model["quality_gate"].startswith("model not registered: mse")
    assert "is above the MseThreshold 0.001" in model["quality_gate"]
    assert model["model_package_arn"] == "" and model["mse"] > 0.001
    assert _materialized(result, "registered_model") is None
    client = defs.resources["sagemaker"].get_client()
    execution = client.describe_pipeline_execution(PipelineExecutionArn=model["execution_arn"])
    assert execution["PipelineExecutionStatus"] == "Failed"
    steps = client.list_pipeline_execution_steps(PipelineExecutionArn=model["execution_arn"])["PipelineExecutionSteps"]
    [fail] = [s for s in steps if s["StepName"] == "MseAboveThreshold"]
    assert fail["StepStatus"] == "Failed" and "model not registered" in fail["Metadata"]["Fail"]["ErrorMessage"]


_failure_text = step_failure_text


class _Registry:
    """describe/update_model_package of one package, with an optional writer that records another
    hash right after our update (the race UpdateModelPackage cannot prevent)."""

    def __init__(self, recorded: str | None, racing: str | None = None):
        self.metadata = {"mlops:model_sha256": recorded} if recorded else {}
        self.racing, self.updates = racing, []

    def describe_model_package(self, ModelPackageName: str) -> dict:  # noqa: N803 (boto3's names)
        return {"ModelPackageArn": ModelPackageName, "CustomerMetadataProperties": dict(self.metadata)}

    def update_model_package(self, ModelPackageArn: str, CustomerMetadataProperties: dict) -> dict:  # noqa: N803
        self.updates.append(CustomerMetadataProperties)
        self.metadata.update(CustomerMetadataProperties)
        if self.racing:
            self.metadata["mlops:model_sha256"] = self.racing
        return {"ModelPackageArn": ModelPackageArn}


ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/g/1"
OURS, THEIRS = "a" * 64, "b" * 64


def test_registered_model_records_a_missing_hash_and_never_replaces_another():
    registry = _Registry(None)
    assert _record_sha256(registry, ARN, OURS)["CustomerMetadataProperties"] == {"mlops:model_sha256": OURS}
    assert registry.updates == [{"mlops:model_sha256": OURS}]

    same = _Registry(OURS.upper())  # recorded by the RegisterModel step: nothing to write
    _record_sha256(same, ARN, OURS)
    assert same.updates == []

    for registry in (_Registry(THEIRS), _Registry(None, racing=THEIRS)):
        with pytest.raises(Failure) as err:
            _record_sha256(registry, ARN, OURS)
        message = str(err.value)
        assert f"model package {ARN} records mlops:model_sha256 {THEIRS}" in message
        assert f"the artifact trained_model verified has sha256 {OURS}" in message
        assert registry.metadata["mlops:model_sha256"] == THEIRS  # not replaced by ours
