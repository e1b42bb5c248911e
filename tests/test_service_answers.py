"""The local SageMaker service answers as the real service does in the SDK's integration tests.

Each test mirrors one test of aws/sagemaker-python-sdk ``tests/integ/sagemaker/workflow/`` (named in
its docstring), which ran against SageMaker and asserts the service's answers. The pipelines are
built with the SDK and driven through ``sagemaker.session.Session`` over the local service, as the
integration tests drive the real one; the worker runs in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sagemaker
from botocore.exceptions import ClientError
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionEquals, ConditionGreaterThan
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join
from sagemaker.workflow.parameters import ParameterInteger, ParameterString
from sagemaker.workflow.pipeline import Pipeline

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import LocalSageMakerService, worker
from mlops_dagster.sagemaker.offline import local_boto_session

ROLE = "arn:aws:iam::123456789012:role/pipelines"
BUCKET = "answers"
STEP_FAILURE = "Step failure: One or multiple steps failed"


@pytest.fixture
def sm(sm_in_process: LocalSageMakerService) -> LocalSageMakerService:
    """Executions run in this process (worker.run_execution), not in detached workers."""
    return sm_in_process


@pytest.fixture
def session(sm: LocalSageMakerService) -> sagemaker.session.Session:
    """The SDK's session with the local service as its SageMaker client."""
    boto = local_boto_session(sm.store, BUCKET, "us-east-1")
    return sagemaker.session.Session(boto_session=boto, sagemaker_client=sm, default_bucket=BUCKET)


def run(sm: LocalSageMakerService, pipeline: Pipeline, **parameters):
    """Start an execution as the integ tests do (pipeline.start) and run it to its end."""
    execution = pipeline.start(parameters=parameters)
    worker.run_execution(sm.home, sm.store, execution.arn)
    return execution


def fail_and_condition(execution) -> tuple[dict, dict]:
    steps = execution.list_steps()
    assert len(steps) == 2
    by_name = {s["StepName"]: s for s in steps}
    assert by_name["CondStep"]["StepStatus"] == "Succeeded"
    assert by_name["FailStep"]["StepStatus"] == "Failed"
    assert steps[0]["StepName"] == "FailStep"  # the integ tests read Metadata of execution_steps[0]
    return by_name["FailStep"], by_name["CondStep"]


def assert_execution_failed_by_a_step(sm: LocalSageMakerService, pipeline: Pipeline) -> None:
    executions = sm.list_pipeline_executions(PipelineName=pipeline.name)["PipelineExecutionSummaries"]
    assert len(executions) == 1
    assert executions[0]["PipelineExecutionStatus"] == "Failed"
    assert STEP_FAILURE in executions[0]["PipelineExecutionFailureReason"]


def else_fail_pipeline(session, error_message, *parameters) -> Pipeline:
    param = ParameterInteger(name="MyInt", default_value=2)
    step_fail = FailStep(name="FailStep", error_message=error_message)
    step_cond = ConditionStep(
        name="CondStep", conditions=[ConditionEquals(left=param, right=1)], if_steps=[], else_steps=[step_fail]
    )
    pipeline = Pipeline(name="fail-step", steps=[step_cond], sagemaker_session=session, parameters=[param, *parameters])
    pipeline.create(ROLE)
    return pipeline


def test_fail_step_with_a_string_message(sm, session):
    """Mirrors test_fail_steps.py::test_two_step_fail_pipeline_with_str_err_msg."""
    pipeline = else_fail_pipeline(session, "Failed due to hitting in else branch")
    execution = run(sm, pipeline)
    assert execution.describe()["PipelineArn"] == sm.describe_pipeline(PipelineName="fail-step")["PipelineArn"]
    fail, _ = fail_and_condition(execution)
    assert fail["FailureReason"] == "Failed due to hitting in else branch"
    assert fail["Metadata"]["Fail"]["ErrorMessage"] == "Failed due to hitting in else branch"
    assert_execution_failed_by_a_step(sm, pipeline)


def test_fail_step_with_a_parameter_message(sm, session):
    """Mirrors test_fail_steps.py::test_two_step_fail_pipeline_with_parameter_err_msg."""
    message = ParameterString(name="MyString")
    pipeline = else_fail_pipeline(session, message, message)
    execution = run(sm, pipeline, MyInt=3, MyString="Failed due to hitting in else branch")
    fail, _ = fail_and_condition(execution)
    assert fail["FailureReason"] == "Failed due to hitting in else branch"
    assert fail["Metadata"]["Fail"]["ErrorMessage"] == "Failed due to hitting in else branch"
    assert_execution_failed_by_a_step(sm, pipeline)


def test_fail_step_with_a_join_of_a_condition_outcome(sm, session):
    """Mirrors test_fail_steps.py::test_two_step_fail_pipeline_with_join_fn: a condition's
    Outcome prints as ``false`` inside Join."""
    param = ParameterInteger(name="MyInt", default_value=2)
    step_cond = ConditionStep(name="CondStep", conditions=[ConditionEquals(left=param, right=1)])
    step_fail = FailStep(
        name="FailStep",
        error_message=Join(on=": ", values=["Failed due to xxx == yyy returns", step_cond.properties.Outcome]),
    )
    pipeline = Pipeline(name="fail-join", steps=[step_cond, step_fail], sagemaker_session=session, parameters=[param])
    pipeline.create(ROLE)
    execution = run(sm, pipeline, MyInt=3)
    fail, cond = fail_and_condition(execution)
    assert fail["FailureReason"] == "Failed due to xxx == yyy returns: false"
    assert fail["Metadata"]["Fail"]["ErrorMessage"] == "Failed due to xxx == yyy returns: false"
    assert cond["Metadata"] == {"Condition": {"Outcome": "False"}}
    assert_execution_failed_by_a_step(sm, pipeline)


def test_fail_step_without_a_message(sm, session):
    """Mirrors test_fail_steps.py::test_two_step_fail_pipeline_with_no_err_msg: no FailureReason
    on the step, an empty ErrorMessage in its metadata."""
    pipeline = else_fail_pipeline(session, None)
    execution = run(sm, pipeline)
    fail, _ = fail_and_condition(execution)
    assert fail.get("FailureReason", None) is None
    assert fail["Metadata"]["Fail"]["ErrorMessage"] == ""
    assert_execution_failed_by_a_step(sm, pipeline)


def test_create_pipeline_rejects_a_step_depending_on_a_fail_step(sm, session):
    """Mirrors test_fail_steps.py::test_invalid_pipeline_depended_on_fail_step."""
    param = ParameterInteger(name="MyInt", default_value=2)
    step_fail = FailStep(name="FailStep", error_message="Failed pipeline execution")
    step_cond = ConditionStep(
        name="CondStep", conditions=[ConditionEquals(left=param, right=1)], depends_on=["FailStep"]
    )
    pipeline = Pipeline(name="bad", steps=[step_cond, step_fail], sagemaker_session=session, parameters=[param])
    with pytest.raises(ClientError) as error:
        pipeline.create(ROLE)
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "CondStep can not depends on FailStep" in str(error.value)
    assert sm.list_pipelines()["PipelineSummaries"] == []


def test_pipeline_variables_print_and_compare_as_strings(sm, session):
    """Mirrors test_pipeline_var_behaviors.py::test_ppl_var_to_string_and_add: a String parameter
    compared with an Integer's to_string() compares as text; Outcome.to_string() prints
    ``false``/``true``; Integer and String parameters print as their values, defaults and overrides."""
    param_str = ParameterString(name="MyString", default_value="1")
    param_int = ParameterInteger(name="MyInteger", default_value=3)
    step_cond = ConditionStep(
        name="CondStep", conditions=[ConditionGreaterThan(left=param_str, right=param_int.to_string())]
    )
    message = Join(
        on=" ",
        values=[
            "condition greater than check return:",
            step_cond.properties.Outcome.to_string(),
            "and left side param str is",
            param_str,
            "and right side param int is",
            param_int,
        ],
    )
    step_fail = FailStep(name="FailStep", error_message=message)
    pipeline = Pipeline(
        name="vars", parameters=[param_str, param_int], steps=[step_cond, step_fail], sagemaker_session=session
    )
    pipeline.create(ROLE)
    fail, _ = fail_and_condition(run(sm, pipeline))
    expected = "condition greater than check return: false and left side param str is 1 and right side param int is 3"
    assert fail["FailureReason"] == expected
    fail, _ = fail_and_condition(run(sm, pipeline, MyInteger=0))
    expected = "condition greater than check return: true and left side param str is 1 and right side param int is 0"
    assert fail["FailureReason"] == expected


def test_parallelism_configuration_is_recorded_on_create_and_update(sm, session):
    """Mirrors test_workflow.py::test_create_and_update_with_parallelism_config: DescribePipeline
    answers the ParallelismConfiguration given to CreatePipeline, then the one given to UpdatePipeline;
    the SDK's upsert works, as CreatePipeline of an existing name is a ValidationException "already exists"."""
    from sagemaker.workflow.callback_step import CallbackOutput, CallbackOutputTypeEnum, CallbackStep

    output = CallbackOutput(output_name="output", output_type=CallbackOutputTypeEnum.String)
    steps = [
        CallbackStep(
            name=f"callback-step{count}",
            sqs_queue_url="https://sqs.us-east-2.amazonaws.com/123456789012/MyQueue",
            inputs={"arg1": "foo"},
            outputs=[output],
        )
        for count in range(500)
    ]
    parameters = [ParameterInteger(name="InstanceCount", default_value=2)]
    pipeline = Pipeline(name="parallel", parameters=parameters, steps=steps, sagemaker_session=session)
    arn = pipeline.create(ROLE, parallelism_config={"MaxParallelExecutionSteps": 50})["PipelineArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:000000000000:pipeline/parallel"
    assert pipeline.describe()["ParallelismConfiguration"]["MaxParallelExecutionSteps"] == 50
    pipeline.parameters = [ParameterInteger(name="InstanceCount", default_value=1)]
    assert pipeline.upsert(ROLE, parallelism_config={"MaxParallelExecutionSteps": 55})["PipelineArn"] == arn
    assert pipeline.describe()["ParallelismConfiguration"]["MaxParallelExecutionSteps"] == 55
    # An update without it keeps it, as any UpdatePipeline field left out.
    sm.update_pipeline(PipelineName="parallel", PipelineDescription="described")
    assert pipeline.describe()["ParallelismConfiguration"] == {"MaxParallelExecutionSteps": 55}


def test_a_state_db_from_before_parallelism_is_migrated(mlops_home: Path):
    """A pipelines table without the parallelism column (an earlier state.db) gains it on open."""
    import sqlite3

    path = mlops_home / "sagemaker" / "state.db"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE pipelines (name TEXT PRIMARY KEY, arn TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL,"
            " description TEXT, definition TEXT NOT NULL, role_arn TEXT, created REAL NOT NULL,"
            " modified REAL NOT NULL, last_run REAL)"
        )
        arn = "arn:aws:sagemaker:us-east-1:000000000000:pipeline/old"
        conn.execute(
            "INSERT INTO pipelines VALUES ('old', ?, 'old', NULL, '{\"Steps\": []}', NULL, 1, 1, NULL)", (arn,)
        )
    conn.close()
    service = LocalSageMakerService(mlops_home, LocalObjectStore(root=str(mlops_home / "s3")))
    assert "ParallelismConfiguration" not in service.describe_pipeline(PipelineName="old")
    body = '{"Version": "2020-12-01", "Parameters": [], "Steps": []}'
    service.create_pipeline(
        PipelineName="new",
        PipelineDefinition=body,
        RoleArn=ROLE,
        ParallelismConfiguration={"MaxParallelExecutionSteps": 2},
    )
    assert service.describe_pipeline(PipelineName="new")["ParallelismConfiguration"] == {"MaxParallelExecutionSteps": 2}
