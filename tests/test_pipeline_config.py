"""pipeline_definition and trained_model config: values that would turn the quality gate off or
start a job that never ends are refused before anything is built, naming the field and bound."""

from __future__ import annotations

import math

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from mlops_dagster.assets.pipeline import PipelineConfig, TrainedModelConfig


def refusal(config_class, **values) -> str:
    with pytest.raises(ValidationError) as err:
        config_class(**values)
    return str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("mse_threshold", math.inf, "Input should be a finite number"),
        ("mse_threshold", math.nan, "Input should be a finite number"),
        ("mse_threshold", -math.inf, "Input should be a finite number"),
        ("mse_threshold", 0, "greater than 0"),
        ("n_estimators", 10**12, "less than or equal to 10000"),
        ("n_estimators", 0, "greater than or equal to 1"),
        ("min_samples_leaf", 10**12, "less than or equal to 100000"),
        ("random_state", 2**32, "less than or equal to 4294967295"),
        ("random_state", -1, "greater than or equal to 0"),
        ("train_instance_type", "m5.large", "should match pattern"),
        ("processing_instance_type", "ml.m5.large; rm", "should match pattern"),
        ("target", "", "at least 1 character"),
        ("min_samples_leaf", 0, "greater than or equal to 1"),
        ("max_samples", 0, "greater than 0"),
        ("max_samples", 1.5, "less than or equal to 1"),
        ("max_samples", math.nan, "Input should be a finite number"),
        ("max_model_bytes", 0, "greater than 0"),
        ("max_model_bytes", -1, "greater than 0"),
        ("max_model_bytes", math.nan, "Input should be a finite number"),
        ("max_model_bytes", 1.5, "Input should be a valid integer"),
        ("step_cache_expire_after", "soon", "'soon' is not an ISO 8601 duration"),
        ("step_cache_expire_after", "30", "is not an ISO 8601 duration"),
        ("step_cache_expire_after", "P" + "1" * 40 + "D", "at most 32 characters"),
    ],
)
def test_pipeline_config_refuses_out_of_range_values(field: str, value, expected: str):
    message = refusal(PipelineConfig, **{field: value})
    assert field in message and expected in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("wait_timeout_seconds", math.inf, "finite number"),
        ("wait_timeout_seconds", math.nan, "finite number"),
        ("wait_timeout_seconds", 10**9, "less than or equal to 2419200"),
        ("max_poll_seconds", math.inf, "finite number"),
        ("max_poll_seconds", 7200, "less than or equal to 3600"),
    ],
)
def test_trained_model_config_refuses_waits_that_never_end(field: str, value, expected: str):
    message = refusal(TrainedModelConfig, **{field: value})
    assert field in message and expected in message


def test_defaults_and_bounds_pass():
    config = PipelineConfig(n_estimators=10_000, min_samples_leaf=100_000, random_state=2**32 - 1,
                            train_instance_type="ml.g4dn.xlarge", mse_threshold=1e-6)  # fmt: skip
    assert (config.n_estimators, config.mse_threshold) == (10_000, 1e-6)
    assert PipelineConfig().n_estimators == 100
    # Unset size hyperparameters are left to train.py's "auto"; the size gate fits ml.t2.medium.
    assert (PipelineConfig().min_samples_leaf, PipelineConfig().max_samples) == (None, None)
    assert PipelineConfig(max_samples=1).max_samples == 1.0
    assert PipelineConfig().max_model_bytes == 2**30


def test_step_cache_default_is_the_builders_and_empty_turns_it_off():
    from mlops_dagster.sagemaker.pipeline_builder import DEFAULT_STEP_CACHE, PipelineSpec

    assert PipelineConfig().step_cache_expire_after == DEFAULT_STEP_CACHE == PipelineSpec.step_cache_expire_after
    assert PipelineConfig(step_cache_expire_after=" PT12H ").step_cache_expire_after == "PT12H"
    assert PipelineConfig(step_cache_expire_after="").step_cache_expire_after == ""


def test_size_gate_default_is_the_builders():
    from mlops_dagster.sagemaker.pipeline_builder import DEFAULT_MAX_MODEL_BYTES, PipelineSpec

    assert PipelineConfig().max_model_bytes == DEFAULT_MAX_MODEL_BYTES
    assert PipelineSpec(name="p", bucket="b", prefix="", region="us-east-1", role_arn="r").max_model_bytes == 2**30
    assert TrainedModelConfig(wait_timeout_seconds=28 * 24 * 3600).max_poll_seconds == 15


def test_run_with_infinite_threshold_fails_before_a_pipeline_is_created(defs, instance):
    from dagster import materialize

    result = materialize(
        [defs.get_assets_def("pipeline_definition")], resources=defs.resources, instance=instance,
        run_config={"ops": {"pipeline_definition": {"config": {"mse_threshold": math.inf, "n_estimators": 10**12}}}},
        raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    text = "\n".join(e.message for e in (error, error.cause) if e is not None)
    assert "mse_threshold" in text and "finite number" in text
    assert "n_estimators" in text and "less than or equal to 10000" in text
    with pytest.raises(ClientError):
        defs.resources["sagemaker"].get_client().describe_pipeline(PipelineName="mlops-pipeline")
