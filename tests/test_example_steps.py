"""The step types the AWS examples use next to ours: ModelStep (CreateModel) and TransformStep.

Small pipelines are built with the SageMaker SDK (a PipelineSession over the local store) and run
by the local service's worker in this process.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile

import joblib
import pytest
from sagemaker.model import Model
from sagemaker.transformer import Transformer
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.pipeline_context import PipelineSession
from sagemaker.workflow.steps import TransformStep
from sklearn.linear_model import LinearRegression

from mlops_dagster.sagemaker.local import LocalSageMakerService, worker
from mlops_dagster.sagemaker.offline import local_boto_session

ROLE = "arn:aws:iam::123456789012:role/pipelines"
BUCKET = "examples"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


@pytest.fixture
def sm(sm_in_process: LocalSageMakerService) -> LocalSageMakerService:
    """Executions run in this process (worker.run_execution), not in detached workers."""
    return sm_in_process


@pytest.fixture
def model_data(sm: LocalSageMakerService) -> str:
    """A model.tar.gz inference.py's model_fn loads: y = 2 a + 3 b + 1."""
    estimator = LinearRegression().fit([[0, 0], [1, 0], [0, 1], [1, 1]], [1, 3, 4, 6])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (
            ("model.joblib", _joblib_bytes(estimator)),
            ("features.json", json.dumps(["a", "b"]).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    uri = f"s3://{BUCKET}/model/model.tar.gz"
    sm.store.put_bytes(uri, buffer.getvalue())
    return uri


def _joblib_bytes(estimator) -> bytes:
    out = io.BytesIO()
    joblib.dump(estimator, out)
    return out.getvalue()


def build(sm: LocalSageMakerService, model_data: str, *, transform: bool, **transform_args) -> str:
    session = PipelineSession(boto_session=local_boto_session(sm.store, BUCKET, "us-east-1"), default_bucket=BUCKET)
    model = Model(image_uri=IMAGE, model_data=model_data, role=ROLE, sagemaker_session=session)
    steps = [ModelStep(name="MakeModel", step_args=model.create(instance_type="ml.m5.large"))]
    if transform:
        transformer = Transformer(
            model_name=steps[0].properties.ModelName,
            instance_type="ml.m5.large",
            instance_count=1,
            output_path=f"s3://{BUCKET}/predictions",
            accept="text/csv",
            assemble_with="Line",
            sagemaker_session=session,
        )
        args = transformer.transform(data=f"s3://{BUCKET}/batch/", content_type="text/csv", **transform_args)
        steps.append(TransformStep(name="Batch", step_args=args))
    pipeline = Pipeline(name="example", steps=steps, sagemaker_session=session)
    sm.create_pipeline(PipelineName="example", PipelineDefinition=pipeline.definition(), RoleArn=ROLE)
    arn = sm.start_pipeline_execution(PipelineName="example")["PipelineExecutionArn"]
    worker.run_execution(sm.home, sm.store, arn)
    return arn


def steps_of(sm: LocalSageMakerService, arn: str) -> dict[str, dict]:
    listed = sm.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    return {s["StepName"]: s for s in listed}


def test_model_step_creates_a_hosting_model(sm, model_data):
    arn = build(sm, model_data, transform=False)
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineExecutionStatus"] == "Succeeded", execution.get("FailureReason")
    step = steps_of(sm, arn)["MakeModel-CreateModel"]
    model_arn = step["Metadata"]["Model"]["Arn"]
    (model,) = sm.list_models()["Models"]
    assert model["ModelArn"] == model_arn and model["ModelName"].startswith("pipelines-")
    described = sm.describe_model(ModelName=model["ModelName"])
    assert described["PrimaryContainer"]["ModelDataUrl"] == model_data
    assert described["PrimaryContainer"]["Image"] == IMAGE


def test_model_step_without_the_artifact_fails_with_the_reason(sm, model_data):
    os.remove(sm.store.path_for(model_data))
    arn = build(sm, model_data, transform=False)
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineExecutionStatus"] == "Failed"
    step = steps_of(sm, arn)["MakeModel-CreateModel"]
    assert step["StepStatus"] == "Failed"
    assert step["FailureReason"] == f"cannot create the model: the model artifact {model_data} does not exist"


@pytest.mark.parametrize("split", [{}, {"split_type": "Line"}])
def test_transform_step_predicts_every_object_under_the_prefix(sm, model_data, split):
    """Each input object gives <output>/<its path under the prefix>.out, one prediction per row."""
    sm.store.put_bytes(f"s3://{BUCKET}/batch/part-1.csv", b"0,0\n1,1\n")
    sm.store.put_bytes(f"s3://{BUCKET}/batch/sub/part-2.csv", b"2,0\n")
    arn = build(sm, model_data, transform=True, **split)
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineExecutionStatus"] == "Succeeded", execution.get("FailureReason")
    outputs = sorted(sm.store.list(f"s3://{BUCKET}/predictions/"))
    assert outputs == [f"s3://{BUCKET}/predictions/part-1.csv.out", f"s3://{BUCKET}/predictions/sub/part-2.csv.out"]
    first = [float(v) for v in sm.store.get_bytes(outputs[0]).decode().split()]
    assert first == pytest.approx([1.0, 6.0])
    assert [float(v) for v in sm.store.get_bytes(outputs[1]).decode().split()] == pytest.approx([5.0])
    job_arn = steps_of(sm, arn)["Batch"]["Metadata"]["TransformJob"]["Arn"]
    (summary,) = sm.list_transform_jobs()["TransformJobSummaries"]
    assert summary["TransformJobArn"] == job_arn and summary["TransformJobStatus"] == "Completed"
    job = sm.describe_transform_job(TransformJobName=summary["TransformJobName"])
    assert job["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/predictions"
    assert job["ModelName"] == sm.list_models()["Models"][0]["ModelName"]


def test_transform_step_fails_naming_the_bad_object(sm, model_data):
    sm.store.put_bytes(f"s3://{BUCKET}/batch/good.csv", b"0,0\n")
    sm.store.put_bytes(f"s3://{BUCKET}/batch/short.csv", b"1\n")
    arn = build(sm, model_data, transform=True)
    assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Failed"
    step = steps_of(sm, arn)["Batch"]
    assert step["StepStatus"] == "Failed"
    assert f"s3://{BUCKET}/batch/short.csv: " in step["FailureReason"]
    (summary,) = sm.list_transform_jobs()["TransformJobSummaries"]
    job = sm.describe_transform_job(TransformJobName=summary["TransformJobName"])
    assert job["TransformJobStatus"] == "Failed" and job["FailureReason"] in step["FailureReason"]


def test_fail_step_reads_the_model_steps_model_name(sm, model_data):
    """Mirrors (the CreateModel half of) test_model_steps.py::
    test_pytorch_training_model_registration_and_creation_without_custom_inference: a Fail step's
    message joins ``step_model_create.properties.ModelName``, which contains the ModelStep's name."""
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join

    session = PipelineSession(boto_session=local_boto_session(sm.store, BUCKET, "us-east-1"), default_bucket=BUCKET)
    model = Model(image_uri=IMAGE, model_data=model_data, role=ROLE, sagemaker_session=session)
    step_model_create = ModelStep(name="pytorch-model", step_args=model.create(instance_type="ml.m5.large"))
    step_fail = FailStep(
        name="fail-step",
        error_message=Join(on=", ", values=["create model", step_model_create.properties.ModelName]),
    )
    pipeline = Pipeline(name="model-name", steps=[step_model_create, step_fail], sagemaker_session=session)
    sm.create_pipeline(PipelineName="model-name", PipelineDefinition=pipeline.definition(), RoleArn=ROLE)
    arn = sm.start_pipeline_execution(PipelineName="model-name")["PipelineExecutionArn"]
    worker.run_execution(sm.home, sm.store, arn)
    steps = steps_of(sm, arn)
    assert steps["pytorch-model-CreateModel"]["StepStatus"] == "Succeeded"
    assert steps["fail-step"]["StepStatus"] == "Failed"
    assert "pytorch-model" in steps["fail-step"]["FailureReason"]
    (created,) = sm.list_models()["Models"]
    assert steps["fail-step"]["FailureReason"] == f"create model, {created['ModelName']}"


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"DataProcessing": {"InputFilter": "$[1:]"}}, "DataProcessing (InputFilter, JoinSource, OutputFilter)"),
        ({"TransformInput": {"CompressionType": "Gzip"}}, "CompressionType 'Gzip'"),
    ],
)
def test_transform_options_the_local_service_lacks_are_refused_by_name(option, named):
    from mlops_dagster.sagemaker.local.model_steps import TransformError, batch_transform

    request = {
        "ModelName": "m",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}},
        "TransformOutput": {"S3OutputPath": "s3://b/out"},
    }
    for key, value in option.items():
        request[key] = {**request.get(key, {}), **value}
    with pytest.raises(TransformError, match=rf"^{re.escape(named)} is not supported by the local batch transform"):
        batch_transform(request, {"ModelDataUrl": "s3://b/model.tar.gz"}, store=None)
