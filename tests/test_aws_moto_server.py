"""MLOPS_BACKEND=aws end to end against a moto server over real HTTP (``MLOPS_AWS_ENDPOINT_URL``).

The same asset code as the local backend, between the infrastructure jobs: setup_infrastructure ->
raw_data -> s3_dataset -> pipeline_definition (built by the SageMaker SDK, whose own S3 calls must
reach the moto server too) -> pipeline_execution -> pipeline_execution_sensor -> trained_model ->
verify_infrastructure -> teardown_infrastructure. Sockets to anything but 127.0.0.1 are refused and
recorded, so a call that would have gone to AWS fails the test.

Where moto 5.2.5 falls short, the test says so at the spot:
- a pipeline execution is Succeeded at once: the test drives its status through moto's backend
  object (the server runs in this process);
- moto runs no steps: the test plays SageMaker, creating the steps' jobs in moto from the
  definition's own Arguments and putting their outputs (model.tar.gz, evaluation.json and the
  validation predictions.csv) in S3;
- ListPipelineExecutionSteps is not implemented: a before-call handler scoped to that one operation
  answers it with the steps the test ran;
- CodeCommit GetBranch and CreateCommit are not implemented: before-call handlers scoped to them
  answer setup's first commit to the new repository (repositories themselves are moto's).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import boto3
import pytest
import requests
from aws_helpers import (
    STEP_APIS,
    CannedAnswer,
    Expressions,
    all_steps,
    block_remote_sockets,
    evaluation_json,
    model_archive,
    no_retry_delay,
    on_new_sessions,
    s3_slow_down,
    sagemaker_throttling,
    step_request,
)
from botocore.exceptions import ClientError, EndpointConnectionError
from dagster import DagsterInstance, RunRequest, SensorResult, build_sensor_context, materialize
from helpers import failure_text
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends
from moto.server import ThreadedMotoServer

from mlops_dagster import build_definitions
from mlops_dagster.alerts import AlertSink
from mlops_dagster.sensors import pipeline_execution_sensor
from mlops_dagster.settings import Settings

REGION = "us-east-1"
BUCKET = "mlops-e2e-bucket"
PIPELINE = "mlops-pipeline"
# The role setup_infrastructure creates (MLOPS_ROLE_NAME defaults to SageMakerExecutionRole-<pipeline>).
ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/SageMakerExecutionRole-{PIPELINE}"
MAX_ATTEMPTS = 3
UPSTREAM = ["raw_data", "s3_dataset", "pipeline_definition", "pipeline_execution"]
REPOSITORY = f"{PIPELINE}-code"
# What training/evaluate.py writes beside evaluation.json: predictions on the validation split.
PREDICTIONS_CSV = b"prediction,medv\n21.5,22.0\n30.25,31.0\n18.0,17.5\n"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def guard(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> list:
    """Empty moto state per test; only loopback sockets; botocore retries without their back-off sleep."""
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    no_retry_delay(monkeypatch)
    return block_remote_sockets(monkeypatch)


@pytest.fixture
def aws_settings(endpoint: str, mlops_home) -> Settings:
    return Settings.from_env(
        {"MLOPS_BACKEND": "aws", "MLOPS_AWS_ENDPOINT_URL": endpoint, "MLOPS_REGION": REGION, "MLOPS_BUCKET": BUCKET,
         "MLOPS_ROLE_ARN": ROLE, "MLOPS_HOME": str(mlops_home), "MLOPS_AWS_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}
    )  # fmt: skip


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        yield inst


def _client(service: str, endpoint: str):
    """A plain boto3 client on the moto server, for the test's own set-up and checks."""
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def _versioned_bucket(endpoint: str):
    s3 = _client("s3", endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def _run(defs, instance, keys: list[str], run_config: dict | None = None, tags: dict | None = None):
    return materialize(
        [defs.get_assets_def(k) for k in keys],
        resources=defs.resources,
        run_config=run_config or {},
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )


def _metadata(result, key: str) -> dict:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _tick(instance, settings: Settings, sagemaker, cursor: str | None) -> SensorResult:
    resources = {"settings": settings, "sagemaker": sagemaker, "alerts": AlertSink(home=settings.home)}
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return pipeline_execution_sensor(context)


def _moto_execution(arn: str):
    """moto's own execution object: moto marks every execution Succeeded at once, so the test
    moves its status the way SageMaker would."""
    return sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].pipelines[PIPELINE].pipeline_executions[arn]


def _play_sagemaker(endpoint: str, definition: dict, execution_arn: str, input_data: str) -> list[dict]:
    """Run the execution's steps the way SageMaker would, as far as moto can hold them: create each
    job from the definition's own Arguments (resolved for this execution), put what the jobs
    would write in S3, and return the steps as ListPipelineExecutionSteps would list them."""
    sm, s3 = _client("sagemaker", endpoint), _client("s3", endpoint)
    expressions = Expressions(definition, {"InputData": input_data}, execution_arn.rsplit("/", 1)[-1])
    listed = []
    for step in all_steps(definition["Steps"]):
        name = step["Name"]
        if step["Type"] not in STEP_APIS:
            listed.append({"StepName": name, "StepStatus": "Succeeded", "Metadata": {}})
            continue
        operation, request = step_request(step, expressions)
        if step["Type"] == "Processing":
            arn = sm.create_processing_job(**request)["ProcessingJobArn"]
            job = sm.describe_processing_job(ProcessingJobName=request["ProcessingJobName"])
            for output in job["ProcessingOutputConfig"]["Outputs"]:
                path = f"Steps.{name}.ProcessingOutputConfig.Outputs['{output['OutputName']}'].S3Output.S3Uri"
                expressions.properties[path] = output["S3Output"]["S3Uri"]
                if output["OutputName"] == "evaluation":
                    _put(s3, output["S3Output"]["S3Uri"] + "/evaluation.json", evaluation_json(mse=12.5))
                    _put(s3, output["S3Output"]["S3Uri"] + "/predictions.csv", PREDICTIONS_CSV)
            metadata = {"ProcessingJob": {"Arn": arn}}
        elif step["Type"] == "Training":
            arn = sm.create_training_job(**request)["TrainingJobArn"]
            job = sm.describe_training_job(TrainingJobName=request["TrainingJobName"])
            model_uri = job["ModelArtifacts"]["S3ModelArtifacts"]
            expressions.properties[f"Steps.{name}.ModelArtifacts.S3ModelArtifacts"] = model_uri
            _put(s3, model_uri, _model_tar_gz())
            metadata = {"TrainingJob": {"Arn": arn}}
        else:
            sm.create_model_package_group(ModelPackageGroupName=request["ModelPackageGroupName"])
            # SageMaker defaults the status to PendingManualApproval; moto 5.2.5 leaves it out.
            arn = sm.create_model_package(**{"ModelApprovalStatus": "PendingManualApproval", **request})[
                "ModelPackageArn"
            ]
            metadata = {"RegisterModel": {"Arn": arn}}
        assert operation in ("CreateProcessingJob", "CreateTrainingJob", "CreateModelPackage")
        listed.append({"StepName": name, "StepStatus": "Succeeded", "Metadata": metadata})
    return listed


def _put(s3, uri: str, data: bytes) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3.put_object(Bucket=bucket, Key=key, Body=data)


_ARCHIVE: list[bytes] = []


def _model_tar_gz() -> bytes:
    """A real model.tar.gz: a fitted scikit-learn model as model.joblib."""
    if not _ARCHIVE:
        from sklearn.linear_model import LinearRegression

        _ARCHIVE.append(model_archive(LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])))
    return _ARCHIVE[0]


def _first_commit_answers() -> list[CannedAnswer]:
    """CodeCommit calls moto 5.2.5 lacks, answered for a new repository's first commit."""
    no_branch = {"Error": {"Code": "BranchDoesNotExistException", "Message": "branch main does not exist"}}
    return [
        CannedAnswer("before-call.codecommit.GetBranch", no_branch, status=400),
        CannedAnswer("before-call.codecommit.CreateCommit", {"commitId": "0" * 40, "treeId": "1" * 40}),
        # moto 5.2.5 lacks ListTagsForResource; setup tagged the repository it created like this.
        CannedAnswer(
            "before-call.codecommit.ListTagsForResource",
            {"tags": {"managed-by": "mlops-dagster", "mlops:pipeline": PIPELINE}},
        ),
    ]


def _run_job(defs, instance, name: str, run_config: dict | None = None):
    result = defs.get_job_def(name).execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    assert result.success, f"{name}: {failure_text(result)}"
    return result


def _lift_tls_only_policy(s3) -> None:
    """moto 5.2.5 ignores the Condition of a bucket policy statement (moto/iam/access_control.py:
    "TODO add support for the Resource and Condition parts"), so setup's Deny-without-TLS
    (aws:SecureTransport=false) denies every object request, over HTTPS too. The test checks the
    statement is there, then removes the policy so the graph can use the bucket."""
    statements = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]
    assert any(st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}} for st in statements)
    s3.delete_bucket_policy(Bucket=BUCKET)


def test_the_asset_graph_runs_against_aws_apis_on_moto(endpoint, aws_settings, instance, guard, monkeypatch):
    s3 = _client("s3", endpoint)
    sm = _client("sagemaker", endpoint)
    defs = build_definitions(aws_settings)
    codecommit = _first_commit_answers()
    on_new_sessions(monkeypatch, lambda session: [h.install(session) for h in codecommit])
    _run_job(defs, instance, "setup_infrastructure")
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert _client("iam", endpoint).get_role(RoleName=ROLE.rsplit("/", 1)[-1])["Role"]["Arn"] == ROLE
    assert _client("codecommit", endpoint).get_repository(repositoryName=REPOSITORY)["repositoryMetadata"]
    assert codecommit[1].calls == 1  # the training code, committed once
    _lift_tls_only_policy(s3)

    # Faults botocore must retry (MLOPS_AWS_MAX_ATTEMPTS=3, so two failures are survivable), and
    # the one call moto lacks, answered by a handler scoped to ListPipelineExecutionSteps.
    slow_down = s3_slow_down(times=2)
    throttled = sagemaker_throttling("DescribePipelineExecution", times=2)
    steps = CannedAnswer("before-call.sagemaker.ListPipelineExecutionSteps", {"PipelineExecutionSteps": []})
    on_new_sessions(monkeypatch, lambda session: [h.install(session) for h in (slow_down, throttled, steps)])

    result = _run(defs, instance, UPSTREAM, {"ops": {"raw_data": {"config": {"rows": 200}}}})
    assert result.success, failure_text(result)
    assert slow_down.hits == 2  # the first PutObject got SlowDown twice and succeeded on its third attempt

    dataset = _metadata(result, "s3_dataset")
    train_key = dataset["train_uri"].removeprefix(f"s3://{BUCKET}/")
    assert dataset["train_version_id"] == s3.head_object(Bucket=BUCKET, Key=train_key)["VersionId"]
    assert dataset["validation_version_id"]
    assert s3.head_object(Bucket=BUCKET, Key=train_key)["Metadata"]["sha256"] == dataset["train_sha256"]

    upserted = _metadata(result, "pipeline_definition")
    described = sm.describe_pipeline(PipelineName=PIPELINE)
    assert upserted["upsert"] == "created" and described["PipelineArn"] == upserted["pipeline_arn"]
    assert hashlib.sha256(described["PipelineDefinition"].encode()).hexdigest() == upserted["definition_sha256"]
    # The SDK uploaded the step code through its own S3 clients: to the moto server, not to AWS.
    code = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"mlops/{PIPELINE}/code/")["Contents"]]
    assert sorted(k.rsplit("/", 1)[-1] for k in code) == ["evaluate.py", "preprocess.py", "sourcedir.tar.gz"]
    assert guard == []

    arn = _metadata(result, "pipeline_execution")["execution_arn"]
    parameters = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert parameters == [{"Name": "InputData", "Value": dataset["uri"]}]

    # The execution runs (moto: set through its backend); the sensor watches it.
    execution = _moto_execution(arn)
    execution.pipeline_execution_status = "Executing"
    tick = _tick(instance, aws_settings, defs.resources["sagemaker"], None)
    assert tick.run_requests == [] and json.loads(tick.cursor)["in_flight"] == [arn]
    tick = _tick(instance, aws_settings, defs.resources["sagemaker"], tick.cursor)
    assert tick.run_requests == []

    steps.parsed["PipelineExecutionSteps"] = _play_sagemaker(
        endpoint, json.loads(described["PipelineDefinition"]), arn, dataset["uri"]
    )
    execution.pipeline_execution_status = "Succeeded"
    tick = _tick(instance, aws_settings, defs.resources["sagemaker"], tick.cursor)
    [request] = tick.run_requests
    assert isinstance(request, RunRequest) and request.run_key == arn

    # What the sensor asks for: the model and its registration (hash recorded), as make run does.
    requested = [key.to_user_string() for key in request.asset_selection]
    assert requested == ["trained_model", "registered_model"]
    collected = _run(defs, instance, requested, request.run_config, request.tags)
    assert collected.success, failure_text(collected)
    assert throttled.hits == 2 and steps.calls >= 2  # throttled twice, retried, then answered
    model = _metadata(collected, "trained_model")
    train_job = next(s for s in steps.parsed["PipelineExecutionSteps"] if s["StepName"] == "Train")
    job_name = train_job["Metadata"]["TrainingJob"]["Arn"].rsplit("/", 1)[-1]
    assert model["training_job_name"] == job_name and model["execution_arn"] == arn
    assert (
        model["model_data_url"]
        == sm.describe_training_job(TrainingJobName=job_name)["ModelArtifacts"]["S3ModelArtifacts"]
    )
    assert model["model_sha256"] == hashlib.sha256(_model_tar_gz()).hexdigest()
    assert model["archive_members"] == ["model.joblib"] and model["mse"] == 12.5
    assert model["model_package_arn"].startswith(f"arn:aws:sagemaker:{REGION}:{DEFAULT_ACCOUNT_ID}:model-package/")

    # The drift baselines are where the package (created from the definition's RegisterModel step) names them.
    package = sm.describe_model_package(ModelPackageName=model["model_package_arn"])
    registered = _metadata(collected, "registered_model")
    baseline = f"s3://{BUCKET}/mlops/{PIPELINE}/{arn.rsplit('/', 1)[-1]}/baseline"
    for kind, block in (("data", "ModelDataQuality"), ("prediction", "ModelQuality")):
        named = package["DriftCheckBaselines"][block]
        assert named["Statistics"]["S3Uri"] == f"{baseline}/{kind}/statistics.json"
        assert named["Constraints"]["S3Uri"] == f"{baseline}/{kind}/constraints.json"
        prefix = "baseline" if kind == "data" else "prediction_baseline"
        assert registered[f"{prefix}_statistics_uri"] == named["Statistics"]["S3Uri"]
        for name in ("statistics.json", "constraints.json", "baseline_sample.json"):
            s3.head_object(Bucket=BUCKET, Key=f"{baseline}/{kind}/{name}".removeprefix(f"s3://{BUCKET}/"))
    assert package["ModelMetrics"]["ModelDataQuality"] == package["DriftCheckBaselines"]["ModelDataQuality"]
    assert registered["baseline_rows"] == dataset["train_rows"] and registered["prediction_baseline_rows"] == 3

    again = _tick(instance, aws_settings, defs.resources["sagemaker"], tick.cursor)
    assert again.run_requests == []  # collected once

    _run_job(defs, instance, "verify_infrastructure")
    confirm = {"ops": {"confirm_teardown": {"config": {"confirm_bucket": BUCKET}}}}
    _run_job(defs, instance, "teardown_infrastructure", confirm)
    assert BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert ROLE not in [r["Arn"] for r in _client("iam", endpoint).list_roles()["Roles"]]
    with pytest.raises(ClientError, match="RepositoryDoesNotExistException"):
        _client("codecommit", endpoint).get_repository(repositoryName=REPOSITORY)
    assert sm.list_pipelines()["PipelineSummaries"] == []
    assert guard == []  # nothing in the whole run tried to leave the machine


def test_slow_down_beyond_max_attempts_fails_naming_the_operation_and_the_object(
    endpoint, aws_settings, instance, monkeypatch
):
    _versioned_bucket(endpoint)
    slow_down = s3_slow_down(times=100)
    on_new_sessions(monkeypatch, slow_down.install)
    result = _run(build_definitions(aws_settings), instance, ["raw_data", "s3_dataset"])
    message = failure_text(result)
    assert not result.success and slow_down.hits == MAX_ATTEMPTS
    assert f"to s3://{BUCKET}/mlops/data/" in message
    assert "An error occurred (SlowDown) when calling the PutObject operation (reached max retries: 2)" in message


def test_throttling_beyond_max_attempts_fails_naming_the_operation(endpoint, aws_settings, instance, monkeypatch):
    sm = _client("sagemaker", endpoint)
    definition = json.dumps({"Version": "2020-12-01", "Parameters": [], "Steps": []})
    sm.create_pipeline(PipelineName=PIPELINE, PipelineDefinition=definition, RoleArn=ROLE)
    arn = sm.start_pipeline_execution(PipelineName=PIPELINE)["PipelineExecutionArn"]
    throttled = sagemaker_throttling("DescribePipelineExecution", times=100)
    on_new_sessions(monkeypatch, throttled.install)
    run_config = {"ops": {"trained_model": {"config": {"execution_arn": arn}}}}
    result = _run(build_definitions(aws_settings), instance, ["trained_model"], run_config)
    assert not result.success and throttled.hits == MAX_ATTEMPTS
    assert (
        "An error occurred (ThrottlingException) when calling the DescribePipelineExecution operation "
        "(reached max retries: 2): Rate exceeded"
    ) in failure_text(result)


def test_control_the_sdk_on_a_plain_session_would_reach_aws_and_the_guard_stops_it(endpoint, guard):
    """Why the endpoint handler exists: a plain session whose own clients one could point at the
    endpoint still lets the SDK's S3 client go to AWS. The guard refuses it and records it, which
    is what makes `guard == []` in the end-to-end test meaningful."""
    import botocore.session

    from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline

    _versioned_bucket(endpoint)
    core = botocore.session.get_session()
    core.set_config_variable("max_attempts", 1)  # one refused lookup is enough
    plain = boto3.Session(botocore_session=core, region_name=REGION)
    spec = PipelineSpec(name=PIPELINE, bucket=BUCKET, prefix="mlops", region=REGION, role_arn=ROLE)
    with pytest.raises(EndpointConnectionError, match="s3.amazonaws.com"):
        build_pipeline(spec, plain).definition()
    assert guard == ["s3.amazonaws.com"]
