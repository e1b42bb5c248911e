"""The local SageMaker service: the definition interpreter, the boto3-shaped API, and executions.

Executions that need the detached worker (a full SDK-built pipeline, a killed worker, a stop)
start real worker processes; the others run the same worker code in this process (fast), with
a launcher that starts nothing. Deadlines only bound the polling; nothing asserts on timings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import botocore.session
import psutil
import pytest
from botocore.exceptions import ClientError, ParamValidationError

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import LocalSageMakerService, worker
from mlops_dagster.sagemaker.local.interpreter import (
    DefinitionError,
    ExpressionError,
    Plan,
    Scope,
    evaluate,
    evaluate_condition,
    evaluate_conditions,
    json_path,
    resolve_parameters,
)

ROLE = "arn:aws:iam::000000000000:role/local"
BUCKET = "mlops-local"
TERMINAL = ("Succeeded", "Failed", "Stopped")
TOKEN = "dagster-run-4f1c2d7e-0b9a-4c3e-8f6d-2a1b3c4d5e6f"
DEADLINE = 90  # seconds; only bounds polling on a loaded machine


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


@pytest.fixture
def sm(mlops_home: Path, store: LocalObjectStore) -> LocalSageMakerService:
    return LocalSageMakerService(mlops_home, store)


def definition(steps: list[dict], parameters: list[dict] | None = None) -> str:
    return json.dumps({"Version": "2020-12-01", "Metadata": {}, "Parameters": parameters or [], "Steps": steps})


def code(error: ClientError) -> str:
    return error.response["Error"]["Code"]


def no_worker(sm: LocalSageMakerService) -> list[str]:
    """Make start_pipeline_execution launch nothing; returns the ARNs it was asked to launch.

    The recorded pid is this test process (alive), so the executions are not taken for dead.
    """
    launched: list[str] = []

    def launcher(arn: str):
        launched.append(arn)
        return SimpleNamespace(pid=os.getpid())

    sm.backend.launcher = launcher
    sm.backend.stale_after_seconds = 3600
    return launched


def run_here(sm: LocalSageMakerService, pipeline: str, **start) -> dict:
    """Start an execution and run its worker code in this process to the end."""
    no_worker(sm)
    arn = sm.start_pipeline_execution(PipelineName=pipeline, **start)["PipelineExecutionArn"]
    worker.run_execution(sm.home, sm.store, arn)
    return sm.describe_pipeline_execution(PipelineExecutionArn=arn)


def wait(sm: LocalSageMakerService, arn: str, until=TERMINAL) -> dict:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
        if execution["PipelineExecutionStatus"] in until:
            return execution
        time.sleep(0.2)
    raise AssertionError(f"{arn} still {execution['PipelineExecutionStatus']} after {DEADLINE} s")


def wait_step(sm: LocalSageMakerService, arn: str, step: str, status: str) -> dict:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for item in steps_of(sm, arn).values():
            if item["StepName"] == step and item["StepStatus"] == status:
                return item
        assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Executing"
        time.sleep(0.2)
    raise AssertionError(f"step {step} of {arn} never reached {status}")


def steps_of(sm: LocalSageMakerService, arn: str) -> dict[str, dict]:
    return {
        s["StepName"]: s for s in sm.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    }


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 30
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return gone(pid)


def processing_step(store: LocalObjectStore, name: str, script: str, outputs=(), inputs=(), **extra) -> dict:
    """A Processing step as the SDK writes one, running ``script`` (uploaded as its code input)."""
    code_uri = f"s3://{BUCKET}/code/{name}/script.py"
    store.put_bytes(code_uri, script.encode())
    code_input = {
        "InputName": "code",
        "S3Input": {
            "S3Uri": code_uri,
            "LocalPath": "/opt/ml/processing/input/code",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
        },
    }
    out = [
        {
            "OutputName": o,
            "S3Output": {
                "S3Uri": {
                    "Std:Join": {
                        "On": "/",
                        "Values": [f"s3://{BUCKET}/runs", {"Get": "Execution.PipelineExecutionId"}, name, o],
                    }
                },
                "LocalPath": f"/opt/ml/processing/{o}",
                "S3UploadMode": "EndOfJob",
            },
        }
        for o in outputs
    ]
    return {
        "Name": name,
        "Type": "Processing",
        "Arguments": {
            "ProcessingResources": {
                "ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}
            },
            "AppSpecification": {
                "ImageUri": "local",
                "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
            },
            "RoleArn": ROLE,
            "ProcessingInputs": [*inputs, code_input],
            "ProcessingOutputConfig": {"Outputs": out},
        },
        **extra,
    }


def training_step(store: LocalObjectStore, name: str, script: str, hyperparameters: dict | None = None) -> dict:
    """A Training step of a framework estimator: the script in a sourcedir.tar.gz."""
    uri = f"s3://{BUCKET}/code/{name}/sourcedir.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = script.encode()
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    store.put_bytes(uri, buffer.getvalue())
    hps = {"sagemaker_program": '"train.py"', "sagemaker_submit_directory": json.dumps(uri), **(hyperparameters or {})}
    return {
        "Name": name,
        "Type": "Training",
        "Arguments": {
            "AlgorithmSpecification": {"TrainingImage": "local", "TrainingInputMode": "File"},
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/models/"},
            "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
            "RoleArn": ROLE,
            "HyperParameters": hps,
            "InputDataConfig": [],
        },
    }


@pytest.fixture(scope="module")
def model():
    return botocore.session.get_session().get_service_model("sagemaker")


def assert_shape(model, response: dict, operation: str) -> None:
    """Every key is one boto3's output shape has, with its type; required members are there."""
    _check_shape(response, model.operation_model(operation).output_shape, operation)


def _check_shape(value, shape, path: str) -> None:
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), path
        extra = set(value) - set(shape.members) - {"ResponseMetadata"}
        assert not extra, f"{path}: {sorted(extra)} are not members of {shape.name}"
        missing = set(shape.required_members) - set(value)
        assert not missing, f"{path}: required members {sorted(missing)} missing"
        for key, item in value.items():
            if key in shape.members:
                _check_shape(item, shape.members[key], f"{path}.{key}")
    elif kind == "list":
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            _check_shape(item, shape.member, f"{path}[{i}]")
    elif kind == "map":
        assert isinstance(value, dict), path
        for key, item in value.items():
            _check_shape(item, shape.value, f"{path}[{key}]")
    elif kind == "timestamp":
        assert isinstance(value, datetime) and value.tzinfo is not None, f"{path}: {value!r}"
    elif kind == "string":
        assert isinstance(value, str), f"{path}: {value!r}"
        assert not shape.enum or value in shape.enum, f"{path}: {value!r} not in {shape.enum}"
    elif kind in ("integer", "long"):
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: {value!r}"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path}: {value!r}"


# --- the interpreter -------------------------------------------------------------------------

PARAMS = [
    {"Name": "Text", "Type": "String", "DefaultValue": "a"},
    {"Name": "Count", "Type": "Integer", "DefaultValue": 3},
    {"Name": "Ratio", "Type": "Float", "DefaultValue": 0.5},
    {"Name": "Flag", "Type": "Boolean", "DefaultValue": False},
]
DESCRIBE_PROCESSING = {
    "ProcessingJobName": "job-1",
    "ProcessingOutputConfig": {
        "Outputs": [
            {"OutputName": "train", "S3Output": {"S3Uri": "s3://b/run/train"}},
            {"OutputName": "evaluation", "S3Output": {"S3Uri": "s3://b/run/evaluation/"}},
        ]
    },
    "ProcessingInputs": [{"InputName": "code", "S3Input": {"S3Uri": "s3://b/code.py"}}],
}
DESCRIBE_TRAINING = {
    "ModelArtifacts": {"S3ModelArtifacts": "s3://b/m/model.tar.gz"},
    "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/run/train"}}}],
}


def scope_for(steps: list[dict], given=None, objects: dict | None = None) -> Scope:
    plan = Plan.parse(definition(steps, PARAMS))
    return Scope(
        plan=plan,
        parameters=resolve_parameters(plan.parameters, given),
        execution={"PipelineExecutionId": "abc123def456", "PipelineName": "p"},
        properties={"Prep": DESCRIBE_PROCESSING, "Fit": DESCRIBE_TRAINING},
        read_object=lambda uri: json.dumps(objects[uri]).encode() if uri in (objects or {}) else _missing(uri),
    )


def _missing(uri: str):
    raise FileNotFoundError(f"no object at {uri}")


PREP = {
    "Name": "Prep",
    "Type": "Processing",
    "Arguments": {},
    "PropertyFiles": [{"PropertyFileName": "Report", "OutputName": "evaluation", "FilePath": "evaluation.json"}],
}
FIT = {"Name": "Fit", "Type": "Training", "Arguments": {}}


def test_parameters_are_typed_with_defaults_and_overrides():
    plan = Plan.parse(definition([], PARAMS))
    assert resolve_parameters(plan.parameters, None) == {"Text": "a", "Count": 3, "Ratio": 0.5, "Flag": False}
    given = [{"Name": "Count", "Value": "7"}, {"Name": "Ratio", "Value": "2"}, {"Name": "Flag", "Value": "true"}]
    assert resolve_parameters(plan.parameters, given) == {"Text": "a", "Count": 7, "Ratio": 2.0, "Flag": True}
    with pytest.raises(ExpressionError, match="unknown pipeline parameter 'Nope'"):
        resolve_parameters(plan.parameters, [{"Name": "Nope", "Value": "1"}])
    with pytest.raises(ExpressionError, match="'Count' is of type Integer"):
        resolve_parameters(plan.parameters, [{"Name": "Count", "Value": "1.5"}])
    with pytest.raises(ExpressionError, match="'Flag' is of type Boolean"):
        resolve_parameters(plan.parameters, [{"Name": "Flag", "Value": "yes"}])


def test_get_parameters_execution_variables_and_join():
    scope = scope_for([PREP, FIT], given=[{"Name": "Text", "Value": "b"}])
    assert evaluate({"Get": "Parameters.Count"}, scope) == 3
    assert evaluate({"Get": "Parameters.Text"}, scope) == "b"
    joined = {
        "Std:Join": {
            "On": "/",
            "Values": [
                "s3:/",
                {"Get": "Execution.PipelineExecutionId"},
                {"Get": "Parameters.Ratio"},
                {"Get": "Parameters.Flag"},
                {"Get": "Parameters.Count"},
            ],
        }
    }
    assert evaluate(joined, scope) == "s3://abc123def456/0.5/false/3"
    # Containers are resolved deeply and copied; literals pass through.
    assert evaluate({"A": [{"Get": "Execution.PipelineName"}, 1, None]}, scope) == {"A": ["p", 1, None]}


def test_step_properties_follow_describe_responses():
    scope = scope_for([PREP, FIT])
    get = lambda path: evaluate({"Get": f"Steps.{path}"}, scope)  # noqa: E731
    assert get("Prep.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri") == "s3://b/run/train"
    assert get('Prep.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri') == "s3://b/run/evaluation/"
    assert get("Prep.ProcessingOutputConfig.Outputs[1].OutputName") == "evaluation"
    assert get("Prep.ProcessingInputs['code'].S3Input.S3Uri") == "s3://b/code.py"
    assert get("Fit.ModelArtifacts.S3ModelArtifacts") == "s3://b/m/model.tar.gz"
    assert get("Fit.InputDataConfig['training'].DataSource.S3DataSource.S3Uri") == "s3://b/run/train"
    with pytest.raises(ExpressionError, match="no element named 'nope'"):
        get("Prep.ProcessingOutputConfig.Outputs['nope'].S3Output.S3Uri")
    with pytest.raises(ExpressionError, match="index \\[5\\] is out of range"):
        get("Prep.ProcessingOutputConfig.Outputs[5]")
    with pytest.raises(ExpressionError, match="'Missing' does not exist"):
        get("Fit.Missing")


def test_json_get_reads_property_files_and_s3_uris():
    report = {"regression_metrics": {"mse": {"value": 4.5}}, "items": [{"a-b": 1}, {"a-b": 2}]}
    scope = scope_for(
        [PREP, FIT], objects={"s3://b/run/evaluation/evaluation.json": report, "s3://b/x.json": {"k": [True]}}
    )
    by_file = {
        "Std:JsonGet": {
            "PropertyFile": {"Get": "Steps.Prep.PropertyFiles.Report"},
            "Path": "regression_metrics.mse.value",
        }
    }
    assert evaluate(by_file, scope) == 4.5
    by_uri = {"Std:JsonGet": {"S3Uri": {"Std:Join": {"On": "/", "Values": ["s3://b", "x.json"]}}, "Path": "k[0]"}}
    assert evaluate(by_uri, scope) is True
    assert json_path(report, "$.items[1]['a-b']", "here") == 2
    assert json_path(report, "items[0].a-b", "here") == 1
    with pytest.raises(
        ExpressionError, match="'regression_metrics.rmse' does not exist in property file 'Report' of step 'Prep'"
    ):
        evaluate(
            {
                "Std:JsonGet": {
                    "PropertyFile": {"Get": "Steps.Prep.PropertyFiles.Report"},
                    "Path": "regression_metrics.rmse",
                }
            },
            scope,
        )
    with pytest.raises(ExpressionError, match="no object at s3://b/none.json"):
        evaluate({"Std:JsonGet": {"S3Uri": "s3://b/none.json", "Path": "a"}}, scope)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"Type": "Equals", "LeftValue": {"Get": "Parameters.Count"}, "RightValue": 3.0}, True),
        ({"Type": "Equals", "LeftValue": {"Get": "Parameters.Text"}, "RightValue": "b"}, False),
        ({"Type": "GreaterThan", "LeftValue": {"Get": "Parameters.Ratio"}, "RightValue": 0.5}, False),
        ({"Type": "GreaterThanOrEqualTo", "LeftValue": {"Get": "Parameters.Ratio"}, "RightValue": 0.5}, True),
        ({"Type": "LessThan", "LeftValue": 1, "RightValue": {"Get": "Parameters.Count"}}, True),
        ({"Type": "LessThanOrEqualTo", "LeftValue": 4, "RightValue": {"Get": "Parameters.Count"}}, False),
        ({"Type": "LessThan", "LeftValue": "abc", "RightValue": "abd"}, True),
        ({"Type": "In", "QueryValue": {"Get": "Parameters.Text"}, "Values": ["x", "a"]}, True),
        ({"Type": "In", "QueryValue": {"Get": "Parameters.Count"}, "Values": [1, 2]}, False),
        (
            {
                "Type": "Not",
                "Condition": {"Type": "Equals", "LeftValue": {"Get": "Parameters.Flag"}, "RightValue": True},
            },
            True,
        ),
        (
            {
                "Type": "Or",
                "Conditions": [
                    {"Type": "Equals", "LeftValue": 1, "RightValue": 2},
                    {"Type": "LessThan", "LeftValue": 1, "RightValue": 2},
                ],
            },
            True,
        ),
        ({"Type": "Or", "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 2}]}, False),
    ],
)
def test_conditions(condition: dict, expected: bool):
    assert evaluate_condition(condition, scope_for([PREP, FIT])) is expected


def test_condition_list_is_anded_and_mismatched_types_fail():
    scope = scope_for([PREP, FIT])
    true = {"Type": "Equals", "LeftValue": 1, "RightValue": 1}
    false = {"Type": "Equals", "LeftValue": 1, "RightValue": 2}
    assert evaluate_conditions([true, true], scope) is True
    assert evaluate_conditions([true, false], scope) is False
    with pytest.raises(ExpressionError, match="GreaterThan cannot compare 'a' with 1"):
        evaluate_condition({"Type": "GreaterThan", "LeftValue": {"Get": "Parameters.Text"}, "RightValue": 1}, scope)


def test_plan_orders_steps_by_references_and_depends_on():
    steps = [
        {"Name": "Last", "Type": "Fail", "Arguments": {"ErrorMessage": {"Get": "Steps.Mid.ProcessingJobName"}}},
        {"Name": "Mid", "Type": "Processing", "Arguments": {}, "DependsOn": ["First"]},
        {"Name": "First", "Type": "Processing", "Arguments": {}},
        {
            "Name": "Check",
            "Type": "Condition",
            "Arguments": {
                "Conditions": [],
                "IfSteps": [{"Name": "Inner", "Type": "Fail", "Arguments": {}}],
                "ElseSteps": [],
            },
        },
    ]
    plan = Plan.parse(definition(steps))
    assert plan.order == ["First", "Mid", "Last", "Check", "Inner"]
    assert plan.steps["Inner"].branch == ("Check", "IfSteps") and "Check" in plan.steps["Inner"].depends_on
    assert plan.unsupported() is None


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("not json", "not valid JSON"),
        ([{"Name": "A", "Type": "Fail"}, {"Name": "A", "Type": "Fail"}], "two steps are named 'A'"),
        ([{"Name": "A", "Type": "Fail", "DependsOn": ["B"]}], "unknown step"),
        (
            [
                {"Name": "A", "Type": "Condition", "DependsOn": ["B"]},
                {"Name": "B", "Type": "Condition", "DependsOn": ["A"]},
            ],
            "cycle",
        ),
        (
            [{"Name": "A", "Type": "Condition", "DependsOn": ["F"]}, {"Name": "F", "Type": "Fail"}],
            "Step A can not depends on F: 'F' is a Fail step",
        ),
    ],
)
def test_malformed_definitions(steps, message: str):
    with pytest.raises(DefinitionError, match=message):
        Plan.parse(steps if isinstance(steps, str) else definition(steps))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"ErrorMessage": {"Std:Concat": ["a"]}}, "step 'S' uses the expression 'Std:Concat'"),
        ({"ErrorMessage": {"Get": "Properties.X"}}, "step 'S' uses the reference 'Get: Properties.X'"),
        ({"ErrorMessage": {"Get": "Execution.Nope"}}, "step 'S' reads the execution variable 'Nope'"),
        ({"ErrorMessage": {"Get": "Parameters.Nope"}}, "step 'S' reads the parameter 'Nope'"),
        ({"ErrorMessage": {"Get": "Steps.Nope.X"}}, None),  # an unknown step is a DefinitionError, below
    ],
)
def test_unsupported_expressions_are_named(arguments: dict, message: str | None):
    steps = [{"Name": "S", "Type": "Fail", "Arguments": arguments}]
    if message is None:
        with pytest.raises(DefinitionError, match="unknown step"):
            Plan.parse(definition(steps))
        return
    assert Plan.parse(definition(steps)).unsupported().startswith(message)


def test_unsupported_step_and_condition_types_are_named():
    tuning = Plan.parse(definition([{"Name": "Tune", "Type": "Tuning", "Arguments": {}}]))
    assert tuning.unsupported() == "step 'Tune' has type 'Tuning', which the local SageMaker service does not run"
    bogus = [
        {
            "Name": "C",
            "Type": "Condition",
            "Arguments": {"Conditions": [{"Type": "Between"}], "IfSteps": [], "ElseSteps": []},
        }
    ]
    assert "step 'C' uses the condition type 'Between'" in Plan.parse(definition(bogus)).unsupported()


# --- the API: shapes and errors --------------------------------------------------------------


def test_pipeline_crud(sm: LocalSageMakerService, model):
    body = definition([{"Name": "F", "Type": "Fail", "Arguments": {"ErrorMessage": "x"}}], PARAMS)
    created = sm.create_pipeline(PipelineName="p-1", PipelineDefinition=body, RoleArn=ROLE, PipelineDescription="d")
    assert created["PipelineArn"] == "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p-1"
    described = sm.describe_pipeline(PipelineName="p-1")
    assert_shape(model, described, "DescribePipeline")
    assert described["PipelineDefinition"] == body and described["PipelineStatus"] == "Active"
    assert described["CreationTime"].tzinfo is not None and described["PipelineDescription"] == "d"
    assert sm.describe_pipeline(PipelineName=created["PipelineArn"])["PipelineName"] == "p-1"

    with pytest.raises(ClientError) as err:
        sm.create_pipeline(PipelineName="p-1", PipelineDefinition=body, RoleArn=ROLE)
    assert code(err.value) == "ValidationException" and err.value.operation_name == "CreatePipeline"
    assert "Pipeline with name (p-1) already exists" in str(err.value)
    for bad_name, bad_body in (("p-2", "{not json"), ("bad_name!", body)):
        with pytest.raises(ClientError) as err:
            sm.create_pipeline(PipelineName=bad_name, PipelineDefinition=bad_body, RoleArn=ROLE)
        assert code(err.value) == "ValidationException"
    with pytest.raises(ParamValidationError):  # as a boto3 client: unknown and missing arguments
        sm.describe_pipeline(PipelineName="p-1", Verbose=True)
    with pytest.raises(ParamValidationError):
        sm.describe_pipeline()

    updated = definition([{"Name": "G", "Type": "Fail", "Arguments": {"ErrorMessage": "y"}}])
    sm.update_pipeline(PipelineName="p-1", PipelineDefinition=updated, PipelineDisplayName="Shown")
    described = sm.describe_pipeline(PipelineName="p-1")
    assert described["PipelineDefinition"] == updated and described["PipelineDisplayName"] == "Shown"
    assert described["LastModifiedTime"] >= described["CreationTime"]

    for i in range(3):
        sm.create_pipeline(PipelineName=f"other-{i}", PipelineDefinition=body, RoleArn=ROLE)
    page = sm.list_pipelines(PipelineNamePrefix="other", MaxResults=2, SortBy="Name", SortOrder="Ascending")
    assert_shape(model, page, "ListPipelines")
    rest = sm.list_pipelines(
        PipelineNamePrefix="other", MaxResults=2, SortBy="Name", SortOrder="Ascending", NextToken=page["NextToken"]
    )
    assert [p["PipelineName"] for p in page["PipelineSummaries"] + rest["PipelineSummaries"]] == [
        "other-0",
        "other-1",
        "other-2",
    ]
    assert "NextToken" not in rest
    with pytest.raises(ClientError) as err:
        sm.list_pipelines(NextToken="garbage")
    assert code(err.value) == "ValidationException"

    assert sm.delete_pipeline(PipelineName="p-1")["PipelineArn"] == created["PipelineArn"]
    with pytest.raises(sm.exceptions.ResourceNotFound) as err:
        sm.describe_pipeline(PipelineName="p-1")
    assert code(err.value) == "ResourceNotFound" and "p-1" in err.value.response["Error"]["Message"]


def test_start_execution_validates_parameters_and_is_idempotent(sm: LocalSageMakerService, model):
    launched = no_worker(sm)
    sm.create_pipeline(PipelineName="p", PipelineDefinition=definition([], PARAMS), RoleArn=ROLE)
    with pytest.raises(ParamValidationError, match="ClientRequestToken"):  # boto3 wants 32+ characters
        sm.start_pipeline_execution(PipelineName="p", ClientRequestToken="short")
    for bad in ([{"Name": "Nope", "Value": "1"}], [{"Name": "Count", "Value": "many"}]):
        with pytest.raises(ClientError) as err:
            sm.start_pipeline_execution(PipelineName="p", PipelineParameters=bad)
        assert code(err.value) == "ValidationException" and bad[0]["Name"] in str(err.value)
    with pytest.raises(ClientError) as err:
        sm.start_pipeline_execution(PipelineName="missing")
    assert code(err.value) == "ResourceNotFound"
    assert launched == []

    first = sm.start_pipeline_execution(
        PipelineName="p",
        PipelineParameters=[{"Name": "Count", "Value": "9"}],
        ClientRequestToken=TOKEN,
        PipelineExecutionDisplayName="first",
    )["PipelineExecutionArn"]
    assert first == sm.start_pipeline_execution(PipelineName="p", ClientRequestToken=TOKEN)["PipelineExecutionArn"]
    second = sm.start_pipeline_execution(PipelineName="p")["PipelineExecutionArn"]
    assert launched == [first, second]
    prefix, _, execution_id = first.rpartition("/execution/")
    assert prefix == "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p" and len(execution_id) == 12

    described = sm.describe_pipeline_execution(PipelineExecutionArn=first)
    assert_shape(model, described, "DescribePipelineExecution")
    assert described["PipelineExecutionStatus"] == "Executing" and described["PipelineExecutionDisplayName"] == "first"
    parameters = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=first)
    assert_shape(model, parameters, "ListPipelineParametersForExecution")
    assert {p["Name"]: p["Value"] for p in parameters["PipelineParameters"]} == {
        "Text": "a",
        "Count": "9",
        "Ratio": "0.5",
        "Flag": "false",
    }

    listed = sm.list_pipeline_executions(PipelineName="p")
    assert_shape(model, listed, "ListPipelineExecutions")
    assert [e["PipelineExecutionArn"] for e in listed["PipelineExecutionSummaries"]] == [second, first]  # newest first
    with pytest.raises(ClientError) as err:
        sm.delete_pipeline(PipelineName="p")
    assert code(err.value) == "ConflictException" and "running execution" in str(err.value)
    oldest = sm.list_pipeline_executions(PipelineName="p", SortOrder="Ascending", MaxResults=1)
    assert [e["PipelineExecutionArn"] for e in oldest["PipelineExecutionSummaries"]] == [first] and oldest["NextToken"]

    for call in (
        lambda: sm.describe_pipeline_execution(PipelineExecutionArn=first + "x"),
        lambda: sm.list_pipeline_execution_steps(PipelineExecutionArn=first + "x"),
        lambda: sm.describe_training_job(TrainingJobName="nope"),
        lambda: sm.describe_processing_job(ProcessingJobName="nope"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err.value) == "ResourceNotFound"


def test_model_registry(sm: LocalSageMakerService, model):
    arn = sm.create_model_package_group(ModelPackageGroupName="models", ModelPackageGroupDescription="d")[
        "ModelPackageGroupArn"
    ]
    assert arn == "arn:aws:sagemaker:us-east-1:000000000000:model-package-group/models"
    group = sm.describe_model_package_group(ModelPackageGroupName="models")
    assert_shape(model, group, "DescribeModelPackageGroup")
    with pytest.raises(ClientError) as err:
        sm.create_model_package_group(ModelPackageGroupName="models")
    assert code(err.value) == "ValidationException"

    spec = {
        "Containers": [{"Image": "img", "ModelDataUrl": "s3://b/model.tar.gz"}],
        "SupportedContentTypes": ["text/csv"],
        "SupportedResponseMIMETypes": ["text/csv"],
    }
    arns = [
        sm.create_model_package(
            ModelPackageGroupName="models", InferenceSpecification=spec, ModelApprovalStatus=status
        )["ModelPackageArn"]
        for status in ("PendingManualApproval", "Approved", "PendingManualApproval")
    ]
    assert arns[0].endswith(":model-package/models/1") and arns[2].endswith("/3")
    described = sm.describe_model_package(ModelPackageName=arns[0])
    assert_shape(model, described, "DescribeModelPackage")
    assert described["ModelPackageVersion"] == 1 and described["InferenceSpecification"] == spec

    sm.update_model_package(ModelPackageArn=arns[0], ModelApprovalStatus="Approved", ApprovalDescription="ok")
    described = sm.describe_model_package(ModelPackageName=arns[0])
    assert (described["ModelApprovalStatus"], described["ApprovalDescription"]) == ("Approved", "ok")
    with pytest.raises(ClientError) as err:
        sm.update_model_package(ModelPackageArn=arns[0], ModelApprovalStatus="Maybe")
    assert code(err.value) == "ValidationException" and "Maybe" in str(err.value)

    approved = sm.list_model_packages(
        ModelPackageGroupName="models", ModelApprovalStatus="Approved", SortOrder="Descending"
    )
    assert_shape(model, approved, "ListModelPackages")
    assert [p["ModelPackageArn"] for p in approved["ModelPackageSummaryList"]] == [arns[1], arns[0]]
    page = sm.list_model_packages(ModelPackageGroupName="models", MaxResults=2)
    rest = sm.list_model_packages(ModelPackageGroupName="models", MaxResults=2, NextToken=page["NextToken"])
    assert [p["ModelPackageVersion"] for p in page["ModelPackageSummaryList"] + rest["ModelPackageSummaryList"]] == [
        1,
        2,
        3,
    ]
    groups = sm.list_model_package_groups()
    assert_shape(model, groups, "ListModelPackageGroups")
    assert [g["ModelPackageGroupName"] for g in groups["ModelPackageGroupSummaryList"]] == ["models"]

    with pytest.raises(ClientError) as err:
        sm.delete_model_package_group(ModelPackageGroupName="models")
    assert code(err.value) == "ConflictException"
    for package in arns:
        sm.delete_model_package(ModelPackageName=package)
    sm.delete_model_package_group(ModelPackageGroupName="models")
    for call in (
        lambda: sm.describe_model_package_group(ModelPackageGroupName="models"),
        lambda: sm.describe_model_package(ModelPackageName=arns[0]),
        lambda: sm.create_model_package(ModelPackageGroupName="models", InferenceSpecification=spec),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err.value) == "ResourceNotFound"


# --- executions run in this process ----------------------------------------------------------


def test_unsupported_step_type_fails_the_execution_before_any_step(sm: LocalSageMakerService, store):
    steps = [
        processing_step(store, "Prep", "print('never runs')"),
        {"Name": "Tune", "Type": "Tuning", "Arguments": {}, "DependsOn": ["Prep"]},
    ]
    sm.create_pipeline(PipelineName="p", PipelineDefinition=definition(steps), RoleArn=ROLE)
    execution = run_here(sm, "p")
    assert execution["PipelineExecutionStatus"] == "Failed"
    assert execution["FailureReason"] == "step 'Tune' has type 'Tuning', which the local SageMaker service does not run"
    assert steps_of(sm, execution["PipelineExecutionArn"]) == {}


def test_failing_training_script_fails_step_and_execution(sm: LocalSageMakerService, store, model):
    script = (
        "import os, sys\n"
        "open(os.path.join(os.environ['SM_OUTPUT_DIR'], 'failure'), 'w').write('no rows in the training channel')\n"
        "sys.exit(3)\n"
    )
    sm.create_pipeline(
        PipelineName="p", PipelineDefinition=definition([training_step(store, "Train", script)]), RoleArn=ROLE
    )
    execution = run_here(sm, "p")
    assert execution["PipelineExecutionStatus"] == "Failed"
    assert "step 'Train' (Training) failed" in execution["FailureReason"]
    assert "no rows in the training channel" in execution["FailureReason"]
    step = steps_of(sm, execution["PipelineExecutionArn"])["Train"]
    assert step["StepStatus"] == "Failed" and "no rows in the training channel" in step["FailureReason"]

    job_name = step["Metadata"]["TrainingJob"]["Arn"].rsplit("/", 1)[-1]
    assert job_name.startswith(f"pipelines-{execution['PipelineExecutionArn'][-12:]}-train-") and len(job_name) <= 63
    job = sm.describe_training_job(TrainingJobName=job_name)
    assert_shape(model, job, "DescribeTrainingJob")
    assert job["TrainingJobStatus"] == "Failed" and "no rows in the training channel" in job["FailureReason"]
    assert job["HyperParameters"]["sagemaker_program"] == '"train.py"'
    assert sm.job_log_path(job_name).is_file()
    failed = sm.list_training_jobs(StatusEquals="Failed")
    assert_shape(model, failed, "ListTrainingJobs")
    assert [j["TrainingJobName"] for j in failed["TrainingJobSummaries"]] == [job_name]
    assert sm.list_training_jobs(StatusEquals="Completed")["TrainingJobSummaries"] == []


def test_resolution_error_fails_the_step_with_the_reason(sm: LocalSageMakerService, store):
    writer = "import json, os\nos.makedirs('/tmp', exist_ok=True)\n"  # writes no evaluation.json
    prep = processing_step(
        store,
        "Prep",
        writer,
        outputs=["evaluation"],
        PropertyFiles=[{"PropertyFileName": "Report", "OutputName": "evaluation", "FilePath": "evaluation.json"}],
    )
    check = {
        "Name": "Check",
        "Type": "Condition",
        "Arguments": {
            "Conditions": [
                {
                    "Type": "LessThan",
                    "LeftValue": {
                        "Std:JsonGet": {"PropertyFile": {"Get": "Steps.Prep.PropertyFiles.Report"}, "Path": "mse"}
                    },
                    "RightValue": 1,
                }
            ],
            "IfSteps": [],
            "ElseSteps": [],
        },
    }
    sm.create_pipeline(PipelineName="p", PipelineDefinition=definition([prep, check]), RoleArn=ROLE)
    execution = run_here(sm, "p")
    assert execution["PipelineExecutionStatus"] == "Failed"
    assert "step 'Check' (Condition) failed: cannot evaluate its conditions" in execution["FailureReason"]
    assert "evaluation.json" in execution["FailureReason"]
    assert steps_of(sm, execution["PipelineExecutionArn"])["Prep"]["StepStatus"] == "Succeeded"


def register_step(model_data_url: str, **extra) -> dict:
    spec = {"Containers": [{"Image": "img", "ModelDataUrl": model_data_url}], "SupportedContentTypes": ["text/csv"]}
    return {
        "Name": "Register",
        "Type": "RegisterModel",
        "Arguments": {"ModelPackageGroupName": "registered", "InferenceSpecification": spec, **extra},
    }


def test_register_model_records_the_artifact_sha256_or_fails_the_step(sm: LocalSageMakerService, store):
    data = b"model bytes"
    uri = store.put_bytes(f"s3://{BUCKET}/m/model.tar.gz", data).uri
    sha256 = hashlib.sha256(data).hexdigest()
    other = "f" * 64
    cases = {
        "ok": (register_step(uri), None),
        "missing": (
            register_step(f"s3://{BUCKET}/m/missing.tar.gz"),
            f"the model artifact s3://{BUCKET}/m/missing.tar.gz does not exist",
        ),
        "mismatch": (
            register_step(uri, CustomerMetadataProperties={"mlops:model_sha256": other}),
            f"the model artifact {uri} has sha256 {sha256}, but the request records mlops:model_sha256 {other}",
        ),
    }
    for name, (step, failure) in cases.items():
        sm.create_pipeline(PipelineName=name, PipelineDefinition=definition([step]), RoleArn=ROLE)
        execution = run_here(sm, name)
        register = steps_of(sm, execution["PipelineExecutionArn"])["Register"]
        if failure is None:
            assert execution["PipelineExecutionStatus"] == "Succeeded"
            package = sm.describe_model_package(ModelPackageName=register["Metadata"]["RegisterModel"]["Arn"])
            assert package["CustomerMetadataProperties"] == {"mlops:model_sha256": sha256}
        else:
            assert execution["PipelineExecutionStatus"] == "Failed", name
            assert register["FailureReason"].startswith(f"cannot register the model: {failure}"), name


def test_register_model_resolves_metric_sources_and_checks_them_as_create_model_package(
    sm: LocalSageMakerService, store
):
    uri = store.put_bytes(f"s3://{BUCKET}/m/model.tar.gz", b"model bytes").uri
    at = {"Std:Join": {"On": "/", "Values": [f"s3://{BUCKET}/b", {"Get": "Execution.PipelineExecutionId"}, "s.json"]}}
    cases = {
        "ok": ({"ContentType": "application/json", "S3Uri": at}, None),
        "relative": (
            {"ContentType": "application/json", "S3Uri": {"Std:Join": {"On": "/", "Values": ["b", "s.json"]}}},
            "DriftCheckBaselines.ModelDataQuality.Statistics.S3Uri 'b/s.json' is not an s3:// (or https://) URI",
        ),
        "no-content-type": ({"S3Uri": at}, "Missing required parameter in ModelDataQuality.Statistics: \"ContentType\""),
    }
    for name, (source, failure) in cases.items():
        step = register_step(uri, DriftCheckBaselines={"ModelDataQuality": {"Statistics": source}})
        sm.create_pipeline(PipelineName=name, PipelineDefinition=definition([step]), RoleArn=ROLE)
        execution = run_here(sm, name)
        register = steps_of(sm, execution["PipelineExecutionArn"])["Register"]
        if failure is None:
            package = sm.describe_model_package(ModelPackageName=register["Metadata"]["RegisterModel"]["Arn"])
            execution_id = execution["PipelineExecutionArn"].rsplit("/", 1)[-1]
            assert package["DriftCheckBaselines"] == {
                "ModelDataQuality": {
                    "Statistics": {"ContentType": "application/json", "S3Uri": f"s3://{BUCKET}/b/{execution_id}/s.json"}
                }
            }
        else:
            assert execution["PipelineExecutionStatus"] == "Failed", name
            assert register["FailureReason"].startswith("cannot register the model: "), name
            assert failure in register["FailureReason"], name
    # The API checks the same for a direct call.
    with pytest.raises(ClientError, match="is not an s3:// \\(or https://\\) URI"):
        sm.create_model_package(
            ModelPackageGroupName="registered",
            InferenceSpecification={"Containers": [{"Image": "img"}], "SupportedContentTypes": ["text/csv"],
                                    "SupportedResponseMIMETypes": ["text/csv"]},
            ModelMetrics={"ModelDataQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": "nope"}}},
        )  # fmt: skip


# --- the SDK-built pipeline --------------------------------------------------------------------

PREPROCESS = """\
import argparse, csv, glob, os
p = argparse.ArgumentParser()
for name in ("--input-dir", "--output-dir", "--target"):
    p.add_argument(name)
a = p.parse_args()
rows = []
for path in sorted(glob.glob(os.path.join(a.input_dir, "*.csv"))):
    with open(path) as f:
        rows += list(csv.DictReader(f))
for split, part in (("train", rows[0::3]), ("validation", rows[1::3]), ("test", rows[2::3])):
    os.makedirs(os.path.join(a.output_dir, split), exist_ok=True)
    with open(os.path.join(a.output_dir, split, split + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(part)
"""
TRAIN = """\
import argparse, csv, json, os
p = argparse.ArgumentParser()
p.add_argument("--target")
a, _ = p.parse_known_args()
with open(os.path.join(os.environ["SM_CHANNEL_TRAINING"], "train.csv")) as f:
    ys = [float(r[a.target]) for r in csv.DictReader(f)]
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"mean": sum(ys) / len(ys), "job_arn": os.environ.get("TRAINING_JOB_ARN")}, f)
"""
EVALUATE = """\
import argparse, csv, json, os, tarfile
p = argparse.ArgumentParser()
for name in ("--model-dir", "--test-dir", "--validation-dir", "--output-dir", "--target"):
    p.add_argument(name)
a = p.parse_args()
with tarfile.open(os.path.join(a.model_dir, "model.tar.gz")) as t:
    mean = json.load(t.extractfile("model.json"))["mean"]
with open(os.path.join(a.test_dir, "test.csv")) as f:
    ys = [float(r[a.target]) for r in csv.DictReader(f)]
os.makedirs(a.output_dir, exist_ok=True)
with open(os.path.join(a.output_dir, "evaluation.json"), "w") as f:
    json.dump({"regression_metrics": {"mse": {"value": sum((y - mean) ** 2 for y in ys) / len(ys)}},
               "model_size_bytes": os.path.getsize(os.path.join(a.model_dir, "model.tar.gz"))}, f)
"""


@pytest.fixture
def sdk_pipeline(sm: LocalSageMakerService, store: LocalObjectStore, tmp_path: Path) -> str:
    """The project's pipeline as the SageMaker SDK builds it, over tiny stdlib-only scripts."""
    from mlops_dagster.sagemaker.offline import local_boto_session
    from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name, text in (("preprocess.py", PREPROCESS), ("train.py", TRAIN), ("evaluate.py", EVALUATE)):
        (scripts / name).write_text(text)
    spec = PipelineSpec(
        name="mlops", bucket=BUCKET, prefix="mlops", region="us-east-1", role_arn=ROLE, training_dir=str(scripts)
    )
    body = build_pipeline(spec, local_boto_session(store, BUCKET, "us-east-1")).definition()
    rows = "\n".join(f"{i},{i % 7}" for i in range(30))
    store.put_bytes(f"s3://{BUCKET}/mlops/data/data.csv", f"x,medv\n{rows}\n".encode())
    sm.create_pipeline(PipelineName="mlops", PipelineDefinition=body, RoleArn=ROLE)
    return "mlops"


def test_condition_false_runs_the_fail_step(sm: LocalSageMakerService, sdk_pipeline: str):
    execution = run_here(sm, sdk_pipeline, PipelineParameters=[{"Name": "MseThreshold", "Value": "0.001"}])
    assert execution["PipelineExecutionStatus"] == "Failed"
    reason = execution["FailureReason"]
    assert reason.startswith(
        "Step failure: One or multiple steps failed. step 'MseAboveThreshold' (Fail) failed: model not registered: mse "
    )
    assert reason.endswith(" is above the MseThreshold 0.001")
    steps = steps_of(sm, execution["PipelineExecutionArn"])
    assert set(steps) == {"Preprocess", "Train", "Evaluate", "CheckQuality", "MseAboveThreshold"}
    assert steps["CheckQuality"]["Metadata"] == {"Condition": {"Outcome": "False"}}
    fail = steps["MseAboveThreshold"]
    assert fail["StepStatus"] == "Failed" and reason.endswith(fail["Metadata"]["Fail"]["ErrorMessage"])
    with pytest.raises(ClientError):  # nothing was registered, not even the group
        sm.describe_model_package_group(ModelPackageGroupName="mlops-models")


def test_two_sdk_executions_at_once_in_detached_workers(sm: LocalSageMakerService, store, sdk_pipeline: str, model):
    arns = [
        sm.start_pipeline_execution(
            PipelineName=sdk_pipeline, PipelineParameters=[{"Name": "MseThreshold", "Value": "100"}]
        )["PipelineExecutionArn"]
        for _ in range(2)
    ]
    executions = [wait(sm, arn) for arn in arns]
    assert [e["PipelineExecutionStatus"] for e in executions] == ["Succeeded", "Succeeded"], executions

    models, evaluations, packages = set(), set(), set()
    for arn in arns:
        steps = steps_of(sm, arn)
        assert_shape(model, sm.list_pipeline_execution_steps(PipelineExecutionArn=arn), "ListPipelineExecutionSteps")
        assert set(steps) == {"Preprocess", "Train", "Evaluate", "CheckQuality", "CheckModelSize", "RegisterModel-RegisterModel"}
        assert all(s["StepStatus"] == "Succeeded" and s["EndTime"] >= s["StartTime"] for s in steps.values())
        assert steps["CheckQuality"]["Metadata"] == {"Condition": {"Outcome": "True"}}

        training = sm.describe_training_job(
            TrainingJobName=steps["Train"]["Metadata"]["TrainingJob"]["Arn"].rsplit("/", 1)[-1]
        )
        assert_shape(model, training, "DescribeTrainingJob")
        assert training["TrainingJobStatus"] == "Completed" and training["HyperParameters"]["target"] == '"medv"'
        assert store.exists(training["ModelArtifacts"]["S3ModelArtifacts"])
        with tarfile.open(fileobj=io.BytesIO(store.get_bytes(training["ModelArtifacts"]["S3ModelArtifacts"]))) as tar:
            # The container sees its own job's ARN, as SageMaker's training platform sets it.
            assert json.load(tar.extractfile("model.json"))["job_arn"] == training["TrainingJobArn"]
        models.add(training["ModelArtifacts"]["S3ModelArtifacts"])
        channel = training["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        # Resolved from the output of the Preprocess job this execution used: its own, or, when the
        # other execution's Preprocess had already succeeded, that one (a step cache hit).
        preprocess_job = steps["Preprocess"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
        source = (steps["Preprocess"].get("CacheHitResult") or {}).get("SourcePipelineExecutionArn", arn)
        assert source.rsplit("/", 1)[-1] in channel and source.rsplit("/", 1)[-1] in preprocess_job

        evaluation = sm.describe_processing_job(
            ProcessingJobName=steps["Evaluate"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
        )
        assert_shape(model, evaluation, "DescribeProcessingJob")
        uri = evaluation["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] + "/evaluation.json"
        assert "value" in json.loads(store.get_bytes(uri))["regression_metrics"]["mse"]
        evaluations.add(uri)

        package = sm.describe_model_package(
            ModelPackageName=steps["RegisterModel-RegisterModel"]["Metadata"]["RegisterModel"]["Arn"]
        )
        assert (
            package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
            == training["ModelArtifacts"]["S3ModelArtifacts"]
        )
        assert package["MetadataProperties"]["GeneratedBy"] == arn
        assert package["ModelApprovalStatus"] == "PendingManualApproval"
        # The step recorded the hash of the artifact it registered (what hosting requires).
        artifact = store.head(training["ModelArtifacts"]["S3ModelArtifacts"])
        assert package["CustomerMetadataProperties"] == {"mlops:model_sha256": artifact.sha256}
        # ModelMetrics and DriftCheckBaselines resolved per execution, as DescribeModelPackage returns them.
        baseline = f"s3://{BUCKET}/mlops/mlops/{arn.rsplit('/', 1)[-1]}/baseline"
        source = {"ContentType": "application/json"}
        data = {"Statistics": {**source, "S3Uri": f"{baseline}/data/statistics.json"},
                "Constraints": {**source, "S3Uri": f"{baseline}/data/constraints.json"}}  # fmt: skip
        assert package["ModelMetrics"]["ModelQuality"] == {"Statistics": {**source, "S3Uri": uri}}
        assert package["ModelMetrics"]["ModelDataQuality"] == data
        assert package["DriftCheckBaselines"] == {
            "ModelDataQuality": data,
            "ModelQuality": {"Statistics": {**source, "S3Uri": f"{baseline}/prediction/statistics.json"},
                             "Constraints": {**source, "S3Uri": f"{baseline}/prediction/constraints.json"}},
        }  # fmt: skip
        packages.add(package["ModelPackageArn"])
    assert len(models) == len(evaluations) == len(packages) == 2
    listed = sm.list_model_packages(ModelPackageGroupName="mlops-models")["ModelPackageSummaryList"]
    assert {p["ModelPackageArn"] for p in listed} == packages


# --- workers that die or are stopped --------------------------------------------------------

SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n"


def start_sleeper(sm: LocalSageMakerService, store) -> tuple[str, int]:
    """Start an execution whose only step sleeps; returns its ARN and the sleeping job's pid."""
    sm.create_pipeline(
        PipelineName="sleepy", PipelineDefinition=definition([processing_step(store, "Sleep", SLEEPER)]), RoleArn=ROLE
    )
    arn = sm.start_pipeline_execution(PipelineName="sleepy")["PipelineExecutionArn"]
    step = wait_step(sm, arn, "Sleep", "Executing")
    job = sm.backend.get_job(step["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1])
    assert job.pid and not gone(job.pid)
    return arn, job.pid


def test_killed_worker_fails_the_execution(sm: LocalSageMakerService, store):
    arn, job_pid = start_sleeper(sm, store)
    worker_pid = sm.backend.get_execution(arn).worker_pid
    os.kill(worker_pid, signal.SIGKILL)

    execution = wait(sm, arn)
    assert execution["PipelineExecutionStatus"] == "Failed"
    assert execution["FailureReason"].startswith(
        f"local worker process {worker_pid} died while running step Sleep (no heartbeat since "
    )
    step = steps_of(sm, arn)["Sleep"]
    assert step["StepStatus"] == "Failed" and "died" in step["FailureReason"]
    assert wait_gone(job_pid), "the orphaned job was not killed"
    job = sm.describe_processing_job(ProcessingJobName=step["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1])
    assert job["ProcessingJobStatus"] == "Failed"


def test_stop_execution_stops_the_running_job(sm: LocalSageMakerService, store):
    arn, job_pid = start_sleeper(sm, store)
    assert sm.stop_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionArn"] == arn
    assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] in (
        "Stopping",
        "Stopped",
    )

    execution = wait(sm, arn)
    assert execution["PipelineExecutionStatus"] == "Stopped" and "FailureReason" not in execution
    step = steps_of(sm, arn)["Sleep"]
    assert step["StepStatus"] == "Stopped"
    assert gone(job_pid)
    job = sm.describe_processing_job(ProcessingJobName=step["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1])
    assert job["ProcessingJobStatus"] == "Stopped"
    with pytest.raises(ClientError) as err:
        sm.stop_pipeline_execution(PipelineExecutionArn=arn)
    assert code(err.value) == "ValidationException"


def test_hung_worker_is_detected_by_its_heartbeat(mlops_home: Path, store):
    """A worker that is alive but silent past the threshold is failed, and killed."""
    sm = LocalSageMakerService(mlops_home, store, stale_after_seconds=0.5)
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    sm.backend.launcher = lambda arn: hung
    sm.create_pipeline(PipelineName="p", PipelineDefinition=definition([]), RoleArn=ROLE)
    arn = sm.start_pipeline_execution(PipelineName="p")["PipelineExecutionArn"]
    try:
        execution = wait(sm, arn)
        assert execution["PipelineExecutionStatus"] == "Failed"
        assert execution["FailureReason"].startswith(
            f"local worker process {hung.pid} hung before its first step (no heartbeat since "
        )
        assert execution["FailureReason"].endswith("over 0.5 s) and was killed")
        hung.wait(timeout=30)  # killed by the service
    finally:
        hung.kill()
        hung.wait()


# --- parallel steps ----------------------------------------------------------------------------


def _marker_script(markers: Path, write: str, wait_for: str | None = None, exit_code: int = 0) -> str:
    """A job that writes ``write``, then waits for ``wait_for`` (written by another job of the same
    execution) and fails if it never comes: the two jobs can only both succeed if they overlap."""
    lines = ["import sys, time", "from pathlib import Path", f"markers = Path({str(markers)!r})"]
    lines.append(f"(markers / {write!r}).write_text('')")
    if wait_for:
        lines += [
            f"deadline = time.monotonic() + {DEADLINE}",
            f"while not (markers / {wait_for!r}).exists():",
            f"    if time.monotonic() > deadline: sys.exit('{wait_for} never appeared: the steps did not overlap')",
            "    time.sleep(0.05)",
        ]
    lines.append(f"sys.exit({exit_code})")
    return "\n".join(lines) + "\n"


def test_independent_steps_run_at_the_same_time(sm: LocalSageMakerService, store, tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "LOCAL_STEP_SLOTS", 2)  # a 1-core machine would run them one at a time
    steps = [
        processing_step(store, "A", _marker_script(tmp_path, "A.started", "B.started")),
        processing_step(store, "B", _marker_script(tmp_path, "B.started", "A.started")),
        processing_step(store, "After", _marker_script(tmp_path, "After.started"), DependsOn=["A", "B"]),
    ]
    sm.create_pipeline(PipelineName="p", PipelineDefinition=definition(steps), RoleArn=ROLE)
    execution = run_here(sm, "p")
    assert execution["PipelineExecutionStatus"] == "Succeeded", execution.get("FailureReason")
    recorded = steps_of(sm, execution["PipelineExecutionArn"])
    assert {name: s["StepStatus"] for name, s in recorded.items()} == dict.fromkeys(["A", "B", "After"], "Succeeded")
    # The dependent step started only after both ended.
    assert recorded["After"]["StartTime"] >= max(recorded["A"]["EndTime"], recorded["B"]["EndTime"])


def test_max_parallel_execution_steps_bounds_the_steps_at_once(sm: LocalSageMakerService, store, tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "LOCAL_STEP_SLOTS", 4)
    steps = [processing_step(store, name, _marker_script(tmp_path, name)) for name in ("A", "B", "C")]
    sm.create_pipeline(
        PipelineName="p", PipelineDefinition=definition(steps), RoleArn=ROLE,
        ParallelismConfiguration={"MaxParallelExecutionSteps": 1},
    )  # fmt: skip
    execution = run_here(sm, "p")
    assert execution["PipelineExecutionStatus"] == "Succeeded", execution.get("FailureReason")
    recorded = sorted(steps_of(sm, execution["PipelineExecutionArn"]).values(), key=lambda s: s["StartTime"])
    assert [s["StepName"] for s in recorded] == ["A", "B", "C"]  # definition order among equals
    for earlier, later in zip(recorded, recorded[1:], strict=False):
        assert later["StartTime"] >= earlier["EndTime"], "two steps ran at once with MaxParallelExecutionSteps 1"


def test_a_failed_step_lets_running_siblings_finish_and_starts_nothing_new(
    sm: LocalSageMakerService, store, tmp_path, monkeypatch
):
    import threading

    monkeypatch.setattr(worker, "LOCAL_STEP_SLOTS", 2)
    steps = [
        # A fails once B runs; B ends only after the test saw A's failure recorded.
        processing_step(store, "A", _marker_script(tmp_path, "A.started", "B.started", exit_code=3)),
        processing_step(store, "B", _marker_script(tmp_path, "B.started", "release")),
        processing_step(store, "AfterB", _marker_script(tmp_path, "AfterB.started"), DependsOn=["B"]),
    ]
    sm.create_pipeline(PipelineName="p", PipelineDefinition=definition(steps), RoleArn=ROLE)
    no_worker(sm)
    arn = sm.start_pipeline_execution(PipelineName="p")["PipelineExecutionArn"]
    runner = threading.Thread(target=worker.run_execution, args=(sm.home, sm.store, arn))
    runner.start()
    try:
        wait_step(sm, arn, "A", "Failed")
        assert steps_of(sm, arn)["B"]["StepStatus"] == "Executing"  # still running after A failed
    finally:
        (tmp_path / "release").write_text("")
        runner.join(timeout=DEADLINE)
    assert not runner.is_alive()
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineExecutionStatus"] == "Failed"
    assert execution["FailureReason"].startswith(worker.STEP_FAILURE)
    assert "step 'A' (Processing) failed" in execution["FailureReason"]
    recorded = steps_of(sm, arn)
    assert {name: s["StepStatus"] for name, s in recorded.items()} == {"A": "Failed", "B": "Succeeded"}
    assert not (tmp_path / "AfterB.started").exists()


def test_the_worker_starts_without_the_code_location_the_sdk_or_botocore_sessions():
    """The worker's start is on every execution's critical path: its bootstrap imports neither
    Dagster, the SageMaker SDK, mlops_dagster/sagemaker/__init__.py nor botocore's sessions (a
    RegisterModel step imports those when it validates its request)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-P", "-c", worker._BOOTSTRAP, str(worker._PACKAGE_DIR)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2  # no home, store or execution given: the usage
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "mlops_dagster.sagemaker.local.models" in imported  # what the worker module imports, ran as __main__
    for heavy in ("dagster", "sagemaker", "mlops_dagster.botocore_loader", "botocore.session", "pandas"):
        assert heavy not in imported, heavy
